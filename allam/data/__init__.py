"""Sources and cleaning, pre-tokenized shards, packing, the exact blend, and the datamodule.

``allam.data.demo`` (the demo corpora) imports nothing heavy; the datamodule (Lightning, torch)
is imported lazily: ``from allam.data import AllamDataModule, check_fingerprint``.
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
