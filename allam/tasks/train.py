"""task=train: train (or continue training) and write results.json.

Reads top to bottom: tokenizer -> data -> model -> trainer -> fit -> results.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from allam import results as R
from allam.config import RunFailed, is_pretrained, to_dict, validate
from allam.config.derived import embedding_warmup_steps, fsdp_param_dtype, tokens_per_step, total_steps
from allam.tasks.builders import (
    build_datamodule,
    build_tokenizer,
    build_trainer,
    export_hf,
    global_rank,
    group_choices,
    reset_wandb_mode,
    resolve_attention,
    run_dir,
    training_callbacks,
)

log = logging.getLogger("allam")


def run(cfg: DictConfig) -> dict:
    """Check everything that can be checked, take the run directory, train, write results.json.
    A preempted run ends with exit status 75 after saving a checkpoint; a failed one with one line."""
    from allam.tasks.preflight import check_device, check_wandb_login
    from allam.tasks.rundir import RunLock

    validate(cfg)
    check_device(cfg.trainer)
    check_wandb_login(cfg.logger)
    out = run_dir(cfg)
    lock = RunLock(out).acquire() if global_rank() == 0 else None
    exit_code = 1
    try:
        result = _train(cfg, out)
        exit_code = 0
        return result
    except SystemExit as exc:  # a preempted run ends with EXIT_PREEMPTED
        exit_code = exc.code if isinstance(exc.code, int) else 1
        raise
    finally:
        _finish_wandb(exit_code)
        if lock is not None:
            lock.release()


def _finish_wandb(exit_code: int) -> None:
    """End the W&B run this command opened, with its exit code (a preempted or failed run is not
    finished): Hydra's multirun runs its jobs in one process, and the next job's logger would find
    the run still open and log into it (Lightning's logger does not end it). A WANDB_MODE set for
    this job goes with it (:func:`allam.tasks.builders.reset_wandb_mode`)."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)
    reset_wandb_mode()


def _train(cfg: DictConfig, out: Path) -> dict:
    import lightning as L
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from allam.model.decoder import flops_per_token, parameter_counts
    from allam.model.spec import model_spec
    from allam.tasks.preflight import check_memory
    from allam.tasks.rundir import check_resume, resume_checkpoint
    from allam.tokenizer import token_byte_lengths
    from allam.train.checkpointing import clean_partial_writes
    from allam.train.eval_callback import EvalDuringTraining
    from allam.train.guards import EXIT_PREEMPTED, StopRequested, stop_requests

    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    t0 = time.perf_counter()
    ckpt, passed_over = resume_checkpoint(cfg.ckpt, cfg.run.resume, out)
    for line in passed_over:
        log.warning("not resuming from %s", line)

    bundle = build_tokenizer(cfg)
    # eval.at_end / eval.every_tokens: the suite is checked here, before any compute
    tps = tokens_per_step(cfg.data, cfg.model, cfg.trainer)
    evaluator = EvalDuringTraining.from_config(cfg.eval, bundle.tokenizer, tps, out)
    attention = resolve_attention(cfg.model, cfg.trainer)
    spec = model_spec(cfg.model, cfg.init, cfg.tokenizer, bundle, attention)  # no weights yet
    check_memory(cfg, spec.config.vocab_size)
    dm = build_datamodule(cfg, bundle.tokenizer, max_seq_len=spec.config.max_position_embeddings)
    dm.prepare()
    meta = spec.meta()
    fingerprint = dm.fingerprint()
    if ckpt is not None:  # checked before anything is written into the run directory
        shapes = {k: tuple(v.shape) for k, v in meta.state_dict().items() if not k.endswith("inv_freq")}
        step = check_resume(ckpt, resume_config(cfg, ckpt), shapes, fingerprint, bool(cfg.data.allow_fingerprint_change), tps,
                            sharded=str(cfg.trainer.strategy) == "fsdp")
        log.info("resuming from %s (step %d)", ckpt, step)
    if global_rank() == 0:  # the lock holder: no other command writes in this run directory
        for path in clean_partial_writes(out / "checkpoints"):
            log.info("removed an unfinished checkpoint write: %s", path)
    save_run_config(cfg, spec.config, out)

    post = cfg.objective.name != "pretrain"  # sft | dpo: steps from examples x epochs / global batch
    steps = dm.steps if post else total_steps(cfg.data, cfg.model, cfg.trainer)
    if post:
        log.info("objective=%s: %d steps (%s)", cfg.objective.name, steps,
                 "trainer.max_steps" if cfg.trainer.max_steps else f"{len(dm.train)} examples x objective.epochs="
                 f"{cfg.objective.epochs} / {dm.global_batch} per step")
    counts = parameter_counts(meta)
    fpt = flops_per_token(spec.config, counts["non_embedding"], cfg.model.seq_len)
    module = training_module(cfg, spec, token_byte_lengths(bundle.tokenizer), dm.val_languages, steps)
    base_flops = R.carried_flops(cfg.init.checkpoint) if is_pretrained(cfg.init.name) else None
    callbacks = training_callbacks(cfg, out, fpt, fingerprint, base_flops, evaluator)
    throughput, preemption = callbacks.throughput, callbacks.preemption
    trainer = build_trainer(cfg, out, callbacks.as_list(), steps)
    log.info("training %s for %d steps (%s tokens/step) in %s", cfg.model.name, steps, f"{tps:,}", out)

    starts = callbacks.starts  # scored here at the start; a resume gets them back from its checkpoint in fit
    starts.val = score_start(trainer, module, dm) if is_pretrained(cfg.init.name) and ckpt is None else {}
    starts.post, module.final_post = dict(getattr(module, "final_post", {})), {}
    status, failure = "finished", None
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt) if ckpt else None, weights_only=True if ckpt else None)
    except SIGTERMException:
        status = "preempted"
    except RunFailed as exc:
        status, failure = "failed", exc
    finally:
        preemption.release()  # the stop signals' handlers as before the fit, also when it raised
    stopped, exported = None, None
    if status == "finished":  # the final checkpoint, validation and export: a stop here says what is done
        phase = "the final checkpoint"
        try:
            with stop_requests():
                save_final_checkpoint(trainer, out)
                phase = "the final validation"
                if module.final_val_step != trainer.global_step:  # the last validation was not at the last step
                    trainer.validate(module, datamodule=dm, verbose=False)
                phase = "the export"
                if cfg.export:
                    exported = export_after_fit(trainer, module, bundle, out / "hf")
        except (StopRequested, SIGTERMException) as exc:
            status, stopped = "preempted", after_fit_stop(exc, phase, out)
        except RunFailed as exc:  # a full disk at the final checkpoint, non-finite weights at the export
            status, failure = "failed", exc

    results = {
        "task": "train",
        "status": status,
        "run_dir": str(out),
        "choices": group_choices(cfg),
        "model.parameters": counts["total"],
        "model.non_embedding_parameters": counts["non_embedding"],
        "model.attention": attention,
        # DPO scores its pairs from the model's whole logits, whatever trainer.cross_entropy says
        "train.cross_entropy": "plain" if cfg.objective.name == "dpo" else module.cross_entropy,
        "tokenizer.name": bundle.name,
        "tokenizer.vocab_size": len(bundle.tokenizer),
        "train.steps": trainer.global_step,
        "train.tokens": throughput.tokens,
        "train.tokens_this_run": throughput.tokens_this_run,
        "train.padding": throughput.padding,  # padded positions among train.tokens (post-training batches)
        "train.seconds": throughput.train_seconds,
        "train.tokens_per_second": throughput.tokens_per_second,
        "train.mfu": throughput.mfu,
        "train.mfu_peak_source": throughput.peak_source,
        "train.flops_per_token": fpt,
        "train.flops": throughput.flops,
        "train.base_flops": base_flops,
        "train.total_flops": throughput.total_flops,
        "train.loss": module.last_loss,
        "train.nonfinite_skips": callbacks.nonfinite.skipped,
        "resumed_from": str(ckpt) if ckpt else None,
        "wall_seconds": time.perf_counter() - t0,
        **R.validation_keys(module.final_val, starts.val),
        "val.step": module.final_val_step,
        R.CURVE_KEY: throughput.curve,
        **R.eval_keys(evaluator.final if evaluator else {}),
        "data": dm.mix_report(),
        **R.objective_keys(str(cfg.objective.name), module.final_post, starts.post),
    }
    if status == "preempted":
        results["checkpoint"] = str(stopped["checkpoint"] if stopped else preemption.saved)
    if stopped is not None:
        results["stopped_during"] = stopped["phase"]
    if failure is not None:
        results["error"] = str(failure)
    if exported is not None and status == "finished":
        results["export"] = str(exported)
    results["config"] = to_dict(cfg)
    if trainer.is_global_zero:
        try:
            path = R.write_status(out, results)
        except OSError as exc:  # e.g. the disk that failed the checkpoint is still full
            path = f"results not written ({exc.strerror or exc})"
        if status == "finished":
            R.print_summary(results, path)
        elif stopped is not None:
            print(f"{stopped['line']} (results: {path})")
        else:
            print(f"{status} at step {trainer.global_step}: {path}")
    if status == "preempted":
        raise SystemExit(EXIT_PREEMPTED)
    if failure is not None:
        raise failure
    return results


def after_fit_stop(exc: BaseException, phase: str, out: Path) -> dict:
    """What a stop during the final checkpoint, validation or export leaves: the newest complete
    checkpoint (the run is resumable from it; the same command finishes the run), and the line
    that says so. An unfinished export's temporary files are removed."""
    from allam.train.checkpointing import inspect, newest_valid

    for part in (out / "hf").glob("part-*.tmp"):
        part.unlink(missing_ok=True)
    signal_name = getattr(exc, "signal_name", "SIGTERM")
    last, _ = newest_valid(out / "checkpoints")
    if last is None:
        state = "no complete checkpoint"
    else:
        state = f"checkpoint at step {inspect(last)[1]} is complete ({last})"
    line = f"{signal_name}: stopped during {phase}: {state}; run the same command again to finish"
    log.warning(line)
    return {"phase": phase.removeprefix("the "), "checkpoint": last, "line": line}


def training_module(cfg: DictConfig, spec, token_bytes, val_languages: list[str], steps: int):
    """The LightningModule a run trains (benchmarks/throughput.py builds it here too): `spec` is
    materialized inside the trainer, whole or shard by shard under FSDP2, with the speed options
    of the model and trainer groups (the cross-entropy resolved for this device, logged once)."""
    from allam.config.derived import compute_dtype, device_type
    from allam.train.loss import resolve_cross_entropy
    from allam.train.module import CausalLM

    t = cfg.trainer
    post = {}
    if cfg.objective.name != "pretrain":  # the SFT or DPO step on the same module (allam.train.post)
        from allam.train.post import PostTrainingLM as CausalLM

        post = {"objective": cfg.objective, "accumulate": t.accumulate_grad_batches}
    return CausalLM(
        spec,
        cfg.optim,
        **post,
        total_steps=steps,
        token_bytes=token_bytes,
        val_languages=val_languages,
        embedding_warmup_steps=embedding_warmup_steps(cfg.init, cfg.data, cfg.model, t),
        activation_checkpointing=cfg.model.activation_checkpointing,
        compile=t.compile,
        param_dtype=fsdp_param_dtype(t),
        cross_entropy=resolve_cross_entropy(t.cross_entropy, device_type(t), compute_dtype(t.precision)),
        cross_entropy_chunk=t.cross_entropy_chunk,
    )


def resume_config(cfg: DictConfig, ckpt: Path) -> dict:
    """The config a resume is checked against: a pretraining run's checkpoint saved before the
    objective group existed records no `objective`, and resumes as the pretraining it was."""
    from allam.train.checkpointing import read_meta

    config = to_dict(cfg)
    if config["objective"]["name"] == "pretrain":
        saved = (read_meta(ckpt).get("allam") or {}).get("config") or {}
        if saved and "objective" not in saved:
            config.pop("objective")
    return config


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
