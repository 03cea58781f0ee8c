"""Every option of every group composes; bad overrides fail with one line naming the key."""
from __future__ import annotations

import subprocess
import sys

import pytest

from allam.config import ROOT, ConfigError, group_choices, validate

GROUPS = ["model", "init", "tokenizer", "data", "optim", "trainer", "logger"]


@pytest.mark.parametrize("group", GROUPS)
def test_every_choice_composes_and_validates(make_cfg, group):
    choices = group_choices(group)
    assert choices, f"conf/{group} is empty"
    for choice in choices:
        extra = []
        if group == "init" and choice == "llama2":
            extra = ["model=7b"]  # tiny has no published checkpoint
        cfg = make_cfg(f"{group}={choice}", *extra)
        validate(cfg)
        if group in ("model", "logger", "data", "trainer"):
            assert cfg[group].name == choice


def test_every_experiment_composes(make_cfg):
    choices = group_choices("experiment")
    assert {"english_base", "adapt_toy", "allam7b_scratch", "allam13b_adapt"} <= set(choices)
    for choice in choices:
        cfg = make_cfg(f"experiment={choice}")
        if cfg.init.name.value == "llama2" and cfg.init.checkpoint is None:
            with pytest.raises(ConfigError, match="init.checkpoint=None"):
                validate(cfg)  # the toy adaptation names the english_base export on the command line
            cfg = make_cfg(f"experiment={choice}", "init.checkpoint=/tmp/some-export")
        validate(cfg)


def test_readme_example_composes(make_cfg):
    cfg = make_cfg("model=13b", "init=llama2", "data.ar_ratio=0.4")
    validate(cfg)
    assert cfg.init.checkpoint == "meta-llama/Llama-2-13b-hf"
    assert cfg.model.vocab_size == 32000 and cfg.data.ar_ratio == 0.4


@pytest.mark.parametrize(
    "override, expected",
    [
        ("data.ar_ratio=1.5", "data.ar_ratio=1.5: must be a fraction in [0, 1]"),
        ("model=15b", "model=15b: no such choice; allowed: 13b, 1b, 70b, 7b, tiny"),
        ("data.ar_rato=0.4", "data.ar_rato: no such key in data; allowed:"),
        ("+data.ar_rato=0.4", "data.ar_rato: no such key in data; allowed:"),
        ("data.sources.tafsir_ar.strip_diacritcs=true", "data.sources.tafsir_ar.strip_diacritcs: no such key"),
        ("model.attention=flash", "model.attention=flash: allowed: auto, xformers, sdpa, eager"),
        ("data.batch_size=many", "data.batch_size=many:"),
        ("optim.lr=-1", "optim.lr=-1.0: must be positive"),
        ("task=evaluate", "task=evaluate: allowed: train, plan, tokenizer-report, export, report"),
        ("init=llama2", "init.checkpoint=None: init=llama2 needs a checkpoint"),
    ],
)
def test_bad_override_fails_with_one_line(override, expected):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), override], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: " + expected), lines[0]


def test_validate_rejects_ratio_without_arabic_source(make_cfg):
    cfg = make_cfg("~data.sources.tafsir_ar", "~data.sources.hadith_ar", "~data.sources.bible_ar")
    with pytest.raises(ConfigError, match="data.ar_ratio=0.45: is above 0 but data.sources has no Arabic source"):
        validate(cfg)
    validate(make_cfg("~data.sources.tafsir_ar", "~data.sources.hadith_ar", "~data.sources.bible_ar", "data.ar_ratio=0"))


def test_cfg_job_prints_composed_config():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "model=13b", "init=llama2", "data.ar_ratio=0.4", "--cfg", "job"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "hidden_size: 5120" in proc.stdout and "ar_ratio: 0.4" in proc.stdout


def test_sweep_parameters_are_plain_overrides(make_cfg):
    """Every W&B sweep value composes as an ordinary Hydra override."""
    import itertools

    import yaml

    files = sorted((ROOT / "sweeps").glob("*.yaml"))
    assert files
    for f in files:
        spec = yaml.safe_load(f.read_text())
        assert spec["command"][-1] == "${args_no_hyphens}", f
        params = spec["parameters"]
        axes = [[(k, v) for v in (p["values"] if "values" in p else [p["value"]])] for k, p in params.items()]
        for combo in itertools.product(*axes):
            cfg = make_cfg(*[f"{k}={v}" for k, v in combo])
            validate(cfg)


def test_a_source_is_added_from_the_command_line(make_cfg, tmp_path):
    corpus = tmp_path / "news.jsonl"
    corpus.write_text('{"text": "x"}\n')
    cfg = make_cfg(f"+data.sources.news_ar={{lang: ar, loader: jsonl, path: '{corpus}', strip_diacritics: true}}")
    validate(cfg)
    src = cfg.data.sources.news_ar
    assert src.lang.value == "ar" and src.loader == "jsonl" and src.strip_diacritics and src.min_chars == 20
    with pytest.raises(ConfigError, match=r"^data.sources.bad.colour: no such key; allowed: lang, kind"):
        validate(make_cfg("+data.sources.bad={lang: ar, colour: red}"))
    with pytest.raises(ConfigError, match=r"^data.sources.bad.lang: missing; allowed: ar, en"):
        validate(make_cfg("+data.sources.bad={loader: text}"))
