"""task=train: train (or continue training) and write results.json.

Reads top to bottom: tokenizer -> data -> model -> trainer -> fit -> results.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from allam import results as R
from allam.config import InitName, to_dict, validate
from allam.config.derived import embedding_warmup_steps, fsdp_param_dtype, tokens_per_step, total_steps
from allam.tasks.builders import (
    build_datamodule,
    build_tokenizer,
    build_trainer,
    export_hf,
    group_choices,
    resolve_attention,
    run_dir,
)

log = logging.getLogger("allam")


def run(cfg: DictConfig) -> dict:
    import lightning as L

    from allam.model.build import flops_per_token, parameter_counts
    from allam.model.spec import model_spec
    from allam.tokenizer import token_byte_lengths
    from allam.train.callbacks import Throughput
    from allam.train.module import CausalLM

    validate(cfg)
    out = run_dir(cfg)
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    t0 = time.perf_counter()

    bundle = build_tokenizer(cfg)
    attention = resolve_attention(cfg.model, cfg.trainer)
    spec = model_spec(cfg.model, cfg.init, cfg.tokenizer, bundle, attention)  # no weights yet
    dm = build_datamodule(cfg, bundle.tokenizer, max_seq_len=spec.config.max_position_embeddings)
    dm.prepare()
    save_run_config(cfg, spec.config, out)

    steps = total_steps(cfg.data, cfg.model, cfg.trainer)
    counts = parameter_counts(spec.meta())
    fpt = flops_per_token(spec.config, counts["non_embedding"], cfg.model.seq_len)
    module = CausalLM(
        spec,  # materialized inside the trainer: whole, or shard by shard under FSDP2
        cfg.optim,
        total_steps=steps,
        token_bytes=token_byte_lengths(bundle.tokenizer),
        val_languages=dm.val_languages,
        embedding_warmup_steps=embedding_warmup_steps(cfg.init, cfg.data, cfg.model, cfg.trainer),
        gradient_checkpointing=cfg.model.gradient_checkpointing,
        compile=cfg.trainer.compile,
        param_dtype=fsdp_param_dtype(cfg.trainer),
    )
    t = cfg.trainer
    throughput = Throughput(fpt, str(t.precision), t.peak_tflops, t.log_every_n_steps)
    trainer = build_trainer(cfg, out, [throughput], steps)
    log.info("training %s for %d steps (%s tokens/step) in %s", cfg.model.name, steps,
             f"{tokens_per_step(cfg.data, cfg.model, t):,}", out)

    start_val = score_start(trainer, module, dm) if cfg.init.name == InitName.llama2 and not cfg.ckpt else {}
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
        **R.validation_keys(module.final_val, start_val),
        "val.step": module.final_val_step,
        "data": dm.mix_report(),
    }
    if cfg.export:
        exported = export_after_fit(trainer, module, bundle, out / "hf")
        if exported is not None:
            results["export"] = str(exported)
    results["config"] = to_dict(cfg)
    if trainer.is_global_zero:
        R.print_summary(results, R.write(out, results))
    return results


def save_run_config(cfg: DictConfig, model_config, out: Path) -> None:
    """config.yaml (resolved) and model_config.json (the final shape: export needs no hub access)."""
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank == 0:
        model_config.to_json_file(str(out / "model_config.json"))
        OmegaConf.save(cfg, out / "config.yaml", resolve=True)


def score_start(trainer, module, dm) -> dict:
    """The starting checkpoint's validation scores, so forgetting (English) and gains (Arabic)
    are measured, not guessed."""
    trainer.validate(module, datamodule=dm, verbose=False)
    start = dict(module.final_val)
    module.final_val = {}
    return start


def save_final_checkpoint(trainer, out: Path) -> None:
    """checkpoints/last.ckpt holds the final step. Lightning refreshes "last" only on its own
    checkpoint schedule, so a run whose length is not a multiple of it would end with an older
    last.ckpt. Collective: every rank calls it (FSDP writes shards)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    cb = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    if cb is None or getattr(cb, "_last_global_step_saved", None) == trainer.global_step:
        return
    trainer.save_checkpoint(str(out / "checkpoints" / "last.ckpt"))


def export_after_fit(trainer, module, bundle, out: Path) -> Path | None:
    """Export the trained model on global rank 0. Under FSDP2 the weights stay sharded: rank 0
    streams them one tensor at a time out of the sharded last checkpoint every rank has just
    written, so no rank holds the whole model."""
    from allam.model.export import checkpoint_tensors

    if not module.sharded:
        return export_hf(module.model.state_dict().items(), module.model.config, bundle, out) if trainer.is_global_zero else None
    trainer.strategy.barrier()
    path = None
    if trainer.is_global_zero:
        path = export_hf(checkpoint_tensors(out.parent / "checkpoints" / "last.ckpt"), module.model.config, bundle, out)
    trainer.strategy.barrier()
    return path
