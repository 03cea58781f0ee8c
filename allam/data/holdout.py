"""The parts of reading a source that decide what its cache key keeps: a file's identity (its
name, size and a content sample) and the validation hold-out rule of file and hf sources (see
:mod:`allam.data.sources` for the rule in words)."""
from __future__ import annotations

import hashlib
import math
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional

from allam.data import demo

CHAPTER_DOCS = 50
VAL_EVERY = demo.VAL_EVERY

SAMPLE_BLOCKS = 16  # blocks of a file's content hash, spread evenly over it
SAMPLE_BYTES = 1 << 16  # bytes per block


def file_identity(p: Path) -> list:
    """What a file's fingerprint keeps of it: its name, its size and the SHA-256 of a content
    sample (:data:`SAMPLE_BLOCKS` blocks of :data:`SAMPLE_BYTES` spread evenly from its first to its
    last byte; the whole file when smaller). Neither its folder nor its mtime: a ``touch`` or the
    same bytes copied elsewhere (another cluster) keep the fingerprint. An edit that keeps the size
    and misses every sampled block goes unnoticed; a changed size or any sampled byte does not."""
    size = p.stat().st_size
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        if size <= SAMPLE_BLOCKS * SAMPLE_BYTES:
            h.update(fh.read())
        else:
            for i in range(SAMPLE_BLOCKS):  # block 0 starts at the first byte, the last ends at the last
                fh.seek(i * (size - SAMPLE_BYTES) // (SAMPLE_BLOCKS - 1))
                h.update(fh.read(SAMPLE_BYTES))
    return [p.name, size, h.hexdigest()]


HOLD_OUT_RULE = f"demo:unit%{VAL_EVERY}==0;files:chapter({CHAPTER_DOCS})%{VAL_EVERY}==1"


def hold_out_rule(src: Any) -> str:
    """The hold-out rule a source is read under: :data:`HOLD_OUT_RULE` at the defaults (so caches
    built before the rule was configurable stay valid), with the fraction and cap appended otherwise."""
    fraction, cap = _fraction(src.get("val_fraction")), src.get("val_max_bytes")
    if src["loader"] == "demo" or (fraction == Fraction(1, VAL_EVERY) and cap is None):
        return HOLD_OUT_RULE
    return f"{HOLD_OUT_RULE};files:fraction={fraction};cap_bytes={cap}"


def _fraction(value: Optional[float]) -> Fraction:
    """A hold-out fraction as an exact rational (None: data.val_fraction's default, 1/20)."""
    return Fraction(1, VAL_EVERY) if value is None else Fraction(str(value))  # exact: 1e-07 stays 1/10^7


def chapter_is_val(chapter: int, fraction: Fraction) -> bool:
    """Whether chapter `chapter` is held out at `fraction` (the rule in allam.data.sources' module docstring)."""
    if fraction <= 0:
        return False
    k = math.ceil(1 / fraction) - 1
    return math.floor((chapter + k) * fraction) > math.floor((chapter + k - 1) * fraction)
