"""Callbacks that keep a run honest: stop or skip on non-finite numbers, checkpoint on
preemption, and record in every checkpoint what the run was.

Preemption stops a run at the end of an optimizer step, through Lightning's own stop flag: a stop
signal is held until the next micro-batch that ends an optimizer step; there every rank learns
whether any rank got one (one small all-reduce per step), sets Lightning's flag
(``trainer.received_sigterm``), so the loop raises ``SIGTERMException`` right after that
micro-batch on every rank, and :class:`Preemption` saves ``checkpoints/last.ckpt``. Lightning
itself checks the flag after every micro-batch, so setting it at once would stop inside an
accumulated step, with a data position past micro-batches whose gradients the checkpoint lacks;
Lightning's own SIGTERM handler (which sets the flag at once and broadcasts inside the handler)
is replaced once training starts. A signal during validation waits for the next step's end. SIGUSR1 (SLURM's warning signal, e.g.
``#SBATCH --signal=USR1@120``), SIGUSR2 (what the submitit launcher asks SLURM to send before a
job's time limit) and a first Ctrl+C (SIGINT) take the same path; under SLURM a SIGUSR1 or
SIGUSR2 also requeues the job (``scontrol requeue``) once the checkpoint is written. A second
Ctrl+C stops at once.

How long a stop request waits is bounded: a second signal of any of these kinds (at least
:data:`REPEAT_AFTER_S` after the first), or :data:`STOP_GRACE_S` seconds without reaching a step boundary (a step that takes that long, e.g.
one stuck in a single long kernel), ends the process with exit status 75 and one line naming the
last complete checkpoint, without writing a new one (the watchdog runs in its own thread, so it
acts even while the main thread is inside one long native call).

After training (the final validation, the final checkpoint, the export), :func:`stop_requests`
turns the same signals into :class:`StopRequested` at once, so the train task can say where the
run stopped and record it as preempted.
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

from allam.config import ConfigError, RunFailed

log = logging.getLogger("allam")

EXIT_PREEMPTED = 75  # EX_TEMPFAIL (sysexits.h): a temporary failure; run the same command again
STOP_GRACE_S = 300.0  # the longest a stop request waits for the step in progress to end
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)
REPEAT_AFTER_S = 2.0  # a stop signal this soon after the first counts as the same request


class StopRequested(BaseException):
    """A stop signal after training (raised at once by :func:`stop_requests`' handler). A
    BaseException, like KeyboardInterrupt, so no ``except Exception`` on the way swallows it."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


class stop_requests:
    """Within this block SIGTERM, SIGUSR1, SIGUSR2 and SIGINT raise :class:`StopRequested` (main
    thread only; elsewhere a no-op); the previous handlers come back at its end."""

    def __enter__(self) -> "stop_requests":
        import threading

        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise StopRequested(signal.Signals(signum).name)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        return None


class NonFiniteGuard(L.Callback):
    """Before each optimizer step (and before clipping): a non-finite loss or gradient norm (on any rank) stops the run with
    one line naming the step and the last good checkpoint (``stop``), or drops the step's gradients
    so the optimizer leaves every parameter and its state untouched (``skip``, counted, at most
    `max_skips` times)."""

    def __init__(self, mode: str, max_skips: int, checkpoint_dir: Path):
        self.mode, self.max_skips, self.checkpoint_dir = str(mode), int(max_skips), Path(checkpoint_dir)
        self.skipped = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        device = pl_module.device if pl_module.device.type != "meta" else torch.device("cpu")
        flags = torch.ones(2, device=device)  # [loss finite, gradients finite]
        loss = getattr(pl_module, "_last_loss", None)
        if loss is not None:
            flags[0] = torch.isfinite(loss).all().float()
        # the global gradient norm clipping uses too (CausalLM.gradient_norm: one pass over the
        # gradients per step); a NaN or inf anywhere makes it non-finite
        norm = pl_module.gradient_norm()
        if norm is not None:
            flags[1] = torch.isfinite(norm).float()
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


def set_received_sigterm(trainer, value: bool = True) -> None:
    """Set (or clear) the flag Lightning's own SIGTERM handler sets: once set, the fit loop raises
    ``SIGTERMException`` after the micro-batch in progress (:class:`Preemption` sets it only when
    that micro-batch ends an optimizer step, and saves there).

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
    connector.received_sigterm = bool(value)


class Preemption(L.Callback):
    """Checkpoint at the next step boundary on SIGTERM, SIGUSR1, SIGUSR2 or a first SIGINT (see module doc)."""

    def __init__(self, checkpoint_dir: Path, grace_s: float = STOP_GRACE_S):
        self.checkpoint_dir = Path(checkpoint_dir)
        self.signal: Optional[str] = None
        self.saved: Optional[Path] = None
        self._previous: dict[int, Any] = {}  # the handlers before this fit's (kept for release())
        self._handler = None  # this fit's handler
        self.grace_s = float(grace_s)
        self._boundary = None  # threading.Event set once the step boundary is reached
        self._stop_pending = False  # a stop signal waiting for the end of an optimizer step
        self._exit = os._exit  # replaced in tests

    def request_stop(self, signal_name: str) -> None:
        """Start the bounded wait for the next step boundary (see module doc); a second request (at
        least :data:`REPEAT_AFTER_S` later: a signal forwarded to the ranks or sent to the whole
        process group arrives twice at once) ends the process now, unless the boundary is reached
        and the checkpoint is being written. Called in the main thread (the signal handler)."""
        import threading
        import time

        if self._boundary is not None:
            if not self._boundary.is_set() and time.monotonic() - self._since >= REPEAT_AFTER_S:
                self._give_up(f"second signal {signal_name}")
            return
        self.signal, self._since = signal_name, time.monotonic()
        self._boundary = threading.Event()
        read, self._wake = os.pipe()
        os.set_blocking(self._wake, False)
        try:  # the C-level handler writes each later signal's number here at once, whatever the main thread does
            self._old_wakeup = signal.set_wakeup_fd(self._wake)
        except ValueError:  # not the main thread
            self._old_wakeup = None
        threading.Thread(target=self._watch, args=(self._boundary, read), name="allam-stop-grace", daemon=True).start()

    def _watch(self, boundary, read: int) -> None:
        import select
        import time

        deadline = self._since + self.grace_s
        try:
            while not boundary.is_set():
                ready, _, _ = select.select([read], [], [], max(0.0, deadline - time.monotonic()))
                if boundary.is_set():
                    return
                if not ready:
                    self._give_up(f"no step boundary within {self.grace_s:.0f} s of {self.signal}")
                    return
                later = [b for b in os.read(read, 64) if b in STOP_SIGNALS]
                if later and time.monotonic() - self._since >= REPEAT_AFTER_S:
                    self._give_up(f"second signal {signal.Signals(later[0]).name}")
                    return
        finally:
            os.close(read)

    def _give_up(self, why: str) -> None:
        import sys

        from allam.train.checkpointing import newest_valid

        last, _ = newest_valid(self.checkpoint_dir)
        print(f"error: stopped without a new checkpoint ({why}; a step was in progress); the last complete "
              f"checkpoint is {last or 'none'}; run the same command again to continue from it",
              file=sys.stderr, flush=True)
        self._exit(EXIT_PREEMPTED)

    def on_fit_start(self, trainer, pl_module) -> None:
        import threading

        self._stop_pending = False
        if threading.current_thread() is not threading.main_thread():
            return

        def graceful(signum, frame):
            if signum == signal.SIGINT and self.signal == "SIGINT":
                raise KeyboardInterrupt  # a second Ctrl+C: stop now
            self.request_stop(signal.Signals(signum).name)  # bounded wait (see module doc)
            self.signal = signal.Signals(signum).name
            # not now: a micro-batch may be on its way (fetched, not yet counted); the next micro-batch
            # that ends an optimizer step stops the run (on_train_batch_end). Lightning's own SIGTERM
            # handler, in place until on_train_start, may have set its flag: held back the same way
            set_received_sigterm(trainer, False)
            self._stop_pending = True
            launcher = trainer.strategy.launcher
            if launcher is not None and hasattr(launcher, "procs") and trainer.is_global_zero:
                launcher.kill(signum)  # the ranks Lightning started get the same signal

        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT):
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, graceful)
        self._handler = graceful

    def on_train_start(self, trainer, pl_module) -> None:
        """Lightning has installed its SIGTERM handler over this one since on_fit_start; it sets the
        stop flag at once (and, with several ranks, broadcasts inside the handler). This one takes
        SIGTERM back; Lightning's teardown puts back what it found (release() then this fit's)."""
        if self._handler is not None and signal.getsignal(signal.SIGTERM) is not self._handler:
            signal.signal(signal.SIGTERM, self._handler)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """The end of a micro-batch; when it ends an optimizer step (Lightning's own test: this
        epoch's micro-batches, restored on resume), the ranks agree whether any of them got a stop
        signal (one small all-reduce per step), and if so set Lightning's flag on every rank: the
        loop raises ``SIGTERMException`` right after this micro-batch, everywhere at once."""
        ready = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        if ready % max(1, int(trainer.accumulate_grad_batches)):
            return
        stop = self._stop_pending
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)  # any rank
        if stop:
            self._stop_pending = False
            self.signal = self.signal or "SIGTERM"  # a rank that got no signal itself
            set_received_sigterm(trainer)

    def _reached_boundary(self) -> None:
        """The wait is over (a step boundary, or the end of fit): the watchdog ends quietly."""
        if self._boundary is not None and not self._boundary.is_set():
            self._boundary.set()
            try:
                signal.set_wakeup_fd(self._old_wakeup if self._old_wakeup is not None else -1)
            except ValueError:
                pass
            try:
                os.write(self._wake, b"\0")  # wake the watchdog, which then ends quietly
            except OSError:
                pass
            os.close(self._wake)

    def _restore(self) -> None:
        self._reached_boundary()
        for sig, handler in self._previous.items():
            if handler is not None:
                signal.signal(sig, handler)

    def release(self) -> None:
        """For the caller of ``trainer.fit``, once it has returned or raised: a stop signal still
        handled by this fit's handler gets back the handler it had before the fit. When fit raises,
        Lightning calls on_exception (which restores them) and only then its own teardown, which puts
        back the handlers it found when it registered its own, after on_fit_start: this callback's."""
        for sig, handler in self._previous.items():
            if self._handler is not None and signal.getsignal(sig) is self._handler:
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous, self._handler, self._stop_pending = {}, None, False

    def on_fit_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        self._reached_boundary()  # the save below may take long: the grace bounds only the wait for the boundary
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


class MicroBatchUnits(L.Callback):
    """A resume may trade micro-batch size (ranks x data.batch_size) for gradient accumulation at the
    same tokens per step (allam.config.saved.RESUME_MAY_CHANGE). The datamodule converts its data
    position into the new micro-batches; Lightning restores its count of micro-batches (the fit
    loop's batch progress, which decides when an optimizer step ends) in the old ones. This
    rewrites that count in the new micro-batches before Lightning restores it, so the resumed run's
    steps group the data exactly as an uninterrupted run's; a count that does not convert (a
    checkpoint saved inside an optimizer step) is refused in one line."""

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        dm = trainer.datamodule
        state = checkpoint.get(type(dm).__qualname__) if dm is not None else None
        progress = ((checkpoint.get("loops") or {}).get("fit_loop") or {}).get("epoch_loop.batch_progress")
        if not state or not progress or "world_size" not in state or "batch_size" not in state:
            return
        old = int(state["world_size"]) * int(state["batch_size"])  # blocks (or examples) per micro-batch
        new = int(trainer.world_size) * int(dm.batch_size)
        if old == new:
            return
        for part in ("total", "current"):
            for key, count in list((progress.get(part) or {}).items()):
                if (int(count) * old) % new:
                    raise ConfigError(
                        f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches}: the checkpoint stopped after "
                        f"{count} micro-batches of {old} sequences, which is not a whole number of this run's micro-batches "
                        f"of {new}; resume with the micro-batch size and accumulation it was saved with")
                progress[part][key] = int(count) * old // new
