"""Evaluation during training: every ``eval.every_tokens`` training tokens (logged as
``eval/<task>/acc`` and ``eval/<task>/acc_norm``, next to validation) and at the end
(``eval.at_end``: the final model's scores go into results.json as ``eval.<task>.*``).

The suite is checked when the callback is built, before any training step, so a suite that cannot
run (a task unknown to the harness, hub data out of reach) stops the run before compute starts.
Every rank runs the same evaluation on its copy of the model (under FSDP2 the sharded model's
forward passes are collective, so all ranks take part in lockstep); the reporting rank logs.
"""
from __future__ import annotations

import logging
from pathlib import Path

import lightning as L

from allam.eval import harness
from allam.train.callbacks import Throughput

log = logging.getLogger("allam")


class EvalDuringTraining(L.Callback):
    def __init__(self, eval_cfg, tokenizer, tokens_per_step: int, workdir: Path) -> None:
        self.cfg = eval_cfg
        self.tokenizer = tokenizer
        self.tokens_per_step = int(tokens_per_step)
        self.plan = harness.prepare(eval_cfg, workdir)
        self.every = int(eval_cfg.every_tokens or 0)
        self.final: dict[str, dict] = {}  # task -> scores of the final model (eval.at_end)
        self._scored_step: int | None = None
        self._scores: dict[str, dict] = {}

    @classmethod
    def from_config(cls, eval_cfg, tokenizer, tokens_per_step: int, workdir: Path) -> "EvalDuringTraining | None":
        """The callback when the run evaluates at all (eval.at_end or eval.every_tokens), else None."""
        if not (eval_cfg.at_end or eval_cfg.every_tokens):
            return None
        return cls(eval_cfg, tokenizer, tokens_per_step, workdir)

    def _run(self, trainer, pl_module) -> dict[str, dict]:
        from allam.config.derived import compute_dtype

        if self._scored_step != trainer.global_step:
            dtype = compute_dtype(trainer.precision)
            mixed = dtype if str(trainer.precision).endswith("mixed") else None
            log.info("eval at step %d (%s tokens): %s", trainer.global_step,
                     f"{trainer.global_step * self.tokens_per_step:,}", ", ".join(self.plan.tasks))
            clocks = _training_clocks(trainer)  # eval time is left out of training time, as validation's is
            for clock in clocks:
                clock.pause()
            self._scores = harness.evaluate(pl_module.model, self.tokenizer, self.cfg, self.plan, mixed)
            for clock in clocks:
                clock.resume()
            self._scored_step = trainer.global_step
        return self._scores

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.every or trainer.global_step == self._scored_step:
            return
        tokens, before = trainer.global_step * self.tokens_per_step, (trainer.global_step - 1) * self.tokens_per_step
        if tokens // self.every == before // self.every or trainer.global_step == 0:
            return
        metrics = {f"eval/{task}/{key}": vals[key] for task, vals in self._run(trainer, pl_module).items()
                   for key in ("acc", "acc_norm") if key in vals}
        for logger in trainer.loggers if metrics else ():  # straight to the loggers: not only every n steps
            logger.log_metrics(metrics, step=trainer.global_step)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.cfg.at_end:
            self.final = self._run(trainer, pl_module)


def _training_clocks(trainer) -> list:
    """The callbacks that time training (Throughput: tokens/s and MFU); they pause for validation."""
    return [cb for cb in trainer.callbacks if isinstance(cb, Throughput)]
