"""Running a build's stages (:mod:`allam.data.engine`) on datatrove's executors: locally, one task
per process, or as SLURM job arrays; a task's bad input comes back to the caller as one line. A
submitted build's state (:func:`pending`: in flight, failed or gone, from ``submitted.json``, the
tasks' recorded errors and ``squeue``) and progress (:func:`slurm_progress`)."""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Optional

from allam.config import ConfigError, RunFailed
from allam.data import engine
from allam.data.engine import Plan, _write_json, count_piece, tokenize_piece

_log = logging.getLogger(__name__)


def _executor_classes():
    """datatrove's executors, with every task's own log at ERROR on the terminal (all of it stays in
    the task's log file under the run's logs folder): datatrove shows the first local rank's INFO lines."""
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

        def run(self):
            """The incomplete tasks in forked processes, `workers` at once. datatrove's own pool
            (multiprocess.Pool) replaces a worker that dies (the out-of-memory killer) and waits
            forever for its task's result; here a task whose process ends without one is one line."""
            if self.workers <= 1:
                return super().run()
            self._launched = True
            ranks = self.get_incomplete_ranks(range(self.local_rank_offset, self.local_rank_offset + self.local_tasks))
            if ranks:
                self.save_executor_as_json()
                _run_forked(self, ranks, self.workers)

    return Local, SlurmPipelineExecutor


class TaskDied(RunFailed):
    """A task of a local build failed or its process died: the completed tasks' marks are kept, so
    the same command resumes (unlike bad input, after which the fixed source starts afresh)."""


def _run_forked(executor, ranks: list[int], at_once: int) -> None:
    """Runs `executor`'s tasks `ranks` in forked processes (:func:`allam.data.forked.run`: they
    inherit the pipeline, nothing is pickled), `at_once` at a time; raises TaskDied for the first
    task that failed or whose process died, after the running ones have ended."""
    from allam.data import forked

    def task(rank: int, slot: int, writer) -> None:
        try:
            executor._run_for_rank(rank, slot)
            writer.send(None)
        except BaseException as exc:  # a task's own bad input is recorded by _Stage; anything else is a failure
            writer.send(f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__)
        finally:
            writer.close()

    results = forked.run(ranks, at_once, task, lambda rank, code, pid: forked.died(code),
                         stop=lambda error: error is not None, fork_lock=_FORK_LOCK)
    failed = next(((rank, error) for rank, error in results.items() if error is not None), None)
    if failed is not None:
        rank, error = failed
        raise TaskDied(f"{executor.pipeline[0]!r}: task {rank} {error}; run the same command again (the finished "
                       "tasks are kept)")


_FORKED: dict = {}  # steps of this process's local executor runs, by id (inherited by its forked workers)
_FORK_LOCK = threading.Lock()  # held by run_local's progress thread while it writes, and around each fork


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
        # every task from deserializing the tokenizer
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
    _marks_from_outputs(plans, logs)
    n = sum(len(p.pieces) for p in plans)
    workers = max(1, min(workers, n))
    stop = threading.Event()
    watcher = None
    if bar is not None:
        def watch():
            while not stop.wait(1.0):
                bar.read[0], docs, tokens = _progress_sums(plans)
                with _FORK_LOCK:
                    bar.update(docs - bar.docs, tokens)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
    prev = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    logger.remove()  # the executor's own lines (tasks done, stats) go to its logs, warnings to the terminal
    logger.add(sys.stderr, level="WARNING")
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
        logger.remove()  # the handler added above, or (one worker: datatrove ran the tasks here) what its tasks put back
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


def stage_output(plan: Plan, stage: str, rank: int) -> Path:
    """The file a stage's task writes last for piece `rank` (its completion mark follows it)."""
    if stage == "count":
        return plan.work / "counts" / f"{rank:05d}.json"
    return plan.work / "parts" / f"{rank:05d}" / "stats.json"


def _marks_from_outputs(plans: list[Plan], logs: Path) -> None:
    """Before a local run, datatrove's completion marks are made to say what the work folders hold:
    a task is complete exactly when its output is there (both are written last, atomically).

    - A task that met bad input records the error and completes (datatrove marks it); a run cut
      off before raising that error left a mark over a piece never counted, so every later run
      skipped the task and failed elsewhere with a traceback: its mark goes.
    - The marks live in a logs folder named by the run's set of plans (the task numbers run across
      them): a run with another set (a source published meanwhile, or a merge that died while
      the others published) finds the finished tasks by their outputs and does not redo them.

    Errors recorded by an earlier run are dropped too: the tasks that recorded them run again."""
    offset = 0
    for plan in plans:
        for stage in ("count", "tokenize"):
            marks = logs / stage / "completions"
            for rank in range(len(plan.pieces)):
                mark = marks / f"{offset + rank:05d}"
                if stage_output(plan, stage, rank).exists():
                    marks.mkdir(parents=True, exist_ok=True)
                    mark.touch()
                elif mark.exists():
                    mark.unlink()
        offset += len(plan.pieces)
        shutil.rmtree(plan.work / "errors", ignore_errors=True)


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


def slurm_progress(work: Path, pieces: int) -> str:
    """How far a submitted build has got, from datatrove's completion marks in its work folder:
    e.g. "count 40/40, tokenize 12/40, merge 0/1 tasks done"."""
    done = []
    for stage, n in (("count", pieces), ("tokenize", pieces), ("merge", 1)):
        marks = work / "logs" / stage / "completions"
        done.append(f"{stage} {len(list(marks.iterdir())) if marks.is_dir() else 0}/{n}")
    return ", ".join(done) + " tasks done"


def submit_slurm(plan: Plan, merge, cfg: Any, after: Optional[list[str]] = None) -> dict:
    """Submits the three stages as SLURM jobs (count and tokenize arrays of one task per piece, then
    a one-task merge), each depending on the one before; the merge also waits for the jobs `after`
    (the merges of the sources whose kept documents it drops). `merge(plan)` is what the merge job
    runs. Returns the job ids and the work folder."""
    _, SlurmPipelineExecutor = _executor_classes()
    shutil.rmtree(plan.work / "errors", ignore_errors=True)
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
    tokenize.launch_job()  # launches count first
    waits = ([str(tokenize.job_id)] if tokenize.job_id not in (None, -1) else []) + [str(j) for j in after or []]
    merge_ex = SlurmPipelineExecutor(pipeline=[_Stage([plan], "merge")], tasks=1, depends_job_id=":".join(waits) or None,
                                     job_name=f"allam-merge-{plan.job.name}",
                                     logging_dir=str(plan.work / "logs" / "merge"), **common)
    try:
        merge_ex.run()
    except BaseException:  # e.g. sbatch refused the dependency: no count or tokenize job is left without a record
        _cancel([j for j in (count.job_id, tokenize.job_id) if j not in (None, -1)])
        raise
    return {"source": plan.job.name, "pieces": n, "work": str(plan.work), "after": list(after or []),
            "jobs": {"count": count.job_id, "tokenize": tokenize.job_id, "merge": merge_ex.job_id}}


def _cancel(ids: list) -> None:
    """``scancel`` the SLURM jobs `ids` (best effort: where scancel is missing or fails, they are named)."""
    import subprocess

    if not ids:
        return
    try:
        ok = shutil.which("scancel") is not None and subprocess.run(
            ["scancel", *map(str, ids)], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    if not ok:
        _log.warning("could not cancel SLURM jobs %s; cancel them by hand", ", ".join(map(str, ids)))


def slurm_queue(ids: list[str]) -> Optional[dict]:
    """Which of the SLURM jobs `ids` are still queued or running, {job id (an array's own id):
    squeue's reason}, whoever submitted them; None where ``squeue`` is not available or fails."""
    import subprocess

    if shutil.which("squeue") is None or not ids:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%F %r"], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:  # every id unknown: all of them have left the queue
        return {} if "invalid job id" in out.stderr.lower() else None
    jobs: dict = {}
    for line in out.stdout.splitlines():
        parts = line.split(None, 1)
        if parts:
            jobs.setdefault(parts[0], parts[1].strip() if len(parts) > 1 else "")
    return jobs


STALE_SUBMITTING_S = 600  # a record still without job ids after this long: its submitter died during sbatch


def pending(job: Any, log, wait_s: Optional[float] = None) -> Optional[dict]:
    """The SLURM submission building `job` while it is still in flight (``submitted.json``), else
    None. Where ``squeue`` answers, a build that ended is not waited for: one whose task recorded
    bad input raises that one line; one with a job that can no longer start (a job before it
    failed: ``DependencyNeverSatisfied``) raises one line; one whose jobs all left the queue without
    publishing is forgotten with one log line, so the caller builds or submits afresh. A record
    whose submitter died before SLURM answered is forgotten too. Each ending happens under the
    source's lock and moves the jobs' logs to ``<work>.ended-<time>/`` (named in the line)."""
    from types import SimpleNamespace

    sub = engine.submitted(job)
    if sub is None:
        return None
    work = engine.work_folder(job)
    jobs = {k: str(v) for k, v in (sub.get("jobs") or {}).items() if v is not None}
    if not jobs:  # written before sbatch; SLURM answers in seconds
        age = time.time() - (work / engine.SUBMITTED).stat().st_mtime if (work / engine.SUBMITTED).exists() else 0
        if age < STALE_SUBMITTING_S:
            return sub
        return _end(job, sub, log, wait_s, lambda logs: log(
            f"data: {job.name}: a SLURM submission started {sub.get('at')} never recorded its jobs (its submitter "
            f"died); building the shards afresh"))
    recorded: Optional[Exception] = None
    try:  # a task's recorded bad input, with its line in the file
        plan = json.loads((work / "plan.json").read_text(encoding="utf-8"))
        pieces = [[engine.Span(Path(p), a, b) if p != "rows" else engine.Rows(a, b) for p, a, b in piece]
                  for piece in plan["pieces"]]
        _raise_task_error(SimpleNamespace(work=work, pieces=pieces), remove=False)
    except (ConfigError, RunFailed) as exc:
        recorded = exc
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if recorded is not None:
        def bad_input(logs):
            raise type(recorded)(f"{recorded} (found by the SLURM build submitted {sub.get('at')}; its merge job "
                                 f"{jobs.get('merge')} will not run: scancel it; logs in {logs})") from None
        return _end(job, sub, log, wait_s, bad_input)
    queue = slurm_queue(list(jobs.values()))
    if queue is None:
        return sub
    alive = {stage: queue[i] for stage, i in jobs.items() if i in queue}
    if not alive:
        return _end(job, sub, log, wait_s, lambda logs: log(
            f"data: {job.name}: the SLURM build submitted {sub.get('at')} (jobs {', '.join(jobs.values())}) ended "
            f"without publishing its shards (its logs: {logs}); building them afresh"))
    stuck = [jobs[stage] for stage, why in alive.items() if "DependencyNeverSatisfied" in why]
    if stuck:
        def failed(logs):
            raise RunFailed(f"data.sources.{job.name}: the SLURM build submitted {sub.get('at')} failed before "
                            f"jobs {', '.join(stuck)} could start (logs in {logs}); scancel {' '.join(stuck)} and run again")
        return _end(job, sub, log, wait_s, failed)
    return sub


def _end(job: Any, sub: dict, log, wait_s, then) -> None:
    """Forgets an ended SLURM build under the source's lock (unless another process did already):
    its logs move to ``<work>.ended-<time>/``, the rest of the work folder goes; then
    ``then(that folder)`` (a log line, or the one-line error it raises)."""
    import datetime
    import tempfile

    from allam import cache_lock

    work = engine.work_folder(job)
    with cache_lock.building(job.path, f"the shards of source {job.name}", wait_s=wait_s, log=log):
        if engine.submitted(job) != sub:  # another process forgot it meanwhile (and may be building)
            return None
        ended = Path(tempfile.mkdtemp(dir=work.parent, prefix=f"{work.name}.ended-{datetime.datetime.now():%Y%m%d-%H%M%S}-"))
        for name in ("logs", "slurm", "errors", engine.SUBMITTED):
            if (work / name).exists():
                os.replace(work / name, ended / name)
        engine.clear_work(work)
    then(ended)
    return None
