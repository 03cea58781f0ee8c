"""Every rule a composed config must satisfy, each written once.

:func:`validate` runs before any work starts (run.py's pre-flight and every task). The mix's
rules live in :mod:`allam.config.mix_rules` (:func:`mix_stages`, which both ``validate`` and the
data blend call). Every error is one line naming the key, the value and what is allowed
(:mod:`allam.config.checks`).
"""
from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from allam.config.checks import above_zero as _above_zero, fail as _fail, positive as _positive, unit as _unit
from allam.config.errors import ConfigError
from allam.config.langs import language
from allam.config.mix_rules import mix_stages, stage_budget
from allam.config.schema import TASKS, AllamConfig, is_pretrained, SourceConfig, TokenizerVariant

LOADERS = ("demo", "text", "jsonl", "parquet", "hf")
PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true")



def base_mix(tok) -> None:
    """english8k's training-text shares: tokenizer.base_ar_share, or a tokenizer.base_mix table
    (not both), by :func:`base_shares`."""
    table = dict(tok.get("base_mix") or {})
    if table and float(tok.base_ar_share or 0.0):
        _fail("tokenizer.base_ar_share", tok.base_ar_share, "applies only when tokenizer.base_mix is empty; with "
              "tokenizer.base_mix set the Arabic share is tokenizer.base_mix.ar")
    if table:
        base_shares(table, "tokenizer.base_mix")
    else:
        base_shares({"ar": tok.base_ar_share or 0.0}, "tokenizer.base_ar_share")


def base_shares(shares, key: str) -> None:
    """The rule for the other languages' shares of english8k's training words: known codes, not
    English, each at least 0 and together below one half (the base stays mostly English)."""
    values = {str(c): float(v) for c, v in shares.items()}
    if any(v < 0 for v in values.values()) or not sum(values.values()) < 0.5:
        shown = ("{" + ",".join(f"{c}:{v}" for c, v in shares.items()) + "}") if key.endswith("base_mix") \
            else next(iter(shares.values()))
        _fail(key, shown, "must be in [0, 0.5) (the base stays mostly English)")
    if values.get("en", 0.0) > 0:
        raise ConfigError(f"{key}: names en; it holds the shares of the other languages in the English base's text")
    for code in values:
        language(code, key)  # tokenizer.base_mix=xx: unknown language code



# --------------------------------------------------------------------------- data sources and mix
def source(name: str, node: Any, sources: tuple[str, ...] = ()) -> DictConfig:
    """One data source checked against SourceConfig, with its defaults filled in (``sources``: the
    config's complete sources, named when this one has no ``lang``)."""
    from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, ValidationError

    key = f"data.sources.{name}"
    if not isinstance(node, (dict, DictConfig)):
        _fail(key, node, "must be a mapping of SourceConfig fields (lang, kind, loader, path, ...)")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(SourceConfig), node)
        merged.lang  # MISSING unless given  # noqa: B018
    except ConfigKeyError as exc:
        bad = str(exc).split("'")[1] if "'" in str(exc) else "?"
        raise ConfigError(f"{key}.{bad}: no such key; allowed: " + ", ".join(SourceConfig.__dataclass_fields__))
    except MissingMandatoryValue:
        others = [n for n in sources if n != name]
        hint = (f" ('{name}' is none of the sources {', '.join(others)}; a new one needs lang, loader and path)"
                if others else "")
        raise ConfigError(f"{key}.lang: missing; allowed: a language code such as ar, en, hi{hint}")
    except ValidationError as exc:
        field_name = getattr(exc, "key", None) or "?"
        first = str(exc).strip().splitlines()[0]
        _fail(f"{key}.{field_name}", exc.__dict__.get("value", "?"), first)
    language(merged.lang, f"{key}.lang")
    if merged.loader not in LOADERS:
        _fail(f"{key}.loader", merged.loader, "allowed: " + ", ".join(LOADERS))
    _unit(f"{key}.max_wrong_script", merged.max_wrong_script)
    _positive(f"{key}.min_chars", merged.min_chars, allow_zero=True)
    weight = merged.weight
    if weight is not None and not (math.isfinite(float(weight)) and float(weight) > 0):
        _fail(f"{key}.weight", weight, "must be a positive number (its share of its (lang, kind) stream) or null "
              f"(by size); to leave the source out, remove it with ~{key}")
    return merged


def hold_out(data) -> None:
    """Fill each file and hf source's ``val_fraction`` and ``val_max_bytes`` left unset from
    ``data.val_fraction`` and ``data.val_cap_bytes`` (a language's cap shared equally among its file
    and hf sources); a demo source that sets either is an error (it keeps its held-out books)."""
    _unit("data.val_fraction", data.val_fraction)
    if float(data.val_fraction) >= 1:
        _fail("data.val_fraction", data.val_fraction, "must be below 1 (1 would leave nothing to train on)")
    _positive("data.val_cap_bytes", data.val_cap_bytes, allow_zero=True)
    files: dict[str, list[str]] = {}
    for name in data.sources:
        src = data.sources[name]
        if src.loader == "demo":
            for key in ("val_fraction", "val_max_bytes"):
                if src[key] is not None:
                    _fail(f"data.sources.{name}.{key}", src[key], "a demo source keeps its held-out books "
                          "(the evaluation tasks are built from them); the hold-out settings are for file and hf sources")
            continue
        _unit(f"data.sources.{name}.val_fraction", src.val_fraction)
        if src.val_fraction is not None and float(src.val_fraction) >= 1:
            _fail(f"data.sources.{name}.val_fraction", src.val_fraction, "must be below 1 (1 would leave nothing to train on)")
        _positive(f"data.sources.{name}.val_max_bytes", src.val_max_bytes, allow_zero=True)
        files.setdefault(str(src.lang), []).append(name)
    for names in files.values():
        for name in names:
            src = data.sources[name]
            if src.val_fraction is None:
                src.val_fraction = float(data.val_fraction)
            if src.val_max_bytes is None and data.val_cap_bytes is not None:  # a positive cap keeps at least 1 byte each
                cap = int(data.val_cap_bytes)
                src.val_max_bytes = max(1, cap // len(names)) if cap else 0



# --------------------------------------------------------------------------- the whole config
def _check_keys(cfg: DictConfig) -> None:
    """Keys added with '+' bypass the schema's struct check; a misspelled one must still fail, at
    any depth of the typed schema (tables such as data.sources or data.mix hold names of the
    user's choosing and are checked by their own rules)."""
    schema = OmegaConf.structured(AllamConfig)
    for key in cfg:
        if key not in schema:
            raise ConfigError(f"{key}: no such key; allowed: {', '.join(str(k) for k in schema)}")
    _check_typed(cfg, schema, "")


def _check_typed(node: DictConfig, schema: DictConfig, prefix: str) -> None:
    import dataclasses

    for key in node:
        spec = schema._get_node(key)
        if not isinstance(spec, DictConfig) or not dataclasses.is_dataclass(OmegaConf.get_type(spec)):
            continue
        sub = node._get_node(key)
        if not isinstance(sub, DictConfig) or sub._is_none() or sub._is_missing():
            continue
        for k in sub:
            if k not in spec:
                allowed = ", ".join(str(x) for x in spec)
                raise ConfigError(f"{prefix}{key}.{k}: no such key in {prefix}{key}; allowed: {allowed}")
        _check_typed(sub, spec, f"{prefix}{key}.")


def writable_dir(key: str, path: str) -> None:
    """One line unless `path` is (or can be made) a folder this process can write into."""
    import os
    import tempfile
    from pathlib import Path

    p = Path(os.path.expanduser(str(path)))
    if p.exists() and not p.is_dir():
        _fail(key, path, "is a file, not a folder; choose a folder path")
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".write-test-"):
            pass
    except OSError as exc:
        _fail(key, path, f"cannot write there ({exc.strerror or exc}); choose a writable folder")


def _prepare(p: Any) -> None:
    """data.prepare: sizes positive; a task is at least 1 MiB; executor=slurm names its partition."""
    if p.task_bytes < (1 << 20):
        _fail("data.prepare.task_bytes", p.task_bytes, "must be at least 1048576 (1 MiB)")
    for key in ("workers", "slurm_cpus_per_task", "slurm_mem_per_cpu_gb", "slurm_max_parallel"):
        _positive(f"data.prepare.{key}", p[key])
    if str(p.executor) == "slurm" and not p.slurm_partition:
        _fail("data.prepare.slurm_partition", p.slurm_partition, "executor=slurm needs the SLURM partition to submit to")


def validate(cfg: DictConfig) -> None:
    """Checks a composed config before anything is built (and fills each data source's defaults).
    Raises ConfigError (one line)."""
    _check_keys(cfg)
    m, d, o, t, tok, ini = cfg.model, cfg.data, cfg.optim, cfg.trainer, cfg.tokenizer, cfg.init
    if cfg.task not in TASKS:
        _fail("task", cfg.task, "allowed: " + ", ".join(TASKS))
    for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "seq_len"):
        _positive(f"model.{key}", m[key])
    if m.hidden_size % m.num_heads:
        _fail("model.hidden_size", m.hidden_size, f"must be divisible by model.num_heads={m.num_heads}")
    kv = m.num_kv_heads or m.num_heads
    if m.num_heads % kv:
        _fail("model.num_kv_heads", kv, f"must divide model.num_heads={m.num_heads}")
    for key in ("num_kv_heads", "head_dim", "vocab_size", "pad_vocab_to", "max_position_embeddings"):
        _positive(f"model.{key}", m[key])
    for key in ("rope_theta", "norm_eps"):
        _above_zero(f"model.{key}", m[key])
    if m.max_position_embeddings is not None and m.seq_len > m.max_position_embeddings:
        _fail("model.seq_len", m.seq_len, f"must be <= model.max_position_embeddings={m.max_position_embeddings}")
    _positive("data.batch_size", d.batch_size)
    _positive("data.val_bytes", d.val_bytes, allow_zero=True)
    _positive("data.cache_wait_s", d.cache_wait_s)
    _prepare(d.prepare)
    _positive("data.num_workers", d.num_workers, allow_zero=True)
    _positive("trainer.max_tokens", t.max_tokens)
    _positive("trainer.max_steps", t.max_steps)
    _positive("trainer.accumulate_grad_batches", t.accumulate_grad_batches)
    _positive("trainer.cross_entropy_chunk", t.cross_entropy_chunk)
    _positive("trainer.checkpoint_every_steps", t.checkpoint_every_steps)
    _positive("trainer.val_every_steps", t.val_every_steps)
    _positive("trainer.log_every_n_steps", t.log_every_n_steps)
    _positive("train.max_nonfinite_skips", cfg.train.max_nonfinite_skips, allow_zero=True)
    _positive("trainer.num_nodes", t.num_nodes)
    if isinstance(t.devices, int) and (t.devices == 0 or t.devices < -1):
        _fail("trainer.devices", t.devices, "must be a positive count, -1 (every device) or auto")
    if t.peak_tflops is not None:
        _above_zero("trainer.peak_tflops", t.peak_tflops)
    if str(cfg.logger.get("mode", "offline")) not in ("offline", "online", "disabled"):
        _fail("logger.mode", cfg.logger.mode, "allowed: offline, online, disabled")
    if o.lr <= 0:
        _fail("optim.lr", o.lr, "must be positive")
    if len(o.betas) != 2 or not all(0.0 <= b < 1.0 for b in o.betas):
        _fail("optim.betas", list(o.betas), "must be two numbers in [0, 1)")
    _unit("optim.min_lr_ratio", o.min_lr_ratio)
    _above_zero("optim.eps", o.eps)
    if not (math.isfinite(o.weight_decay) and o.weight_decay >= 0):
        _fail("optim.weight_decay", o.weight_decay, "must be a number >= 0")
    if not (math.isfinite(o.grad_clip) and o.grad_clip >= 0):
        _fail("optim.grad_clip", o.grad_clip, "must be a number >= 0 (0: no clipping)")
    _positive("optim.warmup_steps", o.warmup_steps, allow_zero=True)
    if tok.training_words is not None and int(tok.training_words) < 64:
        _fail("tokenizer.training_words", tok.training_words, "must be at least 64 (one training line) or null (all)")
    _positive("tokenizer.num_new_tokens", tok.num_new_tokens)
    _positive("tokenizer.vocab_size", tok.vocab_size)
    _positive("tokenizer.english_vocab_size", tok.english_vocab_size)
    base_mix(tok)
    _positive("init.embedding_warmup_tokens", ini.embedding_warmup_tokens, allow_zero=True)
    if ini.std <= 0:
        _fail("init.std", ini.std, "must be positive")
    if is_pretrained(ini.name) and not ini.checkpoint:
        _fail(
            "init.checkpoint",
            None,
            f"init={ini.name} needs a checkpoint (hub id or local folder); model={m.name} has no published one",
        )
    if is_pretrained(ini.name) and tok.variant == TokenizerVariant.bilingual:
        _fail("tokenizer", "bilingual", "a vocabulary trained from scratch does not fit a checkpoint's embeddings; "
              f"with init={ini.name} use tokenizer=base or tokenizer=expanded")
    if not is_pretrained(ini.name) and m.vocab_size:  # before a tokenizer is trained (hours at 64k pieces)
        n, what = None, ""
        if tok.variant == TokenizerVariant.bilingual:
            n, what = int(tok.vocab_size), "tokenizer.vocab_size"
        elif str(tok.base) in ("auto", "english8k"):
            n, what = int(tok.english_vocab_size), "tokenizer.english_vocab_size"
            if tok.variant == TokenizerVariant.expanded:
                n, what = n + int(tok.num_new_tokens), what + " + tokenizer.num_new_tokens"
        if n is not None and n > m.vocab_size:
            _fail("model.vocab_size", m.vocab_size, f"smaller than the tokenizer's {n:,} pieces ({what}); set "
                  "model.vocab_size=null (the tokenizer's size, padded) or a larger size")
    if t.precision not in PRECISIONS:
        _fail("trainer.precision", t.precision, "allowed: " + ", ".join(PRECISIONS))
    complete = tuple(n for n in d.sources if isinstance(d.sources[n], (dict, DictConfig)) and "lang" in d.sources[n])
    for name in list(d.sources):
        d.sources[name] = source(name, d.sources[name], complete)
    hold_out(d)
    budget(t, cfg.objective)
    if cfg.objective.name == "pretrain":
        stage_budget(mix_stages(d), d, m, t)
    evaluation(cfg.eval)
    generation(cfg)
    objective(cfg.objective, ini, cfg.eval)


def budget(t, obj) -> None:
    """Pretraining runs to ``trainer.max_tokens`` (or ``trainer.max_steps``); sft and dpo run
    ``objective.epochs`` over their examples (or ``trainer.max_steps``), so their groups unset the
    token budget and one set after them is refused rather than ignored."""
    if obj.name == "pretrain" and t.max_tokens is None and not t.max_steps:
        _fail("trainer.max_tokens", None, "objective=pretrain needs a training budget: set trainer.max_tokens (or trainer.max_steps)")
    if obj.name != "pretrain" and t.max_tokens is not None:
        _fail("trainer.max_tokens", t.max_tokens, f"objective={obj.name} trains objective.epochs={obj.epochs} passes over its "
              "examples (or trainer.max_steps steps), not a token budget: leave trainer.max_tokens unset")


def evaluation(e) -> None:
    """The eval group's rules (which task names exist is the harness's to say, when a suite runs)."""
    from pathlib import Path

    if not e.tasks:
        _fail("eval.tasks", "[]", "name at least one lm-evaluation-harness task (e.g. eval=demo or eval=paper)")
    for task, shots in (e.num_fewshot or {}).items():
        _positive(f"eval.num_fewshot.{task}", shots, allow_zero=True)
    for key in ("every_tokens", "limit", "batch_size", "max_length"):
        _positive(f"eval.{key}", e[key])
    if e.data_dir and not Path(str(e.data_dir)).expanduser().is_dir():
        _fail("eval.data_dir", e.data_dir, "no such folder (it holds local copies of hub datasets as <folder>/<dataset_path>)")


def generation(cfg) -> None:
    """task=generate's rules: a prompt to send, and sampling settings that mean something."""
    g = cfg.generate
    if cfg.task == "generate" and cfg.prompt is None:
        _fail("prompt", None, 'task=generate needs prompt="<text to continue or ask>"')
    _positive("generate.max_new_tokens", g.max_new_tokens)
    if not (math.isfinite(g.temperature) and g.temperature >= 0):
        _fail("generate.temperature", g.temperature, "must be a number >= 0 (0: greedy)")
    if not (0.0 < g.top_p <= 1.0):
        _fail("generate.top_p", g.top_p, "must be in (0, 1] (1: no nucleus cut)")
    _positive("generate.seed", g.seed, allow_zero=True)
    if str(g.chat).lower() not in ("auto", "true", "false"):
        _fail("generate.chat", g.chat, "allowed: auto, true, false")


def objective(obj, ini, ev=None) -> None:
    """The training objective's rules: sft and dpo continue a trained model (DPO's reference is the
    starting model; SFT teaches a format, not the language); dpo's loss settings are in range;
    settings counted in pretraining tokens (batch x seq_len per sequence), which a padded example
    or a pair is not, are refused rather than applied on that nominal count. The
    data are checked when read, before any model is built (allam.data.post_datamodule: no
    objective.train, or a file of the other kind, is one line), so task=plan sizes a recipe without them."""
    if obj.name == "pretrain":
        return
    if not is_pretrained(ini.name):
        _fail("init", ini.name, f"objective={obj.name} continues a trained model: use init=pretrained "
              "init.checkpoint=<run>/hf (or a Hugging Face folder)")
    _positive("objective.epochs", obj.epochs)
    _positive("objective.max_examples", obj.max_examples)
    if ev is not None and ev.get("every_tokens"):
        _fail("eval.every_tokens", ev.every_tokens, f"counts pretraining tokens; objective={obj.name} trains on padded "
              "examples, so it would evaluate at a nominal count: score its checkpoints after training (task=eval ckpt=<run>)")
    if int(ini.get("embedding_warmup_tokens") or 0):
        _fail("init.embedding_warmup_tokens", ini.embedding_warmup_tokens, f"applies to continued pretraining of new "
              f"rows; objective={obj.name} trains every weight from the start (set it to 0)")
    if not (math.isfinite(obj.beta) and obj.beta > 0):
        _fail("objective.beta", obj.beta, "must be a number > 0")
    if not 0.0 <= obj.label_smoothing < 0.5:
        _fail("objective.label_smoothing", obj.label_smoothing, "must be in [0, 0.5)")
    if obj.label_smoothing and obj.loss_type != "sigmoid":
        _fail("objective.label_smoothing", obj.label_smoothing, "applies to objective.loss_type=sigmoid only; set it to 0")


def to_dict(cfg: DictConfig) -> dict:
    """Plain, resolved dict (enums as their values) for results.json and loggers."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # type: ignore[return-value]
