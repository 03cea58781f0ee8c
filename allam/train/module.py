"""The LightningModule: next-token loss, optimizer and schedule, per-language validation."""
from __future__ import annotations

import lightning as L
import numpy as np
import torch

from allam.eval.bpb import BitsPerByte
from allam.model.speed import apply_activation_checkpointing, compile_layers
from allam.train.loss import attach_loss
from allam.train.optim import build_optimizer, build_scheduler


class CausalLM(L.LightningModule):
    """Trains a Hugging Face causal LM on packed blocks [batch, seq_len + 1].

    Validation runs one dataloader per language (`val_languages`) and logs
    `val/<lang>/loss` (mean NLL per token) and `val/<lang>/bpb` (bits per byte).
    With `embedding_warmup_steps` > 0 only the input embeddings and the output head train
    for that many optimizer steps (the body's LR is 0); then every parameter trains.
    """

    def __init__(
        self,
        model,
        optim_cfg,
        total_steps: int,
        token_bytes: np.ndarray,
        val_languages: list[str],
        embedding_warmup_steps: int = 0,
        activation_checkpointing: str = "none",
        compile: bool = False,
        param_dtype: torch.dtype | None = None,
        cross_entropy: str = "chunked",
        cross_entropy_chunk: int = 1024,
    ) -> None:
        super().__init__()
        # a built model, or a ModelSpec materialized in configure_model (sharded under FSDP2)
        self.spec = None if isinstance(model, torch.nn.Module) else model
        self.model = model if isinstance(model, torch.nn.Module) else None
        # speed options (allam.model.speed, allam.train.loss); cross_entropy is a resolved kind
        self.activation_checkpointing = str(activation_checkpointing)
        self.cross_entropy, self.cross_entropy_chunk = str(cross_entropy), int(cross_entropy_chunk)
        self.param_dtype = param_dtype
        self.optim_cfg = optim_cfg
        self.grad_clip = float(optim_cfg.grad_clip or 0.0)
        self.total_steps = total_steps
        self.val_languages = list(val_languages)
        self.embedding_warmup_steps = embedding_warmup_steps
        self.compile = compile
        self.register_buffer("token_bytes", torch.as_tensor(token_bytes, dtype=torch.long), persistent=False)
        self._val = {lang: BitsPerByte() for lang in self.val_languages}
        self._loss_sum, self._loss_micro = None, 0  # this optimizer step's micro-batch losses so far
        self.final_val: dict[str, dict[str, float]] = {}
        self.final_val_step: int | None = None  # global step the final_val scores belong to
        if self.model is not None:
            apply_activation_checkpointing(self.model, self.activation_checkpointing)

    # ------------------------------------------------------------------ model
    @property
    def sharded(self) -> bool:
        """True under FSDP2 (Lightning's ModelParallelStrategy hands the module a device mesh)."""
        return getattr(self, "_device_mesh", None) is not None

    def _root_device(self) -> torch.device:
        trainer = self._trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def configure_model(self) -> None:
        """Materialize the model once: whole on this device, or under FSDP2 created on the meta
        device, sharded one decoder layer per unit, and filled shard by shard from the weight
        source, so no rank ever holds the whole model."""
        if self.model is None:
            if self.sharded:
                from allam.model.shard import fully_shard_llama
                from allam.model.weights import materialize

                model = self.spec.meta()
                apply_activation_checkpointing(model, self.activation_checkpointing)
                fully_shard_llama(model, self.device_mesh["data_parallel"], self.param_dtype)
                model.to_empty(device=self._root_device())
                materialize(model, self.spec.weights())
            else:
                model = self.spec.build(self._root_device())
                apply_activation_checkpointing(model, self.activation_checkpointing)
            self.model = model
        if not getattr(self, "_speed_applied", False):  # after sharding: FSDP2 swaps the layers' class
            if self.compile:
                compile_layers(self.model)
            attach_loss(self.model, self.cross_entropy, self.cross_entropy_chunk)
            self._speed_applied = True

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch[:, :-1], batch[:, 1:]
        loss = self.model.next_token_loss(inputs, targets)  # allam.train.loss (head + cross-entropy)
        self._log_step_loss(loss.detach())
        return loss

    def _step_total(self, value: torch.Tensor, reduce_op: str, scale: float = 1.0) -> torch.Tensor | None:
        """Adds up `value` over an optimizer step's micro-batches; at its last one (where Lightning
        logs a step's metrics) returns that sum times `scale`, reduced over the ranks with
        `reduce_op` (one all-reduce per step), else None."""
        self._loss_sum = value if self._loss_micro == 0 else self._loss_sum + value
        self._loss_micro += 1
        if self._loss_micro < max(1, int(self.trainer.accumulate_grad_batches)):
            return None
        total, self._loss_sum, self._loss_micro = self._loss_sum * scale, None, 0
        return self.trainer.strategy.reduce(total, reduce_op=reduce_op) if self.trainer.world_size > 1 else total

    def _log_step_loss(self, loss: torch.Tensor) -> None:
        """Logs the step's loss, the mean of its micro-batches' losses over every rank (equal tokens
        per micro-batch: the global batch's loss), and keeps it for results.json and the
        non-finite guard (no device sync per step)."""
        step = self._step_total(loss, "mean", 1.0 / max(1, int(self.trainer.accumulate_grad_batches)))
        if step is not None:
            self.log("train/loss", step, prog_bar=True, on_step=True, on_epoch=False)
            self._last_loss = step

    @property
    def last_loss(self) -> float | None:
        """The last optimizer step's loss: the global batch's (every micro-batch, every rank)."""
        last = getattr(self, "_last_loss", None)
        return float(last) if last is not None else None

    def on_validation_epoch_start(self) -> None:
        for acc in self._val.values():
            acc.reset()

    def validation_step(self, batch: torch.Tensor, batch_idx: int, dataloader_idx: int = 0) -> None:
        lang = self.val_languages[dataloader_idx]
        # the last held-out block is padded with -100: harmless as inputs (causal), skipped as targets
        inputs, targets = batch[:, :-1].clamp_min(0), batch[:, 1:]
        logits = self(inputs)
        self._val[lang].update(logits, targets, self.token_bytes)

    def on_validation_epoch_end(self) -> None:
        out = {}
        for lang, acc in self._val.items():
            state = torch.tensor(acc.state(), dtype=torch.float64, device=self.device)
            state = self.trainer.strategy.reduce(state, reduce_op="sum") if self.trainer.world_size > 1 else state
            nll_all, tokens, nll_bytes, nbytes = state.tolist()
            acc.merge(nll_all, int(tokens), nll_bytes, int(nbytes))
            if acc.tokens_all == 0:
                continue
            out[lang] = {"loss": acc.loss, "bpb": acc.bpb, "tokens": acc.tokens_all, "bytes": acc.bytes}
            # already summed over ranks above: every rank holds the same value, so the sync is a no-op mean
            self.log(f"val/{lang}/loss", acc.loss, prog_bar=True, sync_dist=True)
            self.log(f"val/{lang}/bpb", acc.bpb, sync_dist=True)
        self.final_val = out
        self.final_val_step = self.global_step

    # ------------------------------------------------------------------ optimizer
    def gradient_norm(self) -> torch.Tensor | None:
        """The global L2 norm of this optimizer step's gradients (None without gradients), computed
        once per step: the non-finite guard (allam.train.guards) reads it before clipping, clipping
        reuses it, and it is logged as ``train/grad_norm``. Under FSDP2 the gradients are DTensors,
        whose norm torch computes across the shards of every rank (a replicated plain tensor here)."""
        from torch.distributed.tensor import DTensor

        if getattr(self, "_grad_norm", None) is None:
            grads = [p.grad for p in self.parameters() if p.grad is not None]
            if not grads:
                return None
            self._grad_norm_for_clip = torch.nn.utils.get_total_norm(grads)  # a DTensor under FSDP2
            norm = self._grad_norm_for_clip
            self._grad_norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
        return self._grad_norm

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Log the gradient norm and clip the gradients to it at optim.grad_clip (one pass over the
        gradients for the norm, shared with the non-finite guard)."""
        params = [p for p in self.parameters() if p.grad is not None]
        norm = self.gradient_norm() if params else None  # none left: the guard skipped this step
        for_clip = getattr(self, "_grad_norm_for_clip", None)
        self._grad_norm = self._grad_norm_for_clip = None  # the next step computes its own
        if norm is None:
            return
        self.log("train/grad_norm", norm, on_step=True, on_epoch=False)
        if self.grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(params, self.grad_clip, for_clip)

    def configure_optimizers(self):
        optimizer = build_optimizer(self.model, self.optim_cfg)
        scheduler = build_scheduler(optimizer, self.optim_cfg, self.total_steps, self.embedding_warmup_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
