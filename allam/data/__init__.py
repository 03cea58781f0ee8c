"""The data pipeline, one module a stage:

- ``sources``: reading a configured source's documents; ``source_files``: its files, size and
  content fingerprint; ``holdout``: the hold-out rule; ``demo``: the shipped demo corpora;
- ``cleaning``: the cleaning steps and their drop counts; ``arabic``: stripping Arabic marks (the script tables are allam/config/langs.py's);
- ``shards``: cleaned, tokenized, cached token shards per source (format, cache key, checks);
  ``shard_build``: building them (``shard_writer`` the writing, ``engine``/``engine_run`` the
  parallel tasks of large sources);
- ``blend``: the exact, seeded mix of sources block by block, by stage;
- ``datamodule``: the Lightning lifecycle, batches and resume;
- ``mix``: the mix report (target vs realized) and its table; ``fingerprint``: what decides the
  token stream, and the check made when resuming.

``allam.data.demo`` imports no deep-learning library; the datamodule (Lightning, torch) is
imported lazily: ``from allam.data import AllamDataModule, check_fingerprint``.
"""
from __future__ import annotations

__all__ = ["AllamDataModule", "check_fingerprint"]


def __getattr__(name: str):
    if name == "AllamDataModule":
        from allam.data.datamodule import AllamDataModule

        return AllamDataModule
    if name == "check_fingerprint":
        from allam.data.fingerprint import check_fingerprint

        return check_fingerprint
    raise AttributeError(f"module 'allam.data' has no attribute {name!r}")
