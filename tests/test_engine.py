"""A large source built in parallel tasks on datatrove's executors (allam/data/engine.py) makes the
same shard folder, byte for byte, as one process reading the whole source: pieces cut at line
boundaries, the hold-out (fraction and cap) decided source-wide, dedup across pieces, bad lines
named with their line in the file, and a SLURM array's scripts run here one index at a time."""
from __future__ import annotations

import json
import os
import random
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from allam.config import ConfigError
from allam.data import engine, engine_run, shard_build, shards
from allam.data.sources import source_values
from test_data import AR_WORDS, EN_WORDS, _docs, tok  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parent.parent


def _corpus(d: Path) -> dict:
    """A jsonl source (duplicates far apart, skipped bad lines, a capped hold-out) and a text glob of
    two files with blank lines: each a few pieces at 6,000-byte tasks."""
    rng = random.Random(3)
    ar = _docs(AR_WORDS, 400, 20, length=12)
    with open(d / "ar.jsonl", "w", encoding="utf-8") as fh:
        for i in range(900):
            fh.write(json.dumps({"text": ar[i % 400] if i % 3 else rng.choice(ar)}, ensure_ascii=False) + "\n")
            if i % 250 == 9:
                fh.write("{not json\n")
    for k in range(2):
        (d / f"en{k}.txt").write_text("\n\n".join(_docs(EN_WORDS, 150, 30 + k, length=10)) + "\n", encoding="utf-8")
    return {
        "ar": {"lang": "ar", "kind": "natural", "loader": "jsonl", "path": str(d / "ar.jsonl"), "skip_bad_json": True,
               "val_fraction": 0.2, "val_max_bytes": 4000},
        "en": {"lang": "en", "kind": "natural", "loader": "text", "path": str(d / "en*.txt"), "val_fraction": 0.1},
    }


def _build(sources: dict, info, cache: Path, task_bytes=None, workers=2, log=None):
    jobs = shards.plan_jobs(sources, False, info, cache)
    return shard_build.build(jobs, info, workers=workers, progress=False, task_bytes=task_bytes, log=log or (lambda *a: None))


def test_pieces_cover_every_byte_once_and_start_at_lines(tmp_path):
    srcs = _corpus(tmp_path)
    for name in ("ar", "en"):
        src = source_values(srcs[name])
        pieces = engine.plan_pieces(name, src, 6000)
        assert len(pieces) >= 3
        by_file: dict = {}
        for piece in pieces:
            for span in piece:
                data = span.path.read_bytes()
                assert span.start == 0 or data[span.start - 1:span.start] == b"\n"
                by_file.setdefault(span.path, []).append(data[span.start:span.end])
        assert {p: b"".join(parts) for p, parts in by_file.items()} == {p: p.read_bytes() for p in by_file}
    assert engine.plan_pieces("ar", source_values(srcs["ar"]), 1 << 30) == [[engine.Span(tmp_path / "ar.jsonl")]]


def test_tasks_make_the_folder_one_process_makes(tok, tmp_path):  # noqa: F811
    srcs = _corpus(tmp_path)
    info = shards.TokenizerInfo.from_tokenizer(tok)
    one = _build(srcs, info, tmp_path / "one")
    lines = []
    many = _build(srcs, info, tmp_path / "many", task_bytes=6000, log=lines.append)
    assert sum("tasks of about" in ln for ln in lines) == 2  # both sources went through the engine
    assert sum("parts merged in" in ln for ln in lines) == 2
    mergers = {many[name].meta["built_by"] for name in srcs}  # merged side by side, in two forked processes
    assert len(mergers) == 2 and not any(m.endswith(f" pid {os.getpid()}") for m in mergers)
    assert any("skipped 4 lines that are not JSON" in ln and "line 11" in ln for ln in lines)  # line numbers in the file
    for name in srcs:
        a, b = one[name], many[name]
        assert a.meta["val"]["docs"] > 0 and (name == "en" or a.meta["drops"]["duplicate"] > 0)
        for f in shards.SHARD_FILES:
            assert (a.path / f).read_bytes() == (b.path / f).read_bytes(), (name, f)
        for k in ("train", "val", "docs_read", "drops", "key", "files"):
            assert a.meta[k] == b.meta[k], (name, k)
        assert not b.path.with_name(b.path.name + ".work").exists()  # the work folder is removed
    assert one["ar"].meta["val"]["bytes"] < 4000 + 50 * 200  # the cap held (less than one chapter over)


def test_a_saved_hf_dataset_is_cut_into_row_ranges_that_make_the_folder_one_process_makes(tok, tmp_path):  # noqa: F811
    """An hf source (a save_to_disk folder) larger than task_bytes: row ranges cover every row once,
    and the tasks make the one-process folder byte for byte, with empty rows skipped, duplicates
    across ranges, a capped hold-out and paired translations (parallel_pairs)."""
    datasets = pytest.importorskip("datasets")
    rng = random.Random(5)
    ar, en = _docs(AR_WORDS, 300, 50, length=12), _docs(EN_WORDS, 300, 51, length=12)
    rows = [rng.randrange(300) if i % 4 else i % 300 for i in range(1200)]
    texts = [None if i % 97 == 5 else ar[r] for i, r in enumerate(rows)]
    path = tmp_path / "hf_ar"
    datasets.Dataset.from_dict({"ar": texts, "en": [en[r] for r in rows]}).save_to_disk(str(path), max_shard_size="40KB")
    srcs = {"tr": {"lang": "ar", "kind": "translated", "loader": "hf", "path": str(path), "text_field": "ar",
                   "pair_field": "en", "val_fraction": 0.2, "val_max_bytes": 6000}}
    src = source_values(srcs["tr"])
    pieces = engine.plan_pieces("tr", src, 20000)
    assert len(pieces) >= 4 and all(len(p) == 1 for p in pieces)
    ranges = [(p[0].start, p[0].end) for p in pieces]
    assert ranges[0][0] == 0 and ranges[-1][1] == 1200 and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))

    info = shards.TokenizerInfo.from_tokenizer(tok)

    def build(cache, task_bytes=None):
        jobs = shards.plan_jobs(srcs, True, info, cache)
        return shard_build.build(jobs, info, workers=2, progress=False, task_bytes=task_bytes, log=lines.append)["tr"]

    lines: list = []
    one = build(tmp_path / "one")
    assert not lines or not any("tasks of about" in ln for ln in lines)
    many = build(tmp_path / "many", task_bytes=20000)
    assert any("tr:" in ln and "tasks of about" in ln for ln in lines)  # it went through the engine
    assert one.meta["docs_read"] == 1200 - sum(t is None for t in texts)
    assert one.meta["val"]["docs"] > 0 and one.meta["drops"]["duplicate"] > 0
    for f in shards.SHARD_FILES:
        assert (one.path / f).read_bytes() == (many.path / f).read_bytes(), f
    for k in ("train", "val", "docs_read", "drops", "key"):
        assert one.meta[k] == many.meta[k], k


def test_a_bad_line_in_a_later_task_is_one_line_naming_its_line_in_the_file(tok, tmp_path):  # noqa: F811
    f = tmp_path / "bad.jsonl"
    rows = [json.dumps({"text": t}, ensure_ascii=False) for t in _docs(AR_WORDS, 600, 40, length=12)]
    rows[517] = '{"text": "broken'
    f.write_text("\n".join(rows) + "\n", encoding="utf-8")
    info = shards.TokenizerInfo.from_tokenizer(tok)
    srcs = {"ar": {"lang": "ar", "kind": "natural", "loader": "jsonl", "path": str(f)}}
    with pytest.raises(ConfigError, match=r"^data\.sources\.ar: .*bad\.jsonl line 518 is not valid JSON") as exc:
        _build(srcs, info, tmp_path / "cache", task_bytes=8000)
    assert "\n" not in str(exc.value)
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []  # nothing left


def test_a_merge_that_fails_beside_another_is_one_line(tok, tmp_path):  # noqa: F811
    """Two sources merged side by side; one has no training text left after cleaning: one line
    names it, the other source is published, and nothing of the failed one is in the cache."""
    srcs = _corpus(tmp_path)
    srcs["en"]["min_chars"] = 100000  # every document is dropped
    info = shards.TokenizerInfo.from_tokenizer(tok)
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError, match=r"^data\.sources\.en: no training text left") as exc:
        _build(srcs, info, cache, task_bytes=6000)
    assert "\n" not in str(exc.value)
    jobs = {j.name: j for j in shards.plan_jobs(srcs, False, info, cache)}
    assert shards.load(jobs["ar"]) is not None and shards.load(jobs["en"]) is None


def test_one_worker_builds_a_large_source_through_the_engine(tok, tmp_path):  # noqa: F811
    """data.prepare.workers=1 (or a one-CPU allocation): datatrove runs the tasks in this process,
    and the folder is the one-process folder."""
    srcs = {"ar": _corpus(tmp_path)["ar"]}
    info = shards.TokenizerInfo.from_tokenizer(tok)
    lines: list = []
    built = _build(srcs, info, tmp_path / "cache", task_bytes=6000, workers=1, log=lines.append)["ar"]
    assert any("tasks of about" in ln for ln in lines)
    one = _build(srcs, info, tmp_path / "one")["ar"]
    for f in shards.SHARD_FILES:
        assert (built.path / f).read_bytes() == (one.path / f).read_bytes(), f


def test_a_merge_process_that_dies_is_one_line_not_a_wait(tok, tmp_path, monkeypatch):  # noqa: F811
    """A merge process killed (as the out-of-memory killer kills) ends the build with one line
    naming its source; the other source is published and the dead one's unfinished folder removed."""
    import signal

    from allam import cache_lock
    from allam.config import RunFailed

    srcs = _corpus(tmp_path)
    info = shards.TokenizerInfo.from_tokenizer(tok)
    real = shard_build._merge

    def dying(i, t0, lines):
        plan = shard_build._MERGING[i]
        if plan.job.name == "en":
            cache_lock.unique_name(plan.job.path, "tmp").mkdir(parents=True)  # half-written
            os.kill(os.getpid(), signal.SIGKILL)
        return real(i, t0, lines)

    monkeypatch.setattr(shard_build, "_merge", dying)
    cache = tmp_path / "cache"
    with pytest.raises(RunFailed, match=r"^data\.sources\.en: the process merging its shards was killed by SIGKILL "
                                        r"\(out of memory\?\); nothing was added to the cache") as exc:
        _build(srcs, info, cache, task_bytes=6000)
    assert "\n" not in str(exc.value)
    jobs = {j.name: j for j in shards.plan_jobs(srcs, False, info, cache)}
    assert shards.load(jobs["ar"]) is not None and shards.load(jobs["en"]) is None
    assert not list(cache.rglob("en-*.tmp-*"))
    # the same command again: the tokenized parts are kept as it said, so no task runs again (the
    # run's set of sources, by which datatrove's logs are named, is now `en` alone)
    monkeypatch.setattr(shard_build, "_merge", real)
    ran = tmp_path / "ran"
    ran.mkdir()

    def recording(stage, fn):
        def run(plan, rank):
            (ran / f"{stage}-{plan.job.name}-{rank}").touch()
            return fn(plan, rank)
        return run

    monkeypatch.setattr(engine_run, "count_piece", recording("count", engine.count_piece))
    monkeypatch.setattr(engine_run, "tokenize_piece", recording("tokenize", engine.tokenize_piece))
    assert _build(srcs, info, cache, task_bytes=6000)["en"].meta["train"]["docs"] > 0
    assert not list(ran.iterdir())


def test_a_task_process_that_dies_is_one_line_and_the_rerun_finishes(tok, tmp_path, monkeypatch):  # noqa: F811
    """A tokenize task killed (as the out-of-memory killer kills) ends the build with one line
    naming the stage and the task, where datatrove's pool waited forever for its result; the same
    command then finishes, keeping the tasks that had completed."""
    import signal

    from allam.config import RunFailed

    srcs = _corpus(tmp_path)
    info = shards.TokenizerInfo.from_tokenizer(tok)
    real = engine.tokenize_piece
    ran, kill = tmp_path / "ran", tmp_path / "kill"
    ran.mkdir()
    kill.touch()

    def dying(plan, rank):
        (ran / f"{plan.job.name}-{rank}").touch()
        if plan.job.name == "ar" and rank == 1 and kill.exists():
            os.kill(os.getpid(), signal.SIGKILL)
        return real(plan, rank)

    monkeypatch.setattr(engine_run, "tokenize_piece", dying)
    cache = tmp_path / "cache"
    with pytest.raises(RunFailed, match=r"^allam tokenize of data\.sources ar, en \(\d+ pieces\): task 1 was killed "
                                        r"by SIGKILL \(out of memory\?\); run the same command again") as exc:
        _build(srcs, info, cache, task_bytes=6000)
    assert "\n" not in str(exc.value)
    first = {p.name for p in ran.iterdir()}
    for p in ran.iterdir():
        p.unlink()
    kill.unlink()
    built = _build(srcs, info, cache, task_bytes=6000)
    assert set(built) == {"ar", "en"}
    second = {p.name for p in ran.iterdir()}
    assert "ar-1" in first and "ar-1" in second and not (first - {"ar-1"}) & second  # finished tasks are kept


def test_bad_input_found_by_a_run_cut_off_before_it_said_so_is_named_by_the_next_run(tok, tmp_path, monkeypatch):  # noqa: F811
    """A count task that meets a broken line records the error and completes (datatrove marks it);
    a run stopped before raising it left that mark over a piece never counted, and every later run
    skipped the task and failed with a traceback ("piece 1 has not been counted"). The next run
    now counts that piece again and names the line."""
    rows = [json.dumps({"text": t}, ensure_ascii=False) for t in _docs(AR_WORDS, 600, 40, length=12)]
    rows[100] = '{"text": "broken'
    (tmp_path / "bad.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    srcs = {"ar": {"lang": "ar", "kind": "natural", "loader": "jsonl", "path": str(tmp_path / "bad.jsonl")}}
    info = shards.TokenizerInfo.from_tokenizer(tok)

    def cut_off(plan, remove=True):
        raise KeyboardInterrupt  # Ctrl+C (or a preemption) right after the count stage

    with monkeypatch.context() as m:
        m.setattr(engine_run, "_raise_task_error", cut_off)
        with pytest.raises(KeyboardInterrupt):
            _build(srcs, info, tmp_path / "cache", task_bytes=8000)
    for _ in range(2):
        with pytest.raises(ConfigError, match=r"bad\.jsonl line 101 is not valid JSON"):
            _build(srcs, info, tmp_path / "cache", task_bytes=8000)


@pytest.mark.parametrize("task_bytes", [None, 6000], ids=["one-process", "engine"])
def test_paired_documents_are_deduplicated_by_their_translation(tok, tmp_path, task_bytes):  # noqa: F811
    """With data.parallel_pairs a training document is "original, blank line, translation" while a
    held-out one is the translation alone; both are hashed by the translation, so a held-out
    document repeated in a training chapter is dropped as a duplicate instead of training."""
    ar, en = _docs(AR_WORDS, 300, 21, 12), _docs(EN_WORDS, 300, 22, 12)
    ar[200], en[200] = ar[60], en[60]  # document 60 is held out (the second chapter of 50); 200 trains
    with open(tmp_path / "tr.jsonl", "w", encoding="utf-8") as fh:
        for a, e in zip(ar, en):
            fh.write(json.dumps({"text": a, "en": e}, ensure_ascii=False) + "\n")
    info = shards.TokenizerInfo.from_tokenizer(tok)
    srcs = {"tr": {"lang": "ar", "kind": "translated", "loader": "jsonl", "path": str(tmp_path / "tr.jsonl"),
                   "pair_field": "en"}}
    jobs = shards.plan_jobs(srcs, True, info, tmp_path / "cache")
    built = shard_build.build(jobs, info, workers=2, progress=False, task_bytes=task_bytes, log=lambda *a: None)["tr"]
    assert built.meta["drops"]["duplicate"] == 1
    assert ar[60] in info.backend.decode(built.tokens("val").tolist())
    train = info.backend.decode(built.tokens("train").tolist())
    assert ar[60] not in train and en[1] in train  # the held-out text never trains; pairs still do


def test_the_script_check_judges_the_whole_source_in_one_process_and_in_the_engine(tok, tmp_path):  # noqa: F811
    """An Arabic source whose first 1,100 documents are English (27% of it): one process refused
    it after its first 1,024 documents while the engine, which checks once at the end, published
    it; both now judge the whole source the same way. A source mostly in the wrong script is
    refused by both."""
    f = tmp_path / "ar.txt"
    f.write_text("\n".join(_docs(EN_WORDS, 1100, 7, 12) + _docs(AR_WORDS, 3000, 8, 12)) + "\n", encoding="utf-8")
    g = tmp_path / "wrong.txt"
    g.write_text("\n".join(_docs(EN_WORDS, 700, 9, 12) + _docs(AR_WORDS, 300, 10, 12)) + "\n", encoding="utf-8")
    info = shards.TokenizerInfo.from_tokenizer(tok)
    for label, task_bytes in (("one-process", None), ("engine", 40000)):
        built = _build({"ar": {"lang": "ar", "kind": "natural", "loader": "text", "path": str(f)}}, info,
                       tmp_path / label, task_bytes=task_bytes)["ar"]
        assert (built.meta["docs_read"], built.meta["drops"]["wrong_script"]) == (4100, 1100), label
        with pytest.raises(ConfigError, match=r"^data\.sources\.ar\.lang=ar: 700 of 1,000 documents are mostly not Arabic"):
            _build({"ar": {"lang": "ar", "kind": "natural", "loader": "text", "path": str(g)}}, info,
                   tmp_path / f"{label}-wrong", task_bytes=task_bytes and 8000)


def test_tokenize_tasks_read_the_counts_once_per_source_not_once_per_task(tok, tmp_path, monkeypatch):  # noqa: F811
    """Each tokenize task needs its first document's index and the hold-out cap's last chapter,
    which depend on every piece's counts (and, under a cap, every document's size): read once per
    source into counts/summary.json, not by every task (quadratic in the source's size)."""
    srcs = _corpus(tmp_path)
    info = shards.TokenizerInfo.from_tokenizer(tok)
    calls: dict[str, int] = {}
    real = engine._counts

    def counting(plan):
        calls[plan.job.name] = calls.get(plan.job.name, 0) + 1
        return real(plan)

    monkeypatch.setattr(engine, "_counts", counting)
    built = _build(srcs, info, tmp_path / "cache", task_bytes=6000, workers=1)  # the tasks run in this process
    jobs = {j.name: j for j in shards.plan_jobs(srcs, False, info, tmp_path / "one")}
    one = shard_build.build(list(jobs.values()), info, workers=1, progress=False, log=lambda *a: None)
    assert calls == {"ar": 1, "en": 1}
    for name in ("ar", "en"):
        assert built[name].meta["train"] == one[name].meta["train"] and built[name].meta["val"] == one[name].meta["val"]


def test_a_merge_process_that_dies_after_publishing_is_a_finished_build(tok, tmp_path, monkeypatch):  # noqa: F811
    """Killed while clearing its work folder, after its shards were published: the build returns
    them (it said "nothing was added to the cache") and the work folder is cleared."""
    import signal

    srcs = _corpus(tmp_path)
    info = shards.TokenizerInfo.from_tokenizer(tok)
    real = engine.clear_work
    parent = os.getpid()

    def dying(plan, keep_logs=False):
        if os.getpid() != parent and plan.job.name == "en":
            os.kill(os.getpid(), signal.SIGKILL)
        return real(plan, keep_logs)

    monkeypatch.setattr(engine, "clear_work", dying)
    built = _build(srcs, info, tmp_path / "cache", task_bytes=6000)
    assert set(built) == {"ar", "en"} and built["en"].meta["train"]["docs"] > 0
    jobs = {j.name: j for j in shards.plan_jobs(srcs, False, info, tmp_path / "cache")}
    assert not engine.work_folder(jobs["en"]).exists()


def test_a_source_that_changed_while_built_leaves_no_work_folder_behind(tok, tmp_path, monkeypatch):  # noqa: F811
    """Files that changed during the build give the source another cache key, so its work folder
    (counts and parts of the old files) would never be used again: a local build removes it, and a
    SLURM merge job keeps only the jobs' logs."""
    srcs = {"ar": _corpus(tmp_path)["ar"]}
    info = shards.TokenizerInfo.from_tokenizer(tok)
    cache = tmp_path / "cache"
    job = shards.plan_jobs(srcs, False, info, cache)[0]
    monkeypatch.setattr(shard_build, "content_fingerprint", lambda *a: "another writer appended")
    with pytest.raises(ConfigError, match=r"^data\.sources\.ar: its files changed while being prepared"):
        _build(srcs, info, cache, task_bytes=6000, workers=1)
    assert not engine.work_folder(job).exists() and shards.load(job) is None

    plan = engine.make_plan(job, info, 6000, min_pieces=1)  # executor=slurm: the tasks ran, then the merge job
    engine_run.run_local([plan], 1, engine_run.logs_folder([plan]))
    (plan.work / "logs").mkdir(exist_ok=True)
    (plan.work / "logs" / "merge.log").write_text("the merge job's log")
    engine.record_submission(plan, {"jobs": {"count": 1, "tokenize": 2, "merge": 3}, "state": "submitted"})
    with pytest.raises(ConfigError, match=r"its files changed while being prepared"):
        shard_build.merge_job(plan)
    assert sorted(p.name for p in plan.work.iterdir()) == ["logs"] and shards.load(job) is None


def _interrupted_build(srcs, info, cache, q):
    """Builds in a child process whose merge of `en` hangs, until the test sends it Ctrl+C."""
    import signal
    import time

    # Ctrl+C as at a terminal: a suite started in the background (nohup ... &) inherits SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    real = engine.merge_parts

    def slow(plan, *a, **k):
        if plan.job.name == "en":
            q.put("merging")
            time.sleep(120)
        return real(plan, *a, **k)

    engine.merge_parts = slow
    try:
        _build(srcs, info, cache, task_bytes=6000)
        q.put("built")
    except KeyboardInterrupt:
        q.put("interrupted")


def test_ctrl_c_during_merges_leaves_no_unfinished_folder(tok, tmp_path):  # noqa: F811
    import multiprocessing as mp
    import signal

    ctx = mp.get_context("fork")
    q = ctx.Queue()
    cache = tmp_path / "cache"
    info = shards.TokenizerInfo.from_tokenizer(tok)
    child = ctx.Process(target=_interrupted_build, args=(_corpus(tmp_path), info, cache, q))
    child.start()
    assert q.get(timeout=120) == "merging"
    os.kill(child.pid, signal.SIGINT)
    assert q.get(timeout=60) == "interrupted"
    child.join(30)
    assert not list(cache.rglob("*.tmp-*"))  # the merges removed their unfinished folders


@pytest.mark.parametrize("override, message", [
    ("data.prepare.executor=slurm", r"^data\.prepare\.slurm_partition=None: executor=slurm needs the SLURM partition"),
    ("data.prepare.task_bytes=4096", r"^data\.prepare\.task_bytes=4096: must be at least 1048576"),
    ("data.prepare.workers=0", r"^data\.prepare\.workers=0: must be positive"),
])
def test_prepare_settings_are_checked_at_compose_time(make_cfg, override, message):
    from allam.config import validate

    with pytest.raises(ConfigError, match=message):
        validate(make_cfg(override))


def test_a_run_cut_off_after_its_tasks_resumes_without_redoing_them(tok, tmp_path):  # noqa: F811
    """datatrove's completion marks: run again, the local executor skips the finished tasks (their
    parts are not rewritten) and the merge makes the folder one process makes."""
    srcs = {"ar": _corpus(tmp_path)["ar"]}
    info = shards.TokenizerInfo.from_tokenizer(tok)
    job = shards.plan_jobs(srcs, False, info, tmp_path / "cache")[0]
    plan = engine.make_plan(job, info, 6000, workers=2)
    logs = engine_run.logs_folder([plan])
    engine_run.run_local([plan], 2, logs)  # the run is cut off here, before its merge
    parts = {p: p.stat().st_mtime_ns for p in (plan.work / "parts").glob("*/tokens.bin")}
    assert len(parts) == len(plan.pieces)
    again = engine.make_plan(job, info, 6000, workers=2)  # the same plan: the work folder is kept
    engine_run.run_local([again], 2, engine_run.logs_folder([again]))
    assert {p: p.stat().st_mtime_ns for p in parts} == parts
    built = _build(srcs, info, tmp_path / "cache", task_bytes=6000)["ar"]
    one = _build(srcs, info, tmp_path / "one")["ar"]
    assert (built.path / "train.bin").read_bytes() == (one.path / "train.bin").read_bytes()


def _slurm_cfg():
    """data.prepare's SLURM keys as submit() reads them (30,000-byte tasks)."""
    from omegaconf import OmegaConf

    class Cfg:
        slurm_time, slurm_partition, slurm_cpus_per_task, slurm_mem_per_cpu_gb = "1:00:00", "cpu", 1, 2
        slurm_env_command, slurm_max_parallel, slurm_sbatch_args, task_bytes = None, None, OmegaConf.create({}), 30000

    return Cfg


def _fake_slurm(bin_dir: Path, log: Path) -> None:
    """`sbatch` that records each script and answers a job id; `scontrol show hostnames` this host;
    `srun` runs its command here."""
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"""#!/bin/bash
n=$(($(ls {log} 2>/dev/null | wc -l) + 1)); cp "${{@: -1}}" {log}/$n.sh; echo "$@" > {log}/$n.args; echo "Submitted batch job $((100 + n))"
""")
    (bin_dir / "scontrol").write_text("#!/bin/bash\nhostname\n")
    (bin_dir / "srun").write_text('#!/bin/bash\nwhile [[ "$1" == -* ]]; do [[ "$1" == -n ]] && shift; shift; done; exec "$@"\n')
    for f in bin_dir.iterdir():
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    log.mkdir()


@pytest.mark.slow
def test_slurm_arrays_run_one_index_at_a_time_make_the_same_folder(tok, tmp_path):  # noqa: F811
    """task=prepare data.prepare.executor=slurm submits count, tokenize and merge jobs; running each
    array index as SLURM would (the scripts it wrote, SLURM_ARRAY_TASK_ID set) builds the folder
    that one process builds, and the same command then finds it in the cache."""
    srcs = _corpus(tmp_path)
    info = shards.TokenizerInfo.from_tokenizer(tok)
    one = _build({"ar": srcs["ar"]}, info, tmp_path / "one")["ar"]
    bin_dir, log = tmp_path / "bin", tmp_path / "sbatch"
    _fake_slurm(bin_dir, log)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}

    Cfg = _slurm_cfg()

    jobs = shards.plan_jobs({"ar": srcs["ar"]}, False, info, tmp_path / "cache")
    old = os.environ["PATH"]
    os.environ["PATH"] = env["PATH"]
    try:
        sub = shard_build.submit(jobs, info, Cfg, log=lambda *a: None)
    finally:
        os.environ["PATH"] = old
    assert len(sub) == 1 and sub[0]["pieces"] >= 3 and sub[0]["state"] == "submitted"
    n_scripts = len(list(log.glob("*.sh")))
    said: list = []
    again = shard_build.submit(jobs, info, Cfg, log=said.append)  # before the jobs ran: not submitted twice
    assert [a["state"] for a in again] == ["pending"] and again[0]["jobs"] == sub[0]["jobs"]
    assert len(list(log.glob("*.sh"))) == n_scripts
    n = sub[0]["pieces"]
    assert f"count 0/{n}, tokenize 0/{n}, merge 0/1 tasks done" in said[0], said
    scripts = [s for s in sorted(log.glob("*.sh"), key=lambda p: int(p.stem)) if "merge_stats" not in s.read_text()]
    stages = [s.read_text().split("#SBATCH --job-name=")[1].split("\n")[0] for s in scripts]
    assert stages == ["allam-count-ar", "allam-tokenize-ar", "allam-merge-ar"]
    assert f"#SBATCH --array=0-{sub[0]['pieces'] - 1}" in scripts[1].read_text()
    assert "--dependency=afterok:101" in (log / (scripts[1].stem + ".args")).read_text()  # tokenize after count
    for stage, script in zip(stages, scripts):
        tasks = 1 if stage.startswith("allam-merge") else sub[0]["pieces"]
        for i in range(tasks):
            subprocess.run(["bash", str(script)], check=True, capture_output=True, cwd=tmp_path,
                           env={**env, "SLURM_ARRAY_TASK_ID": str(i), "SLURM_NODELIST": "localhost", "SLURM_JOB_ID": "1"})
        if stage.startswith("allam-count"):  # the command run again now says how far the build has got
            said.clear()
            shard_build.submit(jobs, info, Cfg, log=said.append)
            assert f"count {n}/{n}, tokenize 0/{n}, merge 0/1 tasks done" in said[0], said
    built = shards.load(jobs[0])
    assert built is not None
    for f in shards.SHARD_FILES:
        assert (built.path / f).read_bytes() == (one.path / f).read_bytes()
    assert sorted(p.name for p in Path(sub[0]["work"]).iterdir()) == ["logs", "slurm"]  # the parts are gone
    assert shard_build.submit(jobs, info, Cfg) == []  # in the cache: nothing to submit


def test_a_source_submitted_to_slurm_is_not_built_twice_meanwhile(tok, tmp_path):  # noqa: F811
    """While SLURM jobs build a source (submitted.json in its work folder), a training run that finds
    its shards missing stops with one line naming the jobs instead of building them too, and
    task=prepare does not submit it again; once the record is gone (the merge job removes it) the
    source builds as before."""
    srcs = {"ar": _corpus(tmp_path)["ar"]}
    info = shards.TokenizerInfo.from_tokenizer(tok)
    cache = tmp_path / "cache"
    job = shards.plan_jobs(srcs, False, info, cache)[0]
    plan = engine.make_plan(job, info, 6000, min_pieces=1)
    engine.record_submission(plan, {"source": "ar", "pieces": len(plan.pieces), "work": str(plan.work),
                                    "jobs": {"count": 101, "tokenize": 102, "merge": 103}, "state": "submitted"})
    with pytest.raises(ConfigError, match=r"^data\.sources\.ar: its shards are being built by SLURM jobs submitted "
                                          r".*merge 103.*run again once merge job 103 has finished") as exc:
        _build(srcs, info, cache, task_bytes=6000)
    assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="being built by SLURM jobs"):
        _build(srcs, info, cache)  # the one-process path too
    assert shards.load(job) is None

    class Cfg:
        task_bytes = 6000

    said: list = []
    pending = shard_build.submit(shards.plan_jobs(srcs, False, info, cache), info, Cfg, log=said.append)
    assert [p["state"] for p in pending] == ["pending"] and pending[0]["jobs"]["merge"] == 103
    n = len(plan.pieces)
    assert f"count 0/{n}, tokenize 0/{n}, merge 0/1 tasks done) and not merged yet" in said[0], said
    (plan.work / engine.SUBMITTED).unlink()
    assert _build(srcs, info, cache, task_bytes=6000)["ar"].meta["train"]["docs"] > 0


def test_a_submission_and_a_local_build_never_share_a_work_folder(tok, tmp_path, monkeypatch):  # noqa: F811
    """Both decide under the source's lock: task=prepare executor=slurm waits for a local build in
    progress and then sees what it did (here: a submission recorded meanwhile, so it submits
    nothing), and a local build that takes the lock after a submission was recorded stops with
    its one line instead of planning over the SLURM build's work folder."""
    import threading
    import time

    from allam import cache_lock

    srcs = {"ar": _corpus(tmp_path)["ar"]}
    info = shards.TokenizerInfo.from_tokenizer(tok)
    cache = tmp_path / "cache"
    job = shards.plan_jobs(srcs, False, info, cache)[0]
    holding = threading.Event()

    def other_process():  # holds the lock, and submits the source while holding it
        with cache_lock.building(job.path, "the shards of source ar", log=lambda *a: None):
            holding.set()
            time.sleep(1.0)
            plan = engine.make_plan(job, info, 6000, min_pieces=1)
            engine.record_submission(plan, {"source": "ar", "pieces": len(plan.pieces), "work": str(plan.work),
                                            "jobs": {"count": 101, "tokenize": 102, "merge": 103}, "state": "submitted"})

    class Cfg:
        task_bytes = 6000

    # as if each command had looked for a submission (pending) just before the other recorded one:
    # what decides is the check each makes again under the lock
    monkeypatch.setattr(engine_run, "pending", lambda *a, **k: None)
    t = threading.Thread(target=other_process)
    t.start()
    holding.wait()
    said: list = []
    pending = shard_build.submit([job], info, Cfg, log=said.append)  # no sbatch here: submitting would fail
    t.join()
    assert [(p["state"], p["jobs"]["merge"]) for p in pending] == [("pending", 103)]
    assert any("submitted meanwhile" in line for line in said), said
    with pytest.raises(ConfigError, match=r"^data\.sources\.ar: its shards are being built by SLURM jobs"):
        _build(srcs, info, cache, task_bytes=6000)


def test_a_slurm_build_that_ended_is_not_waited_for(tok, tmp_path, monkeypatch):  # noqa: F811
    """Where squeue answers: jobs still queued keep the source pending; a job that can no longer
    start (DependencyNeverSatisfied, e.g. after a count task died) is one line naming it; a task's
    recorded bad input is its one line; jobs all gone without publishing, or a submitter that died
    before SLURM answered, are forgotten with one log line and the source builds here. Each ending
    moves the jobs' logs to <work>.ended-<time>/ and clears the work folder."""
    from allam.config import RunFailed

    srcs = {"ar": _corpus(tmp_path)["ar"]}
    info = shards.TokenizerInfo.from_tokenizer(tok)
    cache = tmp_path / "cache"
    job = shards.plan_jobs(srcs, False, info, cache)[0]
    asked: list = []

    def queue(answer):
        def fake(ids):
            asked.append(ids)
            return answer
        return fake

    def submit_fake(jobs={"count": 101, "tokenize": 102, "merge": 103}):
        plan = engine.make_plan(job, info, 6000, min_pieces=1)
        (plan.work / "logs").mkdir(exist_ok=True)
        (plan.work / "logs" / "count.log").write_text("the count stage's log")
        engine.record_submission(plan, {"jobs": jobs, "state": "submitted"})
        return plan

    def ended():
        return sorted(cache.glob(f"{job.path.name}.work.ended-*"))

    plan = submit_fake()
    monkeypatch.setattr(engine_run, "slurm_queue", queue({"102": "None", "103": "Dependency"}))
    with pytest.raises(ConfigError, match="being built by SLURM jobs"):
        _build(srcs, info, cache)
    assert asked[-1] == ["101", "102", "103"]

    monkeypatch.setattr(engine_run, "slurm_queue", queue({"102": "DependencyNeverSatisfied", "103": "Dependency"}))
    with pytest.raises(RunFailed, match=r"^data\.sources\.ar: the SLURM build submitted .* failed before jobs 102 "
                                        r"could start \(logs in .*\.ended-.*\); scancel 102 and run again$"):
        _build(srcs, info, cache)
    assert not plan.work.exists() and (ended()[-1] / "logs" / "count.log").read_text() == "the count stage's log"

    plan = submit_fake()
    (plan.work / "errors").mkdir()
    (plan.work / "errors" / "count-00001.json").write_text(json.dumps(
        {"kind": "ConfigError", "message": "data.sources.ar: bad input in piece 1", "rank": 1}))
    with pytest.raises(ConfigError, match=r"^data\.sources\.ar: bad input in piece 1 \(found by the SLURM build "
                                          r"submitted .*; its merge job 103 will not run: scancel it; logs in .*\)$"):
        _build(srcs, info, cache)
    assert not plan.work.exists()

    submit_fake()
    monkeypatch.setattr(engine_run, "slurm_queue", queue({}))
    lines: list = []
    built = _build(srcs, info, cache, task_bytes=6000, log=lines.append)["ar"]
    assert any("ended without publishing its shards (its logs: " in ln and "building them afresh" in ln for ln in lines)
    assert built.meta["train"]["docs"] > 0

    other = {"ar": {**srcs["ar"], "val_fraction": 0.1}}  # another cache folder of the same file
    job = shards.plan_jobs(other, False, info, cache)[0]
    plan = engine.make_plan(job, info, 6000, min_pieces=1)
    engine.record_submission(plan, {"source": "ar", "jobs": {}, "state": "submitting"})
    with pytest.raises(ConfigError, match="being built by SLURM jobs"):  # sbatch may be answering right now
        _build(other, info, cache)
    old = os.stat(plan.work / engine.SUBMITTED).st_mtime - engine_run.STALE_SUBMITTING_S - 1
    os.utime(plan.work / engine.SUBMITTED, (old, old))
    lines.clear()
    assert _build(other, info, cache, log=lines.append)["ar"].meta["train"]["docs"] > 0
    assert any("never recorded its jobs (its submitter died)" in ln for ln in lines)


def _build_under_a_stop_handler(srcs, info, cache, q, task_bytes):  # noqa: F811
    """A training run's stop handler (SIGTERM: stop at the next step) is installed when its data
    module builds shards; its pool children inherit it."""
    import signal

    signal.signal(signal.SIGTERM, lambda *a: None)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        _build(srcs, info, cache, workers=2, task_bytes=task_bytes)
        q.put("built")
    except ConfigError as exc:
        q.put(str(exc))


@pytest.mark.parametrize("task_bytes", [None, 40000], ids=["pool", "engine"])
def test_a_bad_line_ends_the_pool_promptly_under_a_stop_handler(tok, tmp_path, task_bytes):  # noqa: F811
    """The pool's (and datatrove's) processes take the default action on SIGTERM, so terminating
    them after an error returns at once (a handler inherited through fork kept them alive: the
    pool's error waited 300 s, datatrove's pool never returned)."""
    import multiprocessing as mp

    f = tmp_path / "late.jsonl"
    rows = [json.dumps({"text": t}, ensure_ascii=False) for t in _docs(AR_WORDS, 3000, 41, length=12)]
    f.write_text("\n".join(rows + ["{broken"]) + "\n", encoding="utf-8")
    srcs = {"ar": {"lang": "ar", "kind": "natural", "loader": "jsonl", "path": str(f)}}
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_build_under_a_stop_handler, args=(srcs, shards.TokenizerInfo.from_tokenizer(tok),
                                                               tmp_path / "cache", q, task_bytes))
    p.start()
    p.join(60)
    alive = p.is_alive()
    if alive:
        p.kill()
    assert not alive, "the build hung after its error"
    assert "line 3001 is not valid JSON" in q.get(timeout=5)


def test_with_dedup_across_sources_a_slurm_merge_waits_for_the_earlier_sources_merges(tok, tmp_path, monkeypatch):  # noqa: F811
    """executor=slurm with data.dedup_across_sources: the second Arabic source's merge job depends on
    its own tokenize array and on the first source's merge (it reads the hashes that one kept), also
    when the first was submitted by an earlier run; a source one process builds here (a demo
    source) waits for the next run instead of building without them; English is not held back."""

    ar = _docs(AR_WORDS, 300, 52, length=12)
    for name, rows in (("a", ar[:200]), ("b", ar[100:300])):
        (tmp_path / f"{name}.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (tmp_path / "e.txt").write_text("\n".join(_docs(EN_WORDS, 100, 53)) + "\n", encoding="utf-8")
    srcs = {n: {"lang": lang, "kind": "natural", "loader": "text", "path": str(tmp_path / f"{n}.txt")}
            for n, lang in (("a", "ar"), ("b", "ar"), ("e", "en"))}
    srcs["d"] = {"lang": "ar", "kind": "translated", "loader": "demo", "path": "bible_ar"}
    info = shards.TokenizerInfo.from_tokenizer(tok)
    bin_dir, log = tmp_path / "bin", tmp_path / "sbatch"
    _fake_slurm(bin_dir, log)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")

    Cfg = _slurm_cfg()

    def merge_deps():
        out = {}
        for args in log.glob("*.args"):
            script = (log / f"{args.stem}.sh").read_text()
            if "allam-merge-" in script and "merge_stats" not in script:
                name = script.split("#SBATCH --job-name=allam-merge-")[1].split("\n")[0]
                out[name] = args.read_text().split("--dependency=afterok:")[1].split()[0]
        return out

    said: list = []
    jobs = shards.plan_jobs({k: srcs[k] for k in ("a", "e")}, False, info, tmp_path / "cache", dedup_across=True)
    first = {s["source"]: s for s in shard_build.submit(jobs, info, Cfg, log=said.append)}
    jobs = shards.plan_jobs(srcs, False, info, tmp_path / "cache", dedup_across=True)  # b and d added later
    subs = {s["source"]: s for s in shard_build.submit(jobs, info, Cfg, log=said.append)}
    assert [subs[n]["state"] for n in ("a", "e", "b", "d")] == ["pending", "pending", "submitted", "waiting"]
    deps = merge_deps()
    assert deps["b"] == f"{subs['b']['jobs']['tokenize']}:{first['a']['jobs']['merge']}"
    assert deps["a"] == str(first["a"]["jobs"]["tokenize"]) and deps["e"] == str(first["e"]["jobs"]["tokenize"])
    assert subs["d"]["after"] == ["a", "b"] and shards.load(jobs[3]) is None
    assert any(line.startswith("data: d: waits for the shards of a, b (data.dedup_across_sources") for line in said)


def test_a_refused_merge_submission_cancels_the_jobs_before_it(tok, tmp_path, monkeypatch):  # noqa: F811
    """sbatch refusing the merge job (e.g. a dependency SLURM no longer knows) leaves no count or
    tokenize job running without a record: they are cancelled, and nothing says the source is pending."""

    srcs = {"ar": _corpus(tmp_path)["ar"]}
    info = shards.TokenizerInfo.from_tokenizer(tok)
    bin_dir, log = tmp_path / "bin", tmp_path / "sbatch"
    _fake_slurm(bin_dir, log)
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(sbatch.read_text().replace("#!/bin/bash\n", "#!/bin/bash\n"
                                                 'grep -q "job-name=allam-merge" "${@: -1}" && exit 1\n', 1))
    (bin_dir / "scancel").write_text(f"#!/bin/bash\necho \"$@\" > {tmp_path}/cancelled\n")
    (bin_dir / "scancel").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")

    Cfg = _slurm_cfg()

    jobs = shards.plan_jobs(srcs, False, info, tmp_path / "cache")
    with pytest.raises(Exception):
        shard_build.submit(jobs, info, Cfg, log=lambda *a: None)
    ids = {sh.read_text().split("#SBATCH --job-name=")[1].split("\n")[0]: str(100 + int(sh.stem))
           for sh in log.glob("*.sh") if "merge_stats" not in sh.read_text()}  # the fake sbatch's job ids
    assert (tmp_path / "cancelled").read_text().split() == [ids["allam-count-ar"], ids["allam-tokenize-ar"]]
    assert not (engine.work_folder(jobs[0]) / engine.SUBMITTED).exists()


def test_dedup_across_sources_of_a_language_drops_what_an_earlier_source_kept(tok, tmp_path):  # noqa: F811
    """data.dedup_across_sources: the second Arabic source drops the documents the first kept (also
    built in pieces); the English source is untouched; without it the sources dedup on their own."""
    ar = _docs(AR_WORDS, 300, 50, length=12)
    for name, rows in (("a", ar[:200]), ("b", ar[100:300] * 2)):  # b: 100 of a's documents, and itself twice
        (tmp_path / f"{name}.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (tmp_path / "e.txt").write_text("\n".join(_docs(EN_WORDS, 100, 51)) + "\n", encoding="utf-8")
    srcs = {n: {"lang": lang, "kind": "natural", "loader": "text", "path": str(tmp_path / f"{n}.txt"), "val_fraction": 0.0}
            for n, lang in (("a", "ar"), ("b", "ar"), ("e", "en"))}
    info = shards.TokenizerInfo.from_tokenizer(tok)
    alone = _build(srcs, info, tmp_path / "alone")
    jobs = shards.plan_jobs(srcs, False, info, tmp_path / "across", dedup_across=True)
    assert [j.name for j in jobs[1].after] == ["a"] and jobs[2].after == []
    across = shard_build.build(jobs, info, workers=2, progress=False, log=lambda *a: None)
    assert alone["b"].meta["train"]["docs"] == 200 and alone["b"].meta["drops"]["duplicate"] == 200
    assert across["b"].meta["train"]["docs"] == 100 and across["b"].meta["drops"]["duplicate"] == 300
    assert across["a"].meta["train"] == alone["a"].meta["train"] and across["e"].meta["train"] == alone["e"].meta["train"]
    pieces = shards.plan_jobs(srcs, False, info, tmp_path / "pieces", dedup_across=True)
    built = shard_build.build(pieces, info, workers=2, progress=False, log=lambda *a: None, task_bytes=4000)
    for name in srcs:
        assert (built[name].path / "train.bin").read_bytes() == (across[name].path / "train.bin").read_bytes()
