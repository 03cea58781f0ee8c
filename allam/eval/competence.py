"""The offline suite ``competence``: does a model know a language? Four tasks a small model passes
with knowledge of the language alone (no translation, no world knowledge), built at run time from
the held-out Bible books of the demo corpora (Smith & Van Dyke Arabic, World English Bible) after
the leak check (:mod:`allam.eval.leak`): a verse that overlaps the training text is never used,
nor a next-word prompt that does (alone or with its answer).

| task | prompt | choices (4) |
|---|---|---|
| ``word_order_ar`` / ``word_order_en`` | none | a verse's words, and three reorderings inside windows of 3 words (no punctuation, the first word first) |
| ``next_word_ar`` / ``next_word_en`` | the start of a verse | its next word, and the next words of three other items |

Chance is 25% by construction for a scorer that looks at words one at a time (word order) or at
the choices alone (next word):
- ``word_order_*``: the four choices hold the same words, each as often, and start with the same
  word (a scorer that looks at words one at a time, their frequency, length or script, cannot
  tell them apart), and every two choices differ in every reordered window, so the original is
  not the centre of its choices (:func:`reorderings`). Words move only within windows of
  ``WINDOW`` words, so every choice keeps the verse's topic: telling the original apart takes
  knowing which word orders the language uses. Punctuation is dropped because a model that knows
  nothing of a language still scores a word by its place after a full stop it knows from another
  language.
- ``next_word_*``: closed groups of four items whose next words are four different words of
  neighbouring frequencies in the held-out text (items sorted by that frequency, grouped in
  order; the task keeps the groups of the commonest answers); each item offers the group's four
  words, each word the answer of exactly one item, so a scorer that looks only at the choices
  (breaking ties by the word, not its position) is right exactly once per group. Each verse is
  cut before a word that the word before it predicts in the training books (the same Bible
  version's training books: the pair occurs at least ``PAIR_MIN_COUNT`` times, in at least
  ``PAIR_MIN_SHARE`` of that word's occurrences), so knowing the language's common word pairs is
  enough to pass: a bigram model of those books scores above 0.9 in its language and exactly
  0.25 in the other (``tests/test_competence.py``). (Cut at any word instead, as first designed,
  the task left less for a model to know.)
In both, each group of four items puts its answers once at each position.
The standard errors are binomial, over items taken as independent. On ``next_word`` they are not:
the commonest answers and the words before them recur across groups, so a model's preference for
one word pair counts many times. A trained model's score is affected little, but a random model
is at chance only on average over models, with a spread wider than the binomial SE; compare
models item by item (``eval.<task>.correct``) rather than by SE.

The same tasks exist for each target language with a data preset (:data:`TARGETS`: Hindi, Persian,
Korean, Russian; ``word_order_<code>`` / ``next_word_<code>``, suite ``conf/eval/competence_<code>.yaml``
with the English two), from the language's own Bible (``demo.BIBLES``), its verses leak-checked
against the training text of its preset (:func:`default_index`). A word keeps its marks (Unicode
category M: Devanagari vowel signs, the virama): only punctuation, symbols, separators and format
characters come off its edges (:func:`split_punct`); on Arabic and English text this is what
the old rule (``\\W`` at the edges) stripped, so their items are unchanged.

The functions named ``<task>`` are the lm-evaluation-harness ``custom_dataset`` hooks of the task
YAML files in ``allam/eval/tasks`` (tag ``allam_competence``).
"""
from __future__ import annotations

import itertools
import logging
import random
import unicodedata
from collections import Counter
from functools import lru_cache

from allam.data import demo
from allam.eval import demo_suite, leak

log = logging.getLogger("allam")

CHOICES = 4
ITEMS = 400  # next_word: items per task (the groups of the commonest answers)
# word_order: items per task at most, i.e. every held-out verse that passes the leak check and has
# enough windows (1,004 Arabic, 1,808 English: experiments/leak_counts.json); eval.limit scores the first N, which are the
# same items for any larger cap (the groups are shuffled before the cut)
WORD_ORDER_ITEMS = 4000
DEFAULT_SEED = 1234
WINDOW = 3  # word_order: words move only inside consecutive windows of this many words
MIN_WINDOWS = 3  # word_order: verses with at least this many windows to reorder
MIN_WORDS, MAX_WORDS = 8, 30  # verses used (words)
MIN_CONTEXT = 4  # next_word: at least this many words of the verse before the answer
# next_word: the answer follows the word before it at least this often in the training books, and
# in at least this share of that word's occurrences there (a word pair the model can have learned)
PAIR_MIN_COUNT, PAIR_MIN_SHARE = 3, 0.1
# the target languages with a data preset (conf/data/bible_<code>.yaml) besides Arabic: their tasks
# read their own Bible (demo.BIBLES) and are leak-checked against that preset's training text
TARGETS = ("hi", "fa", "ko", "ru")
LANGS = ("ar", "en", *TARGETS)
VERSION = {"ar": "svd", "en": "web", **{code: code for code in TARGETS}}  # demo_suite.BIBLE_VERSION keys


def suite_tasks(code: str) -> tuple[str, ...]:
    """The tasks of the suite for target language `code` (conf/eval/competence[_<code>].yaml): its
    two and the English two."""
    return (f"word_order_{code}", "word_order_en", f"next_word_{code}", "next_word_en")


TASKS = (*suite_tasks("ar"), *(task for code in TARGETS for task in suite_tasks(code) if not task.endswith("_en")))
# a token's edges lose punctuation, symbols, separators and control/format characters (Unicode
# categories P, S, Z, C); marks stay, so a Devanagari vowel sign or virama ending a word is kept
_EDGE = frozenset("PSZC")
_JOINERS = frozenset("\u200c\u200d")  # ZWNJ, ZWJ: part of a word between two of its characters


def split_punct(token: str) -> tuple[str, str, str]:
    """(leading punctuation, word, trailing punctuation) of a whitespace token."""
    a, b = 0, len(token)
    while a < b and unicodedata.category(token[a])[0] in _EDGE:
        a += 1
    while b > a and unicodedata.category(token[b - 1])[0] in _EDGE:
        b -= 1
    return token[:a], token[a:b], token[b:]


def is_word(token: str) -> bool:
    """next_word: an answer is one word of letters, marks and digits (Unicode categories L, M, N),
    joiners (ZWNJ, ZWJ) allowed inside it, no punctuation."""
    return bool(token) and all(unicodedata.category(ch)[0] in "LMN" or (ch in _JOINERS and 0 < i < len(token) - 1)
                               for i, ch in enumerate(token))


def default_index(lang: str) -> leak.Index:
    """The leak index a task of `lang` checks its verses against: the Arabic demo's training text
    (Arabic and English), else the training text of the language's data preset
    (:func:`allam.data.demo.preset_sources`)."""
    return leak.training_index() if lang in ("ar", "en") else leak.training_index(sources=demo.preset_sources(lang))


def clean_verses(lang: str, index: leak.Index, counts: dict[str, int]) -> list[tuple[str, str]]:
    """(id, text) of every held-out verse of `lang` with MIN_WORDS to MAX_WORDS words that does not
    overlap the training text; counts["candidates"] and counts["leaked"] are filled."""
    out = []
    for key, text in demo_suite.held_out_verses(VERSION[lang]).items():
        text = demo_suite.nfc(text)
        if not MIN_WORDS <= len(text.split()) <= MAX_WORDS:
            continue
        counts["candidates"] = counts.get("candidates", 0) + 1
        if index.check(text).leaked:
            counts["leaked"] = counts.get("leaked", 0) + 1
            continue
        out.append(("bible {}:{}:{}".format(*key), text))
    return out


def bare_words(text: str) -> list[str]:
    """The words of `text` without the punctuation around them (inside a word it stays: "Allah's")."""
    return [core for _, core, _ in map(split_punct, text.split()) if core]


def reorderings(words: list[str], rng: random.Random) -> list[str] | None:
    """The original `words` and three reorderings of them, or None when fewer than MIN_WINDOWS
    windows can be reordered.

    The first word stays first; the rest is cut into consecutive windows of WINDOW words (a shorter
    tail stays in place). In every window that has at least four distinct orders of its words, the
    four choices take four different orders, the original its own, the others three of the rest in
    a random assignment. So every two choices differ in every such window: the original is no
    nearer to each reordering than the reorderings are to each other. (With reorderings drawn
    independently around the original, it sat in the middle of its choices, and a model that
    knows nothing of a language, scoring them as noise around the original's score, picked it
    less often than one time in four.)"""
    choices = [[words[0]] for _ in range(CHOICES)]
    windows = 0
    for a in range(1, len(words), WINDOW):
        window = tuple(words[a : a + WINDOW])
        orders = sorted(set(itertools.permutations(window)) - {window})
        if len(window) == WINDOW and len(orders) >= CHOICES - 1:
            picked = rng.sample(orders, CHOICES - 1)
            windows += 1
        else:
            picked = [window] * (CHOICES - 1)
        for choice, order in zip(choices, [window, *picked]):
            choice.extend(order)
    return [" ".join(c) for c in choices] if windows >= MIN_WINDOWS else None


def _word_order(verses: list[tuple[str, str]], rng: random.Random) -> list[tuple[str, list[str], str]]:
    """(prompt "", [original, three reorderings], id) per verse that has enough windows to reorder."""
    items = []
    for vid, text in verses:
        choices = reorderings(bare_words(text), rng)
        if choices is not None:
            items.append(("", choices, vid))
    return items


@lru_cache(maxsize=None)
def training_pairs(lang: str) -> tuple[Counter, Counter]:
    """(word pair counts, left-word counts) of the training books of the Bible version `lang`'s
    verses come from (whitespace words, punctuation attached, as the models read them)."""
    pairs: Counter = Counter()
    left: Counter = Counter()
    for doc in demo.demo_documents(f"bible_{lang}", "train"):
        words = doc.text.split()
        pairs.update(zip(words, words[1:]))
        left.update(words[:-1])
    return pairs, left


def predictable_cuts(words: list[str], pairs: Counter, left: Counter) -> list[int]:
    """The positions `i` (after MIN_CONTEXT words) whose word, letters or digits only, follows
    words[i-1] at least PAIR_MIN_COUNT times in the training text and in at least PAIR_MIN_SHARE of
    that word's occurrences there."""
    return [i for i in range(MIN_CONTEXT, len(words)) if is_word(words[i])
            and (n := pairs[(words[i - 1], words[i])]) >= PAIR_MIN_COUNT and n >= PAIR_MIN_SHARE * left[words[i - 1]]]


def _next_word(verses: list[tuple[str, str]], rng: random.Random, lang: str, index: leak.Index,
               counts: dict[str, int]) -> list[tuple[str, list[str], str]]:
    """Closed groups: one cut per verse, at a random :func:`predictable_cuts` position; the items,
    sorted by the frequency of their answer in these verses, fill groups in that order, each item
    the first open group that lacks its answer, so a group holds four different answers of
    neighbouring frequencies ("the", "and", "of", "to" for the commonest). A cut whose prompt, or
    prompt and answer, overlaps the training text is left out (counts["leaked_prompt"]): a verse
    that passed the check as a whole can still hold a shorter passage the training text has."""
    pairs, left = training_pairs(lang)
    freq = Counter(w for _, text in verses for w in text.split())
    cuts = []
    for vid, text in verses:
        words = text.split()
        if at := predictable_cuts(words, pairs, left):
            i = rng.choice(at)
            prompt = " ".join(words[:i])
            if index.check(prompt).leaked or index.check(f"{prompt} {words[i]}").leaked:
                counts["leaked_prompt"] = counts.get("leaked_prompt", 0) + 1
                continue
            cuts.append((prompt, words[i], vid))
    cuts.sort(key=lambda c: (-freq[c[1]], c[1], c[2]))
    items: list[tuple[str, list[str], str]] = []
    open_groups: list[list[tuple[str, str, str]]] = []
    for cut in cuts:
        group = next((g for g in open_groups if all(cut[1] != c[1] for c in g)), None)
        if group is None:
            open_groups.append(group := [])
        group.append(cut)
        if len(group) == CHOICES:
            open_groups.remove(group)
            answers = [c[1] for c in group]
            items += [(prompt, [answer, *[a for a in answers if a != answer]], vid) for prompt, answer, vid in group]
    return items


def build(task: str, seed: int = DEFAULT_SEED, items: int | None = None,
          index: leak.Index | None = None) -> tuple[list[dict], dict[str, int]]:
    """The items of one task (up to `items`, whole groups of four; None: ITEMS for next_word,
    WORD_ORDER_ITEMS for word_order) in the demo suite's item format, and the leak counts
    (``leak_candidates``, ``dropped_leak``: verses left out for overlapping the training text)."""
    if task not in TASKS:
        raise KeyError(f"unknown competence task '{task}'; allowed: {', '.join(TASKS)}")
    kind, lang = task.rsplit("_", 1)
    if items is None:
        items = WORD_ORDER_ITEMS if kind == "word_order" else ITEMS
    rng = random.Random(f"{seed}:{task}")
    counts: dict[str, int] = {}
    index = index if index is not None else default_index(lang)
    verses = clean_verses(lang, index, counts)
    made = _word_order(verses, rng) if kind == "word_order" else _next_word(verses, rng, lang, index, counts)
    groups = [made[i : i + CHOICES] for i in range(0, len(made) - CHOICES + 1, CHOICES)]
    if kind == "next_word":  # the groups of the commonest answers (words a small model learns first)
        groups = groups[: items // CHOICES]
    rng.shuffle(groups)
    out = []
    for gi, group in enumerate(groups[: items // CHOICES]):
        positions = rng.sample(range(CHOICES), CHOICES)  # item j's answer goes to positions[j]
        for j, (prompt, (answer, *others), vid) in enumerate(group):
            others = list(others)
            rng.shuffle(others)
            choices = others[: positions[j]] + [answer] + others[positions[j]:]
            out.append({"query": prompt, "choices": choices, "gold": positions[j], "group": gi, "id": vid})
    # next_word: a verse that overlaps as a whole, or a cut whose prompt does, counts as a prompt;
    # word_order: the verse is every choice (answer)
    leaked = counts.get("leaked", 0) + counts.get("leaked_prompt", 0)
    return out, {"dropped_leak": leaked, "dropped_leak_prompt": leaked if kind == "next_word" else 0,
                 "dropped_leak_answer": 0 if kind == "next_word" else leaked, "dropped_leak_group": 0,
                 "leak_candidates": counts.get("candidates", 0)}


def build_items(task: str, seed: int = DEFAULT_SEED, items: int | None = None, index: leak.Index | None = None) -> list[dict]:
    """:func:`build`'s items; the counts go to ``demo_suite.LEAK_REPORTS[task]``."""
    out, counts = build(task, seed, items, index)
    demo_suite.LEAK_REPORTS[task] = counts
    return out


def _hook(task: str):
    def load(seed=None, **_):
        import datasets

        items = build_items(task, DEFAULT_SEED if seed is None else int(seed))
        log.info(demo_suite.describe(task, demo_suite.LEAK_REPORTS[task], len(items)))
        return datasets.DatasetDict({"test": datasets.Dataset.from_list(items)})

    load.__name__ = load.__qualname__ = task
    return load


# named in allam/eval/tasks/<task>.yaml as `custom_dataset: !function allam.eval.competence.<task>`:
# word_order_ar, next_word_ar, ..., one module attribute per task of TASKS
globals().update({task: _hook(task) for task in TASKS})
