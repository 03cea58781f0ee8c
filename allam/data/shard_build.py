"""Building a source's shard folder (:mod:`allam.data.shards` is the format, the cache key and the
check of a cached folder).

Building streams the source: documents are read in order in the main process, cleaned and
tokenized in batches by a pool of forked workers (all cores; a bounded number of batches in
flight, so an arbitrarily large corpus never needs to fit in memory), and appended to the shard
files in order, with exact-duplicate removal by hash. Progress (:mod:`allam.data.progress`) shows
the bytes read of the total, the rate, the time left, documents and tokens. A file or hf source larger
than ``data.prepare.task_bytes`` is built by :mod:`allam.data.engine`'s tasks instead and merged
here; ``executor=slurm`` submits those tasks (:func:`submit`).
Folders are written under a temporary name and renamed when complete; a file lock keeps
concurrent ranks from building the same folder twice, and where locks do not reach across hosts
the first complete folder wins (:mod:`allam.cache_lock`).
"""
from __future__ import annotations

import collections
import contextlib
import errno
import json
import os
import shutil
import time
from typing import Any, Optional

import numpy as np

from allam import cache_lock
from allam.config import ConfigError, RunFailed
from allam.data import engine, engine_run
from allam.data.shard_writer import WORKER, ShardWriter, batches, check_script, process_batch
from allam.data.shards import FORMAT_VERSION, ShardJob, SourceShards, TokenizerInfo, _differs, file_record, load, verify
from allam.data.source_files import SourceChanged, content_fingerprint, source_bytes
from allam.data.sources import read_documents


# --------------------------------------------------------------------------- workers
def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover
        return max(1, os.cpu_count() or 1)


def _child_signals() -> None:
    """A pool child takes the default action on stop signals: a handler inherited from the parent
    (a training run's stop-at-the-next-step handler) would leave it running, and the parent's
    pool.terminate() after an error would then wait for it."""
    import signal

    for name in ("SIGTERM", "SIGUSR1", "SIGUSR2"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the parent's to handle


@contextlib.contextmanager
def _pool(workers: int):
    """A fork pool whose children run the tokenizer single-threaded (no Rayon after fork)."""
    if workers <= 1:
        yield None
        return
    import multiprocessing as mp

    prev = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # inherited by the children only
    try:
        pool = mp.get_context("fork").Pool(workers, initializer=_child_signals)
    finally:
        if prev is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = prev
    try:
        yield pool
    finally:
        pool.terminate()
        pool.join()


# --------------------------------------------------------------------------- building
def build(jobs: list[ShardJob], tok: TokenizerInfo, *, workers: Optional[int] = None, progress: bool = True,
          log=print, wait_s: Optional[float] = None, wait_log=None,
          task_bytes: Optional[int] = None) -> dict[str, SourceShards]:
    """Loads every source's shards, building the missing ones. Returns {name: SourceShards}.
    A source another process is building is waited for, at most `wait_s` seconds (default
    :data:`allam.cache_lock.wait_default`), saying so through `wait_log` (default `log`).
    A file or hf source larger than `task_bytes` is built in parallel tasks (:mod:`allam.data.engine`,
    `workers` at once); the others by this process and a pool of `workers`."""
    loaded = {job.name: load(job) for job in jobs}
    out: dict[str, SourceShards] = {n: s for n, s in loaded.items() if s is not None}
    todo = [job for job in jobs if loaded[job.name] is None]
    if not todo:
        return out
    for job in todo:
        sub = engine_run.pending(job, log, wait_s)
        if sub is not None:
            raise ConfigError(engine.pending_error(job, sub))
    workers = default_workers() if workers is None else workers
    big = [j for j in todo if task_bytes and engine.splits(j, task_bytes)]
    if big and len(todo) > 1 and any(j.after for j in todo):  # each source needs the earlier ones' hashes: one at a time, in order
        for job in todo:
            out.update(build([job], tok, workers=workers, progress=progress, log=log, wait_s=wait_s,
                             wait_log=wait_log, task_bytes=task_bytes))
        return out
    if big:
        out.update(_build_big(big, tok, task_bytes, workers, progress, log, wait_s, wait_log))
        todo = [j for j in todo if j.name not in out]
    WORKER.clear()
    WORKER.update(backend=tok.backend, eos=tok.eos_id, bos=tok.bos_id, dtype=tok.dtype, cleaners={i: j.cleaner for i, j in enumerate(todo)})
    pool_cm = None
    try:
        for i, job in enumerate(todo):
            with cache_lock.building(job.path, f"the shards of source {job.name}", wait_s=wait_s,
                                    log=wait_log or log):
                shards = _cached(job, log)  # another rank may have built it meanwhile
                if shards is None:
                    if pool_cm is None:
                        pool_cm = _pool(workers)
                        pool = pool_cm.__enter__()
                    shards = _build_one(i, job, tok, pool, workers, progress, log)
            out[job.name] = shards
    finally:
        if pool_cm is not None:
            pool_cm.__exit__(None, None, None)
        WORKER.clear()
    return out


def _cached(job: ShardJob, log) -> Optional[SourceShards]:
    """The job's shards when a complete folder is there (built meanwhile by another process)."""
    meta, why = verify(job)
    if why:
        log(f"data: {job.name}: cached shards {job.path} cannot be used ({why}); rebuilding them")
    return None if meta is None else SourceShards(job.name, job.src["lang"], job.src["kind"], job.path, meta)


def _build_big(jobs: list[ShardJob], tok: TokenizerInfo, task_bytes: int, workers: int, progress: bool, log,
               wait_s, wait_log) -> dict[str, SourceShards]:
    """Sources larger than `task_bytes`, together: their locks held (taken in path order), their
    pieces counted and tokenized by one local executor run, then merged and published side by side
    (:func:`_merge_all`).
    Returns those built (a source whose files do not split is left to the caller)."""
    from allam.data.progress import Progress

    out: dict[str, SourceShards] = {}
    with contextlib.ExitStack() as locks:
        plans = []
        for job in sorted(jobs, key=lambda j: str(j.path)):
            locks.enter_context(cache_lock.building(job.path, f"the shards of source {job.name}", wait_s=wait_s,
                                                    log=wait_log or log))
            shards = _cached(job, log)
            if shards is not None:
                out[job.name] = shards
                continue
            sub = engine.submitted(job)  # submitted to SLURM since build() looked: its work folder is not ours
            if sub is not None:
                raise ConfigError(engine.pending_error(job, sub))
            plan = engine.make_plan(job, tok, task_bytes, workers=workers)
            if plan is not None:
                plans.append(plan)
        if not plans:
            return out
        t0 = time.perf_counter()
        n = sum(len(p.pieces) for p in plans)
        logs = engine_run.logs_folder(plans)
        for plan in plans:
            log(f"data: {plan.job.name}: {len(plan.pieces)} tasks of about {plan.task_bytes / 2**20:,.1f} MiB "
                f"(datatrove's local executor, {min(workers, n)} processes; work folder {plan.work})")
        size = sum(source_bytes(p.job.name, p.job.src) or 0 for p in plans)
        names = ", ".join(p.job.name for p in plans)
        bar = Progress(f"prepare {names} (count, then tokenize)", 2 * size or None, enabled=progress)
        try:
            engine_run.run_local(plans, workers, logs, bar)
        except engine_run.TaskDied:  # the completed tasks are kept: the same command resumes
            raise
        except (ConfigError, RunFailed):  # bad input: the fixed source starts afresh (a cut-off run resumes)
            shutil.rmtree(logs, ignore_errors=True)
            raise
        finally:
            bar.close()
        log(f"data: {names}: {n} tasks counted and tokenized in {time.perf_counter() - t0:.1f}s")
        out.update(_merge_all(plans, workers, log, t0))
        shutil.rmtree(logs, ignore_errors=True)
    return out


_MERGING: list = []  # the plans the forked merge processes merge (inherited, not pickled)


def _merge(i: int, t0: float, lines: list) -> Optional[tuple[str, str]]:
    """Merges and publishes ``_MERGING[i]`` (its log lines to `lines`); returns the error as
    (kind, message) for the parent to raise, None when published."""
    plan = _MERGING[i]
    t1 = time.perf_counter()
    try:
        _build_one(0, plan.job, plan.tok, None, 1, False, lines.append, plan=plan, t0=t0)
    except (ConfigError, RunFailed) as exc:
        if isinstance(exc, SourceChanged):  # the parts are of the old files; a rerun plans afresh (another key)
            engine.clear_work(plan)
        return type(exc).__name__, str(exc)
    lines.append(f"data: {plan.job.name}: {len(plan.pieces)} parts merged in {time.perf_counter() - t1:.1f}s")
    engine.clear_work(plan)
    return None


def _merge_child(i: int, slot: int, conn, t0: float = 0.0) -> None:
    """A forked merge process: SIGTERM (the parent stopping) raises SystemExit, so the unfinished
    folder is removed; Ctrl+C is the parent's to handle."""
    import signal

    def stop(*_):
        raise SystemExit(1)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    lines: list = []
    err = _merge(i, t0, lines)
    conn.send((lines, err))
    conn.close()


def _merge_died(i: int, code: Optional[int], pid: int) -> tuple[list, Optional[tuple[str, str]]]:
    """(lines, error) for merge `i`, whose process ended without a result: its unfinished folder
    is removed; one that died after publishing (clearing its work folder) is a finished build."""
    from allam.data import forked

    plan = _MERGING[i]
    for tmp in plan.job.path.parent.glob(f"{plan.job.path.name}.tmp-{cache_lock.HOST}-{pid}-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    if load(plan.job) is not None:
        engine.clear_work(plan)
        return [], None
    how = forked.died(code) if code is not None and code < 0 else (
        f"ended with exit code {code} and no result (stopped from outside, or its traceback is above)")
    return [], ("RunFailed", f"data.sources.{plan.job.name}: the process merging its shards {how}; nothing was added "
                f"to the cache; run the same command again (the tokenized parts in {plan.work} are kept)")


def _merge_in_processes(n: int, at_once: int, t0: float) -> list:
    """Runs merges 0..n-1 in forked processes (:func:`allam.data.forked.run`), `at_once` at a
    time; returns each one's (lines, error). A process that dies is an error naming its source,
    never a wait; stopping (Ctrl+C) stops the merges, which remove their unfinished folders."""
    from functools import partial

    from allam.data import forked

    results = forked.run(list(range(n)), at_once, partial(_merge_child, t0=t0), _merge_died)
    return [results[i] for i in range(n)]


def _merge_all(plans: list, workers: int, log, t0: float) -> dict[str, SourceShards]:
    """Each source's merge (:func:`engine.merge_parts` through :func:`_build_one`): in this process
    for one source or one worker, else side by side, one forked process a source and up to
    `workers` at once (each holds its own source's dedup hashes, 8 bytes a document). The parent
    holds every source's lock and raises the first error after all have ended."""
    _MERGING[:] = plans
    try:
        if len(plans) == 1 or workers <= 1:
            results = []
            for i in range(len(plans)):
                lines: list = []
                results.append((lines, _merge(i, t0, lines)))
        else:
            results = _merge_in_processes(len(plans), min(workers, len(plans)), t0)
    finally:
        _MERGING.clear()
    for lines, _ in results:
        for line in lines:
            log(line)
    for kind, message in (err for _, err in results if err is not None):
        raise (RunFailed if kind == "RunFailed" else ConfigError)(message)
    return {plan.job.name: load(plan.job) for plan in plans}  # type: ignore[misc]


def merge_job(plan: "engine.Plan") -> None:
    """What the merge job of ``executor=slurm`` runs: the parts into the source's folder (unless a
    complete one is there already); then the work folder keeps only the jobs' logs. Both under the
    source's lock, which :func:`submit` holds while it records a submission: the record is not
    written again after the merge removed it."""
    job = plan.job
    with cache_lock.building(job.path, f"the shards of source {job.name}", log=print):
        try:
            if load(job) is None:
                _build_one(0, job, plan.tok, None, 1, False, print, plan=plan)
        except SourceChanged:  # nothing of this work folder is of use to a rerun (another key)
            engine.clear_work(plan, keep_logs=True)
            raise
        engine.clear_work(plan, keep_logs=True)


def submit(jobs: list[ShardJob], tok: TokenizerInfo, cfg: Any, *, log=print) -> list[dict]:
    """executor=slurm: submits the stages of every missing file or hf source (:func:`engine_run.submit_slurm`)
    and returns what was submitted; demo sources and in-memory datasets, which one process reads, are built here.

    With ``data.dedup_across_sources`` a source's merge reads the hashes the earlier sources of its
    language kept: its merge job waits for theirs (``afterok``), and a source built here, or one
    after a source that cannot be submitted yet, waits for the next run of the command."""
    out = []
    merges: dict[str, str] = {}  # the merge job of each source being built by SLURM, by source
    cached: dict[str, bool] = {}  # each source's cache looked up once (load reads its files' ends)
    for job in jobs:
        cached[job.name] = load(job) is not None
        if cached[job.name]:
            continue
        sub = engine_run.pending(job, log)
        if sub is not None:  # submitted before and not merged yet: not twice
            done = engine_run.slurm_progress(engine.work_folder(job), int(sub.get("pieces") or 0))
            log(f"data: {job.name}: submitted before ({sub.get('at')}; SLURM jobs {sub.get('jobs')}; {done}) and not "
                f"merged yet; not submitting it again (if those jobs are gone, delete "
                f"{engine.work_folder(job) / engine.SUBMITTED} to submit afresh)")
            out.append(_pending(job, sub, merges))
            continue
        missing = [p for p in job.after if not cached[p.name]]  # dedup_across_sources: not in the cache yet
        local = False
        # under the source's lock, as a local build plans and builds: a local build running meanwhile
        # must not have its work folder replaced by this plan (make_plan starts afresh on another one)
        with cache_lock.building(job.path, f"the shards of source {job.name}", log=log):
            if load(job) is not None:  # published meanwhile
                cached[job.name] = True
                continue
            meanwhile = engine.submitted(job)
            if meanwhile is not None:  # submitted by another process since pending() looked: as "submitted before"
                log(f"data: {job.name}: submitted meanwhile ({meanwhile.get('at')}, {meanwhile.get('by')}; SLURM jobs "
                    f"{meanwhile.get('jobs')}); not submitting it again")
                out.append(_pending(job, meanwhile, merges))
                continue
            plan = engine.make_plan(job, tok, int(cfg.task_bytes), min_pieces=1)
            unsubmitted = [p.name for p in missing if p.name not in merges]
            if unsubmitted or (plan is None and missing):
                names = ", ".join(p.name for p in missing)
                log(f"data: {job.name}: waits for the shards of {names} (data.dedup_across_sources: it drops what they "
                    f"kept); not {'built' if plan is None else 'submitted'} now: run the same command again once "
                    f"{'their SLURM merge jobs have' if not unsubmitted else 'they have'} finished")
                out.append({"source": job.name, "state": "waiting", "after": [p.name for p in missing]})
                continue
            if plan is None:
                local = True
            else:
                engine.record_submission(plan, {"source": job.name, "jobs": {}, "state": "submitting"})
                try:
                    after = [merges[p.name] for p in missing]
                    sub = {**engine_run.submit_slurm(plan, merge_job, cfg, after=after), "state": "submitted"}
                    if str(sub["jobs"]["merge"]) != "-1":
                        merges[job.name] = str(sub["jobs"]["merge"])
                except BaseException:
                    (plan.work / engine.SUBMITTED).unlink(missing_ok=True)
                    raise
                engine.record_submission(plan, sub, final=True)
        if local:  # a source whose files do not split: built here (which takes the lock itself)
            build([job], tok, progress=True, log=log)
            continue
        log(f"data: {job.name}: submitted {sub['pieces']} count and tokenize tasks and a merge "
            f"(SLURM jobs {sub['jobs']['count']}, {sub['jobs']['tokenize']}, {sub['jobs']['merge']}); "
            f"work folder {sub['work']}")
        out.append(sub)
    return out


def _pending(job: ShardJob, sub: dict, merges: dict[str, str]) -> dict:
    """A source SLURM jobs are building: its merge job noted (later sources' merges wait for it
    under data.dedup_across_sources) and its entry in submit's answer."""
    merge = (sub.get("jobs") or {}).get("merge")
    if merge is not None and str(merge) != "-1":
        merges[job.name] = str(merge)
    return {**sub, "state": "pending"}


def _build_one(job_idx: int, job: ShardJob, tok: TokenizerInfo, pool, workers: int, progress: bool,
               log, plan: Optional["engine.Plan"] = None, t0: Optional[float] = None) -> SourceShards:
    from allam.data.progress import Progress

    t0 = time.perf_counter() if t0 is None else t0
    tmp = cache_lock.unique_name(job.path, "tmp")
    tmp.mkdir(parents=True)
    bad, bad_json = [0], []
    bar = Progress(f"tokenize {job.name}", source_bytes(job.name, job.src), enabled=progress)
    writer = None
    try:
        writer = ShardWriter(job, tmp, bar)
        for prior in job.after:  # data.dedup_across_sources: what the earlier sources kept
            writer.seen.first_seen(np.load(prior.path / "hashes.npy"))
        docs = [] if plan is not None else read_documents(job.name, job.src, job.parallel_pairs, bad, bar.read, bad_json)
        if plan is not None:
            engine.merge_parts(plan, writer, bad, bad_json)
        inflight: collections.deque = collections.deque()
        window = 2 * (workers if pool is not None else 1) + 2  # batches in flight: two per worker
        for texts, pairs, splits in batches(docs):
            if pool is None:
                writer.add(splits, process_batch(job_idx, texts, pairs))
                continue
            inflight.append((splits, pool.apply_async(process_batch, (job_idx, texts, pairs))))
            while len(inflight) >= window:
                s, r = inflight.popleft()
                writer.add(s, r.get())
        while inflight:
            s, r = inflight.popleft()
            writer.add(s, r.get())
        bar.close()
        stats = writer.close(bad[0], len(bad_json))
        if bad_json:
            shown = ", ".join(f"{f} line {n}" for f, n in bad_json[:3]) + (f" and {len(bad_json) - 3} more" if len(bad_json) > 3 else "")
            log(f"data: {job.name}: skipped {len(bad_json):,} lines that are not JSON (skip_bad_json): {shown}")
        # never publish shards of files that changed while read (package files and saved datasets do not)
        if job.src["loader"] not in ("demo", "hf") and content_fingerprint(job.name, job.src) != job.content:
            raise SourceChanged(f"data.sources.{job.name}: its files changed while being prepared "
                              f"({job.src['path']}); nothing was written to the cache; run again once they are final")
        check_script(job, stats)
        if stats["docs_read"] == 0 and bad[0] == 0 and not bad_json:
            raise ConfigError(f"data.sources.{job.name}: empty source (no documents in {job.src['path'] or job.name})")
        if stats["train"]["tokens"] == 0:
            d = ", ".join(f"{k}={v}" for k, v in stats["drops"].items() if v)
            raise ConfigError(f"data.sources.{job.name}: no training text left ({stats['docs_read']} documents read; dropped: {d or 'none'})")
        meta = {
            "format": FORMAT_VERSION,
            "name": job.name,
            "key": job.key,
            "lang": job.src["lang"],
            "kind": job.src["kind"],
            "dtype": tok.dtype,
            "eos": tok.eos_id,
            "bos": tok.bos_id,
            "tokenizer": tok.hash,
            "content": job.content,
            "cleaning": job.cleaner.options(),
            "seconds": round(time.perf_counter() - t0, 3),
            "built_by": f"host {cache_lock.HOST} pid {os.getpid()}",
            **stats,
            "files": {f: file_record(tmp / f) for f in job.files},
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if not cache_lock.publish(tmp, job.path, complete=lambda p: verify(job)[0] is not None, same=_differs,
                                  what=f"data.sources.{job.name}", log=log):
            return load(job)  # type: ignore[return-value]
        kept = meta["train"]["docs"] + meta["val"]["docs"]
        drops = ", ".join(f"{k} {v:,}" for k, v in meta["drops"].items() if v) or "none"
        log(f"data: {job.name}: {meta['docs_read']:,} docs read, {kept:,} kept ({drops} dropped), "
            f"{meta['train']['tokens']:,} train + {meta['val']['tokens']:,} val tokens in {meta['seconds']:.1f}s")
        return load(job)  # type: ignore[return-value]
    except BaseException as exc:
        if writer is not None:
            writer.abort()
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(job.path.parent).free / 2**30
            raise RunFailed(f"data.sources.{job.name}: {exc.strerror or exc} while writing its shards in {job.path.parent} "
                            f"({free:.1f} GiB free); the unfinished folder was removed and nothing was added to the cache; "
                            "free space (or point paths.cache_dir at a larger disk) and run the same command again") from None
        raise
