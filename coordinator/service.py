"""The coordinator as one in-process object: database, registry, cloud predictor.

The HTTP app (`coordinator.app`) is a thin layer over this; the round protocol and the
population simulator can drive the same object directly, without HTTP.
"""

import logging
from dataclasses import dataclass

from coordinator import db, evaluation, rounds, traffic
from coordinator.cloud import CloudPredictor
from coordinator.config import CoordinatorConfig
from coordinator.registry import Registry
from model.vocab import Vocabulary, build_vocabulary

__all__ = ["Coordinator"]

log = logging.getLogger(__name__)


@dataclass
class Coordinator:
    config: CoordinatorConfig
    db: db.Database
    registry: Registry
    vocab: Vocabulary
    predictor: CloudPredictor

    @staticmethod
    def open(config: CoordinatorConfig) -> "Coordinator":
        """Connect (creating tables), bootstrap version 1 on first start, evaluate it once."""
        config.data_dir.mkdir(parents=True, exist_ok=True)
        database = db.Database(config.db_url)
        registry = Registry(database, config.data_dir)
        vocab = build_vocabulary(config.vocab_size)
        current = registry.bootstrap(config.base_model, config.base_device_part)
        if config.eval_targets > 0 and "public_top1" not in current.metrics:
            current = evaluation.evaluate_version(
                registry, current.id, config.eval_preset, config.eval_targets
            )
            log.info("version %d on public held-out users: %s", current.id, current.metrics)
        predictor = CloudPredictor(registry, vocab)
        coordinator = Coordinator(config, database, registry, vocab, predictor)
        # A round left running by a previous process resumes from its stored state, or is
        # aborted with the reason if that state cannot be loaded: none stays stuck.
        for rid in rounds.recover(coordinator):
            log.warning("round %d aborted on restart", rid)
        return coordinator

    def close(self) -> None:
        traffic.flush(self.db)  # per-request accounting still waiting to be written
        self.db.close()
