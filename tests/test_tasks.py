"""task=tokenizer-report and task=report through the pipeline, on real tokenizers and files."""
from __future__ import annotations

import json

import pytest

from allam.tasks import report as report_task
from allam.tasks import tokenizer_report as tokenizer_report_task
from allam.config import ConfigError

SMALL_TOKENIZERS = ["tokenizer.num_new_tokens=1024", "tokenizer.vocab_size=4096", "tokenizer.training_words=100000"]


@pytest.mark.parametrize("every", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["some", "every"])
def test_tokenizer_report_measures_every_variant(make_cfg, tmp_path, monkeypatch, every):
    # one byte-level base keeps this test short (tekken, qwen and gpt2 take the same path: the fast
    # suite measures gpt2's 50k vocabulary, the slow one tekken's 131k and its expansion); the fast
    # suite leaves out mistral7b and its expansion (tests/test_tokenizer.py builds those) and the
    # byte-level expansion (tests/test_bytelevel.py expands gpt2 by the same code)
    bytelevel = tokenizer_report_task.BYTE_LEVEL
    monkeypatch.setattr(tokenizer_report_task, "BYTE_LEVEL", bytelevel[:2] if every else bytelevel[4:5])
    expected = ["english8k", "english8k+ar1024", "bilingual4096"]
    if every:
        expected += ["tekken", "mistral7b", "mistral7b+ar1024", "tekken+ar1024"]
    else:
        expected += ["gpt2"]
        monkeypatch.setattr(tokenizer_report_task, "VARIANTS",
                            tuple(v for v in tokenizer_report_task.VARIANTS if v.get("base") != "mistral7b"))
    out = tmp_path / "report"
    res = tokenizer_report_task.run(make_cfg("task=tokenizer-report", *SMALL_TOKENIZERS, out=out))
    saved = json.loads((out / "results.json").read_text())
    rows = saved["tokenizers"]["variants"]
    names = json.dumps(rows)
    for name in expected:
        assert name in names, name
    assert rows["english8k+ar1024"]["ar"]["tokens_per_word"] < rows["english8k"]["ar"]["tokens_per_word"]
    assert rows["english8k+ar1024"]["en"]["tokens_per_word"] == rows["english8k"]["en"]["tokens_per_word"]
    if every:
        assert rows["tekken+ar1024"]["ar"]["tokens_per_word"] < rows["tekken"]["ar"]["tokens_per_word"]
        assert rows["tekken+ar1024"]["en"]["tokens_per_word"] == rows["tekken"]["en"]["tokens_per_word"]
    assert (out / "tokenizer_report.png").stat().st_size > 1000
    assert res["task"] == "tokenizer-report"


def test_report_needs_runs(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match="report_dir=None"):
        report_task.run(make_cfg("task=report"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no training results.json"):
        report_task.run(make_cfg("task=report", f"report_dir={tmp_path / 'empty'}"))


def test_cached_tokenizer_is_found_without_reading_the_corpus(tmp_path):
    from omegaconf import OmegaConf

    from allam.data.demo import demo_texts
    from allam.tokenizer import build_tokenizer

    class Texts:
        reads = 0

        def __call__(self, lang):
            Texts.reads += 1
            return demo_texts(lang, "train")

        def key(self, lang):  # what SourceTexts derives from file stats and cleaning options
            return f"demo-{lang}-v1"

    cfg = OmegaConf.create(dict(variant="base", base="english8k", english_vocab_size=1024, num_new_tokens=8,
                                vocab_size=64, training_words=20000, seed=0))
    first = build_tokenizer(cfg, cache_dir=tmp_path, texts=Texts())
    assert Texts.reads == 1
    again = build_tokenizer(cfg, cache_dir=tmp_path, texts=Texts())
    assert Texts.reads == 1 and again.path == first.path


def test_report_shows_eval_columns_and_an_accuracy_chart(make_cfg, tmp_path):
    """Training runs with eval scores, a task=eval run joining the row of the run it scored, and one
    that scored a folder outside the report: eval columns in the table, a chart with chance marked."""
    from allam import results as R

    def train_run(name, ratio, acc):
        out = tmp_path / "runs" / name
        out.mkdir(parents=True)
        scores = {"verse_en2ar": {"acc": acc, "acc_stderr": 0.02, "acc_norm": acc + 0.01, "acc_norm_stderr": 0.02,
                                  "n": 400, "chance": 0.25}}
        R.write(out, {"task": "train", "run_dir": str(out), "val.ar.bpb": 2.0, "val.en.bpb": 1.5,
                      "config": {"data": {"ar_ratio": ratio}}, **R.eval_keys(scores)})
        return out

    a = train_run("a", 0.2, 0.31)
    train_run("b", 0.7, 0.45)
    later = {"hadith_topic": {"acc": 0.27, "acc_stderr": 0.025, "acc_norm": 0.26, "acc_norm_stderr": 0.025, "n": 320,
                              "chance": 0.25}}
    (a / "eval").mkdir()
    (tmp_path / "runs" / "hub_model").mkdir()
    R.write(a / "eval", {"task": "eval", "source_run": str(a), "config": {"data": {"ar_ratio": 0.2}},
                         **R.eval_keys(later)})
    R.write(tmp_path / "runs" / "hub_model", {"task": "eval", "source_run": None, "config": {"data": {"ar_ratio": 0.45}},
                                              **R.eval_keys(later)})
    res = report_task.run(make_cfg("task=report", f"report_dir={tmp_path / 'runs'}", out=tmp_path / "report"))
    header = res["header"]
    for col in ("eval.verse_en2ar.acc", "eval.verse_en2ar.acc_norm", "eval.hadith_topic.acc", "data.ar_ratio"):
        assert col in header, col
    rows = {row[0]: dict(zip(header, row)) for row in res["rows"]}
    assert set(rows) == {"a", "b", "hub_model"}
    assert rows["a"]["eval.hadith_topic.acc"] == "0.2700" and rows["a"]["eval.verse_en2ar.acc"] == "0.3100"
    assert rows["b"]["eval.hadith_topic.acc"] == ""
    assert (tmp_path / "report" / "report_eval.png").stat().st_size > 1000
    table = (tmp_path / "report" / "report.md").read_text()
    assert "eval.verse_en2ar.acc_norm" in table.splitlines()[0]


def test_prepare_builds_the_shards_and_the_run_then_tokenizes_nothing(tmp_path, cache_dir, monkeypatch, make_cfg):
    """task=prepare builds a new source's shards (and checks the blend) with the run's overrides;
    the training run's data module with the same overrides then builds no shard: it reads the
    cache (the data module is what a run prepares in prepare_data)."""
    from conftest import run_inprocess

    from allam.config import validate
    from allam.data import shard_build
    from allam.tasks import builders

    f = tmp_path / "mine.txt"
    words = "the sea and the sun rose over the hills while the children ran home to eat".split()
    f.write_text("\n".join(" ".join(words[i % 7:] + words[: i % 7]) + f" line {i}" for i in range(400)) + "\n",
                 encoding="utf-8")
    common = [f"+data.sources.mine={{lang: en, loader: text, path: {f}}}", "model=micro", "trainer.max_steps=1",
              "logger=none", "export=false", "data.val_bytes=2048"]
    assert run_inprocess(["task=prepare", *common], cache_dir, tmp_path / "prep") is None
    res = json.loads((tmp_path / "prep" / "results.json").read_text())
    mine = res["sources"]["mine"]
    assert res["task"] == "prepare" and mine["docs_read"] == 400 and mine["val"]["docs"] == 50
    assert mine["train"]["tokens"] > 0 and res["prepare.train_tokens"] >= mine["train"]["tokens"]

    def no_build(*a, **k):
        raise AssertionError("the run tokenized a source that task=prepare had built")

    monkeypatch.setattr(shard_build, "_build_one", no_build)
    from allam.tokenizer import spm

    monkeypatch.setattr(spm, "train_bpe", no_build)  # nor trains a tokenizer
    cfg = make_cfg(*common)
    validate(cfg)
    tok = builders.build_tokenizer(cfg).tokenizer
    dm = builders.build_datamodule(cfg, tok)
    dm.prepare()
    assert dm.shards["mine"].meta["train"] == mine["train"] and str(dm.shards["mine"].path) == mine["folder"]
    two = make_cfg(*common, "trainer.devices=2", "trainer.num_nodes=2")  # the mix covers every rank's blocks
    assert builders.build_datamodule(two, tok).world == 4
    # executor=slurm with every source in the cache submits nothing and checks the blend as local does
    slurm = ["data.prepare.executor=slurm", "data.prepare.slurm_partition=cpu"]
    assert run_inprocess(["task=prepare", *common, *slurm], cache_dir, tmp_path / "again") is None
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert "submitted" not in again and again["sources"]["mine"] == mine
    err = run_inprocess(["task=prepare", "objective=sft"], cache_dir, tmp_path / "sft")
    assert err is not None and err.startswith("error: ") and "task=prepare" in err


def test_report_cells_print_booleans_as_words():
    from allam.report import _fmt

    assert [_fmt(True), _fmt(False), _fmt(3), _fmt(0.5), _fmt(None)] == ["true", "false", "3", "0.5000", ""]
