#!/usr/bin/env python
"""allam entry point: compose the Hydra config, validate it, run the task it names (allam.tasks).

    python run.py                                      # tiny bilingual Llama on the demo corpus (CPU)
    python run.py model=13b init=llama2 data.ar_ratio=0.4 --cfg job
    python run.py task=plan model=70b init=llama2
    python run.py -m data.ar_ratio=0.2,0.45,0.8        # Hydra multirun over an ablation axis
"""
from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from allam.config import CONF_DIR, ConfigError, RunFailed, explain_compose_error, validate
from allam.config.rules import writable_dir


def preflight(argv: list[str]) -> None:
    """Compose the command line's overrides once before Hydra runs, so a bad key, value or
    group choice stops with one line naming it instead of a traceback."""
    if any(a in ("-m", "--multirun", "-h", "--help", "--hydra-help", "-i", "--info") for a in argv):
        return
    overrides = [a for a in argv if "=" in a and not a.startswith(("-", "hydra.", "hydra/", "+hydra", "~hydra"))]
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(str(CONF_DIR), version_base=None):
            cfg = compose("config", overrides=overrides)
    except Exception as exc:  # hydra/omegaconf composition errors
        sys.exit(f"error: {explain_compose_error(exc)}")
    try:
        validate(cfg)
        for arg in argv:  # Hydra creates the run folder before any task code runs
            if arg.startswith("hydra.run.dir="):
                writable_dir("hydra.run.dir", arg.split("=", 1)[1])
    except ConfigError as exc:
        sys.exit(f"error: {exc}")


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    from allam import tasks

    logging.getLogger("allam").setLevel(logging.INFO)
    # Lightning prints through its own handler; don't print its lines a second time through Hydra's
    logging.getLogger("lightning.pytorch").propagate = False
    try:
        tasks.run(cfg)
    except (ConfigError, RunFailed) as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    preflight(sys.argv[1:])
    main()
