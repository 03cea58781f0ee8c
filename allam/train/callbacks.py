"""Callbacks: tokens seen, tokens/s and MFU."""
from __future__ import annotations

import csv
import os
import time
from functools import lru_cache
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

# Dense peak TFLOP/s by device name fragment and compute dtype (vendor datasheets, no sparsity).
_PEAK_TFLOPS = {
    "H200": {"bf16": 989.0, "fp32": 67.0},
    "H100": {"bf16": 989.0, "fp32": 67.0},  # SXM; PCIe is lower (756)
    "A100": {"bf16": 312.0, "fp32": 19.5},
    "L40S": {"bf16": 362.0, "fp32": 91.6},
    "A10": {"bf16": 125.0, "fp32": 31.2},
    "V100": {"bf16": 125.0, "fp32": 15.7},  # no bf16 tensor cores: its FP16 tensor peak
}


@lru_cache(maxsize=None)
def measured_cpu_tflops() -> float:
    """float32 matmul rate of this CPU at the process's thread count, measured once; the
    denominator of MFU on CPUs. The best of five 0.2 s samples, so a moment of contention (another
    process, a data worker starting) lowers it less; it remains a measured rate, not a datasheet
    peak, and a CPU shared with other work can train above the rate it showed here (MFU over 1)."""
    a = torch.randn(1024, 1024)
    b = torch.randn(1024, 1024)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(5):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 0.2:
            a @ b
            n += 1
        best = max(best, 2 * 1024**3 * n / (time.perf_counter() - t0) / 1e12)
    return best


def peak_tflops(device: torch.device, precision: str, override: float | None) -> tuple[float, str]:
    """(peak TFLOP/s per device, where the figure comes from)."""
    if override:
        return float(override), "trainer.peak_tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        kind = "fp32" if precision.startswith("32") else "bf16"
        for frag, table in _PEAK_TFLOPS.items():
            if frag in name:
                return table[kind], f"datasheet {frag} {kind}"
        return 0.0, f"unknown GPU '{name}': set trainer.peak_tflops"
    return measured_cpu_tflops(), "measured fp32 matmul rate of this CPU"


def batch_positions(batch) -> int:
    """Input positions of a micro-batch: a packed block [B, seq_len + 1] has B x seq_len; a padded
    post-training batch (a dict) counts every ``*input_ids`` position, padding included."""
    if isinstance(batch, dict):
        return int(sum(v.numel() for k, v in batch.items() if k.endswith("input_ids")))
    return int(batch.shape[0] * (batch.shape[1] - 1))


def batch_padding(batch):
    """Padding positions of a micro-batch: the zeros of a post-training batch's ``*attention_mask``
    (a packed block has none), as a tensor on the batch's device (read without a sync per step)."""
    if isinstance(batch, dict):
        return sum((v == 0).sum() for k, v in batch.items() if k.endswith("attention_mask"))
    return 0


class Throughput(L.Callback):
    """Logs train/tokens, train/tokens_per_s, train/mfu and the learning rate.

    Tokens count input positions of every micro-batch on every rank, across resumes: the work the
    model does, so tokens/s and MFU count padded positions of post-training batches too, and
    :attr:`padding` counts those (this rank's batches times the world size). Time counts training
    only: validation passes, evaluations during training (:meth:`pause`/:meth:`resume`) and
    checkpoint writes are left out. ``train/lr`` is the rate the logged step trained with (read
    before Lightning steps the scheduler).
    """

    def __init__(self, flops_per_token: float, precision: str, peak_override: float | None, log_every: int,
                 base_flops: float | None = None) -> None:
        self.flops_per_token = flops_per_token
        self.base_flops = base_flops  # FLOPs spent before this run (the base model it starts from); None: unknown
        self.curve: list[dict] = []  # one point per validation: step, tokens, flops, val.<lang>.<loss|bpb>
        self.precision = precision
        self.peak_override = peak_override
        self.log_every = max(1, log_every)
        self.tokens = 0
        self._padding = 0  # padded positions among self.tokens: an int, or a device tensor summed without syncing
        self.train_seconds = 0.0
        self.peak = 0.0
        self.peak_source = ""
        self._t_last: float | None = None
        self._paused_at: float | None = None  # when the clock was paused (None: running, or not started)
        self._lr: float | None = None  # the learning rate of the step in progress
        self._window_tokens = 0
        self._window_t0: float | None = None
        self._tokens_at_start = 0  # tokens restored from a checkpoint (resume)
        self._world = 1

    def on_train_start(self, trainer, pl_module) -> None:
        self.peak, self.peak_source = peak_tflops(pl_module.device, self.precision, self.peak_override)
        self.peak *= 1e12

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._paused_at is not None:
            self.resume()  # after a checkpoint write
        elif self._t_last is None:
            self._t_last = self._window_t0 = time.perf_counter()
        opt = trainer.optimizers[0] if trainer.optimizers else None
        self._lr = opt.param_groups[0]["lr"] if opt is not None else None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        n = batch_positions(batch) * trainer.world_size
        self.tokens += n
        self._padding = self._padding + batch_padding(batch) * trainer.world_size
        self._window_tokens += n
        self.train_seconds += now - self._t_last
        self._t_last = now
        pl_module.log("train/tokens", float(self.tokens), on_step=True, on_epoch=False)
        pl_module.log("train/total_flops", self.total_flops, on_step=True, on_epoch=False)
        if self._lr is not None:
            pl_module.log("train/lr", self._lr, on_step=True, on_epoch=False)
        if trainer.global_step % self.log_every == 0 and now > self._window_t0:
            rate = self._window_tokens / (now - self._window_t0)
            pl_module.log("train/tokens_per_s", rate, prog_bar=True, on_step=True, on_epoch=False)
            if self.peak > 0:
                mfu = rate * self.flops_per_token / (self.peak * trainer.world_size)
                pl_module.log("train/mfu", mfu, on_step=True, on_epoch=False)
            self._window_tokens, self._window_t0 = 0, now

    def pause(self) -> None:
        """Stops the training clock (a validation, an evaluation, a checkpoint write)."""
        if self._t_last is not None:
            now = time.perf_counter()
            self.train_seconds += now - self._t_last
            self._t_last, self._paused_at = None, now

    def resume(self) -> None:
        """Restarts it; the tokens/s window leaves the pause out."""
        if self._paused_at is not None:
            now = time.perf_counter()
            if self._window_t0 is not None:
                self._window_t0 += now - self._paused_at
            self._t_last, self._paused_at = now, None

    # Lightning sets trainer.validating (not .training) during the validation inside fit, so
    # pause whenever the clock runs and resume only when the validation was part of fit.
    def on_validation_start(self, trainer, pl_module) -> None:
        self.pause()

    def on_validation_end(self, trainer, pl_module) -> None:
        self.record_validation(trainer.global_step, getattr(pl_module, "final_val", {}))
        if trainer.state.fn == "fit":
            self.resume()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        # Lightning runs ModelCheckpoint after this callback's on_train_batch_end, so the write
        # would otherwise count toward the next step; the next batch resumes the clock
        self.pause()

    def record_validation(self, step: int, scores: dict[str, dict]) -> None:
        """A point of the validation curve at the tokens and FLOPs spent so far (a second validation
        at the same step, e.g. the final one after fit, replaces the first)."""
        if not scores:
            return
        point = {"step": int(step), "tokens": self.tokens, "flops": self.total_flops}
        for lang, vals in scores.items():
            point.update({f"val.{lang}.{k}": float(vals[k]) for k in ("loss", "bpb") if k in vals})
        if self.curve and self.curve[-1]["step"] == point["step"]:
            self.curve[-1] = point
        else:
            self.curve.append(point)

    @property
    def flops(self) -> float:
        """Training FLOPs of this run's model (flops per token x tokens), resumed runs included."""
        return self.flops_per_token * self.tokens

    @property
    def total_flops(self) -> float:
        """FLOPs including the base model's pretraining, when known."""
        return (self.base_flops or 0.0) + self.flops

    # the token count and the validation curve survive a resume (curves do not jump back)
    def state_dict(self) -> dict:
        return {"tokens": self.tokens, "padding": self.padding, "curve": list(self.curve)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.tokens = int(state_dict.get("tokens", 0))
        self._padding = int(state_dict.get("padding", 0))
        self._tokens_at_start = self.tokens
        self.curve = list(state_dict.get("curve", []))

    @property
    def padding(self) -> int:
        return int(self._padding)

    @property
    def tokens_this_run(self) -> int:
        return self.tokens - self._tokens_at_start

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_this_run / self.train_seconds if self.train_seconds > 0 else 0.0

    @property
    def mfu(self) -> float | None:
        if self.peak <= 0:
            return None
        return self.tokens_per_second * self.flops_per_token / self.peak / max(1, self._world)

    def on_fit_start(self, trainer, pl_module) -> None:
        self._world = trainer.world_size


class StartScores(L.Callback):
    """The starting checkpoint's validation scores (per language, and a post-training objective's),
    kept in the run's checkpoints: a resumed run reports ``start.val.*`` and ``delta.val.*`` (what
    forgetting is measured by) as the run that scored them at its start did."""

    def __init__(self) -> None:
        self.val: dict[str, dict] = {}
        self.post: dict[str, dict] = {}

    def state_dict(self) -> dict:
        return {"val": self.val, "post": self.post}

    def load_state_dict(self, state_dict: dict) -> None:
        self.val = dict(state_dict.get("val") or {})
        self.post = dict(state_dict.get("post") or {})


class AppendingCSVLogger(CSVLogger):
    """Lightning's CSV logger for a run directory that may be resumed:

    - an existing metrics.csv is continued, never deleted;
    - the rows a stopped run logged after the checkpoint a resume starts from (steps the resumed run
      trains and logs again) are dropped when the resumed run logs its first row, so each step
      appears once; a last line cut off by a kill is dropped too;
    - every row is written when it is logged (rows survive a SIGKILL), and a rewrite of the file (a
      new column, dropped rows) goes through a temporary file and a rename.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("flush_logs_every_n_steps", 1)
        super().__init__(*args, **kwargs)

    @property
    def experiment(self):
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class _AppendingWriter(ExperimentWriter):
    """A previous command's rows stay, except those this command logs again: every row after the
    first step it logs, and any row of a step and kind (training, validation, ...) it logs (a final
    validation run again at the last trained step replaces that step's validation row, not its
    training row)."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        self._earlier: set[tuple[int, str]] | None = None  # (step, kind) of a previous command's rows
        self._first: int | None = None  # the first step this command logs
        self._rewritten = False
        if os.path.isfile(self.metrics_file_path):
            self.metrics_keys, rows = _read_rows(self.metrics_file_path)
            self._earlier = {(int(r["step"]), _kind(r)) for r in rows}

    def _check_log_dir_exists(self) -> None:  # Lightning deletes an existing metrics.csv here
        pass

    def save(self) -> None:
        if self._earlier is not None and self.metrics:
            if self._first is None:
                self._first = min(int(m["step"]) for m in self.metrics)  # this command logs from here on
                for stale in Path(self.log_dir).glob(f".tmp-{self.NAME_METRICS_FILE}.*"):
                    stale.unlink(missing_ok=True)  # a rewrite cut off by a kill (rank 0 alone logs)
                drop = {(s, k) for s, k in self._earlier if s > self._first}
            else:
                drop = set()
            again = {(int(m["step"]), _kind(m)) for m in self.metrics}
            drop |= self._earlier & again
            if drop or self._earlier is not None and not self._rewritten:
                # the first rewrite also drops a last line cut off by a kill
                _write_rows(self.metrics_file_path, self.metrics_keys,
                            [r for r in _read_rows(self.metrics_file_path)[1] if (int(r["step"]), _kind(r)) not in drop])
                self._earlier -= drop
                self._rewritten = True
        super().save()

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        _write_rows(self.metrics_file_path, fieldnames, _read_rows(self.metrics_file_path)[1])


def _kind(row: dict) -> str:
    """What a metrics row records: the groups of its logged values ("train", "val", ...)."""
    return ",".join(sorted({k.split("/", 1)[0] for k, v in row.items() if k not in ("step", "epoch") and v not in ("", None)}))


def _read_rows(path: str) -> tuple[list[str], list[dict]]:
    """(header, rows) of a metrics.csv; a last line without its newline (a write cut off by a kill)
    and rows without an integer step are left out."""
    with open(path, newline="") as f:
        text = f.read()
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(text.splitlines(keepends=True))
    rows = [r for r in reader if str(r.get("step") or "").isdigit()]
    return list(reader.fieldnames or []), rows


def _write_rows(path: str, fieldnames: list[str], rows: list[dict]) -> None:
    tmp = f"{os.path.dirname(path)}/.tmp-{os.path.basename(path)}.{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
