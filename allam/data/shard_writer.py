"""Writing one source's shard files (allam.data.shard_build builds them): the documents in batches,
each batch appended to ``train.bin`` / ``val.bin`` in reading order with exact duplicates dropped
and the counts kept, and the check that the source's declared language matches its script."""
from __future__ import annotations

import io
import itertools
from typing import Optional

import numpy as np

from allam.config import ConfigError
from allam.config.langs import language
from allam.data.cleaning import DROP_STEPS, Cleaner, HashSet, doc_hash

BATCH_DOCS = 256
BATCH_CHARS = 1 << 20
SCRIPT_MISMATCH_SHARE = 0.5  # more than this share of a source's documents in the wrong script: an error


def batches(docs):
    """(texts, pair texts, splits) of consecutive documents, BATCH_DOCS or BATCH_CHARS at most."""
    texts, pairs, splits, chars = [], [], [], 0
    for d in docs:
        texts.append(d.text)
        pairs.append(d.pair)
        splits.append(d.split)
        chars += len(d.text)
        if len(texts) >= BATCH_DOCS or chars >= BATCH_CHARS:
            yield texts, pairs, splits
            texts, pairs, splits, chars = [], [], [], 0
    if texts:
        yield texts, pairs, splits


class ShardWriter:
    """Appends the processed batches of one source to its ``train.bin`` / ``val.bin`` in reading
    order: drops exact duplicates, counts documents, tokens, bytes and drops per step, and keeps
    (tokens, bytes) of every held-out document (``val_docs.npy``)."""

    def __init__(self, job, folder, bar):
        self.job, self.folder, self.bar = job, folder, bar
        self.stats = {"docs_read": 0, "drops": {k: 0 for k in DROP_STEPS},
                      "train": {"docs": 0, "tokens": 0, "bytes": 0}, "val": {"docs": 0, "tokens": 0, "bytes": 0}}
        self.seen = HashSet()
        self.kept_hashes: list[np.ndarray] = []  # written as hashes.npy when the job shares them
        self.val_docs: list[np.ndarray] = []
        self.files = {"train": open(folder / "train.bin", "wb"), "val": open(folder / "val.bin", "wb")}

    def add(self, splits: list[str], res) -> None:
        """One batch: its documents' splits and what :func:`process_batch` returned for it."""
        kept, lens, flat, hashes, nbytes, drops = res
        n = len(splits)
        self.stats["docs_read"] += n
        for k, v in drops.items():
            self.stats["drops"][k] += v
        is_val = np.fromiter((splits[k] == "val" for k in kept.tolist()), bool, len(kept))
        self.add_kept(is_val, lens, flat, hashes, nbytes)
        self.bar.update(n, self.stats["train"]["tokens"] + self.stats["val"]["tokens"])

    def add_kept(self, is_val: np.ndarray, lens: np.ndarray, flat: np.ndarray, hashes: np.ndarray,
                 nbytes: np.ndarray) -> None:
        """Documents that cleaning kept, in reading order: whether each is held out, its tokens
        (``lens``, concatenated in ``flat``), its hash (empty: no dedup) and its UTF-8 bytes.
        Drops those seen before and appends the rest to their split's file."""
        stats = self.stats
        keep = self.seen.first_seen(hashes) if len(hashes) else np.ones(len(lens), bool)
        stats["drops"]["duplicate"] += int((~keep).sum())
        if getattr(self.job, "share_hashes", False):
            self.kept_hashes.append(hashes[keep])
        for split, sel in (("train", keep & ~is_val), ("val", keep & is_val)):
            if not sel.any():
                continue
            toks = flat if sel.all() else flat[np.repeat(sel, lens)]
            # through Python's buffered file: a full disk raises OSError(ENOSPC) here or at close
            # (ndarray.tofile raises an OSError without an errno, and can lose a short write silently)
            self.files[split].write(memoryview(np.ascontiguousarray(toks)).cast("B"))
            stats[split]["docs"] += int(sel.sum())
            stats[split]["tokens"] += int(toks.shape[0])
            stats[split]["bytes"] += int(nbytes[sel].sum())
            if split == "val":
                self.val_docs.append(np.stack([lens[sel], nbytes[sel]], axis=1))

    def close(self, bad_utf8: int, bad_json: int = 0) -> dict:
        """Closes the files, writes ``val_docs.npy`` and returns the final counts."""
        for fh in self.files.values():
            fh.close()
        buf = io.BytesIO()  # np.save to a file writes with ndarray.tofile, which can lose bytes on a full disk
        np.save(buf, np.concatenate(self.val_docs) if self.val_docs else np.zeros((0, 2), np.int64))
        with open(self.folder / "val_docs.npy", "wb") as fh:
            fh.write(buf.getbuffer())
        if getattr(self.job, "share_hashes", False):
            buf = io.BytesIO()
            np.save(buf, np.concatenate(self.kept_hashes) if self.kept_hashes else np.zeros(0, np.uint64))
            with open(self.folder / "hashes.npy", "wb") as fh:
                fh.write(buf.getbuffer())
        self.stats["drops"]["bad_utf8"] = bad_utf8
        self.stats["drops"]["bad_json"] = bad_json
        return self.stats

    def abort(self) -> None:
        for fh in self.files.values():
            try:
                fh.close()
            except OSError:  # flushing the buffer of a full disk fails again: the folder is removed anyway
                pass


def check_script(job, stats: dict) -> None:
    """One line when more than SCRIPT_MISMATCH_SHARE of a source's documents are mostly not in the
    declared language's script. Checked on the whole source, once read: one process and the engine
    (whose merge replays parts, not batches) then refuse the same sources, and a corpus sorted by
    language is judged on all of it, not on its first batches."""
    read = stats["docs_read"]
    wrong = stats["drops"]["wrong_script"]
    if read and wrong / read > SCRIPT_MISMATCH_SHARE:
        lang = language(job.src["lang"])
        raise ConfigError(  # the script they are in is not counted: "not" the language's own is what is known
            f"data.sources.{job.name}.lang={lang.code}: {wrong:,} of {read:,} documents are mostly not "
            f"{'/'.join(lang.scripts)} script; "
            f"check the declared language (or raise max_wrong_script)"
        )


WORKER: dict = {}  # set before tokenizing (in the parent before forking): tokenizer backend, eos, bos, dtype, cleaners


def process_batch(job_idx: int, texts: list[str], pairs: list[Optional[str]]):
    """Clean and tokenize one batch. Returns kept indices, token counts (with EOS), flat tokens
    (EOS after each document), hashes, UTF-8 byte counts and drop counts."""
    cleaner: Cleaner = WORKER["cleaners"][job_idx]
    cleaned, reasons = cleaner.clean_batch(texts, pairs if any(p is not None for p in pairs) else None)
    kept = [i for i, c in enumerate(cleaned) if c is not None]
    out: list[str] = [cleaned[i] for i in kept]  # type: ignore[misc]
    drops: dict[str, int] = {}
    for why in reasons:
        if why is not None:
            drops[why] = drops.get(why, 0) + 1
    dtype = np.dtype(WORKER["dtype"])
    if not out:
        z = np.zeros(0, np.int64)
        return np.asarray(kept, np.int64), z, np.zeros(0, dtype), np.zeros(0, np.uint64), z, drops
    # a paired document is "original, blank line, translation" (cleaning leaves no other blank line):
    # its translation alone is hashed, as the held-out (never paired) documents are, so a held-out
    # document repeated in training, or one translation paired with two originals, is a duplicate
    hashes = (np.fromiter((doc_hash(t.rpartition("\n\n")[2]) for t in out), np.uint64, len(out)) if cleaner.dedup
              else np.zeros(0, np.uint64))
    nbytes = np.fromiter((len(t.encode("utf-8")) for t in out), np.int64, len(out))
    backend = WORKER["backend"]
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # no offsets: faster
    ids = [e.ids for e in encode(out, add_special_tokens=False)]
    bos = WORKER.get("bos")
    marks = 1 if bos is None else 2  # [BOS] text EOS
    lens = np.fromiter(map(len, ids), np.int64, len(ids)) + marks
    flat = np.empty(int(lens.sum()), dtype)
    ends = np.cumsum(lens)
    eos_pos = ends - 1
    body = np.ones(flat.shape[0], bool)
    body[eos_pos] = False
    if bos is not None:
        body[ends - lens] = False
        flat[ends - lens] = bos
    flat[body] = np.fromiter(itertools.chain.from_iterable(ids), dtype, flat.shape[0] - marks * len(ids))
    flat[eos_pos] = WORKER["eos"]
    return np.asarray(kept, np.int64), lens, flat, hashes, nbytes, drops
