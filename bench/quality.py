"""bench/quality: n-gram, pretrained base and centralised model on held-out chitchat users and
Shakespeare. Writes bench/results/quality.json and prints a Markdown table.

    ./dev bench quality            # trains the centralised model and the 3-gram if missing
"""

import argparse
import json
import logging
from pathlib import Path

from model import paths, pipeline, quality

OUT = Path(__file__).resolve().parent / "results" / "quality.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default=str(OUT))
    p.add_argument(
        "--keystroke-words",
        type=int,
        default=20_000,
        help="words per dataset used for keystroke savings (the slow metric)",
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("jax").setLevel(logging.WARNING)
    report = quality.quality_report(
        pipeline.data_config("default"),
        paths.BASE_DIR,
        paths.CENTRALIZED_DIR,
        keystroke_words=args.keystroke_words,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(quality.format_table(report))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
