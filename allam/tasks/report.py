"""task=report: one table (report.md) and plot (report.png) across the runs under report_dir."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from allam import results as R
from allam.config import ConfigError
from allam.tasks.builders import run_dir


def run(cfg: DictConfig) -> dict:
    from allam.report import run_report

    if not cfg.report_dir:
        raise ConfigError("report_dir=None: task=report needs report_dir=<folder of runs, e.g. a multirun dir>")
    res = run_report(Path(cfg.report_dir), run_dir(cfg), mix_commits=bool(cfg.get("report_mix_commits", False)))
    print(f"results: {R.write(run_dir(cfg), {'task': 'report', **res})}")
    return res
