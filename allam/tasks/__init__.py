"""Tasks: what `task=` on run.py names. One module per task; each exposes ``run(cfg) -> dict``.

This registry is the one list of tasks: run.py dispatches through it and
:func:`allam.config.validate` checks ``task`` against it. Adding a task is a new module plus
one line here. Importing this package is cheap (task modules load on use).
"""
from __future__ import annotations

import importlib

TASKS: dict[str, str] = {
    "train": "allam.tasks.train",
    "plan": "allam.tasks.plan",
    "tokenizer-report": "allam.tasks.tokenizer_report",
    "export": "allam.tasks.export",
    "report": "allam.tasks.report",
    "eval": "allam.tasks.eval",
}


def run(cfg) -> dict:
    """Run the task `cfg.task` names (validate() has checked the name)."""
    return importlib.import_module(TASKS[cfg.task]).run(cfg)
