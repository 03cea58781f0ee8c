"""The one place that wires tokenizer -> data -> model -> trainer for each task.

Each task is a function taking the composed, validated config. No other module reads the
global config: each part gets only the sub-config it needs.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from allam.config import ConfigError, InitName, TokenizerVariant, to_dict, validate

log = logging.getLogger("allam")

GROUP_FIELDS = {
    "model": "model.name",
    "init": "init.name",
    "tokenizer": "tokenizer.variant",
    "data": "data.name",
    "optim": "optim.name",
    "trainer": "trainer.name",
    "logger": "logger.name",
}


# --------------------------------------------------------------------------- small helpers
def _v(x):
    return getattr(x, "value", x)


def run_dir(cfg: DictConfig) -> Path:
    path = Path(cfg.paths.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir(cfg: DictConfig) -> Path:
    path = Path(cfg.paths.cache_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def group_choices(cfg: DictConfig) -> dict[str, str]:
    """The choice made in every config group (from Hydra when it ran us, else from the names)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = dict(HydraConfig.get().runtime.choices)
        return {k: v for k, v in choices.items() if not k.startswith("hydra") and k != "hydra"}
    except Exception:
        return {g: str(_v(OmegaConf.select(cfg, key))) for g, key in GROUP_FIELDS.items()}


def world_size(t) -> int:
    devices = t.devices
    if isinstance(devices, int):
        n = devices
    elif isinstance(devices, str) and devices.isdigit():
        n = int(devices)
    elif hasattr(devices, "__len__") and not isinstance(devices, str):
        n = len(devices)
    elif devices in ("auto", -1, "-1"):
        n = torch.cuda.device_count() if t.accelerator in ("gpu", "cuda") else 1
    else:
        n = 1
    return max(1, n) * max(1, t.num_nodes)


def tokens_per_step(cfg: DictConfig) -> int:
    return cfg.data.batch_size * cfg.model.seq_len * cfg.trainer.accumulate_grad_batches * world_size(cfg.trainer)


def total_steps(cfg: DictConfig) -> int:
    """Optimizer steps of the run, from the config alone (never from the trainer; Lightning #20550)."""
    if cfg.trainer.max_steps:
        return int(cfg.trainer.max_steps)
    return max(1, math.ceil(cfg.trainer.max_tokens / tokens_per_step(cfg)))


def compute_dtype(precision: str) -> torch.dtype:
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return torch.float32


def device_type(t) -> str:
    return "cuda" if t.accelerator in ("gpu", "cuda") or (t.accelerator == "auto" and torch.cuda.is_available()) else "cpu"


# --------------------------------------------------------------------------- parts
def build_tokenizer(cfg: DictConfig):
    """The configured tokenizer; any it must train learns from the configured sources' training text."""
    from allam.data.sources import SourceTexts
    from allam.tokenizer import build_tokenizer as _build

    init_ckpt = cfg.init.checkpoint if _v(cfg.init.name) == InitName.llama2.value else None
    return _build(
        cfg.tokenizer,
        cache_dir=cache_dir(cfg) / "tokenizers",
        init_checkpoint=init_ckpt,
        texts=SourceTexts(cfg.data.sources, "train"),
        local_files_only=cfg.init.local_files_only,
    )


def build_model(cfg: DictConfig, bundle, attention: str):
    """A fresh (init=random) or loaded (init=llama2) LlamaForCausalLM sized for the tokenizer.

    A loaded model whose vocabulary is smaller than the tokenizer's is resized (padded to
    model.pad_vocab_to) and its new rows filled per init.new_embeddings, before any sharding.
    """
    from allam.model.build import build_random, load_pretrained, padded

    m, init = cfg.model, cfg.init
    vocab = len(bundle.tokenizer)
    if _v(init.name) == InitName.random.value:
        rows = m.vocab_size or padded(vocab, m.pad_vocab_to)
        if rows < vocab:
            raise ConfigError(f"model.vocab_size={rows}: smaller than the tokenizer's {vocab} pieces")
        tok = bundle.tokenizer
        return build_random(m, init, rows, attention, tok.bos_token_id, tok.eos_token_id)
    model = load_pretrained(m, init, attention)
    variant = _v(cfg.tokenizer.variant)
    check_tokenizer_matches_checkpoint(cfg, bundle, model.get_input_embeddings().weight.shape[0])
    if variant == TokenizerVariant.expanded.value:
        from allam.model.embeddings import resize_embeddings

        # grows the rows when needed and always fills every row past the base vocabulary
        resize_embeddings(
            model,
            base_tokenizer=bundle.base.tokenizer,
            new_tokenizer=bundle.tokenizer,
            strategy=_v(init.new_embeddings),
            pad_to=m.pad_vocab_to,
            seed=init.seed,
        )
    return model


def check_tokenizer_matches_checkpoint(cfg: DictConfig, bundle, rows: int) -> None:
    """With init=llama2, token ids must mean what the checkpoint learned them to mean: the base
    tokenizer must be the checkpoint's own (tokenizer.base=auto), or have the same vocabulary."""
    init, variant = cfg.init, _v(cfg.tokenizer.variant)
    base = bundle.base if variant == TokenizerVariant.expanded.value else bundle
    if variant == TokenizerVariant.base.value and len(base.tokenizer) > rows:
        raise ConfigError(
            f"init.checkpoint={init.checkpoint}: has {rows} embedding rows but tokenizer "
            f"({bundle.name}) has {len(bundle.tokenizer)} pieces; use tokenizer=expanded to grow the vocabulary"
        )
    if cfg.tokenizer.base == "auto":
        return  # the base is the checkpoint's own tokenizer
    try:
        from allam.tokenizer.hf_folder import load

        own = load(init.checkpoint, local_files_only=init.local_files_only)
    except Exception:
        own = None
    if own is not None and own.get_vocab() != base.tokenizer.get_vocab():
        raise ConfigError(
            f"tokenizer.base={cfg.tokenizer.base}: its vocabulary differs from the tokenizer of "
            f"init.checkpoint={init.checkpoint}; use tokenizer.base=auto (the checkpoint's own)"
        )
    if own is None and len(base.tokenizer) != rows:
        raise ConfigError(
            f"tokenizer.base={cfg.tokenizer.base}: {len(base.tokenizer)} pieces, but init.checkpoint="
            f"{init.checkpoint} has {rows} embedding rows and no tokenizer to compare with"
        )


def build_datamodule(cfg: DictConfig, tokenizer, max_seq_len: int | None = None):
    from allam.data.datamodule import AllamDataModule

    return AllamDataModule(
        cfg.data,
        tokenizer,
        seq_len=cfg.model.seq_len,
        cache_dir=cache_dir(cfg) / "data",
        train_batches=total_steps(cfg) * cfg.trainer.accumulate_grad_batches,
        max_seq_len=max_seq_len,
    )


def build_logger(cfg: DictConfig, out: Path):
    name = _v(cfg.logger.name)
    if name == "none":
        return False
    if name == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        mode = cfg.logger.mode
        os.environ.setdefault("WANDB_MODE", mode)
        return WandbLogger(
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            save_dir=str(out),
            offline=mode != "online",
            tags=list(cfg.logger.tags),
            config=to_dict(cfg),
        )
    from lightning.pytorch.loggers import CSVLogger

    return CSVLogger(str(out), name="csv", version="")


def build_strategy(t):
    strategy = str(t.strategy)
    if strategy == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        return FSDPStrategy(
            auto_wrap_policy={LlamaDecoderLayer},
            activation_checkpointing_policy=None,
            sharding_strategy="FULL_SHARD",
            state_dict_type="sharded",
            use_orig_params=True,
        )
    return strategy


def build_trainer(cfg: DictConfig, out: Path, callbacks: list, steps: int):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

    t = cfg.trainer
    ckpt = ModelCheckpoint(
        dirpath=str(out / "checkpoints"),
        filename="step{step}",
        auto_insert_metric_name=False,
        every_n_train_steps=t.checkpoint_every_steps or None,
        save_last=True,
        save_top_k=-1 if t.checkpoint_every_steps else 0,
    )
    cbs = [ckpt, *callbacks]
    if t.progress_bar:
        cbs.append(TQDMProgressBar(refresh_rate=1))
    val_every = t.val_every_steps * t.accumulate_grad_batches if t.val_every_steps else None
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=build_strategy(t),
        precision=t.precision,
        max_steps=steps,
        max_epochs=-1,  # max_steps ends the run; an epoch is one pass over the blend
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=None,  # CausalLM.configure_gradient_clipping clips to optim.grad_clip (FSDP-aware)
        val_check_interval=val_every,
        check_val_every_n_epoch=1,
        num_sanity_val_steps=0,
        log_every_n_steps=t.log_every_n_steps,
        logger=build_logger(cfg, out),
        callbacks=cbs,
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,
        default_root_dir=str(out),
        deterministic=t.deterministic,
        use_distributed_sampler=False,
    )


def export_hf(model, bundle, out: Path) -> Path:
    """A Hugging Face folder (safetensors weights, config, tokenizer) that Auto* classes load."""
    from allam.tokenizer import export_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    impl = model.config._attn_implementation
    model.config._attn_implementation = "sdpa"  # xformers is registered only inside allam
    model.config.use_cache = True
    try:
        model.save_pretrained(str(out), safe_serialization=True)
    finally:
        model.config._attn_implementation = impl
        model.config.use_cache = False
    export_tokenizer(bundle, out)  # the tokenizer folder, SentencePiece model included
    return out


# --------------------------------------------------------------------------- tasks
def train(cfg: DictConfig) -> dict:
    """Train (or continue training) and write results.json; returns the results."""
    import lightning as L
    from lightning.pytorch.utilities import rank_zero_only

    from allam.model.build import flops_per_token, parameter_counts
    from allam.tokenizer import token_byte_lengths
    from allam.train.callbacks import Throughput
    from allam.train.module import CausalLM

    validate(cfg)
    out = run_dir(cfg)
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    t0 = time.perf_counter()

    bundle = build_tokenizer(cfg)
    attention = resolve_attention_for(cfg)
    model = build_model(cfg, bundle, attention)
    steps = total_steps(cfg)
    dm = build_datamodule(cfg, bundle.tokenizer, max_seq_len=model.config.max_position_embeddings)
    dm.prepare()

    if rank_zero_only.rank == 0:
        model.config.to_json_file(str(out / "model_config.json"))  # the final shape: export needs no hub access
        OmegaConf.save(cfg, out / "config.yaml", resolve=True)
    counts = parameter_counts(model)
    fpt = flops_per_token(model.config, counts["non_embedding"], cfg.model.seq_len)
    warm_steps = math.ceil(cfg.init.embedding_warmup_tokens / tokens_per_step(cfg)) if cfg.init.embedding_warmup_tokens else 0
    module = CausalLM(
        model,
        cfg.optim,
        total_steps=steps,
        token_bytes=token_byte_lengths(bundle.tokenizer),
        val_languages=dm.val_languages,
        embedding_warmup_steps=warm_steps,
        gradient_checkpointing=cfg.model.gradient_checkpointing,
        compile=cfg.trainer.compile,
    )
    throughput = Throughput(fpt, str(cfg.trainer.precision), cfg.trainer.peak_tflops, cfg.trainer.log_every_n_steps)
    trainer = build_trainer(cfg, out, [throughput], steps)
    log.info("training %s for %d steps (%s tokens/step) in %s", cfg.model.name, steps, f"{tokens_per_step(cfg):,}", out)
    start_val = {}
    if _v(cfg.init.name) == InitName.llama2.value and not cfg.ckpt:
        # the starting checkpoint's scores, so forgetting (English) and gains (Arabic) are measured, not guessed
        trainer.validate(module, datamodule=dm, verbose=False)
        start_val = dict(module.final_val)
        module.final_val = {}
    trainer.fit(module, datamodule=dm, ckpt_path=cfg.ckpt, weights_only=True if cfg.ckpt else None)
    if module.final_val_step != trainer.global_step:  # the last validation was not at the last step
        trainer.validate(module, datamodule=dm, verbose=False)
    save_final_checkpoint(trainer, out)

    results = {
        "task": "train",
        "run_dir": str(out),
        "choices": group_choices(cfg),
        "model.parameters": counts["total"],
        "model.non_embedding_parameters": counts["non_embedding"],
        "model.attention": attention,
        "tokenizer.name": bundle.name,
        "tokenizer.vocab_size": len(bundle.tokenizer),
        "train.steps": trainer.global_step,
        "train.tokens": throughput.tokens,
        "train.tokens_this_run": throughput.tokens_this_run,
        "train.seconds": throughput.train_seconds,
        "train.tokens_per_second": throughput.tokens_per_second,
        "train.mfu": throughput.mfu,
        "train.mfu_peak_source": throughput.peak_source,
        "train.flops_per_token": fpt,
        "train.loss": module.last_loss,
        "wall_seconds": time.perf_counter() - t0,
    }
    for lang, vals in module.final_val.items():
        for key in ("loss", "bpb", "tokens", "bytes"):
            results[f"val.{lang}.{key}"] = vals[key]
    results["val.step"] = module.final_val_step
    for lang, vals in start_val.items():
        results[f"start.val.{lang}.loss"] = vals["loss"]
        results[f"start.val.{lang}.bpb"] = vals["bpb"]
        if lang in module.final_val:  # > 0: worse than the starting checkpoint (forgetting)
            results[f"delta.val.{lang}.bpb"] = module.final_val[lang]["bpb"] - vals["bpb"]
    results["data"] = dm.mix_report()
    if cfg.export:
        exported = export_after_fit(trainer, module, bundle, out / "hf", cfg)
        if exported is not None:
            results["export"] = str(exported)
    results["config"] = to_dict(cfg)
    if trainer.is_global_zero:
        path = write_results(out, results)
        print_summary(results, path)
    return results


def save_final_checkpoint(trainer, out: Path) -> None:
    """checkpoints/last.ckpt holds the final step. Lightning refreshes "last" only on its own
    checkpoint schedule, so a run whose length is not a multiple of it would end with an older
    last.ckpt. Collective: every rank calls it (FSDP writes shards)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    cb = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    if cb is None or getattr(cb, "_last_global_step_saved", None) == trainer.global_step:
        return
    trainer.save_checkpoint(str(out / "checkpoints" / "last.ckpt"))


def export_after_fit(trainer, module, bundle, out: Path, cfg: DictConfig) -> Path | None:
    """Export the trained model on global rank 0. Under FSDP the weights are sharded across
    ranks, so rank 0 rebuilds the model and reads only the model's keys out of the sharded
    last checkpoint that every rank has just written."""
    if "fsdp" not in str(cfg.trainer.strategy):
        return export_hf(module.model, bundle, out) if trainer.is_global_zero else None
    trainer.strategy.barrier()
    path = None
    if trainer.is_global_zero:
        from allam.train.checkpoint import load_module_state

        model = model_skeleton(out.parent / "model_config.json")
        load_module_state(model, Path(out.parent / "checkpoints" / "last.ckpt"))
        path = export_hf(model, bundle, out)
    trainer.strategy.barrier()
    return path


def resolve_attention_for(cfg: DictConfig) -> str:
    from allam.model.attention import resolve_attention

    return resolve_attention(_v(cfg.model.attention), device_type(cfg.trainer), compute_dtype(str(cfg.trainer.precision)))


def write_results(out: Path, results: dict) -> Path:
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    return path


def print_summary(results: dict, path: Path) -> None:
    def f(key, fmt="{:.4f}"):
        v = results.get(key)
        return fmt.format(v) if isinstance(v, (int, float)) else "n/a"

    print()
    print(f"tokens seen      {f('train.tokens', '{:,}')} in {f('train.seconds', '{:.1f}')} s ({f('train.tokens_per_second', '{:,.0f}')} tokens/s)")
    for lang in ("ar", "en"):
        if f"val.{lang}.loss" in results:
            line = f"val {lang}           loss {f(f'val.{lang}.loss')}  bits/byte {f(f'val.{lang}.bpb')}"
            if f"start.val.{lang}.bpb" in results:
                line += f"  (start {f(f'start.val.{lang}.bpb')}, change {f(f'delta.val.{lang}.bpb', '{:+.4f}')})"
            print(line)
    print(f"results: {path}")


def planned_vocab(cfg: DictConfig) -> tuple[int, str]:
    """Embedding rows the run will have, and where the number comes from, without training or
    downloading a tokenizer. Reads at most a local tokenizer file or a checkpoint's config.json."""
    from allam.model.build import checkpoint_config, padded

    m, tok = cfg.model, cfg.tokenizer
    variant, llama2 = _v(tok.variant), _v(cfg.init.name) == InitName.llama2.value
    if variant == TokenizerVariant.bilingual.value:
        n, source = tok.vocab_size, "tokenizer.vocab_size"
    else:
        base = tok.base
        if base == "auto" and llama2:
            if m.vocab_size:
                n, source = m.vocab_size, f"model.vocab_size (the {m.name} checkpoint's vocabulary)"
            else:
                n, source = checkpoint_config(cfg.init.checkpoint, cfg.init.local_files_only).vocab_size, "init.checkpoint config"
        elif base in ("auto", "english8k"):
            n, source = tok.english_vocab_size, "tokenizer.english_vocab_size"
        else:
            from allam.tokenizer.build import resolve_base_size

            n, source = resolve_base_size(base, cfg.init.local_files_only), f"tokenizer.base={base}"
        if variant == TokenizerVariant.expanded.value:
            n, source = n + tok.num_new_tokens, source + " + tokenizer.num_new_tokens (an upper bound)"
    if llama2:
        rows = m.vocab_size or n
        return (max(rows, padded(n, m.pad_vocab_to)) if n > rows else rows), source
    return (m.vocab_size or padded(n, m.pad_vocab_to)), source


def plan(cfg: DictConfig) -> dict:
    """Meta-device model and a memory estimate; trains, builds and downloads nothing."""
    from allam.model.plan import make_plan

    validate(cfg)
    vocab, source = planned_vocab(cfg)
    p = make_plan(cfg, vocab, world_size(cfg.trainer), tokens_per_step(cfg))
    print(f"plan: model={cfg.model.name} init={_v(cfg.init.name)} tokenizer={_v(cfg.tokenizer.variant)} (vocabulary from {source})")
    for line in p.lines():
        print("  " + line)
    results = {"task": "plan", "choices": group_choices(cfg), **{f"plan.{k}": v for k, v in p.as_dict().items()}}
    results["model.parameters"] = p.parameters
    return results


def export(cfg: DictConfig) -> dict:
    """Export a Hugging Face folder from a Lightning checkpoint of an allam run (ckpt=...)."""
    from allam.train.checkpoint import load_module_state

    if not cfg.ckpt:
        raise ConfigError("ckpt=None: task=export needs ckpt=<path to a .ckpt of an allam run>")
    ckpt = Path(cfg.ckpt)
    if not ckpt.exists():
        raise ConfigError(f"ckpt={cfg.ckpt}: no such checkpoint")
    saved = next((p / "model_config.json" for p in ckpt.resolve().parents if (p / "model_config.json").exists()), None)
    if saved is None:
        raise ConfigError(f"ckpt={cfg.ckpt}: not inside an allam run directory (no model_config.json above it)")
    bundle = build_tokenizer(training_config_for(ckpt) or cfg)
    model = model_skeleton(saved)
    load_module_state(model, ckpt)
    out = Path(cfg.paths.output_dir) / "hf"
    export_hf(model, bundle, out)
    print(f"exported: {out}")
    return {"task": "export", "export": str(out), "ckpt": str(ckpt)}


def training_config_for(ckpt: Path) -> DictConfig | None:
    """The resolved config saved next to a run's checkpoints (run_dir/config.yaml)."""
    for parent in ckpt.resolve().parents:
        candidate = parent / "config.yaml"
        if candidate.exists():
            from allam.config import AllamConfig

            schema = OmegaConf.structured(AllamConfig)
            return OmegaConf.merge(schema, OmegaConf.load(candidate))
    return None


def model_skeleton(config_file: Path):
    """An untrained Llama of a run's final shape (model_config.json, vocabulary growth included)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = LlamaConfig.from_json_file(str(config_file))
    hf_cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(hf_cfg)


REPORT_VARIANTS = (
    {"variant": "base", "base": "english8k"},
    {"variant": "base", "base": "mistral7b"},
    {"variant": "expanded", "base": "english8k"},
    {"variant": "expanded", "base": "mistral7b"},
    {"variant": "bilingual"},
)


def tokenizer_report(cfg: DictConfig) -> dict:
    """Fertility of tokenizer variants on the configured sources' held-out Arabic and English
    (table, JSON and PNG in the run dir).

    Compares the run's own tokenizer with the two offline bases, their expansions (with
    tokenizer.num_new_tokens new pieces) and the bilingual tokenizer (tokenizer.vocab_size), all
    trained on the configured sources' training text exactly as a training run would.
    """
    from allam.data.sources import SourceTexts
    from allam.tokenizer import build_tokenizer as _build
    from allam.tokenizer import tokenizer_report as _report

    validate(cfg)
    train_texts = SourceTexts(cfg.data.sources, "train")
    init_ckpt = cfg.init.checkpoint if _v(cfg.init.name) == InitName.llama2.value else None
    bundles = [build_tokenizer(cfg)]
    for spec in REPORT_VARIANTS:
        bundle = _build(OmegaConf.merge(cfg.tokenizer, spec), cache_dir=cache_dir(cfg) / "tokenizers",
                        init_checkpoint=init_ckpt, texts=train_texts,
                        local_files_only=cfg.init.local_files_only)
        if bundle.name not in {b.name for b in bundles}:
            bundles.append(bundle)
    report = _report(bundles, run_dir(cfg), SourceTexts(cfg.data.sources, "val"))
    results = {"task": "tokenizer-report", "choices": group_choices(cfg), "tokenizers": report}
    path = write_results(run_dir(cfg), results)
    print(f"results: {path}")
    return results


def report(cfg: DictConfig) -> dict:
    """Table and plot across the runs under report_dir (reads only their results.json)."""
    from allam.report import run_report

    if not cfg.report_dir:
        raise ConfigError("report_dir=None: task=report needs report_dir=<folder of runs, e.g. a multirun dir>")
    res = run_report(Path(cfg.report_dir), run_dir(cfg))
    path = write_results(run_dir(cfg), {"task": "report", **res})
    print(f"results: {path}")
    return res


TASKS = {
    "train": train,
    "plan": plan,
    "export": export,
    "tokenizer-report": tokenizer_report,
    "report": report,
}


def run(cfg: DictConfig) -> dict:
    return TASKS[cfg.task](cfg)  # validate() has checked the name
