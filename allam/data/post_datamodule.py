"""The post-training datamodule (objective=sft | dpo): chat or preference examples, loaded and
tokenized once, right-padded into micro-batches (allam.data.chat: padding, not packing).

Order: global position ``p`` holds example ``order_e[p mod n]`` of epoch ``e = p // n``, where
``order_e`` is a permutation of the ``n`` training examples drawn from ``(seed, e)``. Micro-batch
``m`` of rank ``r`` (of ``W``, ``B`` examples each) holds positions ``(m·W + r)·B .. (m·W + r)·B + B - 1``
as the pretraining datamodule does, so optimizer step ``s`` (``A`` micro-batches accumulated) covers
the ``G = A·W·B`` positions ``s·G .. s·G + G - 1`` whatever ``W`` is: a step's examples depend
on ``G`` only, not on how it is split into ranks, micro-batches and accumulation. The run has ``ceil(n · epochs / G)`` steps (``trainer.max_steps``
overrides it); the last step is completed with the next epoch's first examples.

SFT batches carry ``label_tokens``: the label tokens of the whole global batch (every rank's and
every accumulated micro-batch's), counted from the data, so the loss can be normalized by it
without a collective. DPO batches carry ``index`` (the example's number in its set, for the
reference log-probabilities). Held-out batches split the held-out examples round-robin over ranks;
every rank gets the same number of batches, the extra ones flagged ``valid`` 0.

Resume: the position (micro-batches trained on this rank) is counted in ``on_before_batch_transfer``
and saved in ``state_dict`` as examples consumed, with a fingerprint of the tokenized data;
``load_state_dict`` checks both.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from allam.config import ConfigError
from allam.config.schema import POST_VAL_AUTO, post_validation
from allam.data import chat

log = logging.getLogger("allam.data")

DEMO = "demo"
_DEMO_FILES = {("sft", "train"): "sft_train", ("sft", "val"): "sft_heldout",
               ("dpo", "train"): "preference_train", ("dpo", "val"): "preference_heldout"}


def demo_folder(cache_dir: Path, seed: int) -> Path:
    """The offline demo sets for `seed` (allam.data.chat_demo.write_demo_sets), written once into a
    folder keyed by the seed and a hash of the code that builds them (chat_demo and the demo
    corpora's reader), so a change to either writes new sets instead of reusing stale ones."""
    import hashlib

    from allam.data import chat_demo, demo
    from allam.data.chat_demo import FILES, write_demo_sets

    code = hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in (chat_demo, demo))).hexdigest()[:12]
    out = Path(cache_dir) / f"demo-seed{seed}-{code}"
    if all((out / f).exists() for f in FILES.values()):
        return out
    tmp = out.with_name(f".{out.name}-{os.getpid()}")
    write_demo_sets(tmp, seed=seed)
    try:
        tmp.rename(out)  # atomic: another process may have written the same sets first
    except OSError:
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    return out


def source_of(objective: str, split: str, value: str, cache_dir: Path, seed: int) -> dict:
    """The source mapping of ``objective.train`` / ``objective.val``: `demo` or a file, folder or glob."""
    if str(value) == DEMO:
        from allam.data.chat_demo import FILES

        return chat.file_source(demo_folder(cache_dir, seed) / FILES[_DEMO_FILES[(objective, split)]])
    return chat.file_source(value)


def load_examples(objective: str, name: str, src: dict, tokenizer, max_length: int,
                  limit: int | None = None) -> list[dict]:
    """Tokenized examples of one source (only the first `limit` of those kept, when set); the
    kept and dropped counts are logged once. A file of the other kind is a one-line ConfigError."""
    tokenize = chat.tokenize_sft if objective == "sft" else chat.tokenize_preferences
    try:
        rows = chat.read_chat(name, src) if objective == "sft" else chat.read_preferences(name, src)
        examples = tokenize(tokenizer, rows, max_length, limit)
    except ConfigError as e:  # the file readers name a data source's key; this one is objective.<split>
        prefix = f"data.sources.{name}.path="
        if str(e).startswith(prefix):
            raise ConfigError(f"objective.{name}={str(e)[len(prefix):]}") from None
        raise
    rows.report()
    log.info("%s data %s: %d examples of at most %d tokens", rows.kind, name, len(examples), max_length)
    if not examples:
        raise ConfigError(f"objective.{name}={src['path']}: no example left to {'train on' if name == 'train' else 'score'} "
                          "(see the dropped counts above)")
    return examples


def label_count(example: dict) -> int:
    """Label tokens an SFT example is scored on (labels shift by one: the first position predicts nothing)."""
    return sum(1 for t in example["labels"][1:] if t != chat.IGNORE_INDEX)


class _Batches:
    """Ready batches as one loader (a plain list of dicts would be flattened into tensors by Lightning)."""

    def __init__(self, batches: list[dict]):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.batches)


class _TrainLoader:
    """Micro-batches from the datamodule's position to the end; exposes state_dict/load_state_dict."""

    def __init__(self, dm: PostTrainingDataModule):
        self.dm = dm

    def __len__(self) -> int:
        return self.dm.train_batches

    def __iter__(self) -> Iterator[dict]:
        dm = self.dm
        start = dm._begin_iteration()
        for m in range(start, dm.train_batches):
            dm._yielded += 1
            yield dm.train_batch(m)

    def state_dict(self) -> dict:
        return self.dm.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.dm.load_state_dict(state)


class PostTrainingDataModule(L.LightningDataModule):
    """See the module docstring. `objective` is the objective config (ObjectiveConfig); `world` the
    ranks the config trains on (the step count depends on the global batch)."""

    def __init__(self, objective: Any, tokenizer: Any, *, max_length: int, batch_size: int, accumulate: int,
                 world: int, seed: int, cache_dir: Path, max_steps: int | None = None):
        super().__init__()
        self.objective = str(objective.name)
        self.cfg = objective
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.batch_size, self.accumulate, self.config_world = int(batch_size), int(accumulate), int(world)
        self.seed = int(seed)
        self.cache_dir = Path(cache_dir)
        self.max_steps = max_steps
        self.rank, self.world = 0, self.config_world
        self.train: list[dict] = []
        self.val: list[dict] = []
        self.val_languages: list[str] = []  # no per-language held-out text (CausalLM's validation)
        self._prepared = False
        self._consumed = self._yielded = 0
        self._fingerprint: dict | None = None
        self._orders: dict[int, np.ndarray] = {}
        self._step_labels: dict[int, int] = {}

    # -- loading -----------------------------------------------------------------------------
    def prepare(self) -> None:
        """Reads and tokenizes the training and held-out examples once; one-line errors before any model exists."""
        if self._prepared:
            return
        chat.require_chat_template(self.tokenizer, f"objective={self.objective}")
        c = self.cfg
        if not c.train:
            raise ConfigError(f"objective.train={c.train}: objective={self.objective} needs training data: a "
                              "JSONL/parquet file, a folder or glob of them, or demo")
        src = source_of(self.objective, "train", c.train, self.cache_dir, self.seed)
        self.train = load_examples(self.objective, "train", src, self.tokenizer, self.max_length, c.max_examples)
        val = post_validation(c)
        if c.val is not None and str(c.val) == POST_VAL_AUTO and val is None:
            log.info("objective.val=auto: no held-out scoring for objective.train=%s (auto scores the demo's only "
                     "with train=demo); give objective.val=<held-out file>", c.train)
        if val:
            src = source_of(self.objective, "val", val, self.cache_dir, self.seed)
            self.val = load_examples(self.objective, "val", src, self.tokenizer, self.max_length)
        if self.objective == "sft":
            self.labels = np.array([label_count(ex) for ex in self.train], np.int64)
        self.pad = chat.pad_id(self.tokenizer)
        self._prepared = True

    def prepare_data(self) -> None:
        self.prepare()

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None:
            self.rank, self.world = int(self.trainer.global_rank), int(self.trainer.world_size)
        self.prepare()

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.accumulate * self.world

    @property
    def steps(self) -> int:
        """Optimizer steps: every example `epochs` times (trainer.max_steps, when set, instead)."""
        self.prepare()
        if self.max_steps:
            return int(self.max_steps)
        g = self.batch_size * self.accumulate * self.config_world
        return max(1, math.ceil(len(self.train) * int(self.cfg.epochs) / g))

    @property
    def train_batches(self) -> int:
        return self.steps * self.accumulate

    # -- order -------------------------------------------------------------------------------
    def example_at(self, positions: np.ndarray) -> np.ndarray:
        """The training example (index) at each global position."""
        n = len(self.train)
        epochs, offsets = np.divmod(positions, n)
        out = np.empty(len(positions), np.int64)
        for e in np.unique(epochs).tolist():
            if e not in self._orders:
                self._orders[e] = np.random.default_rng([self.seed, e]).permutation(n)
            pick = epochs == e
            out[pick] = self._orders[e][offsets[pick]]
        return out

    def micro_positions(self, m: int, rank: int | None = None) -> np.ndarray:
        r = self.rank if rank is None else rank
        start = (m * self.world + r) * self.batch_size
        return np.arange(start, start + self.batch_size, dtype=np.int64)

    def step_label_tokens(self, step: int) -> int:
        """Label tokens of optimizer step `step`'s global batch (SFT)."""
        if step not in self._step_labels:
            g = self.global_batch
            self._step_labels[step] = int(self.labels[self.example_at(np.arange(step * g, (step + 1) * g))].sum())
        return self._step_labels[step]

    def train_batch(self, m: int) -> dict:
        """Micro-batch `m` of this rank."""
        index = self.example_at(self.micro_positions(m))
        examples = [self.train[i] for i in index.tolist()]
        if self.objective == "sft":
            batch = chat.collate_sft(examples, self.pad)
            batch["label_tokens"] = torch.tensor(self.step_label_tokens(m // self.accumulate), dtype=torch.long)
            return batch
        batch = chat.collate_preferences(examples, self.pad)
        batch["index"] = torch.from_numpy(index)
        return batch

    # -- held-out and reference batches ----------------------------------------------------------
    def shared_batches(self, split: str) -> Iterator[dict]:
        """This rank's share of the `split` ("train" or "val") examples in batches, round-robin over ranks;
        every rank yields the same number of batches (sharded forwards are collective), padding rows
        ``valid`` 0 (SFT: no labels)."""
        self.prepare()
        examples = self.train if split == "train" else self.val
        per_rank = -(-len(examples) // self.world)
        mine = [self.rank + self.world * k for k in range(per_rank)]
        for b in range(0, per_rank, self.batch_size):
            index = mine[b:b + self.batch_size]
            valid = [i < len(examples) for i in index]
            rows = [examples[i if ok else 0] for i, ok in zip(index, valid)]
            if self.objective == "sft":
                rows = [r if ok else {**r, "labels": [chat.IGNORE_INDEX] * len(r["labels"])} for r, ok in zip(rows, valid)]
                batch = chat.collate_sft(rows, self.pad)
            else:
                batch = chat.collate_preferences(rows, self.pad)
            batch["index"] = torch.tensor([i if ok else -1 for i, ok in zip(index, valid)], dtype=torch.long)
            batch["valid"] = torch.tensor(valid, dtype=torch.bool)
            yield batch

    def train_dataloader(self) -> _TrainLoader:
        self.prepare()
        return _TrainLoader(self)

    def val_dataloader(self) -> list:
        self.prepare()
        return [_Batches(list(self.shared_batches("val")))] if self.val else []

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer is not None and self.trainer.training:
            self._consumed += 1
        return batch

    # -- position and resume ------------------------------------------------------------------------
    @property
    def position(self) -> int:
        """Micro-batches of this rank consumed so far (the next one is number `position`)."""
        return self._consumed if self.trainer is not None else self._yielded

    def _begin_iteration(self) -> int:
        self.prepare()
        start = self.position
        self._consumed = self._yielded = start
        return start

    def fingerprint(self) -> dict:
        """What decides the example stream: the objective, the tokenized examples, the seed."""
        if self._fingerprint is None:
            self._fingerprint = {"objective": self.objective, "examples": len(self.train), "seed": self.seed,
                                 "content": self.content("train")}
        return self._fingerprint

    def content(self, split: str) -> str:
        """A digest of one split's tokenized examples, in order."""
        self.prepare()
        h = hashlib.sha256()
        for ex in self.train if split == "train" else self.val:
            for k in sorted(ex):
                h.update(repr(ex[k]).encode())
        return h.hexdigest()[:16]

    def state_dict(self) -> dict:
        pos = self.position
        return {"position": pos, "examples_consumed": pos * self.world * self.batch_size, "world_size": self.world,
                "batch_size": self.batch_size, "fingerprint": self.fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        saved = state.get("fingerprint", {})
        if saved and saved != self.fingerprint():
            raise ConfigError(f"objective.train={self.cfg.train}: the checkpoint was trained on other examples "
                              f"({saved}) than this run's ({self.fingerprint()}); resume with the same data and seed")
        consumed, per = int(state.get("examples_consumed", 0)), self.world * self.batch_size
        if consumed % per:
            raise ConfigError(f"data.batch_size={self.batch_size}: the checkpoint consumed {consumed} examples, not a "
                              f"multiple of batch_size x world_size = {per}; resume with the batch size and device count "
                              "it was saved with")
        self._consumed = self._yielded = consumed // per

    def mix_report(self) -> dict:
        """For results.json "data": the examples trained on and held out."""
        return {"objective": self.objective, "train_examples": len(self.train), "val_examples": len(self.val),
                "epochs": int(self.cfg.epochs), "global_batch": self.global_batch, "fingerprint": self.fingerprint()}
