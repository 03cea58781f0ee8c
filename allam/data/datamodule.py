"""The LightningDataModule: sources -> cached token shards -> packed blocks -> exact blend -> batches.

Batches are ``torch.LongTensor [batch_size, seq_len + 1]`` (inputs ``x[:, :-1]``, targets
``x[:, 1:]``). Micro-batch ``m`` of rank ``r`` (of ``W``) holds global blend positions
``(m·W + r)·B .. (m·W + r)·B + B - 1``, so ranks read disjoint slices of one global blend and
the order of the blend does not depend on the number of ranks or loader workers.

Resume: the position (micro-batches consumed by training on this rank) is counted in the
``on_before_batch_transfer`` hook, so batches Lightning prefetched but did not train on are not
counted. ``state_dict`` stores it as global blocks consumed plus the data fingerprint; Lightning
saves it in the checkpoint (both as the datamodule's state and as the train loader's state) and
``load_state_dict`` restores it after checking the fingerprint. Every train-loader iterator
starts from the current position, read when the iterator is created (never when the loader is
built), so reading ``trainer.estimated_stepping_batches`` early (Lightning issue 20550) cannot
lose it.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from allam import cache_lock
from allam.config import ConfigError, mix_languages, mix_stages
from allam.config.langs import language
from allam.data.blend import Blend, SourceInfo
from allam.data.fingerprint import check_fingerprint, data_fingerprint
from allam.data.mix import check_repeats, format_mix_table, mix_report
from allam.data.shard_build import build, submit
from allam.data.shards import SourceShards, TokenizerInfo, plan_jobs
from allam.data.source_files import content_fingerprint
from allam.data.sources import source_values

log = logging.getLogger("allam.data")

_PLAN_CHUNK = 64  # micro-batches whose blend positions are computed together


def _is_rank_zero() -> bool:
    try:
        from lightning.pytorch.utilities.rank_zero import rank_zero_only

        return getattr(rank_zero_only, "rank", 0) == 0
    except Exception:  # pragma: no cover
        return True


# --------------------------------------------------------------------------- datasets
class _Gather:
    """Reads blocks (source, block) out of the memory-mapped training shards."""

    def __init__(self, shards: list[SourceShards], block_len: int, split: str = "train"):
        self.shards, self.block_len, self.split = shards, block_len, split
        self._ar = np.arange(block_len, dtype=np.int64)

    def __call__(self, src: np.ndarray, block: np.ndarray) -> np.ndarray:
        out = np.empty((len(src), self.block_len), np.int64)
        for s in np.unique(src).tolist():
            rows = np.nonzero(src == s)[0]
            mm = self.shards[s].tokens(self.split)
            if len(rows) == 1:
                b = int(block[rows[0]]) * self.block_len
                out[rows[0]] = mm[b : b + self.block_len]
            else:
                out[rows] = mm[(block[rows] * self.block_len)[:, None] + self._ar]
        return out


class BlendBatches(IterableDataset):
    """Micro-batches start, start+1, ..., stop-1 of one rank; with loader workers, worker w yields
    every n-th of them (DataLoader interleaves workers round-robin, so the order is unchanged)."""

    def __init__(self, blend: Blend, shards: list[SourceShards], *, batch_size: int, block_len: int,
                 rank: int, world: int, start: int, stop: int):
        self.blend, self.gather = blend, _Gather(shards, block_len)
        self.batch_size, self.rank, self.world = batch_size, rank, world
        self.start, self.stop = start, stop

    def positions(self, m: np.ndarray) -> np.ndarray:
        base = (m.astype(np.int64) * self.world + self.rank) * self.batch_size
        return (base[:, None] + np.arange(self.batch_size, dtype=np.int64)).ravel()

    def batches(self, ms: range) -> Iterator[torch.Tensor]:
        ms_all = np.fromiter(ms, np.int64, len(ms))
        for c in range(0, len(ms_all), _PLAN_CHUNK):
            chunk = ms_all[c : c + _PLAN_CHUNK]
            src, block = self.blend.blocks(self.positions(chunk))
            data = self.gather(src, block).reshape(len(chunk), self.batch_size, -1)
            for i in range(len(chunk)):
                yield torch.from_numpy(data[i])

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.batches(range(self.start + wid, self.stop, nw))


class TrainLoader:
    """The train dataloader: an iterable of micro-batches that resumes from the datamodule's
    position. Exposes state_dict/load_state_dict (Lightning saves them with the fit loop)."""

    def __init__(self, dm: "AllamDataModule"):
        self.dm = dm

    def __len__(self) -> int:
        return self.dm.train_batches

    def __iter__(self) -> Iterator[torch.Tensor]:
        dm = self.dm
        start = dm._begin_iteration()
        ds = BlendBatches(dm.blend, dm._shard_list, batch_size=dm.batch_size, block_len=dm.block_len,
                          rank=dm.rank, world=dm.world, start=start, stop=max(start, dm.train_batches))
        if dm.num_workers > 0:
            it: Any = DataLoader(ds, batch_size=None, num_workers=dm.num_workers,
                                 pin_memory=torch.cuda.is_available(), persistent_workers=False)
        else:
            it = ds
        for batch in it:
            dm._yielded += 1
            yield batch

    def state_dict(self) -> dict:
        return self.dm.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.dm.load_state_dict(state)


class HeldOutBlocks(Dataset):
    """A held-out token stream cut into blocks of seq_len + 1 that overlap by one token, so every
    token after the first is predicted exactly once. The last block is padded with IGNORE
    (-100): those positions are neither inputs that matter (attention is causal) nor scored."""

    IGNORE = -100

    def __init__(self, stream: np.ndarray, seq_len: int, rank: int = 0, world: int = 1):
        self.stream, self.seq_len = stream, seq_len
        self.blocks = max(0, -(-(len(stream) - 1) // seq_len))  # ceil((L - 1) / seq_len)
        # every rank gets the same number of blocks (sharded forwards are collective); the ones
        # past the end are all IGNORE and score nothing
        per_rank = -(-self.blocks // world)
        self.index = rank + world * np.arange(per_rank)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> torch.Tensor:
        out = torch.full((self.seq_len + 1,), self.IGNORE, dtype=torch.long)
        if self.index[i] < self.blocks:
            start = int(self.index[i]) * self.seq_len
            piece = self.stream[start : start + self.seq_len + 1]
            out[: len(piece)] = torch.from_numpy(piece)
        return out


# --------------------------------------------------------------------------- datamodule
class AllamDataModule(L.LightningDataModule):
    """See the module docstring. `cfg` is the `data` config (DataConfig); its stages come checked
    from :func:`allam.config.mix_stages`."""

    def __init__(self, cfg: Any, tokenizer: Any, *, seq_len: int, cache_dir: Path, train_batches: int,
                 seed: Optional[int] = None, max_seq_len: Optional[int] = None, workers: Optional[int] = None,
                 progress: bool = True, world: int = 1):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.seq_len = int(seq_len)
        self.block_len = self.seq_len + 1
        self.cache_dir = Path(cache_dir)
        self.train_batches = int(train_batches)
        self.seed = int(cfg.seed if seed is None else seed)
        self.batch_size = int(cfg.batch_size)
        self.num_workers = int(cfg.num_workers)
        self.workers = workers  # pre-tokenization processes (None: all cores)
        self.progress = progress
        self.sources: dict[str, dict] = {name: source_values(src) for name, src in cfg.sources.items()}
        if not self.sources:
            raise ConfigError("data.sources={}: no data source configured")
        for name, src in self.sources.items():
            language(src["lang"], f"data.sources.{name}.lang")
        if self.seq_len <= 0:
            raise ConfigError(f"model.seq_len={seq_len}: must be positive")
        if max_seq_len is not None and self.seq_len > int(max_seq_len):
            raise ConfigError(f"model.seq_len={self.seq_len}: larger than the model allows (max_position_embeddings={max_seq_len})")
        present = {s["lang"] for s in self.sources.values()}
        self.val_languages = [lang for lang in mix_languages(cfg) if lang in present]  # the mix's order: ar, en
        self.stages = mix_stages(cfg)
        # the ranks the run will train on (the trainer's count replaces it in setup): the mix table and
        # the exhaustion check at prepare() cover every rank's blocks, before any rank is started
        self.rank, self.world = 0, max(1, int(world))
        self._prepared = False
        self._tok: Optional[TokenizerInfo] = None
        self._fingerprint: Optional[dict] = None
        self._consumed = 0  # micro-batches trained on (counted in on_before_batch_transfer)
        self._yielded = 0  # micro-batches handed out by the train loader
        self._report: Optional[dict] = None
        self.shards: dict[str, SourceShards] = {}
        self._shard_list: list[SourceShards] = []
        self.blend: Optional[Blend] = None
        self.prepare_seconds: Optional[float] = None

    # -- building -----------------------------------------------------------------------
    def _tokenizer_info(self) -> TokenizerInfo:
        if self._tok is None:
            self._tok = TokenizerInfo.from_tokenizer(self.tokenizer)
        return self._tok

    def submit(self) -> list[dict]:
        """``data.prepare.executor=slurm`` (task=prepare): submits the build of every missing file
        or hf source as SLURM jobs (:func:`allam.data.shard_build.submit`) and returns what was submitted."""
        tok = self._tokenizer_info()
        jobs = plan_jobs(self.sources, bool(self.cfg.parallel_pairs), tok, self.cache_dir,
                         bool(self.cfg.get("dedup_across_sources", False)))
        return submit(jobs, tok, self.cfg.prepare)

    def prepare(self) -> None:
        """Pre-tokenizes (or reuses the cache), builds the blend and prints the target-vs-realized
        table. Idempotent; raises ConfigError (one line) on bad input before any training."""
        if self._prepared:
            return
        t0 = time.perf_counter()
        tok = self._tokenizer_info()
        jobs = plan_jobs(self.sources, bool(self.cfg.parallel_pairs), tok, self.cache_dir,
                         bool(self.cfg.get("dedup_across_sources", False)))
        say = print if _is_rank_zero() else (lambda *a, **k: None)
        prep = self.cfg.get("prepare") or {}
        workers = self.workers if self.workers is not None else prep.get("workers")
        self.shards = build(jobs, tok, workers=workers, progress=self.progress and _is_rank_zero(), log=say,
                            wait_s=float(self.cfg.get("cache_wait_s", cache_lock.WAIT_S)), wait_log=print,
                            task_bytes=prep.get("task_bytes"))
        self._shard_list = [self.shards[n] for n in self.sources]
        infos = []
        for name, src in self.sources.items():
            sh = self.shards[name]
            nb = sh.blocks("train", self.block_len)
            infos.append(SourceInfo(name, sh.lang, sh.kind, nb, None if src["weight"] is None else float(src["weight"])))
            if nb == 0:
                raise ConfigError(
                    f"data.sources.{name}: {sh.meta['train']['tokens']:,} training tokens, fewer than one block of "
                    f"model.seq_len+1={self.block_len}"
                )
        self.blend = Blend(infos, self.stages, self.seq_len, self.seed)
        self._build_val()
        self.prepare_seconds = time.perf_counter() - t0
        self._make_report(print_table=True)  # raises when a source would be exhausted (allow_repeat=false)
        self._prepared = True

    def _build_val(self) -> None:
        """Held-out text per language: whole documents chosen by their bytes (about
        cfg.val_bytes per language, 0 for all), so every tokenizer is scored on the same text."""
        self._val: dict[str, np.ndarray] = {}
        self.val_info: dict[str, dict[str, int]] = {}
        budget = int(self.cfg.val_bytes)
        for lang in self.val_languages:
            shards = [sh for sh in self._shard_list if sh.lang == lang]
            docs = [sh.val_docs() for sh in shards]
            flat = np.concatenate(docs) if docs else np.zeros((0, 2), np.int64)
            total = int(flat[:, 1].sum()) if len(flat) else 0
            stride = max(1, round(total / budget)) if budget and total > budget else 1
            pieces, first = [], 0
            for sh, d in zip(shards, docs):
                starts = np.concatenate([[0], np.cumsum(d[:, 0])[:-1]]) if len(d) else np.zeros(0, np.int64)
                pick = (np.arange(first, first + len(d)) % stride) == 0  # every stride-th document
                first += len(d)
                toks = sh.tokens("val")
                pieces += [np.asarray(toks[a : a + n], np.int64) for a, n in zip(starts[pick], d[pick, 0])]
                info = self.val_info.setdefault(lang, {"docs": 0, "bytes": 0, "tokens": 0})
                info["docs"] += int(pick.sum())
                info["bytes"] += int(d[pick, 1].sum())
                info["tokens"] += int(d[pick, 0].sum())
            if total == 0:
                log.warning("data: no held-out %s text (validation for %s is empty)", lang, lang)
            self._val[lang] = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)

    # -- Lightning hooks ------------------------------------------------------------------
    def prepare_data(self) -> None:
        self.prepare()

    def setup(self, stage: Optional[str] = None) -> None:
        trainer = self.trainer
        if trainer is not None:
            rank, world = int(trainer.global_rank), int(trainer.world_size)
            if (rank, world) != (self.rank, self.world):
                self.rank, self.world = rank, world
                if self._prepared:
                    self._make_report(print_table=world != 1)
        self.prepare()

    def train_dataloader(self) -> TrainLoader:
        self.prepare()
        return TrainLoader(self)

    def val_dataloader(self) -> list[DataLoader]:
        self.prepare()
        loaders = []
        for lang in self.val_languages:
            # each rank scores its own share of the held-out blocks; CausalLM sums the counts across ranks
            blocks = HeldOutBlocks(self._val[lang], self.seq_len, self.rank, self.world)
            loaders.append(DataLoader(blocks,
                                      batch_size=self.batch_size, shuffle=False, num_workers=0))
        return loaders

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = self.trainer
        if trainer is not None and trainer.training:
            self._consumed += 1
        return batch

    # -- position and resume --------------------------------------------------------------
    def _counting(self) -> bool:
        return self.trainer is not None

    @property
    def position(self) -> int:
        """Micro-batches of this rank consumed so far (the next batch is number `position`)."""
        return self._consumed if self._counting() else self._yielded

    def _begin_iteration(self) -> int:
        self.prepare()
        start = self.position
        self._consumed = self._yielded = start
        return start

    def state_dict(self) -> dict:
        pos = self.position
        return {
            "position": pos,
            "blocks_consumed": pos * self.world * self.batch_size,
            "world_size": self.world,
            "batch_size": self.batch_size,
            "fingerprint": self.fingerprint(),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        if not state_dict:
            return
        check_fingerprint(state_dict.get("fingerprint", {}), self.fingerprint(), bool(self.cfg.allow_fingerprint_change))
        blocks = int(state_dict.get("blocks_consumed", state_dict.get("position", 0)))
        per_step = self.world * self.batch_size
        if blocks % per_step:
            raise ConfigError(
                f"data.batch_size={self.batch_size}: the checkpoint consumed {blocks} blocks, not a multiple of "
                f"batch_size x world_size = {per_step}; resume with the batch size and device count it was saved with"
            )
        self._consumed = self._yielded = blocks // per_step

    # -- fingerprint and mix report ---------------------------------------------------------
    def fingerprint(self) -> dict:
        """Everything that decides the token stream (allam.data.fingerprint.data_fingerprint); kept
        once every source's shards are built (before, it lacks their token counts)."""
        if self._fingerprint is None or len(self._fingerprint["sources"]) != sum(
                "train_tokens" in f for f in self._fingerprint["sources"].values()):
            contents = {name: self.shards[name].meta["content"] if name in self.shards else content_fingerprint(name, src)
                        for name, src in self.sources.items()}
            # the built shards' token counts: a rebuild under other cleaning rules, format or Unicode
            # tables can change them while the raw files (contents) stay the same
            counted = {name: int(sh.meta["train"]["tokens"]) for name, sh in self.shards.items()}
            self._fingerprint = data_fingerprint(self.sources, contents, self.stages,
                                                 parallel_pairs=bool(self.cfg.parallel_pairs), seed=self.seed,
                                                 seq_len=self.seq_len, tokenizer=self._tokenizer_info().hash,
                                                 train_tokens=counted)
        return self._fingerprint

    def total_blocks(self) -> int:
        return self.train_batches * self.world * self.batch_size

    def _make_report(self, print_table: bool) -> dict:
        assert self.blend is not None
        self._report = mix_report(self.blend, self._shard_list, total=self.total_blocks(), batch_size=self.batch_size,
                                  world=self.world, validation=dict(getattr(self, "val_info", {})),
                                  fingerprint=self.fingerprint(), prepare_seconds=self.prepare_seconds)
        check_repeats(self._report, bool(self.cfg.allow_repeat))
        if print_table and _is_rank_zero():
            print(format_mix_table(self._report))
        return self._report

    def mix_report(self) -> dict:
        """Target vs realized tokens per source, epochs, drops, stages (for results.json "data";
        allam.data.mix.mix_report)."""
        self.prepare()
        return self._report if self._report is not None else self._make_report(print_table=False)
