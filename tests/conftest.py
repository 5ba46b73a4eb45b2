"""Shared fixtures: the tiny presets and a tiny corpus built once per session."""

import pytest

from model.config import DataConfig, ModelConfig, TrainConfig
from model.corpus import build_corpus


@pytest.fixture(scope="session")
def tiny_data() -> DataConfig:
    return DataConfig.tiny()


@pytest.fixture(scope="session")
def tiny_model() -> ModelConfig:
    return ModelConfig.tiny()


@pytest.fixture(scope="session")
def tiny_train() -> TrainConfig:
    return TrainConfig.tiny()


@pytest.fixture(scope="session")
def tiny_corpus(tiny_data):
    return build_corpus(tiny_data)
