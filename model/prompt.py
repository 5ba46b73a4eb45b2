"""An interactive next-word prompt: type words, see the three suggestions a keyboard would show.

Ends on an empty line, `:q`, or end of input. Reads and writes the given streams, so a test can
drive it with a script.
"""

from pathlib import Path
from typing import TextIO

from model import checkpoint, suggest
from model.vocab import build_vocabulary

__all__ = ["run", "format_strip"]

HELP = (
    "Type the start of a message and press Enter: you see the next-word suggestions, and the\n"
    "completions of the last word as if you were still typing it. Empty line or :q quits."
)


def format_strip(words: list[str]) -> str:
    """Three suggestions as a phone shows them: the best in the middle."""
    w = (words + ["", "", ""])[:3]
    return f"[ {w[1]:^12} | {w[0]:^12} | {w[2]:^12} ]"


def run(model_dir: Path, stdin: TextIO, stdout: TextIO) -> None:
    config, params, meta = checkpoint.load(model_dir)
    vocab = build_vocabulary(config.vocab_size - 4)
    suggester = suggest.Suggester(config, params, vocab)
    print(f"Sotto next-word prompt ({meta.get('kind', 'model')} from {model_dir}).", file=stdout)
    print(HELP, file=stdout)
    while True:
        stdout.write("> ")
        stdout.flush()
        line = stdin.readline()
        if not line or line.rstrip("\n") in ("", ":q"):
            break
        typed = line.rstrip("\n").rstrip()
        _, partial = suggest.split_typed(typed)
        if partial:
            strip = format_strip(suggester.suggest(typed))
            print(f"  completing {partial!r}: {strip}", file=stdout)
        print(f"  next word:  {format_strip(suggester.suggest(typed + ' '))}", file=stdout)
