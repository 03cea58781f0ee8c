"""Languages as data: an ISO 639-1 code, a name and the scripts its text is written in.

Everything that used to know "Arabic" or "English" by name asks this table instead: the cleaner
(which marks a script may strip, which letters are the wrong script), vocabulary expansion (which
characters a new SentencePiece piece must hold, which UTF-8 byte prefixes a new byte-level merge
must touch), validation and the reports (a language's name).

A script is a set of Unicode blocks. Its *letters* are the code points of category L in those
blocks (Arabic and Latin keep the explicit letter tables the cleaner has always used, so Arabic
and English results do not move). Its *byte prefixes* are what byte-level expansion keys on: the
UTF-8 encoding of each code point of its core blocks without the last byte (for a two-byte
character the lead byte alone: 0xD8-0xDB is the Arabic block, as before). A merge that holds one
of these prefixes can only fire on text that holds a character starting with it, so text without
one encodes as the base did. A prefix names 64 code points (a two-byte one of a three-byte
character), which can reach past the script's block (Hangul's E3 84 also starts Bopomofo): new
merges may then fire on those neighbours too, and the English-identity check uses the same rule.

English is :data:`BASE_LANG`: the language of the English-centric base the recipe adapts. Every
other language of a mix is a *target*; ``translated_share`` applies to each target.
"""
from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable, Optional, Sequence

import numpy as np

from allam.config.errors import ConfigError

BASE_LANG = "en"

Ranges = tuple[tuple[int, int], ...]

# Arabic-script letters and Latin letters exactly as the cleaner has counted them since the start
_AR_LETTERS: Ranges = ((0x620, 0x64A), (0x66E, 0x66F), (0x671, 0x6D3), (0x6D5, 0x6D5), (0x6EE, 0x6EF),
                       (0x6FA, 0x6FF), (0x750, 0x77F), (0x8A0, 0x8FF), (0xFB50, 0xFDFF), (0xFE70, 0xFEFC))
_LATIN_LETTERS: Ranges = ((0x41, 0x5A), (0x61, 0x7A), (0xC0, 0xD6), (0xD8, 0xF6), (0xF8, 0x24F), (0x1E00, 0x1EFF))

# Arabic marks a source may strip (strip_diacritics / strip_tatweel / strip_bidi): regex classes
AR_DIACRITICS = "\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06dc\u06df-\u06e8\u06ea-\u06ed"
TATWEEL = "\u0640"
BIDI_MARKS = "\u200e\u200f\u202a-\u202e\u2066-\u2069\u061c"


@dataclass(frozen=True)
class Script:
    """A writing system: its Unicode blocks, the blocks byte-level expansion keys on (``core``;
    None: all blocks) and explicit letter ranges (None: category L in ``blocks``)."""

    name: str
    blocks: Ranges
    core: Optional[Ranges] = None
    letters: Optional[Ranges] = None
    # the joiners U+200C/U+200D shape its conjuncts (Indic scripts): cleaning keeps one between two
    # characters of the script, a U+200D after a virama at a word's end and one inside an emoji
    # sequence, and drops stray ones (allam/data/cleaning.py). Elsewhere joiners are left as they
    # are (Persian's ZWNJ half-space, emoji).
    joiners: bool = False

    def contains(self, ch: str) -> bool:
        o = ord(ch)
        return any(lo <= o <= hi for lo, hi in self.blocks)


SCRIPTS: dict[str, Script] = {s.name: s for s in (
    Script("Latin", ((0x41, 0x5A), (0x61, 0x7A), (0xC0, 0x24F), (0x1E00, 0x1EFF)), letters=_LATIN_LETTERS),
    # Arabic, Supplement, Extended-B/-A, Presentation Forms-A/-B; byte-level keys on the main block
    Script("Arabic", ((0x0600, 0x06FF), (0x0750, 0x077F), (0x0870, 0x08FF), (0xFB50, 0xFDFF), (0xFE70, 0xFEFF)),
           core=((0x0600, 0x06FF),), letters=_AR_LETTERS),
    Script("Cyrillic", ((0x0400, 0x052F),)),
    Script("Greek", ((0x0370, 0x03FF), (0x1F00, 0x1FFF))),
    Script("Hebrew", ((0x0590, 0x05FF),)),
    Script("Devanagari", ((0x0900, 0x097F), (0xA8E0, 0xA8FF)), core=((0x0900, 0x097F),), joiners=True),
    Script("Bengali", ((0x0980, 0x09FF),), joiners=True),
    Script("Gurmukhi", ((0x0A00, 0x0A7F),), joiners=True),
    Script("Gujarati", ((0x0A80, 0x0AFF),), joiners=True),
    Script("Tamil", ((0x0B80, 0x0BFF),), joiners=True),
    Script("Telugu", ((0x0C00, 0x0C7F),), joiners=True),
    Script("Kannada", ((0x0C80, 0x0CFF),), joiners=True),
    Script("Malayalam", ((0x0D00, 0x0D7F),), joiners=True),
    Script("Thai", ((0x0E00, 0x0E7F),)),
    Script("Ethiopic", ((0x1200, 0x137F),)),
    Script("Hangul", ((0xAC00, 0xD7A3), (0x1100, 0x11FF), (0x3130, 0x318F))),
    Script("Hiragana", ((0x3040, 0x309F),)),
    Script("Katakana", ((0x30A0, 0x30FF),)),
    Script("Han", ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0xF900, 0xFAFF))),
)}


@dataclass(frozen=True)
class Language:
    code: str
    name: str
    scripts: tuple[str, ...]
    # the Arabic marks (diacritics, tatweel, bidi) a source of this language may strip
    arabic_marks: bool = field(default=False)

    def joiner_blocks(self) -> Ranges:
        """The blocks of this language's scripts whose joiners cleaning tidies (Indic scripts)."""
        return tuple(r for s in self.script_objs() if s.joiners for r in s.blocks)

    def script_objs(self) -> tuple[Script, ...]:
        return tuple(SCRIPTS[s] for s in self.scripts)

    def has_script_char(self, text: str) -> bool:
        """Whether ``text`` holds a character of one of this language's scripts (Latin-script
        languages: any Latin letter)."""
        scripts = self.script_objs()
        return any(s.contains(ch) for ch in text for s in scripts)


def _lang(code: str, name: str, *scripts: str) -> Language:
    return Language(code, name, tuple(scripts), arabic_marks="Arabic" in scripts)


LANGUAGES: dict[str, Language] = {lang.code: lang for lang in (
    _lang("en", "English", "Latin"),
    _lang("ar", "Arabic", "Arabic"),
    _lang("fa", "Persian", "Arabic"),
    _lang("ur", "Urdu", "Arabic"),
    _lang("hi", "Hindi", "Devanagari"),
    _lang("mr", "Marathi", "Devanagari"),
    _lang("ne", "Nepali", "Devanagari"),
    _lang("bn", "Bengali", "Bengali"),
    _lang("pa", "Punjabi", "Gurmukhi"),
    _lang("gu", "Gujarati", "Gujarati"),
    _lang("ta", "Tamil", "Tamil"),
    _lang("te", "Telugu", "Telugu"),
    _lang("kn", "Kannada", "Kannada"),
    _lang("ml", "Malayalam", "Malayalam"),
    _lang("th", "Thai", "Thai"),
    _lang("am", "Amharic", "Ethiopic"),
    _lang("he", "Hebrew", "Hebrew"),
    _lang("el", "Greek", "Greek"),
    _lang("ru", "Russian", "Cyrillic"),
    _lang("uk", "Ukrainian", "Cyrillic"),
    _lang("ko", "Korean", "Hangul"),
    _lang("ja", "Japanese", "Han", "Hiragana", "Katakana"),
    _lang("zh", "Chinese", "Han"),
    *(_lang(c, n, "Latin") for c, n in (
        ("sw", "Swahili"), ("tr", "Turkish"), ("id", "Indonesian"), ("vi", "Vietnamese"), ("tl", "Tagalog"),
        ("pl", "Polish"), ("ro", "Romanian"), ("de", "German"), ("fr", "French"), ("es", "Spanish"),
        ("pt", "Portuguese"), ("it", "Italian"), ("nl", "Dutch"), ("ms", "Malay"), ("ha", "Hausa"),
        ("yo", "Yoruba"))),
)}


def language(code: object, key: str = "lang") -> Language:
    """The language of ``code``; an unknown code is one line naming ``key`` and the known codes."""
    lang = LANGUAGES.get(str(code))
    if lang is None:
        raise ConfigError(f"{key}={code}: unknown language code; known: {', '.join(sorted(LANGUAGES))} "
                          "(allam/config/langs.py: a language is an ISO 639-1 code and its scripts)")
    return lang


def lang_name(code: str) -> str:
    """"Arabic" for "ar"; an unknown code as itself."""
    lang = LANGUAGES.get(code)
    return lang.name if lang else code


def targets(langs: Iterable[str]) -> list[str]:
    """The target languages among ``langs`` (every language but :data:`BASE_LANG`), in order."""
    return [c for c in dict.fromkeys(langs) if c != BASE_LANG]


# --------------------------------------------------------------------------- letters per script
@lru_cache(maxsize=None)
def _letter_table() -> tuple[np.ndarray, tuple[str, ...]]:
    """A class per BMP code point: 0 none, k+1 a letter of the k-th script of :data:`SCRIPTS`."""
    names = tuple(SCRIPTS)
    table = np.zeros(0x10000, np.uint8)
    for k, name in enumerate(names):
        s = SCRIPTS[name]
        if s.letters is not None:
            for lo, hi in s.letters:
                table[lo : hi + 1] = k + 1
        else:
            for lo, hi in s.blocks:
                for cp in range(lo, min(hi, 0xFFFF) + 1):
                    if unicodedata.category(chr(cp)).startswith("L"):
                        table[cp] = k + 1
    return table, names


@lru_cache(maxsize=None)
def letter_table_digest() -> str:
    """A digest of what the wrong-script check counts: the scripts' names and the class of every
    BMP code point. It moves when a script or its letters change here and when Python's Unicode
    database classes other letters (category L decides the scripts without explicit tables), so
    shards cleaned under another table are not reused (allam/data/cleaning.py ``Cleaner.rules``)."""
    table, names = _letter_table()
    return hashlib.sha256(",".join(names).encode() + table.tobytes()).hexdigest()[:16]


def script_letters_batch(texts: Sequence[str], code: str) -> tuple[np.ndarray, np.ndarray]:
    """(letters of the language's own scripts, letters of every other script in the table) per
    text, vectorized over the batch."""
    table, names = _letter_table()
    own_ids = np.array([names.index(s) + 1 for s in language(code).scripts], np.uint8)
    n = len(texts)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cps = np.frombuffer("".join(texts).encode("utf-32-le"), np.uint32)
    cls = table[np.minimum(cps, 0xFFFF)]
    cls[cps > 0xFFFF] = 0
    lengths = np.fromiter(map(len, texts), np.int64, n)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    own = np.isin(cls, own_ids)
    other = (cls > 0) & ~own
    out = []
    for mask in (own, other):
        cum = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
        out.append(cum[ends] - cum[starts])
    return out[0], out[1]


# --------------------------------------------------------------------------- byte-level prefixes
@lru_cache(maxsize=None)
def byte_prefixes(codes: tuple[str, ...]) -> frozenset[bytes]:
    """The UTF-8 prefixes (every byte but the last) of the core blocks of these languages'
    scripts; Latin-script languages have none (their letters are the base's own)."""
    out: set[bytes] = set()
    for code in codes:
        for s in language(code).script_objs():
            if s.name == "Latin":
                continue
            for lo, hi in (s.core or s.blocks):
                for cp in range(lo, hi + 1):
                    if 0xD800 <= cp <= 0xDFFF:
                        continue
                    out.add(chr(cp).encode("utf-8")[:-1])
    return frozenset(out)
