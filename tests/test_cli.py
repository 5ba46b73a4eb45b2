"""End to end on the tiny preset: pretrain, then the interactive prompt, through the CLI."""

import io

import numpy as np

from model import checkpoint, partition, prompt, suggest
from sotto import cli


def test_split_typed():
    assert suggest.split_typed("how are yo") == (["how", "are"], "yo")
    assert suggest.split_typed("how are ") == (["how", "are"], "")
    assert suggest.split_typed("Fine. and y") == (["and"], "y")
    assert suggest.split_typed("") == ([], "")


def test_format_strip_puts_the_best_in_the_middle():
    assert prompt.format_strip(["a", "b", "c"]).split("|")[1].strip() == "a"


def test_tiny_pretrain_then_prompt(tmp_path, capsys):
    out = tmp_path / "base"
    cli.main(["pretrain", "--preset", "tiny", "--out", str(out)])
    cfg, params, meta = checkpoint.load(out)
    assert meta["trained_on"] == "public_train"
    assert meta["params_device"] == partition.count(partition.split(params, cfg)[1])
    assert cfg.lora_rank == cfg.embed_rank == 0  # the base is pretrained without adapters
    assert np.isfinite(meta["valid"]["valid_perplexity"])
    capsys.readouterr()
    stdout = io.StringIO()
    prompt.run(out, io.StringIO("how are yo\n\n"), stdout)
    lines = stdout.getvalue().splitlines()
    completing = next(ln for ln in lines if "completing 'yo'" in ln)
    cells = [c.strip() for c in completing.split("[", 1)[1].rstrip(" ]").split("|")]
    assert all(c.startswith("yo") for c in cells if c) and any(cells)
    assert any("next word:" in ln for ln in lines)
