"""Shared fixtures: compose the real config with Hydra's compose API."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from allam.config import CONF_DIR

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One tokenizer/shard cache for the session (ALLAM_TEST_CACHE reuses one across sessions)."""
    env = os.environ.get("ALLAM_TEST_CACHE")
    if env:
        Path(env).mkdir(parents=True, exist_ok=True)
        return Path(env)
    return tmp_path_factory.mktemp("allam-cache")


@pytest.fixture
def make_cfg(tmp_path, cache_dir):
    """compose(overrides) -> the real composed config with paths pointed at tmp dirs."""

    def _make(*overrides: str, out: Path | None = None):
        with initialize_config_dir(str(CONF_DIR), version_base=None):
            return compose(
                "config",
                overrides=[
                    f"paths.output_dir={out or tmp_path / 'run'}",
                    f"paths.cache_dir={cache_dir}",
                    "logger=none",
                    "trainer.progress_bar=false",
                    *overrides,
                ],
            )

    return _make
