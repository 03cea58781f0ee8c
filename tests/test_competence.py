"""The competence suite: items from held-out, leak-checked verses; scorers that do not know the
language score chance; one that knows a little of one language (a bigram model of its training
books) scores well above chance in it and exactly chance in the other."""
from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import pytest

from allam.data import demo
from allam.eval import competence, demo_suite, leak

EMPTY = leak.Index.build([])


@pytest.fixture(scope="module")
def built():
    return {task: competence.build(task, index=EMPTY) for task in competence.TASKS}


def test_items_are_held_out_verses_in_balanced_groups(built):
    for task, (items, counts) in built.items():
        lang = task.rsplit("_", 1)[1]
        verses = {("bible {}:{}:{}".format(*k)): demo_suite.nfc(t)
                  for k, t in demo_suite.held_out_verses(competence.VERSION[lang]).items()}
        assert len(items) == (competence.ITEMS if task.startswith("next_word") else {"ar": 1048, "en": 1864}[lang])
        assert counts["dropped_leak"] == 0 and counts["leak_candidates"] > 1500
        assert all(len(it["choices"]) == 4 and len(set(it["choices"])) == 4 for it in items)
        assert set(Counter(it["gold"] for it in items).values()) == {len(items) // 4}, task
        for it in items:
            assert demo.split_of(int(it["id"].split()[1].split(":")[0])) == "val"
            verse, answer = verses[it["id"]], it["choices"][it["gold"]]
            if task.startswith("word_order"):
                assert it["query"] == "" and answer == " ".join(competence.bare_words(verse))
                assert len({tuple(sorted(c.split())) for c in it["choices"]}) == 1  # the same words, each as often
                assert len({c.split()[0] for c in it["choices"]}) == 1  # the first word in place
            else:
                assert verse.startswith(f"{it['query']} {answer}")
                assert len(it["query"].split()) >= competence.MIN_CONTEXT
        if task.startswith("next_word"):  # closed groups: one candidate set, each candidate the answer once
            for g in range(len(items) // 4):
                group = [it for it in items if it["group"] == g]
                assert sorted(it["choices"][it["gold"]] for it in group) == sorted(group[0]["choices"])
    assert competence.build("next_word_en", index=EMPTY) == built["next_word_en"]  # deterministic


def test_reorderings_differ_pairwise_in_every_window_and_drop_punctuation():
    import random

    verse = "And he said, \"Go in peace.\" They went: all of them. Israel's"
    words = competence.bare_words(verse)
    assert words == "And he said Go in peace They went all of them Israel's".split()
    for seed in range(10):
        choices = competence.reorderings(words, random.Random(seed))
        assert choices[0] == " ".join(words) and len(set(choices)) == 4
        split = [c.split() for c in choices]
        assert all(c[0] == "And" and sorted(c) == sorted(words) for c in split)
        for a in range(1, 10, competence.WINDOW):  # three windows of three words, each in four different orders
            assert len({tuple(c[a : a + 3]) for c in split}) == 4
            assert all(sorted(c[a : a + 3]) == sorted(words[a : a + 3]) for c in split)
        assert {tuple(c[-2:]) for c in split} == {("them", "Israel's")}  # a tail of fewer than three words stays
    assert competence.reorderings("a b c d e f".split(), random.Random(0)) is None  # too few windows


def test_a_planted_verse_is_dropped():
    items, _ = competence.build("word_order_ar", index=EMPTY)
    verse = items[0]["choices"][items[0]["gold"]]
    kept, counts = competence.build("word_order_ar", index=leak.Index.build([verse]))
    assert counts["dropped_leak"] >= 1 and items[0]["id"] not in {it["id"] for it in kept}
    assert all(verse not in it["choices"] for it in kept)


def _accuracy(items, score, by_text: bool = False) -> float:
    """The choice with the highest score; ties go to the earliest position, or with `by_text` to
    the largest text (a scorer of the choices alone then picks the same candidate in every item of
    a closed group)."""
    right = 0
    for it in items:
        keys = [(score(it["query"], c), c if by_text else -i) for i, c in enumerate(it["choices"])]
        right += keys.index(max(keys)) == it["gold"]
    return right / len(items)


def test_scorers_that_ignore_the_language_score_chance(built):
    """Unigram frequency (order-free, summed exactly) and length of the choices: 25% exactly (word
    order: every choice ties, and the answers sit at each position equally often; next word: closed
    groups)."""
    freq = Counter(w for d in demo.demo_documents("bible_en", "train") for w in re.findall(r"\w+", d.text))
    total = sum(freq.values())
    unigram = lambda _q, c: math.fsum(math.log((freq[w] + 1) / total) for w in sorted(re.findall(r"\w+", c)))  # noqa: E731
    for task, (items, _) in built.items():
        for score in (unigram, lambda _q, c: len(c), lambda _q, c: -len(c)):
            assert _accuracy(items, score, by_text=task.startswith("next_word")) == 0.25, task


def test_a_bigram_model_of_one_language_passes_it_and_is_at_chance_in_the_other(built):
    """Knowing the word pairs of one language's training books is enough to pass its tasks
    (next_word is cut where such a pair predicts the answer); it says nothing about the other
    language, whose words it has never seen (every choice ties)."""
    for lang, other in (("en", "ar"), ("ar", "en")):
        pairs, left = Counter(), Counter()
        for d in demo.demo_documents(f"bible_{lang}", "train"):
            words = ["<s>", *d.text.split()]
            pairs.update(zip(words, words[1:]))
            left.update(words)
        vocab = len(left) + 1

        def score(query, choice, pairs=pairs, left=left, vocab=vocab):
            words = ["<s>", *query.split(), *choice.split()]
            return math.fsum(math.log((pairs[(a, b)] + 1) / (left[a] + vocab)) for a, b in zip(words, words[1:]))

        acc = {task: _accuracy(items, score) for task, (items, _) in built.items()}
        assert acc[f"word_order_{lang}"] > 0.6 and acc[f"next_word_{lang}"] > 0.9, (lang, acc)
        assert acc[f"word_order_{other}"] == acc[f"next_word_{other}"] == 0.25, (lang, acc)


def test_the_harness_hook_builds_the_task_and_reports_its_leak_counts(monkeypatch):
    planted = leak.Index.build([v for _, v in list(demo_suite.held_out_verses("web").items())[:40]])
    monkeypatch.setattr(leak, "training_index", lambda cache_dir=None: planted)
    data = competence.next_word_en(seed=7)
    assert len(data["test"]) == competence.ITEMS
    assert demo_suite.LEAK_REPORTS["next_word_en"]["dropped_leak"] >= 30


def test_eval_competence_composes_and_runs_offline(make_cfg, tmp_path):
    """eval=competence names four of this package's harness tasks: no hub, no harness library index."""
    from allam.eval import harness

    cfg = make_cfg("eval=competence")
    plan = harness.prepare(cfg.eval, tmp_path)
    assert plan.tasks == {task: 0 for task in competence.TASKS} and not plan.include_defaults
    assert set(competence.TASKS) <= set(harness.own_tasks())


@pytest.mark.slow
def test_untrained_model_scores_chance_through_the_harness(make_cfg):
    """A model that knows nothing, scored by lm-evaluation-harness on 200 items of each task: the
    word-order tasks within 3 standard errors of 25%, and the leak counts and per-item records come
    with the scores. (On next_word a random model is at chance only on average over models: the
    items repeat word pairs, so one model's arbitrary pair preferences count many times; two
    random models scored 0.17 and 0.41 on next_word_en, against a binomial SE of 0.03.)"""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from allam.eval import harness
    from allam.tasks import builders

    cfg = make_cfg("eval=competence", "eval.limit=200", "eval.batch_size=64", "tokenizer=bilingual",
                   "tokenizer.vocab_size=4096", "tokenizer.training_words=100000")
    tokenizer = builders.build_tokenizer(cfg).tokenizer
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128,
                                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)).eval()
    scores = harness.evaluate(model, tokenizer, cfg.eval, harness.prepare(cfg.eval, Path(cfg.paths.output_dir)))
    assert set(scores) == set(competence.TASKS)
    for task, s in scores.items():
        assert s["n"] == 200 and s["chance"] == 0.25 and s["leak_candidates"] > 1500
        assert len(s["correct"]) == 200 and s["correct"].count("1") == round(s["acc"] * 200) and len(s["items_sha"]) == 16
        if task.startswith("word_order"):
            assert abs(s["acc"] - 0.25) <= 3 * s["acc_stderr"], (task, s)


def test_more_word_order_items_keep_the_first_ones():
    """eval.limit=N scores the first N items, which are the same whichever cap built them: the
    default suite's 400 are the first 400 of the --full budget's."""
    first = competence.build("word_order_ar", items=400, index=EMPTY)[0]
    every = competence.build("word_order_ar", index=EMPTY)[0]
    assert len(every) > 1000 and every[:400] == first
