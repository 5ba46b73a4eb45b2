"""Shared fixtures: the tiny presets and a tiny corpus built once per session, and a headless
Chromium for the browser tests."""

import os

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


@pytest.fixture(scope="module")
def chromium():
    """Headless Debian Chromium under Playwright (tests/browser.py), one per test module.
    Missing chromium skips locally but fails under CI, where .ci/chromium installs it."""
    import browser

    if not browser.available():
        msg = f"no Chromium at {browser.CHROMIUM} (apt-get install chromium, or .ci/chromium)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    with browser.chromium() as b:
        yield b
