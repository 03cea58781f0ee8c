"""What allam relies on in Lightning beyond its public API: each test fails loudly when a
Lightning release changes it (see allam.train.guards.set_received_sigterm)."""
from __future__ import annotations

import lightning as L
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.utilities.exceptions import SIGTERMException

from allam.train.guards import set_received_sigterm


def _trainer(tmp_path, callbacks=()) -> L.Trainer:
    return L.Trainer(max_steps=5, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
                     default_root_dir=tmp_path)


def test_stop_request_sets_lightnings_sigterm_flag_and_stops_at_the_next_step_boundary(tmp_path):
    class StopDuringSecondStep(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 1:
                set_received_sigterm(trainer)

    trainer = _trainer(tmp_path, [StopDuringSecondStep()])
    assert trainer.received_sigterm is False
    with pytest.raises(SIGTERMException):
        trainer.fit(BoringModel())
    assert trainer.received_sigterm is True
    assert trainer.global_step == 2  # the step in progress finished; no later one started


def test_stop_request_refuses_a_trainer_without_the_flag(tmp_path):
    trainer = _trainer(tmp_path)
    del trainer._signal_connector
    with pytest.raises(RuntimeError, match=r"^lightning .*: Trainer._signal_connector.received_sigterm is gone"):
        set_received_sigterm(trainer)
