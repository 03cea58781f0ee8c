"""The leak check: which evaluation texts (prompts, choices) or validation documents repeat text the
models train on.

Held out by book is not held out by text: hadith repeat across books and across Bukhari and
Muslim, and the Gospels run in parallel. This module indexes the training text of the demo
corpora (every document of every demo source whose unit is a training unit,
:func:`allam.data.demo.split_of`: a superset of what any ``data.sources`` selection of them
trains on) as hashed word n-grams, and measures each checked text against it.

Normalization (:func:`words`): Arabic marks, tatweel and bidi controls stripped, the alef forms
(أ إ آ ٱ) folded to ا, ى to ي and ة to ه, lower case, and every character that is not a letter, a
mark, a digit (Unicode L, M, N) or a joiner (ZWNJ, ZWJ) read as a space; the words are what is
left. Marks stay in a word, as the competence tasks' words keep them: a Devanagari vowel sign or
virama split a word in version 1 (8 Hindi words made 15 fragments, and का, की, के, को were one),
which dropped 120 of 1,884 Hindi verses instead of 56; Arabic and English build the same items. An n-gram is ``N`` (13) consecutive words of one
document, hashed to 64 bits (word hashes from BLAKE2b, combined with fixed odd multipliers per
position); the index is the sorted array of the distinct hashes (8 bytes each: 47 MB for the 3.6M
training words, with the short-text index), built in one pass and cached under the cache folder
by a fingerprint of the corpus package files, the demo and Arabic-text code and this module's
normalization (:func:`training_index`).

The rule (:func:`Overlap.leaked`): a text leaks when at least ``LEAK_COVERAGE`` (half) of its words lie
inside 13-grams that occur in the training text. One shared 13-gram is not enough: the chains of
narrators that open hadith are formulaic ("حدثنا ... قال حدثنا ... عن ... عن ...", "Narrated Abu
Huraira: Allah's Messenger (ﷺ) said") and a shared chain is not a shared hadith; half the words
covered is taken as a repeat of the text itself. Texts shorter than ``N`` words have no 13-gram; they are
checked whole: a text of ``MIN_WORDS`` (6) to 12 words leaks when every one of its
``MIN_WORDS``-grams occurs in the training text (a second index holds those). Texts shorter than
that (hadith book titles, one-word answers) are not checked.

Why half the words: on the 431 held-out Arabic hadith, "at least one shared 13-gram" flags 283
(many for a shared chain alone), "at least half of the 13-grams shared" flags 38 but misses hadith
most of whose text (matn) recurs in a training book behind a different chain, and "half the words
covered" flags 125 (29%), among them those, and also short hadith whose chain and opening
formula make up half their words: the rule prefers dropping those to keeping a repeat. English
hadith: 113, 3 and 12 of 431. ``python -m allam.eval.leak`` prints these counts and the overlap of
every held-out source (the validation documents included) with the training text.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import regex

from allam import cache_lock
from allam.data import arabic, demo
from allam.data.arabic import strip_arabic_marks
from allam.data.sources import file_identity

log = logging.getLogger("allam")

N = 13  # words per n-gram
MIN_WORDS = 6  # shorter texts are not checked
LEAK_COVERAGE = 0.5  # a text leaks when at least this share of its words lies in shared n-grams
NORMALIZATION = "v2:arabic-marks,alef/ya/ta-marbuta,lower,non-LMN-or-joiner=space"  # part of the cache key
_FOLD = str.maketrans({"أ": "ا", "إ": "ا", "آ": "ا", "ٱ": "ا", "ى": "ي", "ة": "ه"})
_NON_WORD = regex.compile(r"[^\p{L}\p{M}\p{N}\u200c\u200d]+")
_MULT = np.array([(0x9E3779B97F4A7C15 * (2 * i + 1) + 0x632BE59BD9B4E019 * i * i) % 2**64 | 1 for i in range(N)],
                 dtype=np.uint64)


def words(text: str) -> list[str]:
    """The normalized words of `text` (see the module docstring)."""
    text = strip_arabic_marks(text).translate(_FOLD).lower()
    return _NON_WORD.sub(" ", text).split()


@lru_cache(maxsize=1 << 20)
def _word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


def _hashes(ws: list[str]) -> np.ndarray:
    return np.fromiter((_word_hash(w) for w in ws), dtype=np.uint64, count=len(ws))


def _gram_hashes(word_hashes: np.ndarray, starts: np.ndarray, n: int) -> np.ndarray:
    """The hash of the n-gram starting at each position in `starts`."""
    h = np.zeros(len(starts), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            h += word_hashes[starts + j] * _MULT[j]
        h ^= np.uint64(n)  # n-grams of different lengths never share a hash
    return h


def text_grams(ws: list[str], n: int = N) -> np.ndarray:
    """The hashes of every n-gram of one word list, in order (empty when it has fewer than n words)."""
    if len(ws) < n:
        return np.zeros(0, dtype=np.uint64)
    return _gram_hashes(_hashes(ws), np.arange(len(ws) - n + 1), n)


def _member(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """values[i] in sorted_set, by binary search (the set is large, the values few)."""
    at = np.minimum(np.searchsorted(sorted_set, values), max(len(sorted_set) - 1, 0))
    return sorted_set[at] == values if len(sorted_set) else np.zeros(len(values), dtype=bool)


@dataclass
class Overlap:
    """How one text meets the training text."""

    words: int  # normalized words
    grams: int  # its n-grams (0 for a text shorter than N words)
    shared: int  # of them, those in the training text
    covered: float  # share of its words inside shared n-grams (short texts: 1.0 or 0.0, whole-text match)

    @property
    def checked(self) -> bool:
        return self.words >= MIN_WORDS

    @property
    def leaked(self) -> bool:
        return self.checked and self.covered >= LEAK_COVERAGE


class Index:
    """Sorted distinct hashes of the training text's N-grams (and MIN_WORDS-grams, for short texts)."""

    def __init__(self, grams: np.ndarray, short: np.ndarray, docs: int, total_words: int):
        self.grams, self.short, self.docs, self.total_words = grams, short, docs, total_words

    @staticmethod
    def build(texts: Iterable[str]) -> "Index":
        """One pass over `texts`: every text's words, hashed, then all grams at once."""
        parts, ends, total = [], [], 0
        for text in texts:
            h = _hashes(words(text))
            parts.append(h)
            total += len(h)
            ends.append(total)
        all_h = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
        doc_end = np.repeat(np.asarray(ends, dtype=np.int64), [len(p) for p in parts])  # each word's document end
        sets = []
        for n in (N, MIN_WORDS):
            starts = np.flatnonzero(np.arange(total) + n <= doc_end)
            sets.append(np.unique(_gram_hashes(all_h, starts, n)))
        return Index(sets[0], sets[1], len(parts), total)

    def check(self, text: str) -> Overlap:
        ws = words(text)
        if len(ws) < N:
            if len(ws) < MIN_WORDS:
                return Overlap(len(ws), 0, 0, 0.0)
            inside = bool(_member(text_grams(ws, MIN_WORDS), self.short).all())
            return Overlap(len(ws), 0, 0, 1.0 if inside else 0.0)
        hits = _member(text_grams(ws), self.grams)
        cover = np.zeros(len(ws) + 1, dtype=np.int64)  # difference array: +1 at a shared gram's start, -1 past its end
        np.add.at(cover, np.flatnonzero(hits), 1)
        np.add.at(cover, np.flatnonzero(hits) + N, -1)
        covered = float((np.cumsum(cover)[: len(ws)] > 0).mean())
        return Overlap(len(ws), len(hits), int(hits.sum()), covered)

    def save(self, path: Path) -> None:
        tmp = Path(f"{cache_lock.unique_name(path, 'tmp')}.npz")  # np.savez adds .npz to any other name
        np.savez(tmp, grams=self.grams, short=self.short, meta=np.array([self.docs, self.total_words]))
        tmp.replace(path)

    @staticmethod
    def load(path: Path) -> "Index":
        with np.load(path) as z:
            return Index(z["grams"], z["short"], int(z["meta"][0]), int(z["meta"][1]))


# --------------------------------------------------------------------------- the demo corpora
def training_documents(sources: tuple[str, ...] | None = None) -> Iterator[demo.Document]:
    """Every training-split document of these demo sources (default: the Arabic demo's)."""
    for name in sources or demo.ARABIC_DEMO:
        yield from demo.demo_documents(name, "train")


def corpus_fingerprint(sources: tuple[str, ...] | None = None) -> str:
    """Changes with the corpus package files (name, size, content sample), the demo and Arabic-text code, the
    hold-out rule and this module's normalization and gram sizes."""
    sources = tuple(sources or demo.ARABIC_DEMO)
    files = sorted({str(demo.package_file(*spec)) for name in sources for spec in demo.DEMO_FILES[name]})
    entry = {
        "files": [file_identity(Path(f)) for f in files],
        "code": hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in (demo, arabic))).hexdigest(),
        "val_every": demo.VAL_EVERY, "normalization": NORMALIZATION, "n": [N, MIN_WORDS],
    }
    if sources != ("tafsir_ar", "hadith_ar", "bible_ar", "hadith_en", "bible_en"):  # the Arabic demo's index keeps its name
        entry["sources"] = list(sources)
    return hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    """paths.cache_dir's default: $ALLAM_CACHE, else <project>/.cache."""
    from allam.config.schema import ROOT

    return Path(os.environ.get("ALLAM_CACHE") or Path(ROOT) / ".cache")


_INDEXES: dict[str, Index] = {}


def index_path(cache_dir: Path | str | None, fingerprint: str) -> Path:
    """Where :func:`training_index` caches the index whose :func:`corpus_fingerprint` is `fingerprint`."""
    return Path(cache_dir or default_cache_dir()) / "leak_index" / f"{fingerprint}.npz"


def overlap_lines(rows: list[dict]) -> list[str]:
    """:func:`overlap_report`'s rows as the table ``python -m allam.eval.leak`` prints."""
    out = [f"{'held out':<22} {'documents':>9} {'any shared':>10} {'half grams':>10} {'leaked':>7}"]
    return out + [f"{r['held_out']:<22} {r['documents']:>9} {r['any_shared']:>10} {r['half_grams_shared']:>10} "
                  f"{r['leaked']:>7}" for r in rows]


def training_index(cache_dir: Path | str | None = None, sources: tuple[str, ...] | None = None) -> Index:
    """The index of the demo corpora's training text: from memory, else from
    ``<cache_dir>/leak_index/<fingerprint>.npz``, else built (one pass over the 3.6M training words:
    8-12 s on 2 shared cores, experiments/leak_counts.json) and written there."""
    fp = corpus_fingerprint(sources)
    if fp in _INDEXES:
        return _INDEXES[fp]
    path = index_path(cache_dir, fp)
    path.parent.mkdir(parents=True, exist_ok=True)
    with cache_lock.building(path, "the leak index", log=log.warning):  # one builder; a waiter reads its result
        if path.is_file():
            index = Index.load(path)
        else:
            t0 = time.perf_counter()
            index = Index.build(d.text for d in training_documents(sources))
            index.save(path)
            log.info("leak index: %d training documents, %d words, %d distinct %d-grams, built in %.1f s -> %s",
                     index.docs, index.total_words, len(index.grams), N, time.perf_counter() - t0, path)
    _INDEXES[fp] = index
    return index


# --------------------------------------------------------------------------- the measurement
def overlap_report(index: Index, val_bytes: int = 65536, sources: tuple[str, ...] | None = None) -> list[dict]:
    """Per held-out demo source, and per language for the validation documents a run scores (every
    k-th held-out document so that about `val_bytes` bytes remain, as data.val_bytes picks them,
    sources in the demo config's order): documents, those with any shared N-gram, those with at
    least half their N-grams shared, those that leak by the rule."""
    rows = []
    by_lang: dict[str, list[tuple[int, Overlap]]] = {}
    for name in sources or demo.ARABIC_DEMO:
        lang = demo.DEMO_LANG[name]
        found = [(len(d.text.encode("utf-8")), index.check(d.text)) for d in demo.demo_documents(name, "val")]
        by_lang.setdefault(lang, []).extend(found)
        rows.append(_row(name, [o for _, o in found]))
    for lang, found in by_lang.items():
        total = sum(b for b, _ in found)
        stride = max(1, round(total / val_bytes)) if val_bytes and total > val_bytes else 1
        rows.append(_row(f"val_bytes={val_bytes} {lang}", [o for i, (_, o) in enumerate(found) if i % stride == 0]))
    return rows


def _row(name: str, found: list[Overlap]) -> dict:
    return {"held_out": name, "documents": len(found), "any_shared": sum(o.shared > 0 for o in found),
            "half_grams_shared": sum(o.grams > 0 and 2 * o.shared >= o.grams for o in found),
            "leaked": sum(o.leaked for o in found)}


def main(argv: list[str]) -> None:
    """python -m allam.eval.leak [LANG]: the overlap table of the Arabic demo (ar, the default) or of
    the bible_LANG preset's sources; a code with no demo Bible is one line (SystemExit)."""
    code = argv[0] if argv else "ar"
    try:
        chosen = None if code == "ar" else demo.preset_sources(code)
    except KeyError as e:
        raise SystemExit(f"error: {e.args[0]}") from None
    print("\n".join(overlap_lines(overlap_report(training_index(sources=chosen), sources=chosen))))


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main(sys.argv[1:])
