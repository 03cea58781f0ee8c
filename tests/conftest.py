"""Shared fixtures: compose the real config with Hydra's compose API."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
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


@pytest.fixture
def english_checkpoint(make_cfg, tmp_path):
    """A tiny English 'Llama-2': random weights saved with the english8k tokenizer (model + SentencePiece)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from allam.tasks import builders

    bundle = builders.build_tokenizer(make_cfg())
    cfg = LlamaConfig(vocab_size=len(bundle.tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=128)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    folder = tmp_path / "english-llama"
    builders.export_hf(model.state_dict().items(), model.config, bundle, folder)
    assert (folder / "tokenizer.model").exists()
    return folder
