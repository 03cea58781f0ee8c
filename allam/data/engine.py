"""Building one large source's shards in parallel tasks, on Hugging Face datatrove's executors.

A file source (text, jsonl, parquet) larger than ``data.prepare.task_bytes`` is cut into pieces:
consecutive byte ranges of its files, each starting at a line boundary (parquet: whole files).
An ``hf`` source whose dataset lies in Arrow files (a ``save_to_disk`` folder, or a dataset
``load_dataset`` has cached) is cut into consecutive row ranges of about ``task_bytes`` of those files.
Three stages then make exactly the folder that reading the source in one process makes:

1. **count** (one task per piece): reads the piece as the source's reader does and records how
   many documents and lines it holds (and, under a hold-out cap, each document's raw bytes);
2. **tokenize** (one task per piece): from the counts, the piece knows the source-wide index of its
   first document and the last held-out chapter the cap allows, so it splits, cleans and tokenizes
   its documents exactly as the whole-source reader would, and writes a part: the kept documents'
   tokens in reading order, with each one's split, token count, UTF-8 bytes and hash;
3. **merge** (one task): replays the parts in piece order through the one-process writer
   (:class:`allam.data.shard_writer.ShardWriter`): exact dedup across the whole source, the
   train/val files, the counts; then the same checks, ``meta.json`` and publish as any build.

Stages 1 and 2 run (:mod:`allam.data.engine_run`) on datatrove's ``LocalPipelineExecutor`` (every
core of this machine, one task per process) or ``SlurmPipelineExecutor`` (a job array per stage, each depending on the one
before; the merge is a one-task job). datatrove records completed tasks, so a run cut short
resumes with the tasks left: a local run keeps its logs and completion marks in
``<cache>/.prepare-<key>.logs`` (:func:`allam.data.engine_run.logs_folder`, removed after the
merges), a SLURM build under ``<work>/logs``. The work folder ``<cache>/<name>-<key>.work/``
holds the plan, the counts and the parts; once the shards are published a local build removes
it, and a SLURM merge job leaves only its ``logs/`` and ``slurm/``.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from allam.config import RunFailed
from allam.data.holdout import CHAPTER_DOCS, _fraction, chapter_is_val
from allam.data.shard_writer import WORKER, batches, process_batch
from allam.data.source_files import dataset_bytes, hf_dataset, resolve_files, source_bytes
from allam.data.sources import Piece, Rows, Span, read_documents, read_texts

SPLITTABLE = ("text", "jsonl", "parquet", "hf")  # demo sources (and hf datasets held in memory) are read by one task
SUBMITTED = "submitted.json"  # in the work folder while SLURM jobs build the source
MERGE_DOCS = 1 << 16  # documents per chunk when a part is replayed
PIECES_PER_WORKER = 4  # on one machine, a large source is cut into about this many pieces per process ...
MIN_LOCAL_PIECE = 16 << 20  # ... of at least this many bytes


# --------------------------------------------------------------------------- planning
def _line_start(path: Path, pos: int, size: int) -> int:
    """The first line boundary at or after byte `pos`."""
    if pos <= 0:
        return 0
    if pos >= size:
        return size
    with open(path, "rb") as fh:
        fh.seek(pos - 1)
        fh.readline()
        return min(fh.tell(), size)


def plan_pieces(name: str, src: Any, task_bytes: int) -> list[list[Any]]:
    """The pieces of a file source, each about `task_bytes` of its files in reading order (text and
    jsonl files are cut at line boundaries; parquet files are not cut), or of an hf source, each
    one row range (:func:`_row_pieces`). One piece for a source no larger than `task_bytes`; none
    for demo sources and in-memory datasets (not splittable)."""
    if src["loader"] not in SPLITTABLE:
        return []
    if src["loader"] == "hf":
        return _row_pieces(name, src, task_bytes)
    cut = src["loader"] != "parquet"
    pieces: list[list[Any]] = []
    cur: list[Span] = []
    room = task_bytes
    for f in resolve_files(name, src):
        size, pos = f.stat().st_size, 0
        while pos < size or (size == 0 and pos == 0):
            if size - pos <= room or not cut:
                cur.append(Span(f, pos, None))
                room -= size - pos
                pos = size
                if size == 0:
                    break
                if room <= 0:
                    pieces.append(cur)
                    cur, room = [], task_bytes
                continue
            end = _line_start(f, pos + room, size)
            cur.append(Span(f, pos, None if end >= size else end))
            pos = end
            pieces.append(cur)
            cur, room = [], task_bytes
    if cur:
        pieces.append(cur)
    return pieces


def _row_pieces(name: str, src: Any, task_bytes: int) -> list[list[Rows]]:
    """Consecutive row ranges of an hf source's dataset, each about `task_bytes` of its Arrow files
    (rows counted as equal in size); none when the dataset has no files."""
    ds = hf_dataset(name, src)
    size, n = dataset_bytes(ds), len(ds)
    if size is None:
        return []
    step = max(1, n * task_bytes // max(size, 1)) if size > task_bytes else max(n, 1)
    return [[Rows(a, min(a + step, n))] for a in range(0, n, step)] or [[Rows(0, 0)]]


def _describe(span: Any) -> list:
    return ["rows", span.start, span.end] if isinstance(span, Rows) else [str(span.path), span.start, span.end]


@dataclass
class Plan:
    """What every task of one source's build needs (pickled into each task by datatrove)."""

    job: Any  # allam.data.shards.ShardJob
    tok: Any  # allam.data.shards.TokenizerInfo
    pieces: list  # list[list[Span]] (hf: list[list[Rows]])
    work: Path
    task_bytes: int
    extra: dict = field(default_factory=dict)

    @property
    def capped(self) -> bool:
        return self.job.src.get("val_max_bytes") is not None

    def describe(self) -> dict:
        return {"source": self.job.name, "key": self.job.key, "task_bytes": self.task_bytes,
                "pieces": [[_describe(s) for s in p] for p in self.pieces]}


def piece_bytes(size: int, task_bytes: int, workers: Optional[int]) -> int:
    """The size of a piece of a source of `size` bytes: `task_bytes`, or on this machine (`workers`
    processes) smaller, down to :data:`MIN_LOCAL_PIECE`, so that each process gets about
    :data:`PIECES_PER_WORKER` pieces and none waits long for the last one."""
    if workers is None or size <= task_bytes:
        return task_bytes
    return min(task_bytes, max(MIN_LOCAL_PIECE, -(-size // (PIECES_PER_WORKER * workers))))


def splits(job: Any, task_bytes: int) -> bool:
    """Whether `job` is a file or hf source larger than `task_bytes` (built in pieces)."""
    return job.src["loader"] in SPLITTABLE and (source_bytes(job.name, job.src) or 0) > task_bytes


def make_plan(job: Any, tok: Any, task_bytes: int, min_pieces: int = 2, workers: Optional[int] = None) -> Optional[Plan]:
    """The plan of `job` when it splits into at least `min_pieces` pieces, else None (one process
    builds it); `workers`: the local processes that will run it (:func:`piece_bytes`). Its work
    folder is made (or kept, when it holds this same plan: a resumed build)."""
    size = source_bytes(job.name, job.src) if job.src["loader"] in SPLITTABLE else None
    if size is None:
        return None
    task_bytes = piece_bytes(size, task_bytes, workers)
    pieces = plan_pieces(job.name, job.src, task_bytes)
    if len(pieces) < max(1, min_pieces):
        return None
    plan = Plan(job, tok, pieces, work_folder(job), task_bytes)
    desc = plan.work / "plan.json"
    if plan.work.exists():
        try:
            same = json.loads(desc.read_text(encoding="utf-8")) == plan.describe()
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(plan.work, ignore_errors=True)
    if not plan.work.exists():
        tmp = plan.work.with_name(plan.work.name + f".{os.getpid()}.tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "plan.json").write_text(json.dumps(plan.describe(), indent=1))
        try:
            os.replace(tmp, plan.work)
        except OSError:  # another builder made it first
            shutil.rmtree(tmp, ignore_errors=True)
    return plan


def work_folder(job: Any) -> Path:
    """Where the tasks of `job`'s build keep their plan, counts, parts and logs."""
    return job.path.with_name(job.path.name + ".work")


def record_submission(plan: Plan, sub: dict, final: bool = False) -> None:
    """Notes in the work folder that SLURM jobs are building this source (``submitted.json``; the
    merge job's :func:`clear_work` removes it), so nothing else starts a second build meanwhile.
    Written before submitting (no job ids yet) and again after (`final`: only while the first note
    is there, so jobs that finished at once leave none behind)."""
    import datetime
    import socket

    if final and not (plan.work / SUBMITTED).exists():
        return
    _write_json(plan.work / SUBMITTED, {**sub, "at": datetime.datetime.now().isoformat(timespec="seconds"),
                                        "by": f"host {socket.gethostname()} pid {os.getpid()}"})


def submitted(job: Any) -> Optional[dict]:
    """The SLURM submission recorded for `job`'s build (:func:`record_submission`), if any."""
    try:
        return json.loads((work_folder(job) / SUBMITTED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def pending_error(job: Any, sub: dict) -> str:
    """One line for a build that would start while SLURM jobs are building the same source."""
    j = sub.get("jobs") or {}
    return (f"data.sources.{job.name}: its shards are being built by SLURM jobs submitted {sub.get('at', '?')} "
            f"(count {j.get('count')}, tokenize {j.get('tokenize')}, merge {j.get('merge')}; work folder "
            f"{work_folder(job)}); run again once merge job {j.get('merge')} has finished, or, if those jobs "
            f"are gone, delete {work_folder(job) / SUBMITTED} to build the shards afresh")


def clear_work(plan: Any, keep_logs: bool = False) -> None:
    """Removes the work folder of `plan` (a Plan, or the folder) once the shards are published
    (`keep_logs`: all but datatrove's and SLURM's logs, which a SLURM job is still writing to;
    without plan.json a new build starts afresh)."""
    work = plan.work if isinstance(plan, Plan) else Path(plan)
    if not keep_logs:
        shutil.rmtree(work, ignore_errors=True)
        return
    for p in work.iterdir() if work.exists() else []:
        if p.name not in ("logs", "slurm"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def _newlines(span: Span) -> int:
    n, pos = 0, span.start
    with open(span.path, "rb") as fh:
        fh.seek(pos)
        while span.end is None or pos < span.end:
            block = fh.read(1 << 22 if span.end is None else min(1 << 22, span.end - pos))
            if not block:
                break
            n += block.count(b"\n")
            pos += len(block)
    return n


def _progress_writer(plan: Plan, stage: str, rank: int, read: list[int], counts: Optional[list[int]] = None):
    """Writes the bytes this task has read (and, tokenizing, its documents and tokens) to a small
    file at most once a second; the local runner shows their sums."""
    path = plan.work / "progress" / f"{stage}-{rank:05d}"
    path.parent.mkdir(exist_ok=True)
    last = [0.0]

    def tick(final: bool = False) -> None:
        now = time.monotonic()
        if final or now - last[0] >= 1.0:
            last[0] = now
            path.write_text(" ".join(map(str, [read[0], *(counts or [0, 0])])))
    return tick


# --------------------------------------------------------------------------- the steps
def count_piece(plan: Plan, rank: int) -> dict:
    """Stage 1 for piece `rank`: its documents and, per span, its lines; under a cap, each
    document's raw UTF-8 bytes (``bytes-<rank>.npy``). Written to ``counts/<rank>.json``."""
    job, spans = plan.job, plan.pieces[rank]
    read = [0]
    tick = _progress_writer(plan, "count", rank, read)
    sizes: list[int] = []
    n = 0
    for text, _ in read_texts(job.name, job.src, job.parallel_pairs, [0], read, [] if job.src.get("skip_bad_json") else None,
                              spans):
        n += 1
        if plan.capped:
            sizes.append(len(text.encode("utf-8")))
        if n % 4096 == 0:
            tick()
    tick(final=True)
    out = {"docs": n, "lines": [_newlines(s) if isinstance(s, Span) else 0 for s in spans]}
    (plan.work / "counts").mkdir(exist_ok=True)
    if plan.capped:
        np.save(plan.work / "counts" / f"bytes-{rank:05d}.npy", np.asarray(sizes, np.int64))
    _write_json(plan.work / "counts" / f"{rank:05d}.json", out)
    return out


def _counts(plan: Plan) -> list[dict]:
    out = []
    for i in range(len(plan.pieces)):
        f = plan.work / "counts" / f"{i:05d}.json"
        if not f.exists():
            raise RunFailed(f"data.sources.{plan.job.name}: piece {i} has not been counted ({f} is missing); run the "
                            "same command again")
        out.append(json.loads(f.read_text(encoding="utf-8")))
    return out


def last_val_chapter(plan: Plan, counts: list[dict]) -> Optional[int]:
    """Under a cap, the last chapter held out: chapters are held out by the rule while the held-out
    raw bytes before them are under the cap (the same test the whole-source reader makes)."""
    src = plan.job.src
    if not plan.capped:
        return None
    fraction, cap = _fraction(src.get("val_fraction")), int(src["val_max_bytes"])
    held, last, first = 0, -1, 0
    for i, c in enumerate(counts):
        sizes = np.load(plan.work / "counts" / f"bytes-{i:05d}.npy") if c["docs"] else np.zeros(0, np.int64)
        idx = first
        while idx < first + c["docs"]:
            chapter = idx // CHAPTER_DOCS
            stop = min((chapter + 1) * CHAPTER_DOCS, first + c["docs"])
            if idx % CHAPTER_DOCS == 0 and chapter_is_val(chapter, fraction):
                if held >= cap:
                    return last
                last = chapter
            if chapter == last:
                held += int(sizes[idx - first:stop - first].sum())
            idx = stop
        first += c["docs"]
    return last


def count_summary(plan: Plan) -> dict:
    """Documents and lines of every piece and the cap's last held-out chapter (None: no cap), read
    from the counts once and kept in ``counts/summary.json``: a tokenize task then reads one small
    file instead of every piece's counts and byte sizes (the whole source's, in each of thousands
    of tasks at paper scale). Tasks that start together may each write it; they write the same."""
    f = plan.work / "counts" / "summary.json"
    if f.exists():
        return json.loads(f.read_text(encoding="utf-8"))
    counts = _counts(plan)
    out = {"docs": [c["docs"] for c in counts], "lines": [c["lines"] for c in counts],
           "last_val_chapter": last_val_chapter(plan, counts)}
    _write_json(f, out)
    return out


def piece_of(plan: Plan, rank: int, summary: dict) -> Piece:
    """Piece `rank` with its first document's index, its spans' first lines and the cap's last
    chapter (from :func:`count_summary`)."""
    first_doc = sum(summary["docs"][:rank])
    lines: dict[str, int] = {}
    for p, counted in zip(plan.pieces[:rank], summary["lines"][:rank]):
        for s, n in zip(p, counted):
            if isinstance(s, Span):
                lines[str(s.path)] = lines.get(str(s.path), 0) + n
    spans = [Span(s.path, s.start, s.end, lines.get(str(s.path), 0)) if isinstance(s, Span) else s
             for s in plan.pieces[rank]]
    return Piece(spans, first_doc, summary["last_val_chapter"])


def tokenize_piece(plan: Plan, rank: int) -> dict:
    """Stage 2 for piece `rank`: its documents split, cleaned and tokenized in this process, written
    as a part (``parts/<rank>/``: ``tokens.bin``, ``docs.npy`` [split, tokens, bytes], ``hashes.npy``,
    ``stats.json``), renamed into place when complete."""
    job, tok = plan.job, plan.tok
    piece = piece_of(plan, rank, count_summary(plan))
    final = plan.work / "parts" / f"{rank:05d}"
    tmp = final.with_name(final.name + f".{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    saved = dict(WORKER)  # with one worker, datatrove runs the task in the calling process
    WORKER.clear()
    WORKER.update(backend=tok.backend, eos=tok.eos_id, bos=tok.bos_id, dtype=tok.dtype, cleaners={0: job.cleaner})
    bad, bad_json, read, counts = [0], [], [0], [0, 0]
    tick = _progress_writer(plan, "tokenize", rank, read, counts)
    stats = {"docs_read": 0, "drops": {}, "bad_utf8": 0, "bad_json": []}
    docs, hashes = [], []
    try:
        with open(tmp / "tokens.bin", "wb") as fh:
            for texts, pairs, splits in batches(read_documents(job.name, job.src, job.parallel_pairs, bad, read, bad_json,
                                                               piece)):
                kept, lens, flat, h, nbytes, drops = process_batch(0, texts, pairs)
                stats["docs_read"] += len(texts)
                for k, v in drops.items():
                    stats["drops"][k] = stats["drops"].get(k, 0) + v
                is_val = np.fromiter((splits[k] == "val" for k in kept.tolist()), np.int64, len(kept))
                docs.append(np.stack([is_val, lens, nbytes], axis=1))
                hashes.append(h)
                fh.write(memoryview(np.ascontiguousarray(flat)).cast("B"))
                counts[0] += len(texts)
                counts[1] += int(flat.shape[0])
                tick()
        tick(final=True)
        np.save(tmp / "docs.npy", np.concatenate(docs) if docs else np.zeros((0, 3), np.int64))
        np.save(tmp / "hashes.npy", np.concatenate(hashes) if hashes else np.zeros(0, np.uint64))
        stats["bad_utf8"], stats["bad_json"] = bad[0], [list(b) for b in bad_json]
        _write_json(tmp / "stats.json", stats)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        WORKER.clear()
        WORKER.update(saved)
    return stats


def merge_parts(plan: Plan, writer, bad: list[int], bad_json: list) -> None:
    """Stage 3: replays every part in piece order through `writer` (a ShardWriter), so dedup and the
    files are exactly those of reading the whole source in one process."""
    dtype = np.dtype(plan.tok.dtype)
    for rank in range(len(plan.pieces)):
        part = plan.work / "parts" / f"{rank:05d}"
        if not (part / "stats.json").exists():
            raise RunFailed(f"data.sources.{plan.job.name}: piece {rank} has not been tokenized ({part} is incomplete); "
                            "run the same command again")
        stats = json.loads((part / "stats.json").read_text(encoding="utf-8"))
        docs = np.load(part / "docs.npy")
        hashes = np.load(part / "hashes.npy")
        n_tok = (part / "tokens.bin").stat().st_size // dtype.itemsize
        tokens = np.memmap(part / "tokens.bin", dtype=dtype, mode="r", shape=(n_tok,)) if n_tok else np.zeros(0, dtype)
        ends = np.cumsum(docs[:, 1]) if len(docs) else np.zeros(0, np.int64)
        for a in range(0, len(docs), MERGE_DOCS):
            b = min(a + MERGE_DOCS, len(docs))
            t0 = int(ends[a - 1]) if a else 0
            chunk = docs[a:b]
            writer.add_kept(chunk[:, 0].astype(bool), chunk[:, 1], np.asarray(tokens[t0:int(ends[b - 1])]),
                            hashes[a:b] if len(hashes) else hashes, chunk[:, 2])
        writer.stats["docs_read"] += stats["docs_read"]
        for k, v in stats["drops"].items():
            writer.stats["drops"][k] += v
        bad[0] += stats["bad_utf8"]
        bad_json.extend(tuple(x) for x in stats["bad_json"])
        del tokens
