"""Post-training steps on the same LightningModule (objective=sft | dpo): the model, sharding,
optimizer, schedule, clipping and guards are CausalLM's; only the steps and validation differ.

- SFT: the summed cross-entropy over the label tokens (the assistant answers) divided by the label
  tokens of the whole global batch (every rank, every accumulated micro-batch: the datamodule counts
  them from the data), so 2 ranks of B examples train exactly as 1 rank of 2B. ``train/loss`` is
  that global loss per label token; validation logs ``val/sft/loss`` (held-out loss per answer token).
- DPO: one forward over chosen and rejected (allam.train.dpo.pair_logps), the loss of
  allam.train.dpo.dpo_loss against the reference log-probabilities, which are the starting model's:
  computed once under ``no_grad`` with the policy itself before its first update (no second model),
  in the steps' precision context,
  for every training and held-out example, each rank its share, gathered, and saved in every
  checkpoint so a resumed run never recomputes them with trained weights. Logged as
  ``train/`` and ``val/dpo/``: loss, reward_accuracy, margin, chosen_reward, rejected_reward,
  chosen_logps, rejected_logps. The IPO loss uses log-probabilities per answer token (TRL's form);
  the sigmoid loss their sums.
"""
from __future__ import annotations

import logging
import time

import torch

from allam.config import ConfigError
from allam.train.dpo import IGNORE_INDEX, dpo_loss, pair_logps, reference_logps
from allam.train.module import CausalLM

log = logging.getLogger("allam")

DPO_METRICS = {"rewards/accuracy": "reward_accuracy", "rewards/margin": "margin", "rewards/chosen": "chosen_reward",
               "rewards/rejected": "rejected_reward", "logps/chosen": "chosen_logps", "logps/rejected": "rejected_logps"}


class PostTrainingLM(CausalLM):
    """CausalLM with the SFT or DPO step (`objective`: the objective config; `datamodule`: the
    PostTrainingDataModule whose examples the DPO reference covers)."""

    def __init__(self, model, optim_cfg, objective, *, accumulate: int = 1, **kwargs) -> None:
        kwargs.setdefault("val_languages", [])
        super().__init__(model, optim_cfg, **kwargs)
        self.objective = str(objective.name)
        self.beta, self.label_smoothing = float(objective.beta), float(objective.label_smoothing)
        self.loss_type = str(objective.loss_type)
        self.average = self.loss_type == "ipo"
        self.accumulate = int(accumulate)
        self.reference: dict[str, torch.Tensor] | None = None  # split -> [n, 2] (chosen, rejected), DPO
        # True from computing the references until the first training step: the policy is the
        # reference, so a validation then (the start scores) reads the table instead of a forward
        self._policy_is_reference = False
        self.final_post: dict[str, dict[str, float]] = {}  # {"sft"|"dpo": {metric: value}} of the last validation

    # ------------------------------------------------------------------ reference (DPO)
    def _ensure_reference(self) -> None:
        if self.objective != "dpo" or self.reference is not None:
            return
        dm = self.trainer.datamodule
        t0 = time.perf_counter()
        self.reference = {split: self._reference_table(dm, split) for split in ("train", "val")}
        self._policy_is_reference = True
        if self.trainer.is_global_zero:
            log.info("dpo: reference log-probabilities of %d training and %d held-out pairs in %.0f s (once; kept in "
                     "every checkpoint)", len(dm.train), len(dm.val), time.perf_counter() - t0)

    def _reference_table(self, dm, split: str) -> torch.Tensor:
        """[n, 2] log-probabilities of the current (initial) model for every example of `split`:
        each rank scores its share, and every rank gets the whole table."""
        n = len(dm.train if split == "train" else dm.val)
        # in the precision context Lightning runs the steps in (autocast under bf16-mixed; hooks run
        # outside it), so the policy's first forward equals its reference exactly
        with self.trainer.precision_plugin.forward_context():
            local = reference_logps(self.model, dm.shared_batches(split), average=self.average)
        parts = [local]
        if self.trainer.world_size > 1:
            parts = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(parts, local)
        table = torch.full((n, 2), float("nan"), dtype=torch.float64)
        for part in parts:
            for i, (c, r) in part.items():
                if i >= 0:  # negative: a padding row (allam.data.post_datamodule)
                    table[i] = torch.tensor([c, r], dtype=torch.float64)
        if n and torch.isnan(table).any():
            raise RuntimeError(f"reference log-probabilities missing for {int(torch.isnan(table).any(1).sum())} {split} examples")
        return table

    def on_train_start(self) -> None:
        self._ensure_reference()

    def on_validation_start(self) -> None:
        self._ensure_reference()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.reference is not None:
            checkpoint["dpo_reference"] = {k: v.clone() for k, v in self.reference.items()}
            # the held-out table is read by position: the pairs it belongs to (the training ones are
            # the datamodule's fingerprint, checked before a resume)
            checkpoint["dpo_reference_val"] = self.trainer.datamodule.content("val")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "dpo_reference" in checkpoint:
            saved = checkpoint.get("dpo_reference_val")
            dm = self.trainer.datamodule if self._trainer is not None else None
            if saved is not None and dm is not None and saved != dm.content("val"):
                raise ConfigError(f"objective.val={dm.cfg.val}: other held-out pairs than the checkpoint's, whose reference "
                                  "log-probabilities (the starting model's) cannot be scored again after training; resume "
                                  "with the held-out data it started with")
            self.reference = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in checkpoint["dpo_reference"].items()}

    def _dpo(self, batch: dict, split: str) -> tuple[torch.Tensor, ...]:
        """Policy chosen and rejected log-probabilities of a batch, and the reference ones (the
        reference's again, without a forward, while the policy is still the reference and no
        gradient is needed: every rank decides alike, so sharded forwards stay in step)."""
        index = batch["index"]
        ref = self.reference[split][index.clamp_min(0).cpu()]  # the table stays on the CPU; the batch may not
        if self._policy_is_reference and not torch.is_grad_enabled():
            ref = ref.to(index.device, torch.float32)
            return ref[:, 0], ref[:, 1], ref[:, 0], ref[:, 1]
        pc, pr = pair_logps(self.model, batch, average=self.average)
        ref = ref.to(pc.device)
        return pc, pr, ref[:, 0], ref[:, 1]

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        world = self.trainer.world_size
        if self.objective == "dpo":
            self._policy_is_reference = False  # its first update follows this step
            loss, metrics = dpo_loss(*self._dpo(batch, "train"), beta=self.beta,
                                     label_smoothing=self.label_smoothing, loss_type=self.loss_type)
            # the step's metrics: the mean over its micro-batches (each a mean over the same number of
            # pairs) and ranks, logged at the last one (Lightning logs a step's metrics only there)
            step = torch.stack([loss.detach(), *(metrics[key].detach() for key in DPO_METRICS)])
            mean = self._step_total(step, "mean", 1.0 / self.accumulate)  # as many pairs on every rank
            if mean is not None:
                self.log("train/loss", mean[0], prog_bar=True, on_step=True, on_epoch=False)
                for value, name in zip(mean[1:], DPO_METRICS.values()):
                    self.log(f"train/{name}", value, on_step=True, on_epoch=False)
                self._last_loss = mean[0]
            return loss
        inputs, targets = batch["input_ids"][:, :-1], batch["labels"][:, 1:]
        count = (targets != IGNORE_INDEX).sum()
        summed = self.model.next_token_loss(inputs, targets) * count  # the chunked loss is a mean over label tokens
        global_tokens = batch["label_tokens"].clamp_min(1).to(summed.dtype)
        # gradients are averaged over ranks and micro-batches: scale back to sum / global label tokens
        loss = summed * (world * self.accumulate) / global_tokens
        total = self._step_total(summed.detach(), "sum")  # every rank's label-token losses, at the step's end
        if total is not None:
            step_loss = total / global_tokens  # every rank's label tokens: the global batch's loss
            self.log("train/loss", step_loss, prog_bar=True, on_step=True, on_epoch=False)
            self._last_loss = step_loss
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros(1 + len(DPO_METRICS) + 1, dtype=torch.float64)

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        sums = self._val_sums
        if self.objective == "sft":
            inputs, targets = batch["input_ids"][:, :-1], batch["labels"][:, 1:]
            count = (targets != IGNORE_INDEX).sum()
            loss = self.model.next_token_loss(inputs, targets)  # every rank runs it (a collective under FSDP2)
            if int(count):  # a batch of padding rows only scores nothing (a plain mean over none is nan)
                sums[0] += float(loss) * int(count)
                sums[-1] += int(count)
            return
        pc, pr, rc, rr = self._dpo(batch, "val")
        valid = batch["valid"]
        if not valid.any():
            return
        loss, metrics = dpo_loss(pc[valid], pr[valid], rc[valid], rr[valid], beta=self.beta,
                                 label_smoothing=self.label_smoothing, loss_type=self.loss_type)
        n = int(valid.sum())
        sums[0] += float(loss) * n
        for j, key in enumerate(DPO_METRICS, 1):
            sums[j] += float(metrics[key]) * n
        sums[-1] += n

    def on_validation_epoch_end(self) -> None:
        sums = self._val_sums.to(self.device)
        if self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        sums = sums.tolist()
        count = sums[-1]
        if not count:
            return
        if self.objective == "sft":
            out = {"loss": sums[0] / count, "tokens": int(count)}
        else:
            out = {"loss": sums[0] / count, **{name: sums[j] / count for j, name in enumerate(DPO_METRICS.values(), 1)},
                   "pairs": int(count)}
        for name, value in out.items():
            if name not in ("tokens", "pairs"):  # every rank holds the summed value: the sync is a no-op mean
                self.log(f"val/{self.objective}/{name}", value, prog_bar=name == "loss", sync_dist=True)
        self.final_post = {self.objective: out}
        self.final_val_step = self.global_step
