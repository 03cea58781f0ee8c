"""task=prepare: clean, dedup and tokenize the configured sources into the shard cache ahead of
training, and build the blend, without building a model.

    python run.py task=prepare data=demo tokenizer=expanded            # same overrides as the run
    python run.py data=demo tokenizer=expanded                          # then reads the cache

It takes the overrides of the training run it prepares for: the tokenizer (trained here once if
it is not cached), the sources and cleaning, the mix and the budget (the blend is checked, so a
source too small for the budget fails here, not in the run). The run then finds the tokenizer and
every source's shards in ``paths.cache_dir`` by fingerprint and tokenizes nothing. results.json
records each source's shard folder, documents, tokens, bytes and drops.

With ``data.prepare.executor=slurm`` it submits each missing file source's build as SLURM job
arrays (count, tokenize, merge; :mod:`allam.data.engine`) and returns; results.json records the job
ids and work folders. Run the same command again once the merge jobs have finished: it then finds
every source in the cache and checks the blend as ``executor=local`` does (results.json as above).
"""
from __future__ import annotations

import time

from omegaconf import DictConfig

from allam import results as R
from allam.config import validate
from allam.tasks.builders import build_datamodule, build_tokenizer, group_choices, run_dir


def run(cfg: DictConfig) -> dict:
    if cfg.objective.name != "pretrain":
        from allam.config import ConfigError

        raise ConfigError(f"task=prepare: objective={cfg.objective.name} reads its examples at the start of its run; "
                          "task=prepare builds the pretraining shards (objective=pretrain)")
    validate(cfg)
    t0 = time.perf_counter()
    out = run_dir(cfg)
    bundle = build_tokenizer(cfg)
    dm = build_datamodule(cfg, bundle.tokenizer)
    if str(cfg.data.prepare.executor) == "slurm":
        jobs = dm.submit()
        if jobs:
            return _submitted(cfg, out, bundle, jobs, t0)
        print("every source is in the cache; checking the blend")
    dm.prepare()
    sources = {}
    for name, sh in dm.shards.items():
        m = sh.meta
        sources[name] = {"folder": str(sh.path), "lang": m["lang"], "kind": m["kind"], "docs_read": m["docs_read"],
                         "train": m["train"], "val": m["val"], "drops": m["drops"], "seconds": m["seconds"]}
    results = {
        **_header(cfg, out, bundle),
        "sources": sources,
        "prepare.train_tokens": sum(s["train"]["tokens"] for s in sources.values()),
        "prepare.val_tokens": sum(s["val"]["tokens"] for s in sources.values()),
        "wall_seconds": time.perf_counter() - t0,
    }
    print(f"prepared {len(sources)} sources: {results['prepare.train_tokens']:,} training and "
          f"{results['prepare.val_tokens']:,} validation tokens with tokenizer {bundle.name} "
          f"in {results['wall_seconds']:.1f}s; a run with the same overrides reads them from the cache")
    print(f"results: {R.write(out, results)}")
    return results


def _header(cfg: DictConfig, out, bundle) -> dict:
    return {"task": "prepare", "run_dir": str(out), "choices": group_choices(cfg), "tokenizer": bundle.name,
            "tokenizer_folder": str(bundle.path)}


def _submitted(cfg: DictConfig, out, bundle, jobs: list[dict], t0: float) -> dict:
    results = {
        **_header(cfg, out, bundle),
        "submitted": jobs,
        "wall_seconds": time.perf_counter() - t0,
    }
    states = [j.get("state") for j in jobs]
    waiting = states.count("waiting")
    print(f"submitted the builds of {states.count('submitted')} sources to SLURM ({states.count('pending')} submitted "
          "before and not merged yet" + (f"; {waiting} waiting for earlier sources' shards, built or submitted by the "
                                         "next run" if waiting else "")
          + "); once their merge jobs finish, run the same command again" + (" to submit the rest" if waiting else
          " to check the blend") + " (a training run with the same overrides then reads the cache; while a source's "
          "jobs are pending it stops with one line rather than build it too)")
    print(f"results: {R.write(out, results)}")
    return results
