"""task=tokenizer-report and task=report through the pipeline, on real tokenizers and files."""
from __future__ import annotations

import json

import pytest

from allam import pipeline
from allam.config import ConfigError

SMALL_TOKENIZERS = ["tokenizer.num_new_tokens=1024", "tokenizer.vocab_size=4096", "tokenizer.training_words=100000"]


def test_tokenizer_report_measures_every_variant(make_cfg, tmp_path):
    out = tmp_path / "report"
    res = pipeline.tokenizer_report(make_cfg("task=tokenizer-report", *SMALL_TOKENIZERS, out=out))
    saved = json.loads((out / "results.json").read_text())
    rows = saved["tokenizers"]["variants"]
    names = json.dumps(rows)
    for name in ("english8k", "mistral7b", "english8k+ar1024", "mistral7b+ar1024", "bilingual4096"):
        assert name in names, name
    assert (out / "tokenizer_report.png").stat().st_size > 1000
    assert res["task"] == "tokenizer-report"


def test_report_needs_runs(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match="report_dir=None"):
        pipeline.report(make_cfg("task=report"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no training results.json"):
        pipeline.report(make_cfg("task=report", f"report_dir={tmp_path / 'empty'}"))
