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
   source (dropped; applied by the shard builder, which sees the whole source in order, with
   :func:`doc_hash` and :class:`HashSet`).

Skipped non-UTF-8 lines are counted as ``bad_utf8`` by the reader.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any, Optional

import numpy as np

from allam.config import source_defaults, source_fields
from allam.data.arabic import marks_pattern, script_counts_batch

DROP_STEPS = ("bad_utf8", "empty", "too_short", "wrong_script", "duplicate")

# the cleaner's options: SourceConfig's fields with role "cleaning" (lang included: the script
# check depends on it). A new option added there reaches the cleaner, the shard cache key and the
# tokenizer's text key with no edit here (besides the step that uses it).
OPTIONS = source_fields("cleaning")


def doc_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


class HashSet:
    """Hashes of the documents kept so far, for exact-duplicate removal: about 8 bytes per
    document (a sorted uint64 array, plus a Python set of recent ones merged in periodically)."""

    def __init__(self, buffer: int = 1 << 20):
        self.sorted = np.zeros(0, np.uint64)
        self.recent: set[int] = set()
        self.buffer = buffer

    def __len__(self) -> int:
        return len(self.sorted) + len(self.recent)

    def first_seen(self, hashes: np.ndarray) -> np.ndarray:
        """Mask of hashes not seen before (also within the batch); remembers them."""
        keep = np.ones(len(hashes), bool)
        if len(self.sorted) and len(hashes):
            pos = np.minimum(np.searchsorted(self.sorted, hashes), len(self.sorted) - 1)
            keep &= self.sorted[pos] != hashes
        for j, h in enumerate(hashes.tolist()):
            if keep[j]:
                if h in self.recent:
                    keep[j] = False
                else:
                    self.recent.add(h)
        if len(self.recent) >= self.buffer:
            merged = np.concatenate([self.sorted, np.fromiter(self.recent, np.uint64, len(self.recent))])
            merged.sort()
            self.sorted, self.recent = merged, set()
        return keep


class Cleaner:
    """The cleaning of one source: ``Cleaner(lang="ar", min_chars=5)`` or ``Cleaner.from_source(src)``.

    Its options (attributes) are :data:`OPTIONS`, each defaulting to SourceConfig's default and
    converted to the default's type (a plain ``str`` for a choice); ``lang`` has no default.
    """

    def __init__(self, **options: Any):
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise TypeError(f"Cleaner: no option {', '.join(unknown)}; allowed: {', '.join(OPTIONS)}")
        defaults = source_defaults()
        values = {}
        for key in OPTIONS:
            value = options.get(key)
            if value is None:
                if key not in defaults:
                    raise TypeError(f"Cleaner: option {key} is required")
                value = defaults[key]
            default = defaults.get(key)
            if isinstance(default, (bool, int, float)):
                value = type(default)(value)
            elif isinstance(value, str):
                value = str(value)  # a choice (str enum) as its plain value
            values[key] = value
        self.__dict__.update(values)
        self._options = values

    @classmethod
    def from_source(cls, src: Any) -> "Cleaner":
        """The cleaner of a source (a validated DictConfig or a dict; absent fields take their defaults)."""
        return cls(**{k: src[k] for k in OPTIONS if k in src})

    def options(self) -> dict:
        """What changes the cleaned text (part of the shard cache key)."""
        return dict(self._options)

    def __repr__(self) -> str:
        return "Cleaner(" + ", ".join(f"{k}={v!r}" for k, v in self._options.items()) + ")"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cleaner) and other._options == self._options

    def __hash__(self) -> int:
        return hash(tuple(self._options.items()))

    def _marks(self) -> Optional[re.Pattern]:
        return marks_pattern(self.strip_diacritics, self.strip_tatweel, self.strip_bidi)

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
