"""Callbacks that keep a run honest: stop or skip on non-finite numbers, checkpoint on
preemption, and record in every checkpoint what the run was.

Preemption uses Lightning's own signal handling: SIGTERM sets ``trainer.received_sigterm``, the
loop raises ``SIGTERMException`` at the next step boundary on every rank, and
:class:`Preemption` saves ``checkpoints/last.ckpt`` there. SIGUSR1 (SLURM's warning signal, e.g.
``#SBATCH --signal=USR1@120``), SIGUSR2 (what the submitit launcher asks SLURM to send before a
job's time limit) and a first Ctrl+C (SIGINT) take the same path; under SLURM a SIGUSR1 or
SIGUSR2 also requeues the job (``scontrol requeue``) once the checkpoint is written. A second
Ctrl+C stops at once.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch

from allam.config import RunFailed

log = logging.getLogger("allam")

EXIT_PREEMPTED = 75  # EX_TEMPFAIL (sysexits.h): a temporary failure; run the same command again


class NonFiniteGuard(L.Callback):
    """Before each optimizer step: a non-finite loss or gradient (on any rank) stops the run with
    one line naming the step and the last good checkpoint (``stop``), or drops the step's gradients
    so the optimizer leaves every parameter and its state untouched (``skip``, counted, at most
    `max_skips` times)."""

    def __init__(self, mode: str, max_skips: int, checkpoint_dir: Path):
        self.mode, self.max_skips, self.checkpoint_dir = str(mode), int(max_skips), Path(checkpoint_dir)
        self.skipped = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        from torch.distributed.tensor import DTensor

        device = pl_module.device if pl_module.device.type != "meta" else torch.device("cpu")
        flags = torch.ones(2, device=device)  # [loss finite, gradients finite]
        loss = getattr(pl_module, "_last_loss", None)
        if loss is not None:
            flags[0] = torch.isfinite(loss).all().float()
        grads = [p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
                 for p in pl_module.parameters() if p.grad is not None]
        if grads:  # one reduction, one device sync: a NaN or inf anywhere makes the sum non-finite
            total = torch.stack([n.float() for n in torch._foreach_norm(grads)]).sum()
            flags[1] = torch.isfinite(total).float()
        if trainer.world_size > 1:
            flags = trainer.strategy.reduce(flags, reduce_op="min")  # every rank decides alike
        finite = flags.min()
        if bool(finite.item()):
            return
        step = trainer.global_step + 1
        loss_text = f"{float(loss):.4g}" if loss is not None else "n/a"
        bad = " and ".join(w for w, ok in (("loss", flags[0]), ("gradient", flags[1])) if not bool(ok))
        if self.mode == "skip" and self.skipped < self.max_skips:
            self.skipped += 1
            for p in pl_module.parameters():
                p.grad = None  # AdamW leaves a parameter without a gradient (and its moments) untouched
            log.warning("non-finite %s at step %d (loss %s): step skipped (%d of at most %d)",
                        bad, step, loss_text, self.skipped, self.max_skips)
            pl_module.log("train/nonfinite_skips", float(self.skipped), sync_dist=False)
            return
        from allam.train.checkpointing import newest_valid

        last, _ = newest_valid(self.checkpoint_dir)
        what = f"non-finite {bad}" + (f" after {self.skipped} skipped steps (train.max_nonfinite_skips)" if self.mode == "skip" else "")
        raise RunFailed(
            f"{what} at step {step} (loss {loss_text}); last good checkpoint: {last or 'none'}; "
            "lower optim.lr, raise optim.warmup_steps, or set train.nonfinite=skip"
        )

    def state_dict(self) -> dict:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = int(state_dict.get("skipped", 0))


def set_received_sigterm(trainer) -> None:
    """Set the flag Lightning's own SIGTERM handler sets, so the fit loop raises
    ``SIGTERMException`` at the next step boundary on every rank (:class:`Preemption` saves there).

    Lightning 2.6 has no public setter: ``Trainer.received_sigterm`` is a read-only property over
    the private ``Trainer._signal_connector``, and the only public way to set it, calling the
    SIGTERM handler Lightning installed, would also run every SIGTERM handler installed before
    it. This function is the one place that touches the private attribute;
    tests/test_lightning_contract.py fails if a Lightning release moves it."""
    connector = getattr(trainer, "_signal_connector", None)
    if connector is None or not hasattr(connector, "received_sigterm"):
        import lightning

        raise RuntimeError(f"lightning {lightning.__version__}: Trainer._signal_connector.received_sigterm is gone; "
                           "allam.train.guards.set_received_sigterm must follow Lightning's new signal handling")
    connector.received_sigterm = True


class Preemption(L.Callback):
    """Checkpoint at the next step boundary on SIGTERM, SIGUSR1, SIGUSR2 or a first SIGINT (see module doc)."""

    def __init__(self, checkpoint_dir: Path):
        self.checkpoint_dir = Path(checkpoint_dir)
        self.signal: Optional[str] = None
        self.saved: Optional[Path] = None
        self._previous: dict[int, Any] = {}

    def on_fit_start(self, trainer, pl_module) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        lightning_sigterm = signal.getsignal(signal.SIGTERM)

        def graceful(signum, frame):
            if signum == signal.SIGINT and self.signal == "SIGINT":
                raise KeyboardInterrupt  # a second Ctrl+C: stop now
            self.signal = signal.Signals(signum).name
            if signum == signal.SIGTERM and callable(lightning_sigterm):
                lightning_sigterm(signum, frame)
            else:
                set_received_sigterm(trainer)  # Lightning's flag: stop at the next step boundary
                launcher = trainer.strategy.launcher
                if launcher is not None and hasattr(launcher, "procs") and trainer.is_global_zero:
                    launcher.kill(signum)  # the ranks Lightning started get the same signal

        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT):
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, graceful)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            if handler is not None:
                signal.signal(sig, handler)
        self._previous = {}

    def on_fit_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException):
            self.signal = self.signal or "SIGTERM"
            path = self.checkpoint_dir / "last.ckpt"
            trainer.save_checkpoint(str(path))  # collective under FSDP: every rank is here
            self.saved = path
            log.warning("%s: checkpoint saved at step %d: %s", self.signal, trainer.global_step, path)
            if self.signal in ("SIGUSR1", "SIGUSR2") and trainer.is_global_zero:
                requeue_slurm_job()
        self._restore()


def requeue_slurm_job() -> None:
    """Ask SLURM to requeue this job (as Lightning's SLURM auto-requeue does)."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else os.environ.get("SLURM_JOB_ID")
    if not job:
        return
    try:
        rc = subprocess.call(["scontrol", "requeue", job])
    except FileNotFoundError:
        rc = -1
    log.warning("requeue of SLURM job %s %s", job, "done" if rc == 0 else f"failed ({rc})")


class RunRecord(L.Callback):
    """Stores in every checkpoint what produced it: the resolved config and the data fingerprint,
    so a resume is checked against them before anything is written."""

    def __init__(self, config: dict, data_fingerprint: dict):
        self.config, self.data_fingerprint = config, data_fingerprint

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["allam"] = {"config": self.config, "data_fingerprint": self.data_fingerprint}
