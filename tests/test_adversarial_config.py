"""What an adversarial trial of the config, data and cache found (issue 22, part 5): each case ends
in one line that names what is wrong, or works, and nothing is lost.

Everything runs in this process (validate, the loaders, the cache readers), except one run.py
subprocess: a ``-m`` sweep with one bad job must refuse before its first job starts.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from allam.config import ROOT, ConfigError, explain_compose_error, validate
from allam.config.errors import compose_overrides


def _run_module():
    """run.py as a module (it is a script at the repository root, not in a package)."""
    spec = importlib.util.spec_from_file_location("allam_run_script", ROOT / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------- silently wrong
def test_a_source_weight_must_be_positive(make_cfg, tmp_path):
    corpus = tmp_path / "x.jsonl"
    corpus.write_text('{"text": "x"}\n')
    new = f"+data.sources.news={{lang: ar, loader: jsonl, path: '{corpus}', weight: %s}}"
    for bad in ("-1", "0", "inf"):
        with pytest.raises(ConfigError, match=r"^data\.sources\.news\.weight=\S+: must be a positive number .*~data\.sources\.news$"):
            validate(make_cfg(new % bad))
    cfg = make_cfg(new % "2")
    validate(cfg)
    assert cfg.data.sources.news.weight == 2.0


def test_stages_must_cover_the_training_budget(make_cfg):
    # one stage with a token count: it used to be stretched to the whole budget without a word
    with pytest.raises(ConfigError, match=r"^data\.stages\.0\.tokens=256: the stages cover 256 of the run's 262,144 "
                                          r"training tokens \(trainer\.max_tokens\); set the last stage's tokens to null"):
        validate(make_cfg("data.stages=[{tokens: 256, ar_ratio: 0.45}]", "trainer.max_tokens=262144"))
    with pytest.raises(ConfigError, match=r"the stages cover 256 of the run's 4,096 training tokens "
                                          r"\(trainer\.max_steps=2 x 2,048 tokens per step\)"):
        validate(make_cfg("data.stages=[{tokens: 256, ar_ratio: 0.45}]", "trainer.max_steps=2",
                          "data.batch_size=8", "model.seq_len=256"))
    with pytest.raises(ConfigError, match=r"^data\.stages\.1: starts at token 300,000 \(block 1,172 of 256 tokens\) but "
                                          r"training ends at block 1,024 \(262,144 tokens.*never run"):
        validate(make_cfg("data.stages=[{tokens: 300000, ar_ratio: 0.0}, {tokens: null, ar_ratio: 0.45}]",
                          "trainer.max_tokens=262144"))
    # a stage starts at the first whole block at or after its token: one token before the end is no block
    with pytest.raises(ConfigError, match=r"^data\.stages\.1: starts at token 262,143 \(block 1,024 .*never run"):
        validate(make_cfg("data.stages=[{tokens: 262143, ar_ratio: 0.0}, {tokens: null, ar_ratio: 0.45}]",
                          "trainer.max_tokens=262144"))
    validate(make_cfg("data.stages=[{tokens: 261888, ar_ratio: 0.0}, {tokens: null, ar_ratio: 0.45}]",
                      "trainer.max_tokens=262144"))  # the last block is the second stage's
    # what is allowed: the last stage to the end (null), or stages that reach the budget
    validate(make_cfg("data.stages=[{tokens: 256, ar_ratio: 0.0}, {tokens: null, ar_ratio: 0.45}]"))
    validate(make_cfg("data.stages=[{tokens: 131072, ar_ratio: 0.0}, {tokens: 131072, ar_ratio: 0.45}]",
                      "trainer.max_tokens=262144"))
    validate(make_cfg("data.stages=[{tokens: 1000000, ar_ratio: 0.45}]", "trainer.max_tokens=262144"))


def test_report_names_skipped_files_and_shows_each_runs_status(make_cfg, tmp_path, capsys):
    from allam import results as R
    from allam.tasks import report as report_task

    runs = tmp_path / "runs"
    common = {"task": "train", "train.tokens": 4096, "curve": []}
    for name, ratio, extra in (("done", 0.2, {"status": "finished", "val.ar.bpb": 2.5}),
                               ("cut", 0.7, {"status": "preempted", "checkpoint": "x.ckpt"})):
        (runs / name).mkdir(parents=True)
        R.write(runs / name, {**common, **extra, "config": {"data": {"ar_ratio": ratio}}})
    damaged = {"garbage": b"\x8f\x00 not json at all", "truncated": b'{"task": "train", "val.ar.bp',
               "empty": b"", "plan": json.dumps({"task": "plan"}).encode()}
    for name, body in damaged.items():
        (runs / name).mkdir()
        (runs / name / "results.json").write_bytes(body)
    (runs / "killed" / ".hydra").mkdir(parents=True)  # started (config saved), never wrote results.json
    (runs / "killed" / "config.yaml").write_text("task: train\n")
    (runs / "killed" / ".hydra" / "config.yaml").write_text("task: train\n")
    (runs / "done" / "wandb" / "run-1" / "files").mkdir(parents=True)  # W&B's copy of a finished run's config
    (runs / "done" / "wandb" / "run-1" / "files" / "config.yaml").write_text("a: 1\n")
    res = report_task.run(make_cfg("task=report", f"report_dir={runs}", out=tmp_path / "report"))
    rows = {row[0]: dict(zip(res["header"], row)) for row in res["rows"]}
    assert set(rows) == {"done", "cut"}
    assert [s["reason"] for s in res["skipped"] if s["path"] == str(runs / "killed")] == [
        "no results.json (killed, crashed or still running)"]
    res["skipped"] = [s for s in res["skipped"] if s["path"] != str(runs / "killed")]
    assert rows["done"]["status"] == "finished" and rows["cut"]["status"] == "preempted"
    assert rows["cut"]["val.ar.bpb"] == "" and rows["cut"]["train.tokens"] == "4,096"
    why = {Path(s["path"]).parent.name: s["reason"] for s in res["skipped"]}
    assert set(why) == set(damaged)
    assert why["empty"] == "empty file"
    assert why["truncated"].startswith("not JSON, truncated or damaged")
    assert why["garbage"].startswith(("not JSON", "unreadable"))
    assert why["plan"] == "written by task=plan, not a training or eval run"
    out = capsys.readouterr().out
    for name in damaged:
        assert f"skipped {runs / name / 'results.json'}: {why[name]}" in out
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| run | status |" in md and f"- skipped {runs / 'empty' / 'results.json'}: empty file" in md


def test_online_logger_under_an_offline_environment_warns(monkeypatch, tmp_path, caplog):
    from allam.tasks.builders import build_logger

    monkeypatch.setenv("WANDB_MODE", "offline")
    node = OmegaConf.create({"name": "wandb", "project": "allam", "entity": None, "mode": "online", "tags": [],
                             "run_name": "r", "group": "g"})
    with caplog.at_level(logging.WARNING, logger="allam"):
        logger = build_logger(node, tmp_path, {})
    lines = [r.getMessage() for r in caplog.records if r.name == "allam"]
    assert lines == ["logger.mode=online but WANDB_MODE=offline is set in the environment: W&B runs offline and "
                     "does not sync (unset WANDB_MODE to sync, or set logger.mode=offline)"]
    assert logger._offline is False and os.environ["WANDB_MODE"] == "offline"  # what wandb.init then obeys
    caplog.clear()
    monkeypatch.setenv("WANDB_MODE", "online")
    with caplog.at_level(logging.WARNING, logger="allam"):
        build_logger(node, tmp_path, {})
    assert not [r for r in caplog.records if r.name == "allam"]


# --------------------------------------------------------------------------- weak messages
def test_a_misspelled_group_lists_the_groups(make_cfg):
    with pytest.raises(Exception) as info:
        make_cfg("trainr.max_steps=2")
    msg = explain_compose_error(info.value)
    assert msg.startswith("trainr.max_steps: no such key 'trainr'; allowed: ")
    assert {"trainer", "model", "data", "optim"} <= set(msg.split("allowed: ")[1].split(", "))
    with pytest.raises(Exception) as info:
        make_cfg("optim.foo.bar=2")
    assert explain_compose_error(info.value).startswith("optim.foo.bar: no such key 'optim.foo'; allowed in optim: name, lr")


def test_a_field_of_an_existing_source_is_overridden(make_cfg):
    # conf/data/demo.yaml does not list tafsir_ar's weight; the command line sets it all the same
    assert "weight" not in make_cfg().data.sources.tafsir_ar
    cfg = make_cfg(*compose_overrides(["data.sources.tafsir_ar.weight=1", "data.sources.tafsir_ar.strip_tatweel=false"]))
    validate(cfg)
    assert cfg.data.sources.tafsir_ar.weight == 1.0 and cfg.data.sources.tafsir_ar.strip_tatweel is False
    assert cfg.data.sources.tafsir_ar.path == "tafsir_ar"  # the rest of the source is kept
    # a source name that does not exist says so, and names the sources
    with pytest.raises(ConfigError, match=r"^data\.sources\.tafsr_ar\.lang: missing; allowed: a language code such as ar, en, hi \('tafsr_ar' is "
                                          r"none of the sources tafsir_ar, hadith_ar, bible_ar, hadith_en, bible_en"):
        validate(make_cfg(*compose_overrides(["data.sources.tafsr_ar.weight=1"])))
    assert compose_overrides(["data.ar_ratio=0.3", "+data.sources.x={lang: ar}", "data.sources.a.colour=1"]) == \
        ["data.ar_ratio=0.3", "+data.sources.x={lang: ar}", "data.sources.a.colour=1"]


def test_every_job_of_a_sweep_is_validated_before_any_starts(tmp_path):
    run = _run_module()
    assert run.sweep_jobs(["data.ar_ratio=0.2,0.45", "trainer=glob(c*)", "optim.lr=1e-3,2e-3"]) == [
        ["data.ar_ratio=0.2", "trainer=cpu", "optim.lr=0.001"], ["data.ar_ratio=0.2", "trainer=cpu", "optim.lr=0.002"],
        ["data.ar_ratio=0.45", "trainer=cpu", "optim.lr=0.001"], ["data.ar_ratio=0.45", "trainer=cpu", "optim.lr=0.002"]]
    with pytest.raises(SystemExit) as info:
        run.preflight(["-m", "data.ar_ratio=0.2,1.5,3", "trainer.max_steps=1", f"hydra.sweep.dir={tmp_path}"])
    assert info.value.code == ("error: 2 of 3 sweep jobs are invalid, none was started; job 1 (data.ar_ratio=1.5): "
                               "data.ar_ratio=1.5: must be a fraction in [0, 1]")
    argv = ["-m", "data.sources.tafsir_ar.weight=1,2", "trainer.max_steps=1"]
    assert run.preflight(argv) == ["-m", "++data.sources.tafsir_ar.weight=1,2", "trainer.max_steps=1"]


def test_run_py_refuses_a_sweep_with_a_bad_job_before_the_first_job(tmp_path, cache_dir):
    """The one run.py subprocess of this file: Hydra itself must not start job 0."""
    env = {**os.environ, "ALLAM_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "-m", "data.ar_ratio=0.2,1.5", "trainer.max_steps=1",
                           "logger=none", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: 1 of 2 sweep jobs are invalid, none was started; job 1 (data.ar_ratio=1.5): "
        "data.ar_ratio=1.5: must be a fraction in [0, 1]"]
    assert not (tmp_path / "sweep").exists()  # job 0 (a valid one) never ran


# --------------------------------------------------------------------------- tracebacks: bad input, damaged caches
@pytest.fixture(scope="module")
def tiny_tok():
    """A 300-piece byte-level BPE trained here (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(["the sun and the moon over the sea"] * 50,
                           trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"], show_progress=False,
                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="</s>", bos_token="<s>")


def _jsonl_source(folder: Path, bad_line: int | None = None, n: int = 120) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "en.jsonl", "w", encoding="utf-8") as fh:
        for i in range(n):
            text = f"the sun and the moon over the sea, document number {i}" + ("\ud800" if i + 1 == bad_line else "")
            fh.write(json.dumps({"text": text}) + "\n")
    return {"lang": "en", "loader": "jsonl", "path": str(folder / "en.jsonl")}


@pytest.mark.parametrize("workers", [1, 2])
def test_a_lone_surrogate_names_the_source_and_line(tiny_tok, tmp_path, workers):
    from allam.data import shard_build, shards
    from allam.data.sources import source_values

    info = shards.TokenizerInfo.from_tokenizer(tiny_tok)
    src = _jsonl_source(tmp_path / "corpus", bad_line=78)
    jobs = shards.plan_jobs({"news": src}, False, info, tmp_path / "cache")
    with pytest.raises(ConfigError, match=rf"^data\.sources\.news: {tmp_path / 'corpus' / 'en.jsonl'} line 78 has a lone "
                                          r"surrogate \(\\ud800\), .*data\.sources\.news\.skip_bad_utf8=true"):
        shard_build.build(jobs, info, workers=workers, progress=False, log=lambda *_: None)
    jobs = shards.plan_jobs({"news": source_values({**src, "skip_bad_utf8": True})}, False, info, tmp_path / "cache")
    built = shard_build.build(jobs, info, workers=workers, progress=False, log=lambda *_: None)
    assert built["news"].meta["drops"]["bad_utf8"] == 1 and built["news"].meta["docs_read"] == 119


def _build_news(tok, tmp_path, log):
    from allam.data import shard_build, shards

    info = shards.TokenizerInfo.from_tokenizer(tok)
    corpus = tmp_path / "corpus"
    src = _jsonl_source(corpus) if not corpus.exists() else {"lang": "en", "loader": "jsonl", "path": str(corpus / "en.jsonl")}
    jobs = shards.plan_jobs({"news": src}, False, info, tmp_path / "cache")
    return shard_build.build(jobs, info, workers=1, progress=False, log=log)["news"]


@pytest.mark.parametrize("damage", ["meta.json:random", "meta.json:truncated", "train.bin:random", "train.bin:truncated",
                                    "train.bin:same-size", "val_docs.npy:truncated", "meta.json:more-tokens"])
def test_a_damaged_shard_cache_entry_is_named_and_rebuilt(tiny_tok, tmp_path, damage):
    import numpy as np

    first = _build_news(tiny_tok, tmp_path, log=lambda *_: None)
    tokens = np.array(first.tokens("train"))
    assert first.meta["files"]["train.bin"]["bytes"] == tokens.nbytes
    name, how = damage.split(":")
    f = first.path / name
    body = f.read_bytes()
    rng = np.random.default_rng(0)
    if how == "more-tokens":  # readable, but its token count disagrees with train.bin (reading it would fail)
        meta = json.loads(body)
        meta["train"]["tokens"] += 1000
        f.write_text(json.dumps(meta))
    else:
        f.write_bytes({"random": rng.bytes(len(body) + 7), "truncated": body[: len(body) // 2],
                       "same-size": rng.bytes(len(body))}[how])
    lines = []
    again = _build_news(tiny_tok, tmp_path, log=lines.append)
    assert lines[0].startswith(f"data: news: cached shards {first.path} cannot be used (")
    assert lines[0].endswith("); rebuilding them")
    assert name in lines[0] and len(lines) == 2  # the damage, then the rebuild's summary
    assert np.array_equal(np.array(again.tokens("train")), tokens)
    quiet = []
    _build_news(tiny_tok, tmp_path, log=quiet.append)
    assert quiet == []  # the rebuilt entry is used as it is


@pytest.fixture(scope="module")
def tiny_spm_model(tmp_path_factory) -> Path:
    """A 300-piece SentencePiece BPE (Llama-2's settings) trained here, as a .model file."""
    from allam.tokenizer import spm as spm_util

    lines = [f"the sun and the moon over the sea, line {i}: a book, a school, a city" for i in range(300)]
    path = tmp_path_factory.mktemp("spm") / "tiny.model"
    path.write_bytes(spm_util.train_bpe(lines, 300, seed=0).SerializeToString())
    return path


@pytest.mark.parametrize("damage", ["tokenizer.model:random", "tokenizer.model:truncated",
                                    "tokenizer_config.json:random", "tokenizer_config.json:truncated",
                                    "allam_tokenizer.json:truncated"])
def test_a_damaged_tokenizer_cache_folder_is_named_and_rebuilt(tiny_spm_model, tmp_path, caplog, damage):
    import numpy as np

    from allam.config import TokenizerConfig
    from allam.tokenizer import build_tokenizer

    cfg = OmegaConf.merge(OmegaConf.structured(TokenizerConfig), {"variant": "base", "base": str(tiny_spm_model)})
    text = "the moon over the city"

    def build():
        return build_tokenizer(cfg, cache_dir=tmp_path / "cache", texts=lambda lang: [])

    first = build()
    ids = first.tokenizer.encode(text)
    name, how = damage.split(":")
    body = (first.path / name).read_bytes()
    (first.path / name).write_bytes(np.random.default_rng(1).bytes(len(body)) if how == "random" else body[: len(body) // 2])
    with caplog.at_level(logging.WARNING):
        again = build()
    warned = [r.getMessage() for r in caplog.records if "tokenizer cache" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith(f"tokenizer cache {first.path} is damaged ({name} ")
    assert warned[0].endswith("; building it again")
    assert again.path == first.path and again.tokenizer.encode(text) == ids
    assert not list((tmp_path / "cache").glob(".*damaged*"))  # the damaged copy is gone
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        build()
    assert not [r for r in caplog.records if "tokenizer cache" in r.getMessage()]


def test_a_folder_source_names_the_files_it_skips(tmp_path, caplog):
    from allam.data.sources import read_documents, source_values

    folder = tmp_path / "news"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.jsonl").write_text('{"text": "the sun and the moon"}\n')
    (folder / "sub" / "b.json").write_text('{"text": "over the sea"}\n')
    (folder / "notes.txt").write_text("not read\n")
    (folder / "sub" / "table.csv").write_text("x,y\n")
    src = source_values({"lang": "en", "loader": "jsonl", "path": str(folder)})
    with caplog.at_level(logging.INFO, logger="allam"):
        docs = [d.text for d in read_documents("news", src, parallel_pairs=False, bad=[0])]
    assert docs == ["the sun and the moon", "over the sea"]
    assert [r.getMessage() for r in caplog.records if r.name == "allam"] == [
        f"data: news: skipped 2 file(s) in {folder} that are not .jsonl/.json: notes.txt, sub/table.csv"]


def test_composing_a_source_field_without_run_py_says_what_hydra_needs(make_cfg):
    """Without run.py's '++' (Hydra's compose API directly) the message is true for both causes."""
    with pytest.raises(Exception) as info:
        make_cfg("data.sources.tafsir_ar.weight=1")
    assert explain_compose_error(info.value) == (
        "data.sources.tafsir_ar.weight: not in the composed config: no source 'tafsir_ar', or its YAML leaves weight "
        "out (Hydra then sets it only as ++data.sources.tafsir_ar.weight=...; run.py adds the ++ itself); a new "
        "source is added with +data.sources.tafsir_ar={lang: ar, loader: jsonl, path: ...}")
    with pytest.raises(Exception) as info:
        make_cfg("data.sources.tafsir_ar.colour=1")
    assert explain_compose_error(info.value).startswith("data.sources.tafsir_ar.colour: no such key; a source's keys: lang, kind")
