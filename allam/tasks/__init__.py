"""Tasks: what `task=` on run.py names. One module per task; each exposes ``run(cfg) -> dict``.

The names live in the config (:data:`allam.config.schema.TASKS`, which
:func:`allam.config.validate` checks ``task`` against, so the config needs nothing from this
layer); this registry maps each name to its module, ``allam.tasks.<name with "-" as "_">``.
Adding a task is a new module plus its name in that tuple. Importing this package is cheap
(task modules load on use).
"""
from __future__ import annotations

import importlib

from allam.config.schema import TASKS as TASK_NAMES

TASKS: dict[str, str] = {name: f"allam.tasks.{name.replace('-', '_')}" for name in TASK_NAMES}


def run(cfg) -> dict:
    """Run the task `cfg.task` names (validate() has checked the name)."""
    return importlib.import_module(TASKS[cfg.task]).run(cfg)
