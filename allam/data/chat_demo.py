"""Offline post-training demo sets, built from the shipped parallel text (no download).

Pairs: Bible verses of the World English Bible and Smith & Van Dyke (the same verse in both,
cleaned as the demo corpora are: :func:`allam.data.demo.clean_bible_text`) and hadith of Bukhari
and Muslim (Arabic and English of one hadith, as :func:`allam.data.demo.parallel_pairs` aligns them;
only those of at most ``HADITH_MAX_CHARS`` characters on each side).

Held out as the evaluation holds out: a pair belongs to the split of its unit
(:func:`allam.data.demo.split_of`: Bible book number, hadith book; a multiple of 20 is held out),
so training sets come from training books only and the held-out sets from held-out books only.
Held out by book is not held out by text (the Gospels repeat verses), so a training pair whose
English or Arabic text equals a held-out pair's text exactly is also left out.

- SFT (chat rows): a user turn "<instruction>\\n<source text>" and the assistant's translation.
  Directions English→Arabic and Arabic→English, the instruction in English ("Translate into
  Arabic:") or in Arabic ("ترجم إلى العربية:"); the four (direction, instruction language)
  combinations take turns (row i takes combination i mod 4).
- Preferences: the same prompts; chosen is the right translation; rejected is, in turn, the
  translation of the neighbouring pair (the next verse of the chapter or hadith of the book; the one
  before for the last) or the right pair in the wrong language (the source text itself). When the
  neighbour's text equals the answer, or the pair has no neighbour, the wrong-language one is used.

Deterministic for a seed: the pairs are drawn with ``random.Random`` seeded by the seed, the set and
the split. :func:`write_demo_sets` writes the four sets as JSONL that :func:`allam.data.chat.read_chat`
and :func:`allam.data.chat.read_preferences` load; every row carries an ``id`` (``bible
<book>:<chapter>:<verse>`` or ``hadith <collection>:<id>``, then the direction).
"""
from __future__ import annotations

import json
import random
import sqlite3
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from allam.data import demo

HADITH_MAX_CHARS = 400
INSTRUCTIONS = {
    ("en", "ar"): {"en": "Translate into Arabic:", "ar": "ترجم إلى العربية:"},
    ("ar", "en"): {"en": "Translate into English:", "ar": "ترجم إلى الإنجليزية:"},
}
COMBOS = (("en", "ar", "en"), ("en", "ar", "ar"), ("ar", "en", "en"), ("ar", "en", "ar"))  # (source, target, instruction)
FILES = {"sft_train": "sft_train.jsonl", "sft_heldout": "sft_heldout.jsonl",
         "preference_train": "preference_train.jsonl", "preference_heldout": "preference_heldout.jsonl"}


@dataclass(frozen=True)
class Pair:
    id: str  # "bible 1:1:1" | "hadith bukhari:12"
    unit: int  # the hold-out unit (Bible book, hadith book)
    en: str
    ar: str
    neighbour: int  # index in the pool of the next pair of its chapter/book (the previous for the last), -1 if none

    def text(self, lang: str) -> str:
        return self.en if lang == "en" else self.ar


def _bible_pairs() -> list[tuple[str, int, tuple, str, str]]:
    con = sqlite3.connect(f"file:{demo.bible_db()}?mode=ro", uri=True)
    try:
        text = {}
        for lang, bb in (("en", "4"), ("ar", "y")):
            for b, c, v, t in con.execute("SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName=?", (bb,)):
                text[(lang, b, c, v)] = demo.clean_bible_text(t or "", lang)
    finally:
        con.close()
    keys = sorted({k[1:] for k in text})
    return [(f"bible {b}:{c}:{v}", b, ("bible", b, c), text.get(("en", b, c, v), ""), text.get(("ar", b, c, v), ""))
            for b, c, v in keys]


def _hadith_pairs() -> list[tuple[str, int, tuple, str, str]]:
    return [(f"hadith {doc.key}", doc.unit, ("hadith", doc.unit), en, ar) for en, ar, doc in demo.parallel_pairs("hadith")
            if len(en) <= HADITH_MAX_CHARS and len(ar) <= HADITH_MAX_CHARS]


@lru_cache(maxsize=None)
def pools() -> dict[str, tuple[Pair, ...]]:
    """Every usable pair of each split ("train", "val"), in canonical order, with its neighbour."""
    raw = [r for r in _bible_pairs() + _hadith_pairs() if r[3] and r[4]]
    held = {t for pid, unit, _, en, ar in raw if demo.split_of(unit) == "val" for t in (en, ar)}
    out = {}
    for split in ("train", "val"):
        rows = [r for r in raw if demo.split_of(r[1]) == split and (split == "val" or not ({r[3], r[4]} & held))]
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault(r[2], []).append(i)
        neighbour = {}
        for members in groups.values():
            for j, i in enumerate(members):
                neighbour[i] = members[j + 1] if j + 1 < len(members) else (members[j - 1] if j else -1)
        out[split] = tuple(Pair(r[0], r[1], r[3], r[4], neighbour[i]) for i, r in enumerate(rows))
    return out


def _draw(split: str, n: int, seed: int, what: str) -> list[tuple[int, Pair]]:
    pool = pools()["val" if split in ("val", "heldout") else "train"]
    rng = random.Random(f"{seed}:{what}:{split}")
    picks = rng.sample(range(len(pool)), min(n, len(pool)))
    return [(i, pool[k]) for i, k in enumerate(picks)]


def _prompt(pair: Pair, src: str, dst: str, lang: str) -> str:
    return f"{INSTRUCTIONS[(src, dst)][lang]}\n{pair.text(src)}"


def demo_sft(split: str = "train", n: int = 4000, seed: int = 0) -> list[dict]:
    """Chat rows of translation instructions from `split` ("train" or "heldout")."""
    rows = []
    for i, pair in _draw(split, n, seed, "sft"):
        src, dst, lang = COMBOS[i % len(COMBOS)]
        rows.append({"messages": [{"role": "user", "content": _prompt(pair, src, dst, lang)},
                                  {"role": "assistant", "content": pair.text(dst)}],
                     "id": f"{pair.id} {src}2{dst}"})
    return rows


def demo_preferences(split: str = "train", n: int = 2000, seed: int = 0) -> list[dict]:
    """Preference rows from `split`: the right translation chosen, a wrong one rejected."""
    pool = pools()["val" if split in ("val", "heldout") else "train"]
    rows = []
    for i, pair in _draw(split, n, seed, "preference"):
        src, dst, lang = COMBOS[i % len(COMBOS)]
        chosen, kind = pair.text(dst), "neighbour" if (i // len(COMBOS)) % 2 == 0 else "wrong_language"
        rejected = pool[pair.neighbour].text(dst) if kind == "neighbour" and pair.neighbour >= 0 else ""
        if not rejected or rejected == chosen:
            kind, rejected = "wrong_language", pair.text(src)
        rows.append({"prompt": _prompt(pair, src, dst, lang), "chosen": chosen, "rejected": rejected,
                     "id": f"{pair.id} {src}2{dst}", "rejected_kind": kind})
    return rows


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_demo_sets(out_dir: Path, seed: int = 0, sft_items: int = 4000, preference_items: int = 2000,
                    heldout_items: int = 400) -> dict[str, Path]:
    """Writes sft_train, sft_heldout, preference_train and preference_heldout (.jsonl) into
    ``out_dir``; returns their paths by name."""
    out_dir = Path(out_dir)
    sets = {"sft_train": demo_sft("train", sft_items, seed), "sft_heldout": demo_sft("heldout", heldout_items, seed),
            "preference_train": demo_preferences("train", preference_items, seed),
            "preference_heldout": demo_preferences("heldout", heldout_items, seed)}
    return {name: write_jsonl(rows, out_dir / FILES[name]) for name, rows in sets.items()}
