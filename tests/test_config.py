"""Every option of every group composes; bad overrides fail with one line naming the key."""
from __future__ import annotations

import importlib.util
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
        if group == "init" and choice in ("llama2", "pretrained"):
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
        if cfg.init.name == "llama2" and cfg.init.checkpoint is None:
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
        ("model=15b", "model=15b: no such choice; allowed: 13b, 1b, 70b, 7b, llama3_8b, micro, mistral_nemo_12b, qwen2_5_7b, "
                      "tiny"),
        ("data.ar_rato=0.4", "data.ar_rato: no such key in data; allowed:"),
        ("+data.ar_rato=0.4", "data.ar_rato: no such key in data; allowed:"),
        ("data.sources.tafsir_ar.strip_diacritcs=true", "data.sources.tafsir_ar.strip_diacritcs: no such key"),
        ("model.attention=flash", "model.attention=flash: allowed: auto, xformers, sdpa, eager"),
        ("data.batch_size=many", "data.batch_size=many:"),
        ("optim.lr=-1", "optim.lr=-1.0: must be positive"),
        ("task=evaluate", "task=evaluate: allowed: train, plan, prepare, tokenizer-report, export, report"),
        ("init=llama2", "init.checkpoint=None: init=llama2 needs a checkpoint"),
    ],
)
def test_bad_override_fails_with_one_line(override, expected):
    """run.py's preflight, in this process (what the command line prints before Hydra starts)."""
    with pytest.raises(SystemExit) as stop:
        _run_py().preflight([override])
    line = str(stop.value.code)
    assert "\n" not in line and line.startswith("error: " + expected), line


def test_nonsense_values_are_refused_before_anything_is_built():
    """Values that used to pass the preflight and end later in a traceback (a negative head count
    or head size: "negative dimension" at model build), or that were quietly treated as something
    else (num_nodes=0 planned as 1), or that were checked only after the run folder was locked
    (english8k's base_mix)."""
    cases = {
        "model.num_kv_heads=-2": "model.num_kv_heads=-2: must be positive",
        "model.head_dim=-1": "model.head_dim=-1: must be positive",
        "model.pad_vocab_to=0": "model.pad_vocab_to=0: must be positive",
        "model.rope_theta=-1": "model.rope_theta=-1.0: must be a number > 0",
        "model.norm_eps=0": "model.norm_eps=0.0: must be a number > 0",
        "optim.eps=-1": "optim.eps=-1.0: must be a number > 0",
        "optim.weight_decay=-1": "optim.weight_decay=-1.0: must be a number >= 0",
        "optim.grad_clip=-1": "optim.grad_clip=-1.0: must be a number >= 0",
        "trainer.devices=0": "trainer.devices=0: must be a positive count, -1 (every device) or auto",
        "trainer.num_nodes=0": "trainer.num_nodes=0: must be positive",
        "trainer.peak_tflops=-1": "trainer.peak_tflops=-1.0: must be a number > 0",
        "trainer.precision=8-true": "trainer.precision=8-true: allowed: 32-true, 32, bf16-mixed",
        "tokenizer.base_ar_share=0.6": "tokenizer.base_ar_share=0.6: must be in [0, 0.5) (the base stays mostly English)",
        "+tokenizer.base_mix.en=0.1": "tokenizer.base_mix: names en",
        "+tokenizer.base_mix.xx=0.1": "tokenizer.base_mix=xx: unknown language code",
        "logger.mode=bogus": "logger.mode=bogus: allowed: offline, online, disabled",
        "+data.sources.tafsir_ar.min_chars=-3": "data.sources.tafsir_ar.min_chars=-3: must be non-negative",
        "+data.prepare.slurm_partiton=cpu": "data.prepare.slurm_partiton: no such key in data.prepare; allowed: executor",
    }
    run_py = _run_py()
    for override, expected in cases.items():
        with pytest.raises(SystemExit) as stop:
            run_py.preflight([override])
        line = str(stop.value.code)
        assert "\n" not in line and line.startswith("error: " + expected), (override, line)
    with pytest.raises(SystemExit, match="base_ar_share=0.01: applies only when tokenizer.base_mix is empty"):
        run_py.preflight(["experiment=english_base", "+tokenizer.base_mix.hi=0.01"])
    with pytest.raises(SystemExit, match=r"tokenizer\.base_mix=\{hi:0\.3,fa:0\.3\}: must be in \[0, 0\.5\)"):
        run_py.preflight(["+tokenizer.base_mix.hi=0.3", "+tokenizer.base_mix.fa=0.3"])
    for fine in (["trainer.devices=-1"], ["trainer.devices=auto"], ["optim.grad_clip=0"], ["logger=wandb"]):
        run_py.preflight(fine)


def test_a_bad_override_on_the_command_line_prints_one_line():
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "data.ar_ratio=1.5"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert lines == ["error: data.ar_ratio=1.5: must be a fraction in [0, 1]"], proc.stderr


def _run_py():
    """run.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("allam_run_py", ROOT / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def test_a_source_is_added_from_the_command_line(make_cfg, tmp_path):
    corpus = tmp_path / "news.jsonl"
    corpus.write_text('{"text": "x"}\n')
    cfg = make_cfg(f"+data.sources.news_ar={{lang: ar, loader: jsonl, path: '{corpus}', strip_diacritics: true}}")
    validate(cfg)
    src = cfg.data.sources.news_ar
    assert src.lang == "ar" and src.loader == "jsonl" and src.strip_diacritics and src.min_chars == 20
    with pytest.raises(ConfigError, match=r"^data.sources.bad.colour: no such key; allowed: lang, kind"):
        validate(make_cfg("+data.sources.bad={lang: ar, colour: red}"))
    with pytest.raises(ConfigError, match=r"^data.sources.bad.lang: missing; allowed: a language code such as ar, en, hi"):
        validate(make_cfg("+data.sources.bad={loader: text}"))


# --------------------------------------------------------------------------- typed values, derived numbers
def test_choices_arrive_as_plain_strings(make_cfg):
    """Enum choices compare, print and serialize as their value: no module unwraps them."""
    import json

    cfg = make_cfg("init=llama2", "model=7b", "tokenizer=expanded", "optim=adamw8bit")
    assert cfg.init.name == "llama2" and str(cfg.init.name) == "llama2" and f"{cfg.init.name}" == "llama2"
    assert f"{cfg.tokenizer.variant:>10}" == "  expanded"
    assert json.dumps({"o": cfg.optim.name}) == '{"o": "adamw8bit"}'
    assert {cfg.model.attention: 1}["auto"] == 1  # hashes as its value


def test_source_field_roles_cover_every_field():
    """Each SourceConfig field is declared once; its role decides where it counts."""
    from dataclasses import fields

    from allam.config import SourceConfig, source_defaults, source_fields

    reader, cleaning = source_fields("reader"), source_fields("cleaning")
    assert set(reader) == {"loader", "path", "text_field", "split", "skip_bad_utf8", "skip_bad_json"}
    assert set(cleaning) == {"lang", "nfc", "strip_diacritics", "strip_tatweel", "strip_bidi", "min_chars",
                             "max_wrong_script", "dedup"}
    assert not set(reader) & set(cleaning)
    assert set(source_defaults()) == {f.name for f in fields(SourceConfig)} - {"lang"}


def test_derived_world_size():
    from omegaconf import OmegaConf

    from allam.config.derived import world_size

    def t(devices, nodes=1, accelerator="cpu"):
        return OmegaConf.create({"devices": devices, "num_nodes": nodes, "accelerator": accelerator})

    assert world_size(t(1)) == 1
    assert world_size(t(8, 4)) == 32
    assert world_size(t("2", 3)) == 6
    assert world_size(t([0, 1, 2])) == 3
    assert world_size(t("auto", 2, "cpu")) == 2  # auto on CPU: one process per node


def test_derived_tokens_per_step_and_total_steps(make_cfg):
    from allam.config.derived import embedding_warmup_steps, tokens_per_step, total_steps

    cfg = make_cfg("data.batch_size=4", "model.seq_len=128", "trainer.accumulate_grad_batches=2",
                   "trainer.devices=2", "trainer.max_tokens=10000")
    assert tokens_per_step(cfg.data, cfg.model, cfg.trainer) == 4 * 128 * 2 * 2
    assert total_steps(cfg.data, cfg.model, cfg.trainer) == 5  # ceil(10000 / 2048)
    cfg.trainer.max_steps = 7
    assert total_steps(cfg.data, cfg.model, cfg.trainer) == 7  # max_steps wins over max_tokens
    cfg.init.embedding_warmup_tokens = 2049
    assert embedding_warmup_steps(cfg.init, cfg.data, cfg.model, cfg.trainer) == 2
    cfg.init.embedding_warmup_tokens = 0
    assert embedding_warmup_steps(cfg.init, cfg.data, cfg.model, cfg.trainer) == 0


def test_derived_compute_dtype_and_device():
    import torch
    from omegaconf import OmegaConf

    from allam.config.derived import compute_dtype, device_type

    assert compute_dtype("bf16-mixed") == compute_dtype("bf16-true") == torch.bfloat16
    assert compute_dtype("16-mixed") == torch.float16
    assert compute_dtype("32-true") == torch.float32
    assert device_type(OmegaConf.create({"accelerator": "gpu"})) == "cuda"
    assert device_type(OmegaConf.create({"accelerator": "cpu"})) == "cpu"


def test_mix_rules_live_in_one_place(make_cfg):
    """validate() and the blend get their stages from the same checked function."""
    from allam.config import mix_stages

    cfg = make_cfg()
    validate(cfg)
    (stage,) = mix_stages(cfg.data)
    assert (stage.tokens, stage.ar_ratio, stage.key) == (None, 0.45, "data")
    cfg = make_cfg("experiment=scratch_toy")
    validate(cfg)
    stages = mix_stages(cfg.data)
    assert [s.key for s in stages] == [f"data.stages.{i}" for i in range(len(stages))] and stages[-1].tokens is None
    only_en = make_cfg("~data.sources.tafsir_ar", "~data.sources.hadith_ar", "~data.sources.bible_ar")
    with pytest.raises(ConfigError, match="data.ar_ratio=0.45: is above 0 but data.sources has no Arabic source"):
        validate(only_en)
    no_translated = make_cfg("~data.sources.hadith_ar", "~data.sources.bible_ar", "data.translated_share=0.5")
    with pytest.raises(ConfigError, match="data.translated_share=0.5: is above 0 but no Arabic source has kind=translated"):
        validate(no_translated)


def test_task_registry_is_the_one_list(make_cfg):
    import importlib

    from allam.tasks import TASKS

    for name, module in TASKS.items():
        assert callable(importlib.import_module(module).run), name
    with pytest.raises(ConfigError, match="task=nope: allowed: " + ", ".join(TASKS)):
        validate(make_cfg("task=nope"))


def test_an_experiment_file_can_set_the_task(tmp_path):
    """conf/config.yaml sets no key of its own after the experiment (its `_self_` comes last), so
    an experiment may set `task` as it sets anything else."""
    import shutil

    from hydra import compose, initialize_config_dir

    from allam.config import CONF_DIR

    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    (conf / "experiment" / "plan_only.yaml").write_text("# @package _global_\ntask: plan\n")
    with initialize_config_dir(str(conf), version_base=None):
        assert compose("config", overrides=["experiment=plan_only"]).task == "plan"
        assert compose("config").task == "train"


def test_a_checkpoint_given_to_a_random_init_is_named_as_unused(make_cfg, caplog):
    """init.checkpoint=... without init=llama2/pretrained trains from scratch (sweeps/init.yaml's
    random-init cells rely on that); the run says the checkpoint is not used."""
    import logging

    from allam.tasks.builders import init_checkpoint

    with caplog.at_level(logging.WARNING, logger="allam"):
        assert init_checkpoint(make_cfg().init) is None
        assert not caplog.records
        assert init_checkpoint(make_cfg("init.checkpoint=outputs/english_base/hf").init) is None
    assert "init.checkpoint=outputs/english_base/hf is not used: init=random" in caplog.records[0].getMessage()
