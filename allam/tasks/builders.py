"""Builders shared by the tasks: each turns the sub-configs it needs into one part
(tokenizer, model, datamodule, logger, trainer) or one folder. No builder reads the whole
config except to pick out those sub-configs."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from allam.config import ConfigError, is_pretrained, to_dict
from allam.config.langs import targets
from allam.config.rules import writable_dir
from allam.config.derived import compute_dtype, device_type, total_steps, world_size

log = logging.getLogger("allam")

# config group -> the key that names its choice (when Hydra did not run us)
GROUP_FIELDS = {
    "model": "model.name",
    "init": "init.name",
    "tokenizer": "tokenizer.variant",
    "data": "data.name",
    "optim": "optim.name",
    "trainer": "trainer.name",
    "logger": "logger.name",
    "eval": "eval.name",
    "objective": "objective.name",
}


def run_dir(cfg: DictConfig) -> Path:
    writable_dir("hydra.run.dir", cfg.paths.output_dir)
    return Path(cfg.paths.output_dir)


def cache_dir(cfg: DictConfig) -> Path:
    writable_dir("paths.cache_dir", cfg.paths.cache_dir)
    return Path(cfg.paths.cache_dir)


def group_choices(cfg: DictConfig) -> dict[str, str]:
    """The choice made in every config group (from Hydra when it ran us, else from the names)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = dict(HydraConfig.get().runtime.choices)
        return {k: v for k, v in choices.items() if not k.startswith("hydra") and k != "hydra"}
    except Exception:
        return {g: str(OmegaConf.select(cfg, key)) for g, key in GROUP_FIELDS.items()}


def init_checkpoint(init) -> str | None:
    """The checkpoint a pretrained init loads (None: random init, which says so when one is set:
    ``init.checkpoint=...`` without ``init=llama2`` or ``init=pretrained`` is an easy slip)."""
    if is_pretrained(init.name):
        return init.checkpoint
    if init.get("checkpoint"):
        log.warning("init.checkpoint=%s is not used: init=%s starts from random weights (init=llama2 or "
                    "init=pretrained loads it)", init.checkpoint, init.name)
    return None


def build_tokenizer(cfg: DictConfig, tokenizer_cfg=None):
    """The configured tokenizer (or `tokenizer_cfg`, a variant of it); any it must train learns
    from the configured sources' training text."""
    from allam import cache_lock
    from allam.data.source_texts import SourceTexts
    from allam.tokenizer import build_tokenizer as build

    cache_lock.wait_default = float(cfg.data.get("cache_wait_s", cache_lock.WAIT_S))  # a rank waiting for another's build
    return build(
        tokenizer_cfg if tokenizer_cfg is not None else cfg.tokenizer,
        cache_dir=cache_dir(cfg) / "tokenizers",
        init_checkpoint=init_checkpoint(cfg.init),
        texts=SourceTexts(cfg.data.sources, "train"),
        local_files_only=cfg.init.local_files_only,
        targets=tokenizer_targets(cfg),
    )


def tokenizer_targets(cfg: DictConfig) -> tuple[str, ...]:
    """The languages whose text trains an expanded or bilingual vocabulary's new pieces: every
    language but English with a source, in data.sources' order, whatever its share (so a sweep over
    the shares keeps one vocabulary); Arabic when there is none, as before."""
    return tuple(targets(str(cfg.data.sources[n].lang) for n in cfg.data.sources)) or ("ar",)


def model_source(ckpt, task: str):
    """The model `ckpt=` names (:func:`allam.eval.load.resolve`), a checkpoint verified first: a
    damaged or cut-off one is one line, as task=export says it, not a traceback at load."""
    from allam.eval import load
    from allam.train.checkpointing import verify

    source = load.resolve(ckpt, task=task)
    why = verify(source.path) if source.kind == "checkpoint" else None
    if why:
        raise ConfigError(f"ckpt={ckpt}: {why}; point ckpt= at a complete checkpoint, its run directory or an export")
    return source


def saved_run_tokenizer(cfg: DictConfig):
    """``build_tokenizer(training_cfg)`` for :func:`allam.eval.load.load`: a run's tokenizer rebuilt
    from its saved config with this command's cache folder (tokenizers are found there by
    fingerprint, so the run's own tokenizer comes back)."""
    def build(trained: DictConfig):
        trained.paths.cache_dir = cfg.paths.cache_dir
        return build_tokenizer(trained)

    return build


def resolve_attention(model_cfg, trainer_cfg) -> str:
    from allam.model.attention import resolve_attention as resolve

    return resolve(model_cfg.attention, device_type(trainer_cfg), compute_dtype(trainer_cfg.precision))


def build_model(model_cfg, init, tok, bundle, attention: str):
    """The whole model a run starts from (see :func:`allam.model.spec.model_spec`): a fresh model
    of ``model.arch`` sized for the tokenizer (init=random), or a checkpoint of a supported
    architecture whose vocabulary grows to the expanded tokenizer with its new rows filled per
    init.new_embeddings (init=pretrained, alias llama2)."""
    from allam.model.spec import model_spec

    return model_spec(model_cfg, init, tok, bundle, attention).build()


def build_datamodule(cfg: DictConfig, tokenizer, max_seq_len: int | None = None):
    """Packed pretraining blocks (objective=pretrain), or the padded chat / preference examples of
    objective=sft | dpo (no longer than model.seq_len tokens)."""
    if cfg.objective.name != "pretrain":
        from allam.data.post_datamodule import PostTrainingDataModule

        t = cfg.trainer
        return PostTrainingDataModule(cfg.objective, tokenizer, max_length=min(cfg.model.seq_len, max_seq_len or cfg.model.seq_len),
                                      batch_size=cfg.data.batch_size, accumulate=t.accumulate_grad_batches,
                                      world=world_size(t), seed=cfg.data.seed, cache_dir=cache_dir(cfg) / "post_training",
                                      max_steps=t.max_steps)
    from allam.data.datamodule import AllamDataModule

    return AllamDataModule(
        cfg.data,
        tokenizer,
        seq_len=cfg.model.seq_len,
        cache_dir=cache_dir(cfg) / "data",
        train_batches=total_steps(cfg.data, cfg.model, cfg.trainer) * cfg.trainer.accumulate_grad_batches,
        max_seq_len=max_seq_len,
        world=world_size(cfg.trainer),
    )


WANDB_ID_FILE = "wandb_run_id"
_WANDB_MODE_SET: str | None = None  # the WANDB_MODE this process set for a job (a later job may set another)


def reset_wandb_mode() -> None:
    """Take back the WANDB_MODE this process set for a job (never one the user set), so the next
    job of a multirun, and its online check, see the user's environment."""
    global _WANDB_MODE_SET
    if _WANDB_MODE_SET is not None and os.environ.get("WANDB_MODE") == _WANDB_MODE_SET:
        os.environ.pop("WANDB_MODE", None)
    _WANDB_MODE_SET = None


def wandb_run_id(out: Path) -> str:
    """The W&B run id of the run in `out`: made and written there by its first command, read by
    every later one, so a resumed (requeued, preempted) run logs into the same W&B run. Under a
    sweep agent, the run id the agent gave (WANDB_RUN_ID), which its controller waits for."""
    path = Path(out) / WANDB_ID_FILE
    given = os.environ.get("WANDB_RUN_ID")
    if not given and path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    import secrets

    run_id = given or secrets.token_hex(4)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(run_id + "\n")
    tmp.replace(path)
    return run_id


def build_logger(logger_cfg, out: Path, config: dict, rank_zero: bool = True):
    """The Lightning logger (False for logger=none); `config` is recorded with W&B runs, whose id
    stays with the run directory (:func:`wandb_run_id`; on global rank 0, the only rank W&B logs
    from). The CSV logger continues an existing csv/metrics.csv (a resumed run) and never deletes it."""
    if logger_cfg.name == "none":
        return False
    if logger_cfg.name == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        mode = logger_cfg.mode
        global _WANDB_MODE_SET
        reset_wandb_mode()
        env = os.environ.get("WANDB_MODE")
        if mode == "online" and env and env != "online":  # wandb obeys the environment over its init arguments
            log.warning("logger.mode=online but WANDB_MODE=%s is set in the environment: W&B runs %s and does "
                        "not sync (unset WANDB_MODE to sync, or set logger.mode=%s)", env, env, env)
        if env is None:
            os.environ["WANDB_MODE"] = _WANDB_MODE_SET = mode
        return WandbLogger(
            project=logger_cfg.project,
            entity=logger_cfg.entity,
            save_dir=str(out),
            offline=mode != "online",
            tags=list(logger_cfg.tags),
            config=config,
            **run_names(logger_cfg),
            **({"id": wandb_run_id(out), "resume": "allow"} if rank_zero else {}),
        )
    from allam.train.callbacks import AppendingCSVLogger

    return AppendingCSVLogger(str(out), name="csv", version="")


def run_names(logger_cfg) -> dict[str, str]:
    """W&B name and group of a run: logger.run_name / logger.group, else the command's overrides
    (a sweep agent's arguments) as Hydra's override_dirname writes them, the group without seeds."""
    names = {"name": logger_cfg.run_name, "group": logger_cfg.group}
    try:
        from hydra.core.hydra_config import HydraConfig

        from allam.config.schema import SEED_KEYS

        hc = HydraConfig.get()
    except Exception:
        return {k: v for k, v in names.items() if v}
    excluded = set(hc.job.config.override_dirname.exclude_keys)
    overrides = sorted(o for o in hc.overrides.task if o.split("=", 1)[0].lstrip("+~") not in excluded)
    names["name"] = names["name"] or hc.job.override_dirname or None
    names["group"] = names["group"] or ",".join(o for o in overrides if o.split("=", 1)[0] not in SEED_KEYS) or None
    return {k: v for k, v in names.items() if v}


def build_strategy(t):
    """The Lightning strategy for trainer group `t`. ``fsdp``: FSDP2 through Lightning's
    ModelParallelStrategy (every rank data-parallel, no tensor parallelism), checkpoints saved as
    torch.distributed.checkpoint folders, one file per rank."""
    strategy = str(t.strategy)
    if strategy == "fsdp":
        from allam.train.checkpointing import AtomicModelParallelStrategy

        return AtomicModelParallelStrategy(data_parallel_size=world_size(t), tensor_parallel_size=1,
                                           save_distributed_checkpoint=True)
    return strategy


def wandb_config(cfg: DictConfig) -> dict:
    """The config a W&B run records: dotted keys (``optim.lr``) and each group's choice as
    ``choices.<group>``. Flat, so a sweep agent's parameters (merged over it key by key: a swept
    ``optim=adamw`` or ``data.ar_ratio``) neither replace a whole group's values nor appear twice."""
    def flat(node, prefix: str = "") -> dict:
        if isinstance(node, dict) and node:
            return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()}
        return {prefix[:-1]: node}

    return {**flat(to_dict(cfg)), **{f"choices.{g}": c for g, c in group_choices(cfg).items()}}


def global_rank() -> int:
    """This process's global rank before any Trainer exists: Lightning's ``rank_zero_only.rank``,
    which it reads from the launcher's environment (RANK, LOCAL_RANK, SLURM_PROCID) on import."""
    from lightning.pytorch.utilities import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0))


def build_trainer(cfg: DictConfig, out: Path, callbacks: list, steps: int):
    """The Lightning Trainer: checkpoints written atomically (``checkpoints/step*.ckpt`` every
    trainer.checkpoint_every_steps, ``last.ckpt`` always), SLURM's environment without Lightning's
    mid-step requeue handler (allam.train.guards.Preemption checkpoints at a step boundary)."""
    import lightning as L
    from lightning.fabric.plugins.environments import SLURMEnvironment
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

    from allam.train.checkpointing import AtomicCheckpointIO

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
    # validation every val_every_steps optimizer steps; a run shorter than that validates at its end only
    val_every = t.val_every_steps * t.accumulate_grad_batches if t.val_every_steps and t.val_every_steps < steps else None
    strategy = build_strategy(t)
    plugins = [] if str(t.strategy) == "fsdp" else [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return L.Trainer(
        plugins=plugins or None,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=strategy,
        precision=t.precision,
        max_steps=steps,
        max_epochs=-1,  # max_steps ends the run; an epoch is one pass over the blend
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=None,  # CausalLM.configure_gradient_clipping clips to optim.grad_clip (FSDP-aware)
        val_check_interval=val_every,
        check_val_every_n_epoch=1,
        num_sanity_val_steps=0,
        log_every_n_steps=t.log_every_n_steps,
        logger=build_logger(cfg.logger, out, wandb_config(cfg), rank_zero=global_rank() == 0),
        callbacks=cbs,
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,
        default_root_dir=str(out),
        deterministic=t.deterministic,
        use_distributed_sampler=False,
    )


@dataclass
class TrainingCallbacks:
    """The callbacks of a training run, by role; :meth:`as_list` is what the Trainer gets."""

    throughput: Any  # allam.train.callbacks.Throughput: tokens, tokens/s, MFU, the validation curve
    nonfinite: Any  # allam.train.guards.NonFiniteGuard: stop or skip on a non-finite loss or gradient
    preemption: Any  # allam.train.guards.Preemption: checkpoint at a step boundary on a stop signal
    record: Any  # allam.train.guards.RunRecord: the config and data fingerprint in every checkpoint
    units: Any  # allam.train.guards.MicroBatchUnits: Lightning's micro-batch count in a resume's micro-batches
    starts: Any  # allam.train.callbacks.StartScores: the starting scores, kept across a resume
    evaluator: Any = None  # allam.train.eval_callback.EvalDuringTraining, when the run evaluates

    def as_list(self) -> list:
        evaluator = [self.evaluator] if self.evaluator is not None else []
        return [self.throughput, self.nonfinite, self.preemption, self.record, self.units, self.starts, *evaluator]


def training_callbacks(cfg: DictConfig, out: Path, flops_per_token: float, data_fingerprint: dict,
                       base_flops: float | None = None, evaluator=None) -> TrainingCallbacks:
    """The one list of callbacks a training run gives :func:`build_trainer` (the train task and
    the throughput benchmark's project arm both use it). Checkpoints go to ``out/checkpoints``."""
    from allam.train.callbacks import StartScores, Throughput
    from allam.train.guards import MicroBatchUnits, NonFiniteGuard, Preemption, RunRecord

    t, checkpoints = cfg.trainer, out / "checkpoints"
    return TrainingCallbacks(
        throughput=Throughput(flops_per_token, str(t.precision), t.peak_tflops, t.log_every_n_steps, base_flops),
        nonfinite=NonFiniteGuard(cfg.train.nonfinite, cfg.train.max_nonfinite_skips, checkpoints),
        preemption=Preemption(checkpoints),
        record=RunRecord(to_dict(cfg), data_fingerprint),
        units=MicroBatchUnits(),
        starts=StartScores(),
        evaluator=evaluator,
    )


def export_hf(tensors, model_config, bundle, out: Path) -> Path:
    """A Hugging Face folder (safetensors weights, config, tokenizer) that Auto* classes load,
    written from `tensors` ((name, tensor) pairs, one at a time) and the model's final config."""
    from allam.model.export import write_hf_folder
    from allam.tokenizer import export_tokenizer

    write_hf_folder(tensors, model_config, out)
    export_tokenizer(bundle, out)  # the tokenizer folder, SentencePiece model included
    return out
