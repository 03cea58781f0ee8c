"""Arabic text: the character classes of Arabic marks and the Arabic/Latin letter tables.

Used by the cleaner (:mod:`allam.data.cleaning`: optional mark stripping, the wrong-script check)
and by the demo corpora (:mod:`allam.data.demo`, which strip every mark from their Arabic text).
"""
from __future__ import annotations

import re
from typing import Optional

import numpy as np

# Character classes (for a regex [...]) of Arabic marks: diacritics (harakat, tanwin, shadda,
# sukun, superscript alef, Quranic annotation marks), tatweel, bidi controls
AR_DIACRITICS = "\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06dc\u06df-\u06e8\u06ea-\u06ed"
TATWEEL = "\u0640"
BIDI_MARKS = "\u200e\u200f\u202a-\u202e\u2066-\u2069\u061c"

# Arabic-script letters (base, supplement, extended-A, presentation forms) and Latin letters
AR_LETTER_RANGES = [(0x620, 0x64A), (0x66E, 0x66F), (0x671, 0x6D3), (0x6D5, 0x6D5), (0x6EE, 0x6EF), (0x6FA, 0x6FF),
                    (0x750, 0x77F), (0x8A0, 0x8FF), (0xFB50, 0xFDFF), (0xFE70, 0xFEFC)]
LATIN_LETTER_RANGES = [(0x41, 0x5A), (0x61, 0x7A), (0xC0, 0xD6), (0xD8, 0xF6), (0xF8, 0x24F), (0x1E00, 0x1EFF)]
_CLASS = np.zeros(0x10000, np.uint8)  # 1: Arabic-script letter, 2: Latin letter (BMP; others 0)
for _lo, _hi in AR_LETTER_RANGES:
    _CLASS[_lo : _hi + 1] = 1
for _lo, _hi in LATIN_LETTER_RANGES:
    _CLASS[_lo : _hi + 1] = 2


def marks_pattern(diacritics: bool = True, tatweel: bool = True, bidi: bool = True) -> Optional[re.Pattern]:
    """A regex matching runs of the chosen Arabic marks (None when none is chosen)."""
    cls = (AR_DIACRITICS if diacritics else "") + (TATWEEL if tatweel else "") + (BIDI_MARKS if bidi else "")
    return re.compile(f"[{cls}]+") if cls else None


_ALL_MARKS = marks_pattern()


def strip_arabic_marks(text: str) -> str:
    """Remove diacritics, tatweel and bidi control marks."""
    return _ALL_MARKS.sub("", text)  # type: ignore[union-attr]


def script_counts_batch(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(Arabic-script letters, Latin letters) of each text, vectorized over the batch."""
    n = len(texts)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cps = np.frombuffer("".join(texts).encode("utf-32-le"), np.uint32)
    cls = _CLASS[np.minimum(cps, 0xFFFF)]
    cls[cps > 0xFFFF] = 0
    ends = np.cumsum(np.fromiter(map(len, texts), np.int64, n))
    starts = ends - np.fromiter(map(len, texts), np.int64, n)
    out = []
    for c in (1, 2):
        cum = np.concatenate([[0], np.cumsum(cls == c, dtype=np.int64)])
        out.append(cum[ends] - cum[starts])
    return out[0], out[1]
