"""Languages as data: codes checked at compose time, the per-language mix table, the N-language
blend, per-script cleaning, presets for other target languages, and a three-language data run
that reports each language's realized share.

The data test uses a tiny byte-level BPE and tiny corpora written to tmp dirs (no demo corpus), so
the file runs in seconds."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from allam.config import ConfigError, DataConfig, SourceConfig, Stage, mix_languages, mix_stages, mix_targets, validate
from allam.config.langs import LANGUAGES, SCRIPTS, byte_prefixes, language, script_letters_batch
from allam.data.blend import Blend, SourceInfo
from allam.data.cleaning import Cleaner

AR = "كتاب قلم بيت مدرسة علم نور ماء شمس قمر بحر جبل طريق مدينة سماء أرض شجرة".split()
HI = "किताब कलम घर स्कूल ज्ञान प्रकाश पानी सूरज चाँद समुद्र पहाड़ सड़क शहर आकाश धरती पेड़".split()
EN = "the of and book house school light water sun moon sea mountain road city sky earth".split()


def _docs(words, n, seed, length=24):
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(length)) for _ in range(n)]


# --------------------------------------------------------------------------- the table
def test_every_language_names_known_scripts_and_codes_are_checked():
    for code, lang in LANGUAGES.items():
        assert lang.code == code and lang.scripts and all(s in SCRIPTS for s in lang.scripts)
    assert language("hi").name == "Hindi" and language("fa").scripts == ("Arabic",)
    with pytest.raises(ConfigError, match=r"^data\.sources\.x\.lang=xx: unknown language code; known: .*\bhi\b"):
        language("xx", "data.sources.x.lang")
    # Arabic's byte-level prefixes are its block's lead bytes, as they have always been; Devanagari's
    # are two-byte prefixes that no other script shares; Latin-script languages have none
    assert byte_prefixes(("ar",)) == frozenset(bytes([b]) for b in range(0xD8, 0xDC))
    hi = byte_prefixes(("hi",))
    assert hi == {b"\xe0\xa4", b"\xe0\xa5"} and not hi & byte_prefixes(("bn",))
    assert byte_prefixes(("sw",)) == frozenset()


def test_letters_are_counted_per_script():
    own, other = script_letters_batch(["नमस्ते दुनिया", "hello दुनिया", "مرحبا", ""], "hi")
    assert own[0] > 0 and other[0] == 0
    assert own[1] > 0 and other[1] == 5
    assert own[2] == 0 and other[2] == 5
    assert own[3] == other[3] == 0


# --------------------------------------------------------------------------- the mix table
def _data(make_cfg, *overrides):
    cfg = make_cfg(*overrides)
    validate(cfg)
    return cfg.data


def test_the_mix_table_and_its_one_line_refusals(make_cfg):
    # the default: Arabic and English from ar_ratio, as always
    (st,) = mix_stages(_data(make_cfg, "data.ar_ratio=0.3"))
    assert st.shares == (("ar", 0.3), ("en", 0.7)) and st.ar_ratio == 0.3
    # a preset with its own table; one share is one override (null takes the rest)
    data = _data(make_cfg, "data=bible_hi", "data.mix.hi=0.3")
    (st,) = mix_stages(data)
    assert st.shares == (("hi", 0.3), ("en", pytest.approx(0.7)))
    assert mix_languages(data) == ["hi", "en"] and mix_targets(data) == ["hi"]
    data = _data(make_cfg, "data=trilingual")
    assert dict(mix_stages(data)[0].shares) == {"ar": 0.3, "hi": 0.2, "en": pytest.approx(0.5)}
    assert mix_languages(data) == ["ar", "hi", "en"] and mix_targets(data) == ["ar", "hi"]
    bad = {
        r"^data\.mix=\{hi:0\.4,en:0\.5\}: the shares sum to 0\.9; they must sum to 1": ["data=bible_hi", "data.mix={hi:0.4,en:0.5}"],
        r"^data\.mix=\{hi:null,en:null\}: hi, en are null; at most one language takes the rest": ["data=bible_hi", "data.mix={hi:null,en:null}"],
        r"^data\.mix=\{ar:0\.7,hi:0\.5,en:null\}: the given shares sum to 1\.2, above 1": ["data=trilingual", "data.mix={ar:0.7,hi:0.5,en:null}"],
        r"^data\.mix=xx: unknown language code": ["data=bible_hi", "+data.mix.xx=0.1"],
        r"^data\.mix\.hi=1\.5: must be a fraction": ["data=bible_hi", "data.mix.hi=1.5"],
        r"^data\.ar_ratio=0\.3: applies only when data\.mix is empty; .*data\.mix\.ar": ["data=trilingual", "data.ar_ratio=0.3"],
        r"^data\.sources\.bible_hi\.lang=hi: data\.mix gives Hindi no share; data\.mix is empty .*"
        r"e\.g\. \+data\.mix=\{ar:0\.45,hi:0\.1,en:null\} \(or remove the source\)$":
            ["+data.sources.bible_hi={lang: hi, kind: translated, loader: demo, path: bible_hi}"],
        r"^data\.sources\.bible_hi\.lang=hi: data\.mix gives Hindi no share; add data\.mix\.hi=<share>":
            ["data=trilingual", "data.sources.bible_hi.lang=hi", "~data.mix.hi", "data.mix.ar=0.5"],
        r"^data\.mix\.ko=0\.2: is above 0 but data\.sources has no Korean source": ["data=bible_hi", "+data.mix.ko=0.2"],
        r"^data\.sources\.bible_hi\.lang=xx: unknown language code": ["data=bible_hi", "data.sources.bible_hi.lang=xx"],
        r"^data\.mix=\{hi:0\.45,en:null\}: applies only when data\.stages is empty; .*\(data\.mix=null clears this one":
            ["data=bible_hi", "data.stages=[{tokens:1000,mix:{hi:0.0,en:1.0}},{mix:{hi:0.45,en:null}}]"],
        r"^data\.translated_share=0\.5: is below 1 but every Hindi source has kind=translated":
            ["data=bible_hi", "data.translated_share=0.5"],
        # with stages, the top-level share keys would be silently ignored (a sweep over them on a
        # staged experiment trained one run several times)
        r"^data\.ar_ratio=0\.3: applies only when data\.stages is empty; .*data\.stages\.<i>\.ar_ratio":
            ["experiment=scratch_toy", "data.ar_ratio=0.3"],
        r"^data\.translated_share=0\.5: applies only when data\.stages is empty; .*data\.stages\.<i>\.translated_share":
            ["experiment=scratch_toy", "data.translated_share=0.5"],
        # 0.45, the default Arabic share, is a value like any other once set: it passed unnoticed
        # while 0.45 stood for "not set"
        r"^data\.ar_ratio=0\.45: applies only when data\.stages is empty; .*\(data\.ar_ratio=null clears this one":
            ["experiment=scratch_toy", "data.ar_ratio=0.45"],
        r"^data\.ar_ratio=0\.45: applies only when data\.mix is empty; .*\(data\.ar_ratio=null clears this one":
            ["data=bible_hi", "data.ar_ratio=0.45"],
        r"^data\.stages\.0\.ar_ratio=0\.45: applies only when data\.stages\.0\.mix is empty":
            ["data=bible_hi", "data.mix=null", "data.stages=[{tokens:1000,ar_ratio:0.45,mix:{hi:0.0,en:1.0}},{mix:{hi:0.45,en:null}}]"],
    }
    for pattern, overrides in bad.items():
        with pytest.raises(ConfigError, match=pattern):
            validate(make_cfg(*overrides))
    # what the refusals advise works: a table for data=demo, and a preset's table cleared for stages
    validate(make_cfg("+data.sources.bible_hi={lang: hi, kind: translated, loader: demo, path: bible_hi}",
                      "+data.mix={ar:0.45,hi:0.1,en:null}"))
    data = _data(make_cfg, "data=bible_hi", "data.mix=null", "data.stages=[{tokens:1000,mix:{hi:0.0,en:1.0}},{mix:{hi:0.45,en:null}}]")
    assert [st.shares for st in mix_stages(data)] == [(("hi", 0.0), ("en", 1.0)), (("hi", 0.45), ("en", pytest.approx(0.55)))]
    # an experiment's Arabic share cleared for another language's preset
    data = _data(make_cfg, "experiment=english_base", "data=bible_hi", "data.ar_ratio=null", "data.mix.hi=0.01")
    assert mix_stages(data)[0].shares == (("hi", 0.01), ("en", pytest.approx(0.99)))
    # unset, the Arabic share is the paper's 45%, at the top and in a stage
    assert mix_stages(_data(make_cfg))[0].shares == (("ar", 0.45), ("en", pytest.approx(0.55)))
    staged = mix_stages(_data(make_cfg, "data.stages=[{tokens:1000,ar_ratio:0.0},{tokens:null}]"))
    assert [st.ar_ratio for st in staged] == [0.0, 0.45]


def test_the_blend_depends_on_the_shares_not_the_order_of_the_table(make_cfg):
    """Two tables with the same shares in another order make the same stages, so the same stream
    (resuming with a reordered table cannot change it); English comes last, targets by code."""
    def shares(table):
        data = _data(make_cfg, "data=trilingual")
        data.mix = table
        return mix_stages(data)[0].shares

    assert list(_data(make_cfg, "data=trilingual").mix) == ["ar", "hi", "en"]
    assert shares({"en": None, "hi": 0.2, "ar": 0.3}) == (("ar", 0.3), ("hi", 0.2), ("en", pytest.approx(0.5)))
    assert shares({"hi": 0.2, "en": 0.5, "ar": None}) == (("ar", pytest.approx(0.3)), ("hi", 0.2), ("en", 0.5))


@pytest.mark.parametrize("preset,code", [("bible_hi", "hi"), ("bible_fa", "fa"), ("bible_ko", "ko"), ("bible_ru", "ru")])
def test_each_preset_composes_with_the_expanded_tokenizer(make_cfg, preset, code):
    cfg = make_cfg(f"data={preset}", "tokenizer=expanded", "init=pretrained", "init.checkpoint=/some/base/hf")
    validate(cfg)
    assert mix_targets(cfg.data) == [code] and cfg.data.sources[f"bible_{code}"].lang == code


# --------------------------------------------------------------------------- the blend
SRC = [SourceInfo("a1", "ar", "natural", 300), SourceInfo("a2", "ar", "translated", 500),
       SourceInfo("h1", "hi", "translated", 400), SourceInfo("e1", "en", "natural", 1000),
       SourceInfo("e2", "en", "natural", 30)]


# sha256 of (source, block) for the first 30,000 positions, computed by blend.py as it was before
# languages became data (commit ed9463c), for the sources of SRC without Hindi, seq_len 64, seed 11
BEFORE = {"one": "84de75e41aeea173", "tau": "c2cc21e2595d3bb0", "stages": "b567ed96dfdcf7f4", "all_ar": "63ba12c71faad945"}


def test_an_arabic_english_mix_blends_exactly_as_before():
    import hashlib

    two = [s for s in SRC if s.lang != "hi"]
    two = [*two[:2], SourceInfo("a3", "ar", "translated", 70), *two[2:]]
    table = (("ar", 0.45), ("en", 0.55))
    cases = {"one": [Stage(None, table, None, "data")], "tau": [Stage(None, 0.3, 0.25, "data")],
             "stages": [Stage(64 * 500, 0.0, None, "s0"), Stage(None, 0.6, 0.5, "s1")], "all_ar": [Stage(None, 1.0, None, "data")]}
    for name, stages in cases.items():
        src, block = Blend(two, stages, 64, seed=11).blocks(np.arange(30_000))
        assert hashlib.sha256(np.stack([src, block]).astype(np.int64).tobytes()).hexdigest()[:16] == BEFORE[name], name


def test_three_languages_each_within_the_stated_bound_on_every_window():
    """A language k splits down the chain is within k blocks of its share on every window."""
    shares = (("ar", 0.3), ("hi", 0.2), ("en", 0.5))
    blend = Blend(SRC, [Stage(None, shares, None, "data")], 64, seed=0)
    src, _ = blend.blocks(np.arange(20_000))
    langs = np.array([SRC[i].lang for i in src])
    for depth, (code, share) in enumerate(shares, start=1):
        x = (langs == code).astype(np.float64)
        cs = np.concatenate([[0], np.cumsum(x)])
        for n in (7, 64, 1000, 20_000):
            assert np.abs(cs[n:] - cs[:-n] - share * n).max() < min(depth, 2), (code, n)


# --------------------------------------------------------------------------- cleaning per script
def test_indic_joiners_are_tidied_and_other_scripts_left_alone():
    hi = Cleaner(lang="hi", min_chars=1)
    assert hi.clean("परमेश्\u200dवर")[0] == "परमेश्\u200dवर"  # a conjunct's joiner stays
    assert hi.clean("क\u200dख\u200dग")[0] == "क\u200dख\u200dग"  # two joiners one letter apart both stay
    assert hi.clean("\u200dपरमेश्\u200d\u200c\u200dवर\u200d")[0] == "परमेश्\u200dवर"  # stray and repeated ones go
    assert hi.clean("नमस्ते दुनिया\u200d hello")[0] == "नमस्ते दुनिया hello"
    assert hi.clean("नमस्ते \u200dदुनिया")[0] == "नमस्ते दुनिया"  # after whitespace
    # a virama's joiner at a word's end shapes the letter (Malayalam's chillu, Bengali's khanda ta)
    assert Cleaner(lang="ml", min_chars=1).clean("അവന്\u200d പോയി")[0] == "അവന്\u200d പോയി"
    assert Cleaner(lang="bn", min_chars=1).clean("উৎসব ত্\u200d নয়")[0] == "উৎসব ত্\u200d নয়"
    assert Cleaner(lang="bn", min_chars=1).clean("করুন্\u200c, তবে")[0] == "করুন্, তবে"  # a non-joiner there shapes nothing
    assert hi.clean("परिवार 👨\u200d👩\u200d👧 फोटो")[0] == "परिवार 👨\u200d👩\u200d👧 फोटो"  # an emoji sequence
    # the rule is in the cache keys of the scripts it applies to only
    assert hi.rules()["joiner_rule"] == 2 and "joiner_rule" not in Cleaner(lang="ar").rules()
    assert "joiner_rule" not in Cleaner(lang="fa").rules()
    fa = Cleaner(lang="fa", min_chars=1)
    assert fa.clean("می\u200cخواهم")[0] == "می\u200cخواهم"  # Persian's half-space is a word's own
    assert Cleaner(lang="en", min_chars=1).clean("family 👨\u200d👩\u200d👧 photo")[0] == "family 👨\u200d👩\u200d👧 photo"
    # the wrong-script check knows every script: English text declared Hindi is dropped, Hindi kept
    out, why = hi.clean_batch(["the book of the sea and the sun", "किताब कलम घर स्कूल"])
    assert why == ["wrong_script", None] and out[1]


# --------------------------------------------------------------------------- a three-language run
@pytest.fixture(scope="module")
def tri_tok():
    from conftest import tiny_bytelevel_tokenizer

    return tiny_bytelevel_tokenizer(_docs(AR, 100, 0) + _docs(HI, 100, 1) + _docs(EN, 100, 2), 500)


def test_a_three_language_run_reports_each_share_within_the_bound(tri_tok, tmp_path: Path, capsys):
    from allam.data.datamodule import AllamDataModule

    srcs = {}
    for code, words, seed in (("ar", AR, 10), ("hi", HI, 11), ("en", EN, 12)):
        path = tmp_path / f"{code}.txt"
        path.write_text("\n".join(_docs(words, 300, seed)) + "\n", encoding="utf-8")
        srcs[code] = {"lang": code, "loader": "text", "path": str(path)}
    srcs["wrong"] = {"lang": "hi", "loader": "text", "path": str(tmp_path / "en.txt")}
    cfg = OmegaConf.structured(DataConfig)
    cfg.sources = {k: OmegaConf.merge(OmegaConf.structured(SourceConfig), v) for k, v in srcs.items() if k != "wrong"}
    cfg = OmegaConf.merge(cfg, OmegaConf.create({"batch_size": 4, "val_bytes": 0, "mix": {"ar": 0.3, "hi": 0.2, "en": None}}))
    dm = AllamDataModule(cfg, tri_tok, seq_len=32, cache_dir=tmp_path / "cache", train_batches=250, workers=1, progress=False)
    dm.prepare()
    table = capsys.readouterr().out
    assert "arabic share" in table and "hindi share" in table
    assert dm.val_languages == ["ar", "hi", "en"]
    rep = dm.mix_report()
    total = rep["blocks"]
    assert total == 1000
    for depth, (code, share) in enumerate((("ar", 0.3), ("hi", 0.2), ("en", 0.5)), start=1):
        lang = rep["languages"][code]
        assert lang["target_share"] == pytest.approx(share)
        assert abs(lang["realized_share"] - share) * total < depth  # within the blend's stated bound
    # English text declared Hindi: one line naming the source, counted
    cfg.sources["wrong"] = OmegaConf.merge(OmegaConf.structured(SourceConfig), srcs["wrong"])
    dm = AllamDataModule(cfg, tri_tok, seq_len=32, cache_dir=tmp_path / "cache", train_batches=10, workers=1, progress=False)
    with pytest.raises(ConfigError, match=r"^data\.sources\.wrong\.lang=hi: 300 of 300 documents are mostly not Devanagari script"):
        dm.prepare()


def test_a_bible_preset_pairs_its_own_language_with_english():
    """data.parallel_pairs on bible_hi: each training chapter is paired with the same English chapter."""
    from allam.config.langs import language as lang_of
    from allam.data import sources

    docs = sources._demo_docs("bible_hi", "bible_hi", True)
    train = next(d for d in docs if d.split == "train")
    assert lang_of("hi").has_script_char(train.text) and train.pair and train.pair.startswith("In the beginning God")


def test_a_staged_run_saved_before_stage_mix_resumes_and_groups_with_new_runs(make_cfg):
    """A stage saved before `mix` existed is the same stage: resume sees no change, and the claims
    report puts old and new seeds in one arm."""
    import copy

    from allam.claims import seed_group_key
    from allam.config import to_dict
    from allam.tasks.rundir import changed_keys

    cfg = make_cfg("experiment=scratch_toy")
    validate(cfg)
    current = to_dict(cfg)
    saved = copy.deepcopy(current)
    for st in saved["data"]["stages"]:
        del st["mix"]
    assert current["data"]["stages"] and changed_keys(saved, current) == []
    assert seed_group_key({"config": saved}) == seed_group_key({"config": current})
    moved = copy.deepcopy(current)
    moved["data"]["stages"][0]["ar_ratio"] = 0.3
    assert changed_keys(moved, current) == ["data.stages"]  # a real change still counts


def test_a_run_saved_when_0_45_meant_unset_resumes_and_groups_with_new_runs(make_cfg):
    """Before ``ar_ratio`` was Optional, an unset Arabic share was saved as 0.45 (beside a mix
    table too, and in each stage); the same run now has None there. Resume sees no change, the
    claims report puts old and new seeds in one arm, and a real change still counts."""
    import copy

    from allam.claims import seed_group_key
    from allam.config import to_dict
    from allam.tasks.rundir import changed_keys

    for overrides in [(), ("data=bible_hi",), ("experiment=claim7_mix_only",)]:
        cfg = make_cfg(*overrides)
        validate(cfg)
        current = to_dict(cfg)
        assert current["data"]["ar_ratio"] is None
        saved = copy.deepcopy(current)
        saved["data"]["ar_ratio"] = 0.45
        assert changed_keys(saved, current) == [], overrides
        assert seed_group_key({"config": saved}) == seed_group_key({"config": current})
        saved["data"]["ar_ratio"] = 0.3
        assert changed_keys(saved, current) == ["data.ar_ratio"]
        assert seed_group_key({"config": saved}) != seed_group_key({"config": current})
    cfg = make_cfg("data.stages=[{tokens:1000,ar_ratio:0.0},{tokens:null}]")
    validate(cfg)
    current = to_dict(cfg)
    saved = copy.deepcopy(current)
    saved["data"]["ar_ratio"] = 0.45
    saved["data"]["stages"][1]["ar_ratio"] = 0.45
    assert current["data"]["stages"][1]["ar_ratio"] is None and changed_keys(saved, current) == []


def test_the_new_pieces_come_from_every_target_with_a_source_whatever_its_share(make_cfg):
    from allam.tasks.builders import tokenizer_targets

    assert tokenizer_targets(make_cfg("data=trilingual")) == ("ar", "hi")
    assert tokenizer_targets(make_cfg("data=trilingual", "data.mix.hi=0")) == ("ar", "hi")  # a share sweep keeps one vocabulary
    assert tokenizer_targets(make_cfg("data=bible_ko")) == ("ko",)
    assert tokenizer_targets(make_cfg()) == ("ar",)


def test_a_language_the_table_lacks_is_added_with_plus_and_said_so_in_one_line():
    from hydra import compose, initialize_config_dir

    from allam.config import CONF_DIR, explain_compose_error

    with initialize_config_dir(str(CONF_DIR), version_base=None):
        with pytest.raises(Exception) as exc:
            compose("config", overrides=["data=bible_hi", "data.mix.ko=0.2"])
        assert explain_compose_error(exc.value).startswith("data.mix.ko: not in the table yet") and "+data.mix.ko=" in \
            explain_compose_error(exc.value)
        cfg = compose("config", overrides=["+data.mix={ar:0.3,en:null}"])  # data=demo: a table with +
        assert dict(mix_stages(cfg.data)[0].shares) == {"ar": 0.3, "en": pytest.approx(0.7)}
        merged = compose("config", overrides=["data=trilingual", "data.mix={ar:0.5,en:null}"])  # merges: hi stays
        assert dict(merged.data.mix) == {"ar": 0.5, "hi": 0.2, "en": None}


@pytest.mark.slow  # five adaptation runs, 33 s together here; the fast suite composes each preset and runs three languages' data
@pytest.mark.parametrize("preset", ["bible_hi", "bible_fa", "bible_ko", "bible_ru", "trilingual"])
def test_each_preset_adapts_an_english_model(preset, tmp_path, cache_dir, english_checkpoint):
    """`data=<preset> tokenizer=expanded init=pretrained init.checkpoint=<english base>` trains and
    scores every language of the preset, with each realized share at its target."""
    import json

    from conftest import run_inprocess

    out = tmp_path / "run"
    args = [f"data={preset}", "tokenizer=expanded", "tokenizer.num_new_tokens=512", "tokenizer.training_words=60000",
            "init=pretrained", f"init.checkpoint={english_checkpoint}", "model=micro", "trainer.max_steps=2",
            "data.val_bytes=4000", "export=false"]
    assert run_inprocess(args, cache_dir, out) is None
    res = json.loads((out / "results.json").read_text())
    langs = res["data"]["languages"]
    assert set(langs) == set(language_codes(preset)) and all(f"val.{c}.bpb" in res for c in langs)
    assert all(abs(v["realized_share"] - v["target_share"]) * res["data"]["blocks"] < 3 for v in langs.values())


def language_codes(preset: str) -> list[str]:
    return ["ar", "hi", "en"] if preset == "trilingual" else [preset.removeprefix("bible_"), "en"]


def test_a_run_saved_with_another_table_order_is_a_named_fingerprint_change():
    """Before the mix's order was fixed, a table's order decided the blend; a checkpoint saved then
    with another order than today's drew another stream, so resuming it is refused with the order
    named (an order-free comparison of the shares would accept it)."""
    from allam.data.fingerprint import check_fingerprint, fingerprint_diff

    stage = {"tokens": None, "ar_ratio": 0.3, "translated_share": None}
    saved = {"stages": [{**stage, "shares": {"hi": 0.2, "ar": 0.3, "en": 0.5}}]}
    now = {"stages": [{**stage, "shares": {"ar": 0.3, "hi": 0.2, "en": 0.5}}]}
    assert fingerprint_diff(saved, now) == ["stages.0.shares order: hi,ar,en -> ar,hi,en"]
    assert fingerprint_diff(now, now) == []
    with pytest.raises(ConfigError, match=r"^data fingerprint differs from the checkpoint's \(stages\.0\.shares order"):
        check_fingerprint(saved, now, allow_change=False)


def test_shard_keys_follow_the_letter_table_of_the_wrong_script_check(monkeypatch):
    """Which documents the wrong-script check drops depends on the script table and on Python's
    Unicode categories: a change to either changes the keys of the sources that run the check
    (their shards and tokenizer text are rebuilt), and only theirs."""
    from allam.config import langs
    from allam.data.shards import ShardJob, cache_key
    from allam.data.sources import source_values

    class Tok:
        hash, dtype = "t", "uint16"

    def key(**src):
        src = source_values({"lang": "ar", "kind": "natural", "loader": "text", "path": "x.txt", **src})
        job = ShardJob("news_ar", src, False, Cleaner.from_source(src))
        job.content = "c"
        return cache_key(job, Tok())

    checked, unchecked = key(), key(max_wrong_script=1.0)
    assert Cleaner(lang="ar", max_wrong_script=1.0).rules() == {}
    doc = "كتاب ქართული ენა"  # 4 Arabic letters, 10 Georgian ones
    assert Cleaner(lang="ar", min_chars=1).clean_batch([doc])[1] == [None]
    # a new script in the table: Arabic documents holding its letters now count them as wrong
    georgian = langs.Script("Georgian", ((0x10A0, 0x10FF),))
    monkeypatch.setattr(langs, "SCRIPTS", {**langs.SCRIPTS, "Georgian": georgian})
    langs._letter_table.cache_clear(), langs.letter_table_digest.cache_clear()
    try:
        assert Cleaner(lang="ar", min_chars=1).clean_batch([doc])[1] == ["wrong_script"]
        assert key() != checked and key(max_wrong_script=1.0) == unchecked
        # Python's Unicode database: one more code point classed a letter moves the digest too
        before = langs.letter_table_digest()
        real = langs.unicodedata.category
        monkeypatch.setattr(langs.unicodedata, "category", lambda ch: "Lo" if ch == "\u0E7F" else real(ch))
        langs._letter_table.cache_clear(), langs.letter_table_digest.cache_clear()
        assert langs.letter_table_digest() != before
    finally:
        monkeypatch.undo()
        langs._letter_table.cache_clear(), langs.letter_table_digest.cache_clear()
    assert key() == checked
    # the language's own scripts: Latin letters counted as Arabic's own keep an English-quoting document
    monkeypatch.setitem(langs.LANGUAGES, "ar", langs._lang("ar", "Arabic", "Arabic", "Latin"))
    assert key() != checked and key(max_wrong_script=1.0) == unchecked


def test_the_wrong_script_check_drops_nothing_of_the_arabic_demo():
    """Counting every script's letters, the check keeps every document of the Arabic demo's five
    sources (README, *Cleaning per script*)."""
    from omegaconf import OmegaConf

    from allam.config import CONF_DIR
    from allam.data.sources import read_documents, source_values

    demo = OmegaConf.load(CONF_DIR / "data" / "demo.yaml").sources
    for name, src in demo.items():
        src = source_values(OmegaConf.to_container(src))
        texts = [d.text for d in read_documents(name, src, False, [0])]
        why = Cleaner.from_source(src).clean_batch(texts)[1]
        assert len(texts) > 600 and why.count("wrong_script") == 0, name
