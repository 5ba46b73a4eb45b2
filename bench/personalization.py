"""bench/personalization: does on-device learning help each held-out user on later messages?

The global model (the default device part fine-tuned centrally by bench/device_part if that
has run, else the pretrained base with a zero-update device part) is exported to LiteRT; for
every held-out user with enough messages, the LiteRT runtime trains the device part on their
first 70% of messages and is scored on the rest. Writes bench/results/personalization.json.

    ./dev bench personalization        # a few minutes
"""

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import jax
import numpy as np

from model import checkpoint, device_part, export, network, partition, paths, personalize, pipeline
from model.config import DevicePart
from model.corpus import build_corpus

OUT = Path(__file__).resolve().parent / "results" / "personalization.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    d = personalize.PersonalizeConfig()
    p.add_argument("--min-messages", type=int, default=d.min_messages)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--max-users", type=int, default=0, help="0 = every eligible user")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("jax").setLevel(logging.WARNING)
    cfg = personalize.PersonalizeConfig(
        min_messages=args.min_messages, epochs=args.epochs, lr=args.lr
    )

    part = DevicePart.default()
    trained = device_part.trained_checkpoint(part)
    if trained is not None:
        mcfg, params, _ = checkpoint.load(trained)
        source = f"{part.name} fine-tuned centrally on federated text ({trained.name})"
    else:
        base_cfg, base_params, _ = checkpoint.load(paths.BASE_DIR)
        mcfg = base_cfg.with_device_part(part)
        params = network.attach_device_part(base_params, mcfg, jax.random.key(0))
        source = "pretrained base, zero-update device part"
    logging.info("global model: %s", source)
    model_bytes = export.export(mcfg, params, int8=True)
    _, device = partition.split(params, mcfg)
    device = {k: np.asarray(v) for k, v in device.items()}
    corpus = build_corpus(pipeline.data_config("default"), with_shakespeare=False)
    users = corpus.users["heldout"]
    if args.max_users:
        eligible = sorted(u for u in users if len(users[u]) >= cfg.min_messages)
        users = {u: users[u] for u in eligible[: args.max_users]}
    results = personalize.run_all(model_bytes, corpus.vocab, device, users, cfg)
    summary = personalize.summarize(results)
    report = {
        "global_model": source,
        "device_part": part.name,
        "runtime": "LiteRT int8",
        "config": dataclasses.asdict(cfg),
        **summary,
        "per_user": [dataclasses.asdict(r) for r in results],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    t, k = summary["top1_gain"], summary["keystroke_savings_gain"]
    print(
        f"{summary['users']} held-out users; top-1 {100 * summary['top1_global_pooled']:.2f}% "
        f"-> {100 * summary['top1_personal_pooled']:.2f}% (pooled)"
    )
    print("| per-user gain | mean | std | median | p25..p75 | users improved |")
    print("|---|---|---|---|---|---|")
    for name, s in (("top-1 (points)", t), ("keystroke savings (points)", k)):
        print(
            f"| {name} | {100 * s['mean']:+.2f} | {100 * s['std']:.2f} | {100 * s['median']:+.2f} |"
            f" {100 * s['p25']:+.2f}..{100 * s['p75']:+.2f} | {100 * s['share_improved']:.0f}% |"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
