"""Where the project's own artefacts live (relative to the repository checkout)."""

from pathlib import Path

__all__ = ["ROOT", "ASSETS", "BASE_DIR", "BASE_TFLITE", "RUNS", "CENTRALIZED_DIR", "NGRAM_PATH"]

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
# The pretrained base (public text only), shipped: `sotto pretrain` reproduces it.
BASE_DIR = ASSETS / "base"
# Its LiteRT file (int8 base, infer + train signatures) and initial device part: `sotto export`.
BASE_TFLITE = ASSETS / "base.tflite"
# Generated, not committed: centralised upper bound, n-gram models, benchmark scratch.
RUNS = ROOT / "runs"
CENTRALIZED_DIR = RUNS / "centralized"
NGRAM_PATH = RUNS / "ngram" / "public_federated.arpa"
