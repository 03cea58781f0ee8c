"""The data group's typed schema (`data`: sources, the language mix, stages, preparation), part of
:mod:`allam.config.schema` (which re-exports every name here)."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Optional

from omegaconf import MISSING

from allam.config.strenum import StrEnum


class SourceKind(StrEnum):
    natural = "natural"
    translated = "translated"


READER = {"role": "reader"}  # decides which documents a source yields (with its content)
CLEANING = {"role": "cleaning"}  # decides how each document is cleaned
HOLD_OUT = {"role": "hold_out"}  # decides which documents are validation text


@dataclass
class SourceConfig:
    """One data source. `loader`: demo | text | jsonl | parquet | hf.

    Each field's role (metadata) says what it decides: ``reader`` fields choose the documents,
    ``cleaning`` fields how they are cleaned. The cleaner and the reader part of the shard cache
    key come from these roles (:func:`source_fields`); the data fingerprint takes every field; a
    new hold-out option also needs allam.data.holdout's rule key.
    """

    # ISO 639-1 code of a language in allam/config/langs.py (ar, en, hi, fa, ko, ...); the cleaner's
    # script checks depend on it
    lang: str = field(default=MISSING, metadata=CLEANING)
    kind: SourceKind = SourceKind.natural
    loader: str = field(default="demo", metadata=READER)
    path: Optional[str] = field(default=None, metadata=READER)  # demo source name, file path / glob, or HF dataset name
    text_field: str = field(default="text", metadata=READER)
    split: Optional[str] = field(default=None, metadata=READER)  # HF datasets split
    weight: Optional[float] = None  # relative weight within its (lang, kind) stream; None: by size
    nfc: bool = field(default=True, metadata=CLEANING)  # Unicode NFC normalization
    strip_diacritics: bool = field(default=False, metadata=CLEANING)
    strip_tatweel: bool = field(default=False, metadata=CLEANING)
    strip_bidi: bool = field(default=False, metadata=CLEANING)
    min_chars: int = field(default=20, metadata=CLEANING)
    # drop a document whose share of the other script's letters exceeds this
    max_wrong_script: float = field(default=0.5, metadata=CLEANING)
    dedup: bool = field(default=True, metadata=CLEANING)
    # False: a non-UTF-8 file is an error naming file and byte offset
    skip_bad_utf8: bool = field(default=False, metadata=READER)
    # False: a JSONL line that is not JSON is an error naming file and line; True: skipped, counted
    # (drops.bad_json) and the first few named in the log
    skip_bad_json: bool = field(default=False, metadata=READER)
    # translated jsonl/parquet/hf sources: field with the English original (parallel_pairs)
    pair_field: Optional[str] = field(default=None, metadata={"role": "pairs"})
    # validation hold-out of a file or hf source (None: data.val_fraction and the source's part of
    # data.val_cap_bytes, filled in by validate); demo sources keep their held-out books
    val_fraction: Optional[float] = field(default=None, metadata=HOLD_OUT)
    val_max_bytes: Optional[int] = field(default=None, metadata=HOLD_OUT)


def source_fields(role: str) -> tuple[str, ...]:
    """SourceConfig's fields with this role ("reader" or "cleaning"), in declaration order."""
    return tuple(f.name for f in fields(SourceConfig) if f.metadata.get("role") == role)


def source_defaults() -> dict[str, Any]:
    """Every SourceConfig field's default (lang has none)."""
    return {f.name: f.default for f in fields(SourceConfig) if f.default is not MISSING}


@dataclass
class StageConfig:
    tokens: Optional[int] = None  # None: until the end of training (last stage only)
    ar_ratio: Optional[float] = None  # as data.ar_ratio, for this stage
    translated_share: Optional[float] = None
    mix: dict[str, Optional[float]] = field(default_factory=dict)  # as data.mix, for this stage


class PrepareExecutor(StrEnum):
    local = "local"
    slurm = "slurm"


@dataclass
class PrepareConfig:
    """`data.prepare`: how a large file or hf source's shards are built (allam/data/engine.py)."""

    # local: datatrove's local executor, one task per core; slurm: task=prepare submits job arrays
    # (a training run that finds shards missing builds them locally, unless SLURM jobs are
    # building them: then it stops with one line naming the jobs)
    executor: PrepareExecutor = PrepareExecutor.local
    # a text/jsonl/parquet/hf source larger than this is split into tasks of about this many bytes
    # (text and jsonl at line boundaries, parquet by whole files, hf by row ranges of its Arrow
    # files; on one machine smaller, about 4 per process, at least 16 MiB); smaller sources: one
    # process and a pool
    task_bytes: int = 256 << 20
    workers: Optional[int] = None  # local tasks at once (None: every core this process may use)
    slurm_partition: Optional[str] = None  # required with executor=slurm
    slurm_time: str = "24:00:00"  # per task
    slurm_cpus_per_task: int = 1
    slurm_mem_per_cpu_gb: int = 4
    slurm_max_parallel: Optional[int] = None  # tasks of one array running at once (None: no limit)
    slurm_env_command: Optional[str] = None  # run before each task, e.g. "source /shared/venv/bin/activate"
    slurm_sbatch_args: dict[str, Any] = field(default_factory=dict)  # extra #SBATCH options, e.g. {account: x}


@dataclass
class DataConfig:
    """Group `data`: sources and the language mix."""

    name: str = "demo"
    # name -> SourceConfig. Typed Any so a source can be added from the command line
    # (`+data.sources.NAME={lang: ar, loader: jsonl, path: ...}`); validate() checks each entry
    # against SourceConfig and fills its defaults.
    sources: dict[str, Any] = field(default_factory=dict)
    # fraction of training tokens that are Arabic, with data.mix empty (None: 0.45, the paper's);
    # refused when a mix table or data.stages gives the shares
    ar_ratio: Optional[float] = None
    # share of training tokens per language, e.g. {hi: 0.45, en: null}: null (at most one) takes
    # the rest, else the shares sum to 1; empty: {ar: ar_ratio, en: the rest}. A share the table
    # names is one override (data.mix.hi=0.3); a language it lacks, or a table for data=demo, takes
    # a + (+data.mix.ko=0.2, +data.mix={ar:0.3,hi:0.2,en:null}); a table merges into one already set;
    # data.mix=null clears a preset's table (e.g. to give data.stages their own). The blend splits
    # the languages in a fixed order whatever the table's: the targets by code, then English
    mix: Optional[dict[str, Optional[float]]] = field(default_factory=dict)
    # fraction of each target language's tokens (every language but English) from translated
    # sources; None: by size
    translated_share: Optional[float] = None
    stages: list[StageConfig] = field(default_factory=list)  # empty: one stage with mix/ar_ratio/translated_share
    parallel_pairs: bool = False  # emit translated documents as aligned English+Arabic pairs
    batch_size: int = 8  # sequences per device per step
    num_workers: int = 0
    # held-out text scored per language, as whole documents chosen by bytes, so runs with different
    # tokenizers are scored on the same text (0: all held-out text)
    val_bytes: int = 65536
    # the hold-out of file and hf sources: this fraction of their chapters (50 documents each) is
    # validation text, never trained on (0.05: the second chapter of every 20) ...
    val_fraction: float = 0.05
    # ... until a language's held-out raw bytes reach this cap (None: no cap), shared equally among
    # its file and hf sources; later chapters train. At 3T tokens 5% would hold out 150B.
    # Demo sources keep their held-out books (the evaluation tasks are built from them).
    val_cap_bytes: Optional[int] = None
    allow_repeat: bool = True  # a source may be repeated (epochs > 1) to meet its quota
    # exact dedup across the sources of one language too: a source (with dedup on) drops the
    # documents kept by the sources before it in data.sources (false: each source on its own)
    dedup_across_sources: bool = False
    seed: int = 1234
    allow_fingerprint_change: bool = False  # resume even if the data fingerprint differs from the checkpoint's
    # a rank waiting for another process (this host or another) to train a tokenizer or build a
    # source's shards gives up after this many seconds, with one line naming the holder (allam/cache_lock.py)
    cache_wait_s: float = 21600.0
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
