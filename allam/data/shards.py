"""Pre-tokenized, memory-mapped token shards, one folder per source, cached by fingerprint.

A source's folder ``<cache>/<name>-<key>/`` holds ``train.bin`` and ``val.bin`` (raw token ids,
uint16 when the vocabulary fits, else uint32; every document followed by EOS) and ``meta.json``
(counts, per-step drop counts, dtype). ``key`` hashes the source's content fingerprint, its
cleaning options, the pair option and the tokenizer (its serialized model, not the object), so a
changed tokenizer or cleaning option builds a new folder and an unchanged one is reused.

Building them is :mod:`allam.data.shard_build`. ``meta.json`` records each file's size and
the SHA-256 of its first and last MiB; a cached folder is verified against them (and against its
token counts) before use, and a damaged one is named and rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from allam.config import ConfigError
from allam.data.cleaning import Cleaner
from allam.data.source_files import content_fingerprint, reader_key
from allam.data.sources import source_values

FORMAT_VERSION = 4  # 2: documents are [BOS] text EOS; 3: val_docs.npy (tokens, bytes per held-out doc); 4: the
# wrong-script check counts the letters of every script of allam/config/langs.py (shards cleaned by
# the Arabic/Latin-only check are rebuilt, not reused)


# --------------------------------------------------------------------------- tokenizer
@dataclass
class TokenizerInfo:
    """What the pipeline needs from a Hugging Face fast tokenizer."""

    backend: Any  # tokenizers.Tokenizer
    eos_id: int
    vocab_size: int
    hash: str
    dtype: str  # "uint16" | "uint32"
    bos_id: Optional[int] = None  # each document starts with BOS when the tokenizer has one (Llama's format)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> "TokenizerInfo":
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            if hasattr(tokenizer, "encode_batch_fast") or hasattr(tokenizer, "encode_batch"):
                backend = tokenizer  # a raw tokenizers.Tokenizer
            else:
                raise ConfigError(f"tokenizer={type(tokenizer).__name__}: the data pipeline needs a fast (tokenizers-backed) tokenizer")
        eos = getattr(tokenizer, "eos_token_id", None)
        if eos is None:
            raise ConfigError(f"tokenizer={type(tokenizer).__name__}: has no eos token; documents need an EOS boundary")
        try:
            vocab = len(tokenizer)
        except TypeError:
            vocab = backend.get_vocab_size(with_added_tokens=True)
        vocab = max(vocab, backend.get_vocab_size(with_added_tokens=True), int(eos) + 1)
        bos = getattr(tokenizer, "bos_token_id", None)
        bos = int(bos) if bos is not None and bos != eos else None
        h = hashlib.sha256(backend.to_str().encode("utf-8"))
        h.update(f"|eos={int(eos)}|bos={bos}".encode())
        return cls(backend, int(eos), vocab, h.hexdigest(), "uint16" if vocab <= 1 << 16 else "uint32", bos)


# --------------------------------------------------------------------------- shard access
@dataclass
class SourceShards:
    name: str
    lang: str
    kind: str
    path: Path
    meta: dict
    _mm: dict = field(default_factory=dict, repr=False)

    def tokens(self, split: str) -> np.ndarray:
        """Memory-mapped token ids of one split (opened lazily, once per process)."""
        key = (split, os.getpid())
        if key not in self._mm:
            n = self.meta[split]["tokens"]
            f = self.path / f"{split}.bin"
            self._mm[key] = np.memmap(f, dtype=self.meta["dtype"], mode="r", shape=(n,)) if n else np.zeros(0, self.meta["dtype"])
        return self._mm[key]

    def blocks(self, split: str, block_len: int) -> int:
        return self.meta[split]["tokens"] // block_len

    def val_docs(self) -> np.ndarray:
        """[n, 2] int64: tokens and UTF-8 bytes of each held-out document, in shard order."""
        f = self.path / "val_docs.npy"
        return np.load(f) if f.exists() else np.zeros((0, 2), np.int64)

    def __getstate__(self):  # never pickle mapped data (DataLoader workers reopen it)
        d = dict(self.__dict__)
        d["_mm"] = {}
        return d


@dataclass
class ShardJob:
    name: str
    src: dict  # every SourceConfig field, plain values (sources.source_values)
    parallel_pairs: bool
    cleaner: Cleaner
    content: str = ""
    key: str = ""
    path: Optional[Path] = None
    # data.dedup_across_sources: the earlier sources of this language whose kept documents this one
    # drops as duplicates; such a source also records its own kept hashes (hashes.npy) for the later ones
    after: list = field(default_factory=list)
    share_hashes: bool = False

    @property
    def files(self) -> tuple[str, ...]:
        return SHARD_FILES + (("hashes.npy",) if self.share_hashes else ())


def cache_key(job: ShardJob, tok: TokenizerInfo) -> str:
    pairs = bool(job.parallel_pairs and job.src["kind"] == "translated")
    entry = {
        "format": FORMAT_VERSION,
        "content": job.content,
        "cleaning": job.cleaner.options(),
        "pairs": pairs,
        "pair_field": job.src["pair_field"] if pairs else None,
        **({"pair_dedup": "translation"} if pairs else {}),  # paired caches built before it are rebuilt
        **reader_key(job.src),
        "tokenizer": tok.hash,
        "dtype": tok.dtype,
    }
    entry.update(job.cleaner.rules())
    if job.share_hashes:  # only then: the keys of every other cache stay as they were
        entry["dedup_after"] = [j.key for j in job.after]
    return hashlib.sha256(json.dumps(entry, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan_jobs(sources: dict, parallel_pairs: bool, tok: TokenizerInfo, cache_dir: Path,
              dedup_across: bool = False) -> list[ShardJob]:
    """One job per source, in config order. With `dedup_across` (``data.dedup_across_sources``),
    a source with dedup on also drops the documents kept by the earlier such sources of its language."""
    jobs = []
    for name, src in sources.items():
        src = source_values(src)
        job = ShardJob(name, src, parallel_pairs, Cleaner.from_source(src))
        if dedup_across and job.cleaner.dedup:
            job.share_hashes = True
            job.after = [j for j in jobs if j.share_hashes and j.src["lang"] == src["lang"]]
        job.content = content_fingerprint(name, src)
        job.key = cache_key(job, tok)
        job.path = Path(cache_dir) / f"{name}-{job.key}"
        jobs.append(job)
    return jobs


SHARD_FILES = ("train.bin", "val.bin", "val_docs.npy")
ENDS_BYTES = 1 << 20  # the digest of a file covers its first and last MiB: cheap at any size


def file_record(path: Path) -> dict:
    """What meta.json records of one shard file when it is published: its size and the SHA-256 of
    its first and last :data:`ENDS_BYTES` (a truncated file, or one overwritten, fails at load)."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(ENDS_BYTES))
        if size > ENDS_BYTES:
            fh.seek(max(ENDS_BYTES, size - ENDS_BYTES))
            h.update(fh.read())
    return {"bytes": size, "sha256_ends": h.hexdigest()}


def verify(job: ShardJob) -> tuple[Optional[dict], Optional[str]]:
    """(meta, None) when the cached folder is complete and intact; (None, why not) otherwise
    (why is None when there is simply no folder). Checks that meta.json is this job's, that every
    file has the size its token counts imply, and the size and end digests recorded at publish."""
    meta_file = job.path / "meta.json"
    if not meta_file.exists():
        return None, (f"{job.path.name} has no meta.json" if job.path.exists() else None)
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise ValueError(f"a JSON {type(meta).__name__}, not an object")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, f"meta.json is unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    if meta.get("format") != FORMAT_VERSION:
        return None, f"it has format {meta.get('format')}, this code writes {FORMAT_VERSION}"
    try:
        if meta["key"] != job.key:
            return None, f"meta.json belongs to key {meta['key']}, not {job.key}"
        itemsize = np.dtype(meta["dtype"]).itemsize
        expected = {f"{split}.bin": int(meta[split]["tokens"]) * itemsize for split in ("train", "val")}
    except (KeyError, TypeError, ValueError) as exc:
        return None, f"meta.json lacks or garbles {exc}"
    records = meta.get("files") or {}
    for name in job.files:
        f = job.path / name
        if not f.exists():
            return None, f"{name} is missing"
        size = f.stat().st_size
        for want, what in ((records.get(name, {}).get("bytes"), "its size"), (expected.get(name), "its token count")):
            if want is not None and size != want:
                return None, f"{name} has {size:,} bytes, meta.json says {want:,} ({what})"
        if name in records and file_record(f)["sha256_ends"] != records[name].get("sha256_ends"):
            return None, f"{name} does not match the checksum recorded when it was written"
    return meta, None


def _differs(mine: Path, theirs: Path) -> Optional[str]:
    """How two builds of one source differ (token and document counts, file sizes and digests), or None."""
    a, b = (json.loads((p / "meta.json").read_text(encoding="utf-8")) for p in (mine, theirs))
    for split in ("train", "val"):
        for k in ("tokens", "docs"):
            if a[split][k] != b[split][k]:
                return f"{split} {k}: {a[split][k]:,} here, {b[split][k]:,} in {b.get('built_by', 'the other build')}"
    for name in a["files"]:
        if a["files"][name] != b["files"].get(name):
            return f"{name}: {a['files'][name]} here, {b['files'][name]} there"
    return None


def load(job: ShardJob) -> Optional[SourceShards]:
    """The cached shards of `job` when the folder is complete and intact (:func:`verify`), else None."""
    meta, _ = verify(job)
    return None if meta is None else SourceShards(job.name, job.src["lang"], job.src["kind"], job.path, meta)
