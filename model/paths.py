"""Where the project's own artefacts live (relative to the repository checkout)."""

from pathlib import Path

__all__ = ["ROOT", "ASSETS", "BASE_DIR", "RUNS", "CENTRALIZED_DIR", "NGRAM_PATH"]

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
# The pretrained base (public text only), shipped: `sotto pretrain` reproduces it.
BASE_DIR = ASSETS / "base"
# Generated, not committed: centralised upper bound, n-gram models, benchmark scratch.
RUNS = ROOT / "runs"
CENTRALIZED_DIR = RUNS / "centralized"
NGRAM_PATH = RUNS / "ngram" / "public_federated.arpa"
