"""Building one large source's shards in parallel tasks, on Hugging Face datatrove's executors.

A file source (text, jsonl, parquet) larger than ``data.prepare.task_bytes`` is cut into pieces:
consecutive byte ranges of its files, each starting at a line boundary (parquet: whole files).
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

Stages 1 and 2 run on datatrove's ``LocalPipelineExecutor`` (every core of this machine, one task
per process) or ``SlurmPipelineExecutor`` (a job array per stage, each depending on the one
before; the merge is a one-task job). Completed tasks are recorded by datatrove under the work
folder, so a run cut short resumes with the tasks left. The work folder
``<cache>/<name>-<key>.work/`` holds the plan, the counts, the parts and datatrove's logs; it is
removed once the shards are published.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from allam.data.holdout import CHAPTER_DOCS, _fraction, chapter_is_val
from allam.data.shard_writer import WORKER, batches, process_batch
from allam.data.sources import Piece, Span, read_documents, read_texts, resolve_files

SPLITTABLE = ("text", "jsonl", "parquet")  # demo and hf sources are read by one task
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


def plan_pieces(name: str, src: Any, task_bytes: int) -> list[list[Span]]:
    """The pieces of a file source, each about `task_bytes` of its files in reading order (text and
    jsonl files are cut at line boundaries; parquet files are not cut). One piece for a source no
    larger than `task_bytes`; none for demo and hf sources (not splittable)."""
    if src["loader"] not in SPLITTABLE:
        return []
    cut = src["loader"] != "parquet"
    pieces: list[list[Span]] = []
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


@dataclass
class Plan:
    """What every task of one source's build needs (pickled into each task by datatrove)."""

    job: Any  # allam.data.shards.ShardJob
    tok: Any  # allam.data.shards.TokenizerInfo
    pieces: list  # list[list[Span]]
    work: Path
    task_bytes: int
    extra: dict = field(default_factory=dict)

    @property
    def capped(self) -> bool:
        return self.job.src.get("val_max_bytes") is not None

    def describe(self) -> dict:
        return {"source": self.job.name, "key": self.job.key, "task_bytes": self.task_bytes,
                "pieces": [[[str(s.path), s.start, s.end] for s in p] for p in self.pieces]}


def piece_bytes(size: int, task_bytes: int, workers: Optional[int]) -> int:
    """The size of a piece of a source of `size` bytes: `task_bytes`, or on this machine (`workers`
    processes) smaller, down to :data:`MIN_LOCAL_PIECE`, so that each process gets about
    :data:`PIECES_PER_WORKER` pieces and none waits long for the last one."""
    if workers is None or size <= task_bytes:
        return task_bytes
    return min(task_bytes, max(MIN_LOCAL_PIECE, -(-size // (PIECES_PER_WORKER * workers))))


def splits(job: Any, task_bytes: int) -> bool:
    """Whether `job` is a file source larger than `task_bytes` (built in pieces)."""
    return job.src["loader"] in SPLITTABLE and sum(f.stat().st_size for f in resolve_files(job.name, job.src)) > task_bytes


def make_plan(job: Any, tok: Any, task_bytes: int, min_pieces: int = 2, workers: Optional[int] = None) -> Optional[Plan]:
    """The plan of `job` when it splits into at least `min_pieces` pieces, else None (one process
    builds it); `workers`: the local processes that will run it (:func:`piece_bytes`). Its work
    folder is made (or kept, when it holds this same plan: a resumed build)."""
    if job.src["loader"] not in SPLITTABLE:
        return None
    size = sum(f.stat().st_size for f in resolve_files(job.name, job.src))
    task_bytes = piece_bytes(size, task_bytes, workers)
    pieces = plan_pieces(job.name, job.src, task_bytes)
    if len(pieces) < max(1, min_pieces):
        return None
    plan = Plan(job, tok, pieces, job.path.with_name(job.path.name + ".work"), task_bytes)
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


def clear_work(plan: Plan, keep_logs: bool = False) -> None:
    """Removes the work folder once the shards are published (`keep_logs`: all but datatrove's and
    SLURM's logs, which a SLURM job is still writing to; without plan.json a new build starts afresh)."""
    if not keep_logs:
        shutil.rmtree(plan.work, ignore_errors=True)
        return
    for p in plan.work.iterdir() if plan.work.exists() else []:
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
def _step_base():
    from datatrove.pipeline.base import PipelineStep

    return PipelineStep


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
    out = {"docs": n, "lines": [_newlines(s) for s in spans]}
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
            raise RuntimeError(f"data.sources.{plan.job.name}: piece {i} has not been counted ({f} is missing)")
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


def piece_of(plan: Plan, rank: int, counts: list[dict]) -> Piece:
    """Piece `rank` with its first document's index, its spans' first lines and the cap's last chapter."""
    first_doc = sum(c["docs"] for c in counts[:rank])
    lines: dict[str, int] = {}
    for p, c in zip(plan.pieces[:rank], counts[:rank]):
        for s, n in zip(p, c["lines"]):
            lines[str(s.path)] = lines.get(str(s.path), 0) + n
    spans = [Span(s.path, s.start, s.end, lines.get(str(s.path), 0)) for s in plan.pieces[rank]]
    return Piece(spans, first_doc, last_val_chapter(plan, counts))


def tokenize_piece(plan: Plan, rank: int) -> dict:
    """Stage 2 for piece `rank`: its documents split, cleaned and tokenized in this process, written
    as a part (``parts/<rank>/``: ``tokens.bin``, ``docs.npy`` [split, tokens, bytes], ``hashes.npy``,
    ``stats.json``), renamed into place when complete."""
    job, tok = plan.job, plan.tok
    piece = piece_of(plan, rank, _counts(plan))
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
            raise RuntimeError(f"data.sources.{plan.job.name}: piece {rank} has not been tokenized ({part} is incomplete)")
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


def _executor_classes():
    """datatrove's executors, with every task's own log at ERROR on the terminal (all of it stays in
    the task's log file under the work folder): datatrove shows the first local rank's INFO lines."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.executor.slurm import SlurmPipelineExecutor

    class Local(LocalPipelineExecutor):
        def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):
            import sys

            from loguru import logger

            try:
                return super()._run_for_rank(rank, local_rank + 1, node_rank)
            finally:  # datatrove puts back its INFO terminal sink after each task
                logger.remove()
                logger.add(sys.stderr, level="WARNING")

    return Local, SlurmPipelineExecutor


_FORKED: dict = {}  # steps of this process's local executor runs, by id (inherited by its forked workers)


def _forked_stage(key: int) -> "_Stage":
    return _FORKED[key]


class _Stage:
    """A datatrove pipeline step running one stage for the task's rank: the tasks are the pieces of
    `plans` one after the other (one executor runs several sources' pieces, so no core waits
    while one source's last piece runs)."""

    def __init__(self, plans: list[Plan], stage: str, forked: bool = False):
        self.plans, self.stage, self.forked = plans, stage, forked
        if forked:
            _FORKED[id(self)] = self

    def __reduce__(self):
        # the local executor forks its workers, which inherit this step: pickling only its key saves
        # every task from deserializing the tokenizer (about 0.2 s for a 32,000-piece model)
        if self.forked:
            return _forked_stage, (id(self),)
        return _Stage, (self.plans, self.stage)

    def __repr__(self) -> str:
        names = ", ".join(p.job.name for p in self.plans)
        return f"allam {self.stage} of data.sources {names} ({sum(len(p.pieces) for p in self.plans)} pieces)"

    def task(self, rank: int) -> tuple[Plan, int]:
        for plan in self.plans:
            if rank < len(plan.pieces):
                return plan, rank
            rank -= len(plan.pieces)
        raise IndexError(rank)

    def __call__(self, data=None, rank: int = 0, world_size: int = 1):
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one task per core: no tokenizer threads
        plan, rank = self.task(rank) if self.stage != "merge" else (self.plans[0], 0)
        if self.stage != "count":
            _raise_task_error(plan, remove=False)  # a stage after a failed one (SLURM) stops with its message
        try:
            if self.stage == "count":
                count_piece(plan, rank)
            elif self.stage == "tokenize":
                tokenize_piece(plan, rank)
            else:
                plan.extra["merge"](plan)
        except Exception as exc:  # bad input: recorded for one line in the parent (datatrove would log a traceback)
            from allam.config import ConfigError, RunFailed

            if not isinstance(exc, (ConfigError, RunFailed)):
                raise
            from allam.data.sources import AtLine

            record = {"kind": type(exc).__name__, "message": str(exc), "rank": rank}
            if isinstance(exc, AtLine) and self.stage == "count":  # counted from the piece's start: made whole later
                record.update(template=exc.template, path=exc.path, line=exc.line)
            (plan.work / "errors").mkdir(exist_ok=True)
            _write_json(plan.work / "errors" / f"{self.stage}-{rank:05d}.json", record)
        return None


def _raise_task_error(plan: Plan, remove: bool = True) -> None:
    """Raises the first recorded task error as one line (`remove`: and drops the work folder, so the
    fixed source starts from a fresh plan)."""
    from allam.config import ConfigError, RunFailed

    errs = sorted((plan.work / "errors").glob("*.json")) if (plan.work / "errors").exists() else []
    if errs:
        e = min((json.loads(f.read_text(encoding="utf-8")) for f in errs), key=lambda r: r["rank"])  # the first piece's
        if "template" in e:  # a line counted from its piece's start: add the lines of the file's earlier pieces
            before = 0
            for rank in range(e["rank"]):
                f = plan.work / "counts" / f"{rank:05d}.json"
                lines = json.loads(f.read_text(encoding="utf-8"))["lines"] if f.exists() else []
                before += sum(n for s, n in zip(plan.pieces[rank], lines) if str(s.path) == e["path"])
            e["message"] = e["template"].replace("{line}", str(e["line"] + before))
        if remove:
            shutil.rmtree(plan.work, ignore_errors=True)
        raise (RunFailed if e["kind"] == "RunFailed" else ConfigError)(e["message"])


# --------------------------------------------------------------------------- executors
def run_local(plans: list[Plan], workers: int, logs: Path, bar=None) -> None:
    """Stages 1 and 2 of every plan on datatrove's local executor: `workers` tasks at once, one per
    process; datatrove's logs and completion marks go to `logs` (a resumed build skips the tasks
    it completed). `bar` (an allam.data.progress.Progress) shows the bytes the tasks have read in
    both passes. A task's bad input is raised here as one line."""
    import sys

    from loguru import logger

    Local, _ = _executor_classes()
    n = sum(len(p.pieces) for p in plans)
    workers = max(1, min(workers, n))
    stop = threading.Event()
    watcher = None
    if bar is not None:
        def watch():
            while not stop.wait(1.0):
                bar.read[0], docs, tokens = _progress_sums(plans)
                bar.update(docs - bar.docs, tokens)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
    prev = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    logger.remove()  # the executor's own lines (tasks done, stats) go to its logs, warnings to the terminal
    sink = logger.add(sys.stderr, level="WARNING")
    saved = _default_stop_signals()
    try:
        for stage in ("count", "tokenize"):
            step = _Stage(plans, stage, forked=True)
            ex = Local(pipeline=[step], tasks=n, workers=workers, logging_dir=str(logs / stage), start_method="fork")
            try:
                ex.run()
            finally:
                _FORKED.pop(id(step), None)
            for plan in plans:
                _raise_task_error(plan)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        logger.remove(sink)
        logger.add(sys.stderr)
        if prev is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = prev
        stop.set()
        if watcher is not None:
            watcher.join()
            bar.read[0], docs, tokens = _progress_sums(plans)
            bar.docs, bar.tokens = docs, tokens


def _default_stop_signals() -> dict:
    """Stop signals at their default action while the executor forks its processes, which inherit
    them: a handler of this process (a training run's stop-at-the-next-step) would keep a worker
    alive through the pool's terminate, and the build would never return. Returns what to restore."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    saved = {}
    for name in ("SIGTERM", "SIGUSR1", "SIGUSR2"):
        if hasattr(signal, name):
            sig = getattr(signal, name)
            saved[sig] = signal.signal(sig, signal.SIG_DFL)
    return saved


def logs_folder(plans: list[Plan]) -> Path:
    """Where datatrove keeps one local run's logs and completion marks: named by the plans (their
    sources, keys and pieces), so a mark is only ever read by the same tasks."""
    import hashlib

    key = hashlib.sha256(json.dumps([p.describe() for p in plans], sort_keys=True).encode()).hexdigest()[:16]
    return plans[0].work.parent / f".prepare-{key}.logs"


def _progress_sums(plans: list[Plan]) -> tuple[int, int, int]:
    """Bytes read by every task of both stages, and the documents and tokens tokenized so far."""
    total = [0, 0, 0]
    for f in (f for p in plans if (p.work / "progress").exists() for f in (p.work / "progress").iterdir()):
        try:
            vals = [int(x) for x in f.read_text().split()]
        except (OSError, ValueError):  # being rewritten: counted at the next look
            continue
        for i, v in enumerate(vals[:3]):
            total[i] += v
    return total[0], total[1], total[2]


def submit_slurm(plan: Plan, merge, cfg: Any) -> dict:
    """Submits the three stages as SLURM jobs (count and tokenize arrays of one task per piece, then
    a one-task merge), each depending on the one before. `merge(plan)` is what the merge job runs.
    Returns the job ids and the work folder."""
    _, SlurmPipelineExecutor = _executor_classes()
    n = len(plan.pieces)
    plan.extra["merge"] = merge
    common = dict(time=cfg.slurm_time, partition=cfg.slurm_partition, cpus_per_task=cfg.slurm_cpus_per_task,
                  mem_per_cpu_gb=cfg.slurm_mem_per_cpu_gb, env_command=cfg.slurm_env_command,
                  workers=cfg.slurm_max_parallel or -1, sbatch_args=dict(cfg.slurm_sbatch_args or {}),
                  slurm_logs_folder=str(plan.work / "slurm"), requeue_signals=None)
    count = SlurmPipelineExecutor(pipeline=[_Stage([plan], "count")], tasks=n, job_name=f"allam-count-{plan.job.name}",
                                  logging_dir=str(plan.work / "logs" / "count"), **common)
    tokenize = SlurmPipelineExecutor(pipeline=[_Stage([plan], "tokenize")], tasks=n, depends=count,
                                     job_name=f"allam-tokenize-{plan.job.name}",
                                     logging_dir=str(plan.work / "logs" / "tokenize"), **common)
    merge_ex = SlurmPipelineExecutor(pipeline=[_Stage([plan], "merge")], tasks=1, depends=tokenize,
                                     job_name=f"allam-merge-{plan.job.name}",
                                     logging_dir=str(plan.work / "logs" / "merge"), **common)
    merge_ex.run()  # launches its dependencies first
    return {"source": plan.job.name, "pieces": n, "work": str(plan.work),
            "jobs": {"count": count.job_id, "tokenize": tokenize.job_id, "merge": merge_ex.job_id}}
