"""Builders racing on one source's shard folder (allam/cache_lock.py): with working locks one
builds and the other waits, saying for whom; without them (locks that do not reach across hosts)
both build, the first complete folder wins and is never replaced; a waiter gives up with one line."""
from __future__ import annotations

import multiprocessing as mp
import os

import pytest

from allam.config import ConfigError
from allam import cache_lock
from allam.data import shard_build, shards
from test_data import corpus, sources, tok  # noqa: F401  (fixtures)

FORK = mp.get_context("fork")


def _jobs(tok, corpus, cache):  # noqa: F811
    srcs = {k: v for k, v in sources(corpus).items() if k == "ar_nat"}
    return shards.plan_jobs(srcs, False, shards.TokenizerInfo.from_tokenizer(tok), cache)


def _builder(jobs, info, out, started=None, barrier=None, broken_locks=False, slow_s=0.0):
    """One builder process: builds the shards, reports (its pid, the meta it loaded, what it logged)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    lines = []
    if broken_locks:  # a filesystem whose locks do not reach the other builder
        import contextlib

        cache_lock.building = lambda *a, **k: contextlib.nullcontext()
    real_build_one, real_publish = shard_build._build_one, cache_lock.publish

    def build_one(*a, **k):
        if started is not None:
            started.set()
        import time

        time.sleep(slow_s)
        return real_build_one(*a, **k)

    def publish(*a, **k):
        if barrier is not None:
            barrier.wait(timeout=60)  # both builds are finished: publish at once
        return real_publish(*a, **k)

    shard_build._build_one, cache_lock.publish = build_one, publish
    try:
        res = shard_build.build(jobs, info, workers=0, progress=False, log=lines.append, wait_s=60)
        out.put((os.getpid(), res["ar_nat"].meta, lines))
    except BaseException as exc:  # reported, not swallowed
        out.put((os.getpid(), None, [f"{type(exc).__name__}: {exc}"]))


def _run(*kwargs_list, jobs, info, stagger=None):
    out = FORK.Queue()
    procs = []
    for i, kw in enumerate(kwargs_list):
        p = FORK.Process(target=_builder, args=(jobs, info, out), kwargs=kw)
        p.start()
        procs.append(p)
        if i == 0 and stagger is not None:
            assert stagger.wait(60)  # the first one holds the lock and builds
    got = {pid: (meta, lines) for pid, meta, lines in (out.get(timeout=120) for _ in procs)}
    for p in procs:
        p.join(60)
    return [p.pid for p in procs], got


def _leftovers(cache):
    return sorted(p.name for p in cache.iterdir() if ".tmp-" in p.name or ".damaged-" in p.name)


def test_with_working_locks_one_builds_and_the_other_waits_saying_for_whom(tok, corpus, tmp_path):  # noqa: F811
    jobs = _jobs(tok, corpus, tmp_path / "cache")
    info = shards.TokenizerInfo.from_tokenizer(tok)
    started = FORK.Event()
    (first, second), got = _run({"started": started, "slow_s": 1.5}, {}, jobs=jobs, info=info, stagger=started)
    assert got[first][0] is not None and got[second][0] is not None, got
    assert got[first][0]["built_by"] == got[second][0]["built_by"] == f"host {cache_lock.HOST} pid {first}"
    waited = [line for line in got[second][1] if line.startswith("cache: waiting for")]
    assert waited and f"host {cache_lock.HOST} pid {first} since" in waited[0] and "data.cache_wait_s" in waited[0]
    assert not any("docs read" in line for line in got[second][1])  # it built nothing
    assert _leftovers(tmp_path / "cache") == []


def test_without_working_locks_the_first_complete_folder_wins(tok, corpus, tmp_path):  # noqa: F811
    cache = tmp_path / "cache"
    jobs = _jobs(tok, corpus, cache)
    info = shards.TokenizerInfo.from_tokenizer(tok)
    barrier = FORK.Barrier(2)
    pids, got = _run(*[{"barrier": barrier, "broken_locks": True}] * 2, jobs=jobs, info=info)
    metas = [got[p][0] for p in pids]
    assert all(m is not None for m in metas), got
    winner = metas[0]["built_by"]
    assert metas[1]["built_by"] == winner  # both read the one published folder
    losers = [p for p in pids if f"pid {p}" not in winner]
    assert len(losers) == 1
    assert any("another builder finished" in line and "matches it" in line for line in got[losers[0]][1])
    assert shards.load(jobs[0]).meta["built_by"] == winner and _leftovers(cache) == []


def test_a_waiter_gives_up_after_cache_wait_s_with_one_line(tmp_path):
    path = tmp_path / "src-abc"
    said = []
    with cache_lock.building(path, "the shards of source src"):
        with pytest.raises(ConfigError) as err:
            with cache_lock.building(path, "the shards of source src", wait_s=0.3, log=said.append, poll_s=0.05):
                pass
    line = str(err.value)
    assert "\n" not in line and line.startswith("data.cache_wait_s=0.3: waited")
    assert f"host {cache_lock.HOST} pid {os.getpid()} since" in line and str(path) + ".lock" in line
    assert len(said) == 1 and said[0].startswith(f"cache: waiting for host {cache_lock.HOST} pid {os.getpid()}")
    with cache_lock.building(path, "the shards of source src", wait_s=0.3):  # released: taken at once
        pass


def test_publish_keeps_a_complete_folder_checks_it_and_replaces_a_damaged_one(tmp_path):
    path = tmp_path / "src-abc"

    def folder(name, text):
        d = tmp_path / name
        d.mkdir()
        (d / "data").write_text(text)
        return d

    def complete(p):
        return (p / "data").is_file() and (p / "data").read_text() != "damaged"

    def same(a, b):
        x, y = (a / "data").read_text(), (b / "data").read_text()
        return None if x == y else f"{x} vs {y}"

    said = []
    assert cache_lock.publish(folder("t1", "v1"), path, complete=complete, same=same, what="src", log=said.append)
    assert not cache_lock.publish(folder("t2", "v1"), path, complete=complete, same=same, what="src", log=said.append)
    assert (path / "data").read_text() == "v1" and not (tmp_path / "t2").exists() and "matches it" in said[0]
    with pytest.raises(ConfigError, match=r"src: another builder published .* differs from this one's \(v2 vs v1\)"):
        cache_lock.publish(folder("t3", "v2"), path, complete=complete, same=same, what="src")
    (path / "data").write_text("damaged")
    assert cache_lock.publish(folder("t4", "v4"), path, complete=complete, same=same, what="src")
    assert (path / "data").read_text() == "v4" and _leftovers(tmp_path) == []


def _tokenizer_builder(cache, out, arrived, started=None):
    """One process building the small English tokenizer: reports (its pid, its log lines). The one
    given `started` holds its build until the other says it waits (`arrived`), however slow the
    machine is."""
    import logging

    from omegaconf import OmegaConf

    from allam.config import TokenizerConfig
    from allam.data.demo import demo_texts
    from allam.tokenizer import build_tokenizer, spm as spm_util

    lines = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())
            if lines[-1].startswith("cache: waiting"):
                arrived.set()

    logging.getLogger("allam").addHandler(Keep())
    logging.getLogger("allam").setLevel(logging.INFO)
    if started is not None:  # hold the build long enough for the other process to arrive
        real = spm_util.train_bpe

        def slow(*a, **k):
            started.set()
            arrived.wait(120)
            return real(*a, **k)

        spm_util.train_bpe = slow
    cfg = OmegaConf.merge(OmegaConf.structured(TokenizerConfig), {"english_vocab_size": 1024, "training_words": 20000})
    try:
        build_tokenizer(cfg, cache_dir=cache, texts=lambda lang: demo_texts(lang, "train"))
        out.put((os.getpid(), lines))
    except BaseException as exc:
        out.put((os.getpid(), [f"{type(exc).__name__}: {exc}"]))


def test_a_tokenizer_is_trained_once_when_ranks_ask_at_the_same_time(tmp_path):
    out, started, arrived = FORK.Queue(), FORK.Event(), FORK.Event()
    first = FORK.Process(target=_tokenizer_builder, args=(tmp_path, out, arrived, started))
    first.start()
    assert started.wait(120)  # the first one holds the lock and trains
    second = FORK.Process(target=_tokenizer_builder, args=(tmp_path, out, arrived))
    second.start()
    got = dict(out.get(timeout=180) for _ in range(2))
    first.join(60)
    second.join(60)
    assert any("built in" in line for line in got[first.pid]), got[first.pid]
    assert not any("built in" in line for line in got[second.pid]), got[second.pid]  # it trained nothing
    assert any(line.startswith(f"cache: waiting for host {cache_lock.HOST} pid {first.pid}") and "training tokenizer" in line
               for line in got[second.pid]), got[second.pid]
    assert any("cached at" in line for line in got[second.pid])
