"""Typed settings of the coordinator service (one frozen dataclass, two presets)."""

from dataclasses import dataclass, field
from pathlib import Path

from model import paths
from secagg.config import DPConfig, SecAggConfig

__all__ = ["CoordinatorConfig", "DEFAULT_DATA_DIR", "DEFAULT_PORT"]

# Generated state (database, content-addressed model files) lives under runs/, never in git.
DEFAULT_DATA_DIR = paths.RUNS / "coordinator"
DEFAULT_PORT = 8470


@dataclass(frozen=True)
class CoordinatorConfig:
    """Everything an operator may set; `sotto coordinator` exposes the first four."""

    # Loopback by default: exposing the service beyond this machine is an explicit choice.
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    # Database file (SQLite default) and model artefacts (files/<sha256[:2]>/<sha256>).
    data_dir: Path = DEFAULT_DATA_DIR
    # SQLAlchemy URL; None = SQLite file in `data_dir`. PostgreSQL: postgresql+psycopg://...
    database_url: str | None = None
    # Largest request body accepted (bytes); larger ones get 413 before they are read whole.
    max_request_bytes: int = 64 * 1024
    # Longest typed context a cloud-mode device may send to /v1/predict (characters).
    max_predict_chars: int = 1_000
    # Per-device token bucket: sustained requests per second and burst size. A cloud-mode phone
    # asks once per key press, and fast typists reach ~10 keys/s: 5/s made the keyboard say
    # "unreachable" mid-word (bench/keyboard).
    rate_per_second: float = 20.0
    rate_burst: int = 60
    # Local training settings handed out at check-in (tuned schedule of design.md: lr 1e-2).
    train_learning_rate: float = 1e-2
    train_steps: int = 20
    # Source of version 1 on first start: the shipped LiteRT file and initial device part.
    base_model: Path = paths.BASE_TFLITE
    base_device_part: Path = field(default=paths.BASE_TFLITE.with_suffix(".device.npz"))
    # Public vocabulary size (must match the shipped model) and server-side evaluation on
    # public held-out users: data preset and number of next-word targets (0 = skip).
    vocab_size: int = 10_000
    eval_preset: str = "default"
    eval_targets: int = 2_000
    # Synchronous federated rounds (coordinator.rounds): cohort size asked for, extra fraction
    # sampled on top to tolerate dropouts, and how long a stage waits for silent devices
    # before closing without them (the masked-input stage gets its own, longer, timeout).
    round_cohort_size: int = 100
    round_overselect: float = 0.3
    round_stage_timeout_s: float = 60.0
    round_masked_input_timeout_s: float = 300.0
    # How often the service closes timed-out stages on its own (0 = only on round requests).
    round_tick_s: float = 5.0
    # "sync": the service samples a cohort every `round_interval_s` (0 = only when an operator
    # opens one) once `round_min_devices` on-device devices are enrolled. "buffered" (FedBuff /
    # FTTE): devices train from the version they fetched and report ready; a round opens as
    # soon as `round_buffer_size` devices are ready, with those devices as its cohort (at most
    # `round_cohort_size`). Each update is weighted by (1 + staleness)^-`staleness_exponent`,
    # staleness = versions published since the one it trained from; a device more than
    # `max_staleness` versions behind must fetch the current version first.
    round_mode: str = "sync"
    round_interval_s: float = 0.0
    round_min_devices: int = 10
    round_buffer_size: int = 10
    staleness_exponent: float = 0.5
    max_staleness: int = 4
    secagg: SecAggConfig = field(default_factory=SecAggConfig.default)
    # Share of the device part's coordinates a device uploads per round: a public random
    # subset, new each round (random-mask updates, Konečný et al. 2016; secagg.subsample).
    # 1 = the whole update. Together with `secagg.value_bits` it sets the upload size.
    upload_fraction: float = 1.0
    # Server optimiser on the averaged delta: "adam" (FedAdam, Reddi et al. 2021) at
    # `server_learning_rate`, or "sgd" with `server_momentum` (FedAvgM; momentum 0 = FedAvg,
    # learning rate 1 = add the average). FedAdam at 3e-2 on the phones' SGD updates is what
    # moved the default device part in bench/client_optimizer; FedAvgM at momentum 0.9 made
    # it worse than the base.
    server_optimizer: str = "adam"
    server_learning_rate: float = 3e-2
    server_momentum: float = 0.0
    # Central DP on each round's aggregate (Gaussian noise, privacy budget charged and
    # enforced per round by `coordinator.round_result`); None = no noise.
    dp: DPConfig | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.max_request_bytes <= 0 or self.rate_per_second <= 0 or self.rate_burst < 1:
            raise ValueError("request limit, rate and burst must be positive")
        if self.eval_preset not in ("default", "tiny"):
            raise ValueError(f"eval_preset must be 'default' or 'tiny', got {self.eval_preset!r}")
        if self.round_cohort_size < 2 or self.round_overselect < 0:
            raise ValueError("round_cohort_size must be >= 2 and round_overselect >= 0")
        if min(self.round_stage_timeout_s, self.round_masked_input_timeout_s) <= 0:
            raise ValueError("round stage timeouts must be positive")
        if self.round_tick_s < 0 or self.server_learning_rate <= 0:
            raise ValueError("round_tick_s must be >= 0 and server_learning_rate > 0")
        if self.round_mode not in ("sync", "buffered"):
            raise ValueError(f"round_mode must be 'sync' or 'buffered', got {self.round_mode!r}")
        if self.round_interval_s < 0 or self.round_min_devices < 2 or self.round_buffer_size < 2:
            raise ValueError("round_interval_s must be >= 0, min devices and buffer size >= 2")
        if self.staleness_exponent < 0 or self.max_staleness < 0:
            raise ValueError("staleness_exponent and max_staleness must be >= 0")
        if not 0 < self.upload_fraction <= 1:
            raise ValueError(f"upload_fraction must be in (0, 1], got {self.upload_fraction}")
        if self.server_optimizer not in ("sgd", "adam"):
            raise ValueError(
                f"server_optimizer must be 'sgd' or 'adam', got {self.server_optimizer!r}"
            )
        if not 0 <= self.server_momentum < 1:
            raise ValueError(f"server_momentum must be in [0, 1), got {self.server_momentum}")
        object.__setattr__(self, "data_dir", Path(self.data_dir))

    @property
    def db_url(self) -> str:
        """The database URL in force (the SQLite default made explicit)."""
        return self.database_url or f"sqlite:///{self.data_dir / 'coordinator.sqlite3'}"

    @staticmethod
    def default() -> "CoordinatorConfig":
        return CoordinatorConfig()

    @staticmethod
    def tiny(data_dir: Path, database_url: str | None = None) -> "CoordinatorConfig":
        """For tests: a temporary data dir, a free port, a few evaluation targets."""
        return CoordinatorConfig(
            port=0,
            data_dir=Path(data_dir),
            database_url=database_url,
            eval_preset="tiny",
            eval_targets=50,
            train_steps=2,
            round_cohort_size=4,
            round_stage_timeout_s=20.0,
            round_masked_input_timeout_s=30.0,
            round_min_devices=3,
            # FedAvg at rate 1: a version is exactly its parent plus the released average,
            # which the protocol tests check (FedAdam has its own tests).
            server_optimizer="sgd",
            server_learning_rate=1.0,
            server_momentum=0.0,
            round_buffer_size=3,
            secagg=SecAggConfig.tiny(),
        )
