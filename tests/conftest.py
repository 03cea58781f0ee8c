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
if os.environ.get("PYTEST_XDIST_WORKER"):
    # one thread per worker process: two workers on two cores, without OpenMP threads contending
    # (the subprocesses a test starts inherit it)
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One tokenizer/shard cache for the session, shared by its xdist workers: what one worker
    built (a tokenizer, a source's shards) the other reads, and a build both need at once is made
    once under the cache's own lock (allam.cache_lock, tested in tests/test_cache_race.py).
    ALLAM_TEST_CACHE reuses one cache across sessions."""
    env = os.environ.get("ALLAM_TEST_CACHE")
    if env:
        Path(env).mkdir(parents=True, exist_ok=True)
        return Path(env)
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker's base temp is <session>/popen-gwN
        shared = tmp_path_factory.getbasetemp().parent / "allam-cache"
        shared.mkdir(exist_ok=True)
        return shared
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


def tiny_bytelevel_tokenizer(docs: list[str], vocab_size: int):
    """A byte-level BPE trained on `docs` in the test session (<s> and </s> specials), as a fast
    Hugging Face tokenizer: for data tests that need real tokens but no shipped vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(docs, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="</s>", bos_token="<s>")


def run_inprocess(args, cache_dir: Path, out: Path) -> str | None:
    """run.py's command line, in this process: compose the overrides, validate, run the task.

    Returns None when the task finished, else the one line run.py would print ("error: ...").
    ``hydra.run.dir=X`` names the run directory (default `out`), as it does for run.py. Starting
    run.py in a subprocess costs 5-10 s of imports; the tests of the command line itself
    (tests/test_cli.py: one case per kind of failure) still start it."""
    from allam import tasks
    from allam.config import ConfigError, RunFailed, explain_compose_error
    from allam.config.errors import compose_overrides

    overrides = []
    for arg in compose_overrides(list(args)):  # as run.py rewrites its command line
        if arg.startswith("hydra.run.dir="):
            out = Path(arg.split("=", 1)[1])
        else:
            overrides.append(arg)
    try:
        with initialize_config_dir(str(CONF_DIR), version_base=None):
            cfg = compose("config", overrides=[f"paths.output_dir={out}", f"paths.cache_dir={cache_dir}",
                                               "trainer.progress_bar=false", *overrides])
    except Exception as exc:  # noqa: BLE001 - what run.py's preflight turns into one line
        return f"error: {explain_compose_error(exc)}"
    try:
        tasks.run(cfg)
    except (ConfigError, RunFailed) as exc:
        return f"error: {exc}"
    return None


@pytest.fixture
def cli(tmp_path, cache_dir):
    """``cli(*overrides)``: :func:`run_inprocess` with this test's cache and a run directory under tmp_path."""
    return lambda *args: run_inprocess(args, cache_dir, tmp_path / "run")


@pytest.fixture(scope="session")
def english_checkpoint(tmp_path_factory, cache_dir):
    """A tiny English 'Llama-2': random weights saved with the english8k tokenizer (model + SentencePiece).
    One folder for the whole session: tests read it, none writes into it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from allam.tasks import builders

    with initialize_config_dir(str(CONF_DIR), version_base=None):
        base_cfg = compose("config", overrides=[f"paths.cache_dir={cache_dir}", "logger=none",
                                                 f"paths.output_dir={tmp_path_factory.mktemp('english-run')}"])
    bundle = builders.build_tokenizer(base_cfg)
    cfg = LlamaConfig(vocab_size=len(bundle.tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=128)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    folder = tmp_path_factory.mktemp("english-llama")
    builders.export_hf(model.state_dict().items(), model.config, bundle, folder)
    assert (folder / "tokenizer.model").exists()
    return folder
