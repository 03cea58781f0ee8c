#!/usr/bin/env python
"""allam entry point: compose the Hydra config, validate it, run the task it names (allam.tasks).

    python run.py                                      # a tiny Llama on the Arabic-English demo corpus (CPU)
    python run.py model=13b init=llama2 data.ar_ratio=0.4 --cfg job
    python run.py task=plan model=70b init=llama2
    python run.py -m data.ar_ratio=0.2,0.45,0.8        # Hydra multirun over an ablation axis
"""
from __future__ import annotations

import itertools
import logging
import sys

import hydra
from omegaconf import DictConfig

from allam.config import CONF_DIR, ConfigError, RunFailed, explain_compose_error, validate
from allam.config.errors import compose_overrides
from allam.config.rules import writable_dir


def preflight(argv: list[str]) -> list[str]:
    """Compose the command line's overrides before Hydra runs, so a bad key, value or group
    choice stops with one line naming it instead of a traceback. With ``-m`` every job of the
    sweep is composed and validated before any starts. Returns the command line Hydra should
    run (:func:`allam.config.errors.compose_overrides`)."""
    argv = compose_overrides(argv)
    if any(a in ("-h", "--help", "--hydra-help", "-i", "--info") for a in argv):
        return argv
    overrides = [a for a in argv if "=" in a and not a.startswith(("-", "hydra.", "hydra/", "+hydra", "~hydra", "++hydra"))]
    if any(a in ("-m", "--multirun") for a in argv):
        if not any(a.startswith(("hydra/sweeper=", "hydra.sweeper.")) for a in argv):  # other sweepers choose jobs as they go
            check_sweep(overrides)
        return argv
    try:
        cfg = _compose(overrides)
    except Exception as exc:  # hydra/omegaconf composition errors
        sys.exit(f"error: {explain_compose_error(exc)}")
    try:
        validate(cfg)
        for arg in argv:  # Hydra creates the run folder before any task code runs
            if arg.startswith("hydra.run.dir="):
                writable_dir("hydra.run.dir", arg.split("=", 1)[1])
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    return argv


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base=None):
        return compose("config", overrides=overrides)


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The overrides of every job of a ``-m`` sweep, in launch order, expanded as Hydra's basic
    sweeper expands them (``a,b``, ``choice()``, ``range()``, ``glob()``; a later override of a
    key replaces an earlier one)."""
    from hydra import initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base=None):
        return _expand(overrides)


def _expand(overrides: list[str]) -> list[list[str]]:
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    axes: dict[str, list[str]] = {}
    for o in parser.parse_overrides(overrides):
        key = o.get_key_element()
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        axes[key] = [f"{key}={v}" for v in values]
    return [list(job) for job in itertools.product(*axes.values())]


def check_sweep(overrides: list[str]) -> None:
    """Compose and validate every job of a sweep; one line naming the first bad job (and how many
    are bad) before any job starts."""
    from hydra import compose, initialize_config_dir

    bad = []
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        try:
            jobs = _expand(overrides)
        except Exception as exc:  # a sweep Hydra cannot parse
            sys.exit(f"error: {explain_compose_error(exc)}")
        for i, job in enumerate(jobs):
            try:
                validate(compose("config", overrides=job))
            except ConfigError as exc:
                bad.append((i, job, str(exc)))
            except Exception as exc:  # hydra/omegaconf composition errors
                bad.append((i, job, explain_compose_error(exc)))
    if bad:
        i, job, msg = bad[0]
        varying = [o for o in job if sum(o in j for j in jobs) < len(jobs)] or job
        sys.exit(f"error: {len(bad)} of {len(jobs)} sweep jobs are invalid, none was started; "
                 f"job {i} ({', '.join(varying)}): {msg}")


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
    sys.argv[1:] = preflight(sys.argv[1:])
    main()
