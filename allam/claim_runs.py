"""The runs of a claims suite: which runs are one arm (they differ only by seed), which code
they came from (one commit per arm, one run per seed), and which runs of two arms pair up seed by
seed (they start from the same English base). :mod:`allam.claims` compares the arms."""
from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Optional

from allam.config import ConfigError
from allam.config.derived import saved_tokens_per_step
from allam.config.saved import RESUME_MAY_CHANGE
from allam.config.schema import SEED_KEYS

# what differs between the seeds of one arm without making it another arm: the seeds, the base
# checkpoint's path (one base per seed), and what a resume may change (where and how the run logged,
# was laid out, evaluated or resumed from) except the training budget
_BUDGET = ("trainer.max_tokens", "trainer.max_steps")
_NOT_ARM = (*SEED_KEYS, "init.checkpoint", *(k.rstrip(".") for k in RESUME_MAY_CHANGE if k not in _BUDGET))


@lru_cache(maxsize=1)
def _schema_defaults() -> str:
    from omegaconf import OmegaConf

    from allam.config.schema import AllamConfig

    return json.dumps(OmegaConf.to_container(OmegaConf.structured(AllamConfig), throw_on_missing=False), default=str)


def _with_defaults(config: dict, defaults: dict) -> dict:
    """`config` with every key it lacks taken from `defaults` (a run recorded before a key existed
    ran with that key's default)."""
    for key, value in defaults.items():
        if key not in config:
            config[key] = value
        elif isinstance(value, dict) and value and isinstance(config[key], dict):
            _with_defaults(config[key], value)
    return config


def seed_group_key(run: dict) -> str:
    """What a run is apart from its seed: its resolved config (keys it lacks at their schema
    defaults) without the keys above."""
    from allam.config.saved import comparable_config

    config = _with_defaults(comparable_config(json.loads(json.dumps(run.get("config", {}), default=str))),
                            json.loads(_schema_defaults()))
    # the layout keys go, but not what they multiply to: a resume keeps tokens per step (checked
    # apart from the keys), the arm's seeds must too (another global batch is another schedule)
    config["tokens_per_step"] = saved_tokens_per_step(config)
    for dotted in _NOT_ARM:
        *parents, leaf = dotted.split(".")
        node = config
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return json.dumps(config, sort_keys=True)


def arm_name(run: dict) -> str:
    return (run.get("choices") or {}).get("experiment") or Path(run["_path"]).parent.name


def group_by_seed(runs: list[dict]) -> dict[str, list[dict]]:
    """Finished runs that differ only by seed, named by their experiment (an experiment run with
    two different configs gets ``name#2`` for the second)."""
    groups: dict[str, list[dict]] = {}
    names: dict[str, str] = {}
    for r in runs:
        if r.get("status", "finished") != "finished":
            continue
        key = seed_group_key(r)
        if key not in names:
            name = arm_name(r)
            taken = sum(1 for n in names.values() if n.split("#")[0] == name)
            names[key] = name if not taken else f"{name}#{taken + 1}"
        groups.setdefault(names[key], []).append(r)
    return groups


UNKNOWN_COMMIT = "unknown commit"


def commit_label(run: dict) -> str:
    """The code a run came from: its commit (12 hex digits, "+dirty" when tracked files differed
    from it), "not a git checkout", or "unknown commit" for a run written before results.json
    recorded provenance."""
    if "code.commit" not in run:
        return UNKNOWN_COMMIT
    if not run["code.commit"]:
        return "not a git checkout"
    return str(run["code.commit"])[:12] + ("+dirty" if run.get("code.dirty") else "")


def check_commits(groups: dict[str, list[dict]], arms: list[str], mix_commits: bool = False) -> dict[str, list[str]]:
    """Each arm's commits; raises ConfigError naming the runs when an arm holds runs of more than
    one (an "unknown commit" is one more commit), unless `mix_commits`."""
    commits = {arm: sorted({commit_label(r) for r in groups.get(arm, [])}) for arm in arms}
    mixed = {arm: c for arm, c in commits.items() if len(c) > 1}
    if mixed and not mix_commits:
        arm = next(iter(mixed))
        runs = ", ".join(f"{_run_label(r)} ({commit_label(r)})" for r in groups[arm])
        raise ConfigError(f"claims: arm {arm} holds runs from {len(mixed[arm])} commits: {runs}; rerun them at one "
                          "commit, or allow it with --mix-commits (reproduce.py) / report_mix_commits=true (task=report)")
    return commits


def check_seeds(groups: dict[str, list[dict]], arms: list[str]) -> None:
    """Raises ConfigError naming the runs when an arm holds two runs of one seed (a copied or
    rerun run dir under the report's root): each would count as a seed of its own."""
    for arm in arms:
        seen: dict[tuple, dict] = {}
        for r in groups.get(arm, []):
            seed = seed_of(r)
            if seed in seen:
                shown = seed[0] if len(set(seed)) == 1 else dict(zip(SEED_KEYS, seed))
                raise ConfigError(f"claims: arm {arm} holds two runs of seed {shown}: {_run_label(seen[seed])} and "
                                  f"{_run_label(r)}; report over a folder with one copy of each run")
            seen[seed] = r


def left_out(groups: dict[str, list[dict]], arms: list[str]) -> dict[str, list[str]]:
    """Runs of a claim arm's experiment that differ from the arm in more than seeds and what a
    resume may change (grouped as ``arm#2``, ...): the claims do not read them. Arm -> run labels."""
    out: dict[str, list[str]] = {}
    for name, runs in groups.items():
        base, _, k = name.partition("#")
        if k and base in arms:
            out.setdefault(name, []).extend(_run_label(r) for r in runs)
    return out


def _run_label(run: dict) -> str:
    path = Path(run.get("_path", "?")).parent
    return f"{path.parent.name}/{path.name}"


def seed_of(run: dict) -> tuple:
    """The seed values (SEED_KEYS) a run was started with: what pairs runs of two arms."""
    out = []
    for dotted in SEED_KEYS:
        node = run.get("config", {})
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        out.append(node)
    return tuple(out)


def _norm(path) -> Optional[str]:
    return os.path.normpath(os.path.abspath(str(path))) if path else None


def _start_of(run: dict) -> Optional[str]:
    return _norm(((run.get("config") or {}).get("init") or {}).get("checkpoint"))


def _export_of(run: dict) -> Optional[str]:
    where = run.get("run_dir") or (Path(run["_path"]).parent if run.get("_path") else None)
    return _norm(run.get("export") or (Path(where) / "hf" if where else None))


def shares_base(a: dict, b: dict) -> bool:
    """Whether two runs start from the same checkpoint, or one starts from the other's export."""
    sa, sb = _start_of(a), _start_of(b)
    return bool((sa and sa == sb) or (sa and sa == _export_of(b)) or (sb and sb == _export_of(a)))


def pairs(a: list[dict], b: list[dict]) -> Optional[list[tuple[dict, dict]]]:
    """(run of a, run of b) per seed both arms have, when every such pair shares its base (a
    paired comparison); None when they do not (independent arms)."""
    by_seed = {seed_of(r): r for r in b}
    matched = [(r, by_seed[seed_of(r)]) for r in a if seed_of(r) in by_seed]
    if not matched or not all(shares_base(x, y) for x, y in matched):
        return None
    return matched
