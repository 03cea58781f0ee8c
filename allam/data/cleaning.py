"""Document cleaning, one step at a time, each step counting what it dropped.

Steps, in order (options are fields of :class:`allam.config.SourceConfig`):

1. ``nfc``: Unicode NFC normalization (transforms, never drops).
2. ``strip_diacritics`` / ``strip_tatweel`` / ``strip_bidi``: Arabic marks (transform; applied to
   the Arabic side of a parallel pair only), then whitespace runs collapse to one space.
3. ``empty``: nothing left after the transforms (dropped).
4. ``too_short``: fewer than ``min_chars`` characters (dropped).
5. ``wrong_script``: letters of the other script (Latin in an ``ar`` source, Arabic in an ``en``
   source) are more than ``max_wrong_script`` of all Arabic + Latin letters (dropped; a document
   with no letters at all counts as all-wrong). ``max_wrong_script=1`` disables the step.
6. ``duplicate``: exact duplicate (hash of the cleaned text) of an earlier document of the same
   source (dropped; applied by the shard builder, which sees the whole source in order).

Skipped non-UTF-8 lines are counted as ``bad_utf8`` by the reader.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata

import numpy as np
from dataclasses import dataclass
from typing import Any, Optional

from allam.data.demo import AR_DIACRITICS as _DIACRITICS  # one definition of the Arabic mark classes
from allam.data.demo import BIDI_MARKS as _BIDI
from allam.data.demo import TATWEEL as _TATWEEL

DROP_STEPS = ("bad_utf8", "empty", "too_short", "wrong_script", "duplicate")

# Arabic-script letters (base, supplement, extended-A, presentation forms) and Latin letters
_AR_RANGES = [(0x620, 0x64A), (0x66E, 0x66F), (0x671, 0x6D3), (0x6D5, 0x6D5), (0x6EE, 0x6EF), (0x6FA, 0x6FF),
              (0x750, 0x77F), (0x8A0, 0x8FF), (0xFB50, 0xFDFF), (0xFE70, 0xFEFC)]
_LATIN_RANGES = [(0x41, 0x5A), (0x61, 0x7A), (0xC0, 0xD6), (0xD8, 0xF6), (0xF8, 0x24F), (0x1E00, 0x1EFF)]
_CLASS = np.zeros(0x10000, np.uint8)  # 1: Arabic-script letter, 2: Latin letter (BMP; others 0)
for _lo, _hi in _AR_RANGES:
    _CLASS[_lo : _hi + 1] = 1
for _lo, _hi in _LATIN_RANGES:
    _CLASS[_lo : _hi + 1] = 2


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


def doc_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


@dataclass(frozen=True)
class Cleaner:
    lang: str
    nfc: bool = True
    strip_diacritics: bool = False
    strip_tatweel: bool = False
    strip_bidi: bool = False
    min_chars: int = 20
    max_wrong_script: float = 0.5
    dedup: bool = True

    @classmethod
    def from_source(cls, src: Any) -> "Cleaner":
        def g(k, d):
            v = getattr(src, k, d) if not isinstance(src, dict) else src.get(k, d)
            return getattr(v, "value", v) if v is not None else d

        return cls(
            lang=g("lang", "en"),
            nfc=bool(g("nfc", True)),
            strip_diacritics=bool(g("strip_diacritics", False)),
            strip_tatweel=bool(g("strip_tatweel", False)),
            strip_bidi=bool(g("strip_bidi", False)),
            min_chars=int(g("min_chars", 20)),
            max_wrong_script=float(g("max_wrong_script", 0.5)),
            dedup=bool(g("dedup", True)),
        )

    def options(self) -> dict:
        """What changes the cleaned text (part of the shard cache key)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def _marks(self) -> Optional[re.Pattern]:
        cls = (_DIACRITICS if self.strip_diacritics else "") + (_TATWEEL if self.strip_tatweel else "") + (
            _BIDI if self.strip_bidi else "")
        return re.compile(f"[{cls}]+") if cls else None

    def _transform(self, text: str, marks: Optional[re.Pattern]) -> str:
        if self.nfc:
            text = unicodedata.normalize("NFC", text)
        if marks is not None:
            text = marks.sub("", text)
        return " ".join(text.split())

    def clean_batch(self, texts: list[str], pairs: Optional[list[Optional[str]]] = None
                    ) -> tuple[list[Optional[str]], list[Optional[str]]]:
        """Cleans a batch: (cleaned text or None, the step that dropped it or None) per document.
        Duplicates are not checked here.

        With a pair (the original of a translated document) the result is the aligned pair
        "original, blank line, translation"; the checks look at the translated side only.
        """
        marks = self._marks()
        own = marks if self.lang == "ar" else None
        other = marks if self.lang != "ar" else None
        out: list[Optional[str]] = [self._transform(t, own) for t in texts]
        why: list[Optional[str]] = [None] * len(texts)
        for i, t in enumerate(out):
            if not t:
                why[i] = "empty"
            elif len(t) < self.min_chars:
                why[i] = "too_short"
        if self.max_wrong_script < 1.0:
            idx = [i for i in range(len(out)) if why[i] is None]
            ar, la = script_counts_batch([out[i] for i in idx])  # type: ignore[misc]
            wrong = la if self.lang == "ar" else ar
            total = ar + la
            for j, i in enumerate(idx):
                if total[j] == 0 or wrong[j] > self.max_wrong_script * total[j]:
                    why[i] = "wrong_script"
        for i in range(len(out)):
            if why[i] is not None:
                out[i] = None
            elif pairs is not None and pairs[i] is not None:
                orig = self._transform(pairs[i], other)  # type: ignore[arg-type]
                if orig:
                    out[i] = orig + "\n\n" + out[i]  # the original first, then its translation
        return out, why

    def clean(self, text: str, pair: Optional[str] = None) -> tuple[Optional[str], Optional[str]]:
        """One document: (cleaned text, None) or (None, the step that dropped it)."""
        out, why = self.clean_batch([text], [pair])
        return out[0], why[0]
