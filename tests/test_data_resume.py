"""Resume through a real Lightning Trainer: a run stopped after step k and resumed from its
checkpoint sees exactly the batches an uninterrupted run sees (token for token), across a stage
switch, with gradient accumulation and with loader workers; a changed data fingerprint refuses."""
from __future__ import annotations

import os
import signal
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from allam.config import ConfigError
from allam.train.guards import MicroBatchUnits, Preemption
from test_data import corpus, make_dm, sources, tok  # noqa: F401  (fixtures shared with test_data.py)

SEQ = 32
BATCH = 4


class Recorder(L.LightningModule):
    """Trains nothing; records every training batch it is given."""

    def __init__(self, read_estimate: bool = False, batch: int = BATCH):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[torch.Tensor] = []
        self.step_ends: list[int] = []  # len(seen) at each optimizer step
        self.read_estimate, self.batch = read_estimate, batch

    def training_step(self, batch, batch_idx):
        assert batch.shape == (self.batch, SEQ + 1) and batch.dtype == torch.int64
        self.seen.append(batch.detach().clone())
        return (self.w * batch[:, :-1].float().mean()).sum()

    def on_before_optimizer_step(self, optimizer):
        self.step_ends.append(len(self.seen))

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        return None

    def configure_optimizers(self):
        if self.read_estimate:  # what OneCycleLR-style schedules do (Lightning issue 20550)
            assert self.trainer.estimated_stepping_batches > 0
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _fit(dm, steps, ckpt_dir, *, accumulate=1, every=None, ckpt_path=None, val_every=None, read_estimate=False,
         extra=(), module=None):
    module = module or Recorder(read_estimate)
    callbacks = [ModelCheckpoint(dirpath=str(ckpt_dir), filename="step{step}", auto_insert_metric_name=False,
                                 every_n_train_steps=every, save_top_k=-1, save_last=True), *extra]
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, max_epochs=1, logger=False,
                        callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, accumulate_grad_batches=accumulate,
                        val_check_interval=val_every, limit_val_batches=2 if val_every else 0)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return module.seen, trainer


def _stages():
    # English only for the first 7 micro-batches (7 x 4 blocks x 32 tokens), then the mix
    return {"stages": [{"tokens": 7 * BATCH * SEQ, "ar_ratio": 0.0}, {"tokens": None, "ar_ratio": 0.5}]}


def _dm(tok, corpus, tmp_path, steps, accumulate=1, batch=BATCH, **kw):  # noqa: F811
    return make_dm(tok, tmp_path / "cache", sources(corpus), seq_len=SEQ, train_batches=steps * accumulate,
                   batch_size=batch, **kw)


@pytest.mark.parametrize("num_workers,accumulate", [(0, 1), (2, 2)])
def test_resume_is_token_for_token(tok, corpus, tmp_path, num_workers, accumulate):  # noqa: F811
    steps, stop = 12, 5
    kw = dict(num_workers=num_workers, **_stages())
    full, _ = _fit(_dm(tok, corpus, tmp_path, steps, accumulate, **kw), steps, tmp_path / "full",
                   accumulate=accumulate, every=stop)
    assert len(full) == steps * accumulate
    # (a) a run stopped after step `stop` (its step checkpoint), resumed to the end
    part, _ = _fit(_dm(tok, corpus, tmp_path, steps, accumulate, **kw), stop, tmp_path / "part",
                   accumulate=accumulate, every=stop)
    assert len(part) == stop * accumulate and all(torch.equal(a, b) for a, b in zip(part, full))
    rest, trainer = _fit(_dm(tok, corpus, tmp_path, steps, accumulate, **kw), steps, tmp_path / "rest",
                         accumulate=accumulate, ckpt_path=str(tmp_path / "part" / f"step{stop}.ckpt"))
    assert trainer.global_step == steps
    assert len(rest) == (steps - stop) * accumulate
    assert all(torch.equal(a, b) for a, b in zip(rest, full[stop * accumulate:]))
    # (b) resumed from the mid-run checkpoint of the uninterrupted run
    mid, _ = _fit(_dm(tok, corpus, tmp_path, steps, accumulate, **kw), steps, tmp_path / "mid",
                  accumulate=accumulate, ckpt_path=str(tmp_path / "full" / f"step{stop}.ckpt"))
    assert len(mid) == (steps - stop) * accumulate
    assert all(torch.equal(a, b) for a, b in zip(mid, full[stop * accumulate:]))
    # the checkpoint holds the datamodule's state (position and fingerprint)
    ck = torch.load(tmp_path / "part" / f"step{stop}.ckpt", weights_only=True)
    state = ck["AllamDataModule"]
    assert state["position"] == stop * accumulate and state["fingerprint"]["seq_len"] == SEQ


def test_resume_with_validation_inside_the_epoch_and_early_step_estimate(tok, corpus, tmp_path):  # noqa: F811
    full, _ = _fit(_dm(tok, corpus, tmp_path, 10), 10, tmp_path / "full", every=4, val_every=3)
    rest, _ = _fit(_dm(tok, corpus, tmp_path, 10), 10, tmp_path / "rest", val_every=3,
                   ckpt_path=str(tmp_path / "full" / "step4.ckpt"), read_estimate=True)
    assert all(torch.equal(a, b) for a, b in zip(rest, full[4:])) and len(rest) == 6


def test_resume_refuses_a_changed_fingerprint(tok, corpus, tmp_path):  # noqa: F811
    _fit(_dm(tok, corpus, tmp_path, 6), 3, tmp_path / "a", every=3)
    with pytest.raises(ConfigError, match=r"data fingerprint differs.*seed: 1234 -> 99"):
        _fit(_dm(tok, corpus, tmp_path, 6, seed=99), 6, tmp_path / "b", ckpt_path=str(tmp_path / "a" / "step3.ckpt"))
    rest, _ = _fit(_dm(tok, corpus, tmp_path, 6, seed=99, allow_fingerprint_change=True), 6, tmp_path / "c",
                   ckpt_path=str(tmp_path / "a" / "step3.ckpt"))
    assert len(rest) == 3


class SignalAt(L.Callback):
    """Sends this process a real SIGTERM as micro-batch `at` starts (its handler is Preemption's)."""

    def __init__(self, at: int):
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_stop_inside_an_accumulated_step_checkpoints_at_its_end(tok, corpus, tmp_path):  # noqa: F811
    """SIGTERM as the first micro-batch of step 3 starts (accumulation 2): the run stops after
    that step's second micro-batch, so the checkpoint's position holds no micro-batch without its
    gradient, and the resumed run trains exactly the uninterrupted run's remaining micro-batches,
    stepping after every second one."""
    steps, accumulate = 6, 2
    full, _ = _fit(_dm(tok, corpus, tmp_path, steps, accumulate), steps, tmp_path / "full", accumulate=accumulate)
    stop = Preemption(tmp_path / "part")
    part = Recorder()
    try:
        with pytest.raises(SIGTERMException):
            _fit(_dm(tok, corpus, tmp_path, steps, accumulate), steps, tmp_path / "part", accumulate=accumulate,
                 extra=[stop, MicroBatchUnits(), SignalAt(4)], module=part)
    finally:
        stop.release()
    assert stop.signal == "SIGTERM" and len(part.seen) == 6 and part.step_ends == [2, 4, 6]
    ck = torch.load(tmp_path / "part" / "last.ckpt", weights_only=True)
    assert ck["global_step"] == 3 and ck["AllamDataModule"]["position"] == 6
    rest = Recorder()
    _fit(_dm(tok, corpus, tmp_path, steps, accumulate), steps, tmp_path / "rest", accumulate=accumulate,
         ckpt_path=str(tmp_path / "part" / "last.ckpt"), extra=[MicroBatchUnits()], module=rest)
    assert len(rest.seen) == 6 and all(torch.equal(a, b) for a, b in zip(rest.seen, full[6:]))
    assert rest.step_ends == [2, 4, 6]


def test_a_resume_trading_batch_size_for_accumulation_steps_on_the_same_data(tok, corpus, tmp_path):  # noqa: F811
    """Saved at step 3 with micro-batches of 4 and no accumulation, resumed with micro-batches of 2
    and accumulation 2 (the same tokens per step): steps 4-6 take the same rows as the
    uninterrupted run's, two micro-batches each, and none is dropped."""
    full, _ = _fit(_dm(tok, corpus, tmp_path, 6), 6, tmp_path / "full", every=3)
    rest = Recorder(batch=2)
    _, trainer = _fit(_dm(tok, corpus, tmp_path, 6, accumulate=2, batch=2), 6, tmp_path / "rest", accumulate=2,
                      ckpt_path=str(tmp_path / "full" / "step3.ckpt"), extra=[MicroBatchUnits()], module=rest)
    assert trainer.global_step == 6 and rest.step_ends == [2, 4, 6]
    assert torch.equal(torch.cat(rest.seen), torch.cat(full[3:]))
    # a count that is no whole number of the new micro-batches is refused in one line (the
    # datamodule's own position check refuses a consistent checkpoint first)
    ck = torch.load(tmp_path / "full" / "step3.ckpt", weights_only=True)
    trainer = SimpleNamespace(datamodule=SimpleNamespace(batch_size=8), world_size=1, accumulate_grad_batches=1)
    with pytest.raises(ConfigError, match=r"stopped after 3 micro-batches of 4 sequences.*micro-batches of 8"):
        MicroBatchUnits().on_load_checkpoint(trainer, None, {**ck, "SimpleNamespace": ck["AllamDataModule"]})
