"""Document cleaning, one step at a time, each step counting what it dropped.

Steps, in order (options are fields of :class:`allam.config.SourceConfig`):

1. ``nfc``: Unicode NFC normalization (transforms, never drops).
2. ``strip_diacritics`` / ``strip_tatweel`` / ``strip_bidi``: Arabic marks (transform; applied to
   the Arabic-script side of a parallel pair only, for languages written in Arabic script), then
   whitespace runs collapse to one space. In Indic scripts (allam/config/langs.py: ``joiners``)
   a zero-width joiner or non-joiner stays between two characters of the script (it shapes a
   conjunct), a zero-width joiner after a virama at a word's end (Malayalam's chillu, Bengali's
   khanda ta, half forms), and a joiner between two symbols (an emoji sequence); the others go (at
   a word's edge, after whitespace, next to another script) and a run of them keeps its first.
3. ``empty``: nothing left after the transforms (dropped).
4. ``too_short``: fewer than ``min_chars`` characters (dropped).
5. ``wrong_script``: letters of other scripts (any script of allam/config/langs.py that is not
   one of the source language's: Latin in an ``ar`` source, Arabic or Devanagari in an ``en``
   source) are more than ``max_wrong_script`` of all its letters (dropped; a document with no
   letters at all counts as all-wrong). ``max_wrong_script=1`` disables the step.
6. ``duplicate``: exact duplicate (hash of the cleaned text) of an earlier document of the same
   source (dropped; applied by the shard builder, which sees the whole source in order, with
   :func:`doc_hash` and :class:`HashSet`).

Skipped non-UTF-8 lines are counted as ``bad_utf8`` by the reader.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from functools import lru_cache
from typing import Any, Optional

import numpy as np

from allam.config import source_defaults, source_fields
from allam.config.langs import language, letter_table_digest, script_letters_batch
from allam.data.arabic import marks_pattern

DROP_STEPS = ("bad_utf8", "bad_json", "empty", "too_short", "wrong_script", "duplicate")

# the cleaner's options: SourceConfig's fields with role "cleaning" (lang included: the script
# check depends on it). A new option added there reaches the cleaner, the shard cache key and the
# tokenizer's text key with no edit here (besides the step that uses it).
OPTIONS = source_fields("cleaning")


def doc_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


class _Run:
    """A sorted run of distinct hashes with a fence (every :data:`FENCE`-th hash): a lookup
    binary-searches the fence, which stays in cache, then compares the one block of FENCE hashes it
    names, contiguous in memory (a plain binary search over a large array misses the cache at
    almost every step)."""

    FENCE = 32

    def __init__(self, hashes: np.ndarray):
        n = len(hashes)
        pad = (-n) % self.FENCE  # the last hash repeated: padding that matches only what the run holds
        self.blocks = np.concatenate([hashes, np.repeat(hashes[-1:], pad)]).reshape(-1, self.FENCE)
        self.fence = self.blocks[:, 0].copy()
        self.n = n

    def __len__(self) -> int:
        return self.n

    @property
    def hashes(self) -> np.ndarray:
        return self.blocks.reshape(-1)[: self.n]

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        block = np.maximum(np.searchsorted(self.fence, hashes, side="right") - 1, 0)
        return (self.blocks[block] == hashes[:, None]).any(axis=1)


class HashSet:
    """Hashes of the documents kept so far, for exact-duplicate removal: about 8 bytes per
    document, in sorted runs. Each batch's new hashes become a run, and runs merge like a binary
    counter (a run merges into the one before it while that one is no longer than it), so a hash
    is merged O(log n) times and there are O(log n) runs: O(n log n) for n documents, with no
    per-hash Python work. (One array re-sorted at every flush of a Python set cost O(n^2 / flush).)
    A lookup searches every run through its fence (:class:`_Run`). ``benchmarks/dedup_scaling.py``
    measures both."""

    def __init__(self) -> None:
        self.runs: list[_Run] = []  # sizes strictly decreasing

    def __len__(self) -> int:
        return sum(len(r) for r in self.runs)

    def first_seen(self, hashes: np.ndarray) -> np.ndarray:
        """Mask of hashes not seen before (also within the batch); remembers them."""
        keep = np.zeros(len(hashes), bool)
        if not len(hashes):
            return keep
        distinct, first = np.unique(hashes, return_index=True)  # sorted; where each first occurs
        new = np.ones(len(distinct), bool)
        for run in self.runs:
            new &= ~run.contains(distinct)
        keep[first[new]] = True
        run = distinct[new]
        if len(run):
            while self.runs and len(self.runs[-1]) <= len(run):
                run = np.concatenate([self.runs.pop().hashes, run])
                run.sort(kind="stable")  # two sorted runs: timsort merges them in linear time
            self.runs.append(_Run(run))
        return keep


_JOINERS = "\u200c\u200d"


JOINER_RULE = 2  # in the cache keys of sources whose script tidies joiners (1: only between two script characters)
_RUN = re.compile(f"[{_JOINERS}]+")


class _JoinerTidy:
    """Tidies the runs of joiners of a text in the scripts of ``blocks`` (see the module's step 2)."""

    def __init__(self, blocks: tuple):
        cls = "".join(f"\\u{lo:04x}-\\u{hi:04x}" for lo, hi in blocks if hi <= 0xFFFF)
        self.script = re.compile(f"[{cls}]")

    def _keep(self, m: re.Match) -> str:
        text, first = m.string, m.group()[0]
        before = text[m.start() - 1] if m.start() else ""
        after = text[m.end()] if m.end() < len(text) else ""
        if before and self.script.match(before):
            inside = bool(after) and self.script.match(after) is not None
            if inside:
                return first
            return "\u200d" if "\u200d" in m.group() and unicodedata.combining(before) == 9 else ""  # 9: a virama
        emoji = (bool(before) and bool(after) and unicodedata.category(after) == "So"
                 and unicodedata.category(before) in ("So", "Sk", "Mn"))  # Mn/Sk: a variation selector or skin tone
        return first if emoji else ""

    def __call__(self, text: str) -> str:
        return _RUN.sub(self._keep, text)


@lru_cache(maxsize=None)
def _joiner_tidy(blocks: tuple) -> Optional[_JoinerTidy]:
    return _JoinerTidy(blocks) if blocks else None


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

    def rules(self) -> dict:
        """Rules of the code that change the cleaned text, for the shard and tokenizer-text cache
        keys of the sources they apply to: the joiner rule's version for scripts that tidy joiners,
        and, where the wrong-script check is on, the letter table it counts with (every script's
        letters, the Unicode database's categories included) and the language's own scripts: a
        change to any of them rebuilds those caches."""
        lang = language(self.lang)
        out: dict = {"joiner_rule": JOINER_RULE} if lang.joiner_blocks() else {}
        if self.max_wrong_script < 1.0:
            out["letters"] = f"{letter_table_digest()}:{','.join(lang.scripts)}"
        return out

    def __repr__(self) -> str:
        return "Cleaner(" + ", ".join(f"{k}={v!r}" for k, v in self._options.items()) + ")"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cleaner) and other._options == self._options

    def __hash__(self) -> int:
        return hash(tuple(self._options.items()))

    def _marks(self) -> Optional[re.Pattern]:
        return marks_pattern(self.strip_diacritics, self.strip_tatweel, self.strip_bidi)

    def _transform(self, text: str, marks: Optional[re.Pattern], joiners: Optional[_JoinerTidy] = None) -> str:
        if self.nfc:
            text = unicodedata.normalize("NFC", text)
        if marks is not None:
            text = marks.sub("", text)
        if joiners is not None:
            text = joiners(text)
        return " ".join(text.split())

    def clean_batch(self, texts: list[str], pairs: Optional[list[Optional[str]]] = None
                    ) -> tuple[list[Optional[str]], list[Optional[str]]]:
        """Cleans a batch: (cleaned text or None, the step that dropped it or None) per document.
        Duplicates are not checked here.

        With a pair (the original of a translated document) the result is the aligned pair
        "original, blank line, translation"; the checks look at the translated side only.
        """
        marks = self._marks()
        lang = language(self.lang)
        own = marks if lang.arabic_marks else None
        other = marks if not lang.arabic_marks else None
        joiners = _joiner_tidy(lang.joiner_blocks())
        out: list[Optional[str]] = [self._transform(t, own, joiners) for t in texts]
        why: list[Optional[str]] = [None] * len(texts)
        for i, t in enumerate(out):
            if not t:
                why[i] = "empty"
            elif len(t) < self.min_chars:
                why[i] = "too_short"
        if self.max_wrong_script < 1.0:
            idx = [i for i in range(len(out)) if why[i] is None]
            right, wrong = script_letters_batch([out[i] for i in idx], self.lang)  # type: ignore[misc]
            total = right + wrong
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
