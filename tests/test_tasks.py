"""task=tokenizer-report and task=report through the pipeline, on real tokenizers and files."""
from __future__ import annotations

import json

import pytest

from allam.tasks import report as report_task
from allam.tasks import tokenizer_report as tokenizer_report_task
from allam.config import ConfigError

SMALL_TOKENIZERS = ["tokenizer.num_new_tokens=1024", "tokenizer.vocab_size=4096", "tokenizer.training_words=100000"]


def test_tokenizer_report_measures_every_variant(make_cfg, tmp_path):
    out = tmp_path / "report"
    res = tokenizer_report_task.run(make_cfg("task=tokenizer-report", *SMALL_TOKENIZERS, out=out))
    saved = json.loads((out / "results.json").read_text())
    rows = saved["tokenizers"]["variants"]
    names = json.dumps(rows)
    for name in ("english8k", "mistral7b", "english8k+ar1024", "mistral7b+ar1024", "bilingual4096"):
        assert name in names, name
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
