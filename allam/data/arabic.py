"""Arabic text: stripping Arabic marks (their character classes live in allam/config/langs.py).

Used by the cleaner (:mod:`allam.data.cleaning`: optional mark stripping) and by the demo
corpora (:mod:`allam.data.demo`, which strip every mark from their Arabic text).
"""
from __future__ import annotations

import re
from typing import Optional

from allam.config.langs import AR_DIACRITICS, BIDI_MARKS, TATWEEL


def marks_pattern(diacritics: bool = True, tatweel: bool = True, bidi: bool = True) -> Optional[re.Pattern]:
    """A regex matching runs of the chosen Arabic marks (None when none is chosen)."""
    cls = (AR_DIACRITICS if diacritics else "") + (TATWEEL if tatweel else "") + (BIDI_MARKS if bidi else "")
    return re.compile(f"[{cls}]+") if cls else None


_ALL_MARKS = marks_pattern()


def strip_arabic_marks(text: str) -> str:
    """Remove diacritics, tatweel and bidi control marks."""
    return _ALL_MARKS.sub("", text)  # type: ignore[union-attr]
