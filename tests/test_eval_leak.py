"""The leak check: the n-gram index of the training text, its rule, a planted overlap that the demo
suite drops, and the counts in results.json."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from allam.data import demo
from allam.eval import demo_suite, leak

FILLER = ("the river ran past the old mill where seven millers ground barley for the town each morning "
          "before the bells of the tower rang out across the fields and the market opened its gates")


def test_rule_whole_texts_half_covered_texts_and_short_texts():
    train = [FILLER, "narrated abu huraira allah s messenger said the strong is not the one who overcomes people "
                     "by his strength but the strong is the one who controls himself while in anger",
             "and he said unto them go ye into all the world"]
    index = leak.Index.build(train)
    assert index.docs == 3 and index.total_words == sum(len(leak.words(t)) for t in train)
    # a repeat, with other punctuation, case and Arabic-style marks folded: every word covered
    repeat = leak.Index.check(index, "Narrated Abu Huraira: Allah's Messenger said, 'The strong is not the one "
                                     "who overcomes people by his strength, but the strong is the one who controls "
                                     "himself while in anger.'")
    assert repeat.covered == 1.0 and repeat.leaked
    # a shared chain of narrators (13 words) opening an otherwise new text: one shared 13-gram, kept
    chain = index.check("narrated abu huraira allah s messenger said the strong is not the one who ate dates with "
                        "his companions at the well of the valley after the noon prayer on a hot day in summer")
    assert chain.shared >= 1 and 0 < chain.covered < leak.LEAK_COVERAGE and not chain.leaked
    # half the words inside shared 13-grams: dropped
    half = index.check(FILLER.split(" ", 15)[-1] + " and then nobody came back to see the place again ever")
    assert half.covered >= leak.LEAK_COVERAGE and half.leaked
    # short texts: checked whole (every MIN_WORDS-gram in the training text), too short ones not at all
    assert index.check("Go ye into all the world").leaked
    assert not index.check("go ye into all the towns").leaked
    assert not index.check("the river ran").checked and not index.check("the river ran").leaked
    # n-grams never cross documents
    assert not index.check("ground barley for the town each morning before the bells " + "narrated abu huraira "
                           "allah s messenger said the strong").leaked


def test_arabic_normalization_folds_marks_and_letter_variants():
    assert leak.words("قَالَ: إِنَّ الأَعْمَالَ بِالنِّيَّةِ، وَلِكُلِّ امْرِئٍ مَا نَوَى") == \
        leak.words("قال ان الاعمال بالنيه ولكل امرئ ما نوي")


def test_words_keep_their_marks_in_every_script():
    """A Devanagari vowel sign or virama is part of its word (version 1 split there: 8 Hindi words
    made 15 fragments and का, की, के, को were one word); a joiner stays inside a word; punctuation
    and symbols still separate words."""
    assert leak.words("परमेश्‍वर ने आकाश और पृथ्वी की सृष्टि की।") == \
        ["परमेश्‍वर", "ने", "आकाश", "और", "पृथ्वी", "की", "सृष्टि", "की"]
    assert len({leak.words(w)[0] for w in ("का", "की", "के", "को")}) == 4
    assert leak.words("Don't stop—the end (v. 2_3)!") == ["don", "t", "stop", "the", "end", "v", "2", "3"]
    assert leak.words("می‌خواهم بروم") == ["می‌خواهم", "بروم"]


def test_planted_overlap_is_dropped_from_a_closed_suite(monkeypatch, tmp_path):
    """An item's answer inserted into a training document of a demo source: the index built from
    the sources (through the cache) sees it, and the suite drops that item and keeps its groups closed."""
    clean = leak.Index.build([])
    items, counts = demo_suite.build("verse_en2ar", index=clean)
    assert counts["dropped_leak"] == 0 and len(items) == demo_suite.ITEMS
    long = [it for it in items if len(leak.words(it["choices"][it["gold"]])) >= leak.N]
    target, other = long[0], long[1]
    answer = target["choices"][target["gold"]]
    planted = [demo.Document(f"{FILLER} {answer} {FILLER}", "bible_ar", "ar", "translated", 1, "1:1"),
               # the same text in a held-out unit is not training text: ignored
               demo.Document(other["choices"][other["gold"]], "bible_ar", "ar", "translated", 40, "40:1")]
    monkeypatch.setattr(demo, "DEMO_SOURCES", {"bible_ar": lambda: iter(planted)})
    monkeypatch.setattr(demo, "ARABIC_DEMO", ("bible_ar",))
    monkeypatch.setenv("ALLAM_CACHE", str(tmp_path))
    monkeypatch.setattr(leak, "_INDEXES", {})
    index = leak.training_index()
    assert index.docs == 1 and list((tmp_path / "leak_index").glob("*.npz"))
    monkeypatch.setattr(leak, "_INDEXES", {})
    assert len(leak.training_index().grams) == len(index.grams)  # read back from the cache
    kept, counts = demo_suite.build("verse_en2ar", index=index)
    ids = {it["id"] for it in kept}
    assert target["id"] not in ids and other["id"] in ids
    assert counts["dropped_leak"] == counts["dropped_leak_answer"] == 1
    both = demo_suite.held_out_verses("svd")
    assert counts["leak_candidates"] == sum(k in both for k in demo_suite.held_out_verses("kjv"))  # every pair looked at
    assert len(kept) == demo_suite.ITEMS and set(Counter(it["gold"] for it in kept).values()) == {len(kept) // 4}
    for g in range(len(kept) // 4):
        group = [it for it in kept if it["group"] == g]
        assert sorted(it["choices"][it["gold"]] for it in group) == sorted(group[0]["choices"])


def test_a_group_with_an_overlapping_prompt_goes_whole():
    """next_verse prompts join three verses: a planted prompt drops its whole closed group."""
    items, _ = demo_suite.build("next_verse_en", index=leak.Index.build([]))
    target = items[0]
    index = leak.Index.build([f"{FILLER} {target['query']} {FILLER}"])
    kept, counts = demo_suite.build("next_verse_en", index=index)
    assert target["id"] not in {it["id"] for it in kept}
    assert counts["dropped_leak_prompt"] >= 1 and counts["dropped_leak"] == 4
    assert counts["dropped_leak_group"] + counts["dropped_leak_prompt"] + counts["dropped_leak_answer"] == 4


def test_leak_counts_reach_results_json(make_cfg, english_checkpoint, tmp_path, monkeypatch):
    """task=eval writes each task's leak counts to results.json (here with one planted verse)."""
    from allam.tasks import eval as eval_task

    items, _ = demo_suite.build("verse_ar2en", index=leak.Index.build([]))
    prompt = next(it["query"] for it in items if len(leak.words(it["query"])) >= leak.N)
    planted = leak.Index.build([f"{FILLER} {prompt} {FILLER}"])
    monkeypatch.setattr(leak, "training_index", lambda cache_dir=None: planted)
    out = tmp_path / "eval"
    res = eval_task.run(make_cfg("task=eval", f"ckpt={english_checkpoint}", "eval.tasks=[verse_ar2en]",
                                 "eval.limit=8", out=out))
    saved = json.loads((out / "results.json").read_text())
    assert saved["eval.verse_ar2en.dropped_leak"] == saved["eval.verse_ar2en.dropped_leak_prompt"] == 1
    assert saved["eval.verse_ar2en.leak_candidates"] > 1000 and res["eval.verse_ar2en.n"] == 8


@pytest.mark.slow
def test_issue_counts_on_the_demo_corpus():
    """The overlap of the held-out hadith with the training text, as issue 18 measured it: 38 of 431
    Arabic hadith with at least half their 13-grams in the training text, 283 with at least one;
    English 3 and 113. Builds (or reads) the full index: about a minute on 2 cores."""
    index = leak.training_index()
    for source, half, some in (("hadith_ar", 38, 283), ("hadith_en", 3, 113)):
        found = [index.check(d.text) for d in demo.demo_documents(source, "val")]
        assert len(found) == 431
        assert sum(o.grams > 0 and o.shared * 2 >= o.grams for o in found) == half, source
        assert sum(o.shared > 0 for o in found) == some, source


def test_the_command_line_checks_a_preset_or_says_which_languages_it_knows(monkeypatch, capsys):
    """`python -m allam.eval.leak hi` indexes and checks bible_hi's preset (its Bible and the Arabic
    demo's English); a code with no demo Bible is one line naming the ones there are."""
    assert demo.preset_sources("hi") == ("bible_hi", "hadith_en", "bible_en")
    seen = {}
    monkeypatch.setattr(leak, "training_index", lambda sources=None: seen.setdefault("index", sources))
    monkeypatch.setattr(leak, "overlap_report", lambda index, sources=None: seen.setdefault("report", sources) and [])
    leak.main(["hi"])
    assert seen == {"index": demo.preset_sources("hi"), "report": demo.preset_sources("hi")}
    assert "held out" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"^error: no Bible for language 'en' in the demo; allowed: .*hi"):
        leak.main(["en"])
