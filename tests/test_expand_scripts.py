"""Vocabulary expansion for target scripts other than Arabic, on both paths (a SentencePiece BPE
base and the shipped GPT-2 byte-level base), on real Bible text of each language: new pieces
hold the target script, English encodes token for token as the base, target text round-trips
and its tokens per word drop. Also: what a byte prefix is at the join of a merge, the Arabic
case unchanged, and the refusal of Latin-script targets."""
from __future__ import annotations

import json
import sqlite3

import pytest
from omegaconf import OmegaConf

from allam.config import ConfigError, TokenizerConfig
from allam.config.langs import byte_prefixes, language
from allam.data.demo import bible_db
from allam.tokenizer import build_tokenizer, fertility_report
from allam.tokenizer import bytelevel as B
from allam.tokenizer import bytelevel_expand as X
from allam.tokenizer import expand as expand_mod
from allam.tokenizer import hf_folder
from allam.tokenizer import spm as spm_util

VERSION = {"en": "k", "hi": "i", "ko": "n", "fa": "p", "ru": "r", "ja": "j"}
TARGETS = ("hi", "ko", "fa", "ru", "ja")
N_NEW = 128
TRAIN_VERSES = 1500  # from Genesis on
HELDOUT_VERSES = 150  # from Matthew (book 40) on


def tcfg(**kw):
    return OmegaConf.merge(OmegaConf.structured(TokenizerConfig), kw)


def _verses(code: str, first_book: int, n: int) -> list[str]:
    con = sqlite3.connect(f"file:{bible_db()}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT vText FROM bible WHERE bbName=? AND bNumber>=? ORDER BY bNumber, cNumber, vNumber LIMIT ?",
                           (VERSION[code], first_book, n)).fetchall()
    finally:
        con.close()
    return [r[0] for r in rows if r[0].strip()]


_TRAIN: dict[str, list[str]] = {}


def train_text(lang: str) -> list[str]:
    if lang not in _TRAIN:
        _TRAIN[lang] = _verses(lang, 1, TRAIN_VERSES)
    return _TRAIN[lang]


@pytest.fixture(scope="module")
def heldout():
    return {code: _verses(code, 40, HELDOUT_VERSES) for code in ("en",) + TARGETS}


@pytest.fixture(scope="module")
def cache(cache_dir):
    return cache_dir  # the session's cache: tokenizers another test file built are read, not rebuilt


@pytest.fixture(scope="module")
def spm_base(cache):
    return build_tokenizer(tcfg(english_vocab_size=512, training_words=None), cache_dir=cache, texts=train_text)


@pytest.fixture(scope="module")
def gpt2_base(cache):
    if B.SHIPPED["gpt2"].path() is None:
        pytest.skip(f"whisper is not installed ({B.SHIPPED['gpt2'].install})")
    return build_tokenizer(tcfg(base="gpt2"), cache_dir=cache, texts=train_text)


def tokens_per_word(tok, docs):
    return sum(map(len, tok(docs, add_special_tokens=False)["input_ids"])) / sum(len(d.split()) for d in docs)


def english_docs(code, heldout):
    """Held-out English plus the edge cases that hold no character of the target's scripts."""
    return heldout["en"] + [t for t in hf_folder.EDGE_CASES if not language(code).has_script_char(t)]


def holds_prefix(symbols: str, code: str) -> bool:
    """Whether the byte-level string ``symbols`` holds a UTF-8 prefix of the language's core blocks."""
    inverse = {c: b for b, c in B.byte_alphabet().items()}
    data = bytes(inverse[c] for c in symbols)
    return any(p in data for p in byte_prefixes((code,)))


def check_common(exp, base, code, heldout):
    b, e = base.tokenizer, exp.tokenizer
    assert exp.name == f"{base.name}+{code}{N_NEW}" and exp.base.name == base.name
    assert len(e) == len(b) + N_NEW
    en = english_docs(code, heldout)
    assert e(en, add_special_tokens=False)["input_ids"] == b(en, add_special_tokens=False)["input_ids"]
    target = heldout[code]
    ids = e(target, add_special_tokens=False)["input_ids"]
    assert [e.decode(x) for x in ids] == target  # neither base normalizes: normalized x is x
    assert tokens_per_word(e, target) < 0.95 * tokens_per_word(b, target)


# --------------------------------------------------------------------------- SentencePiece path
@pytest.mark.parametrize("code", TARGETS)
def test_sentencepiece_expansion_for_script(code, spm_base, cache, heldout):
    exp = build_tokenizer(tcfg(variant="expanded", english_vocab_size=512, num_new_tokens=N_NEW, training_words=None),
                          cache_dir=cache, texts=train_text, targets=(code,))
    check_common(exp, spm_base, code, heldout)
    n_base = len(spm_base.tokenizer)
    new = [p.piece for p in spm_util.read_model(exp.sp_model_path).pieces[n_base:]]
    assert len(new) == N_NEW and all(language(code).has_script_char(p) for p in new)
    assert exp.meta["targets"] == [code]


# --------------------------------------------------------------------------- byte-level path
# the fast suite keeps a two-byte-prefix script (Devanagari) and a one-byte one (Persian's Arabic
# script); Korean, Russian and Japanese (5-6 s each, mostly GPT-2's JSON) run with -m slow, and
# Russian also in test_two_targets_train_on_both
@pytest.mark.parametrize("code", [c if c in ("hi", "fa") else pytest.param(c, marks=pytest.mark.slow) for c in TARGETS])
def test_byte_level_expansion_for_script(code, gpt2_base, cache, heldout):
    exp = build_tokenizer(tcfg(variant="expanded", base="gpt2", num_new_tokens=N_NEW, training_words=None),
                          cache_dir=cache, texts=train_text, targets=(code,))
    check_common(exp, gpt2_base, code, heldout)
    n_base = len(json.loads((gpt2_base.path / "tokenizer.json").read_text())["model"]["merges"])
    new = json.loads((exp.path / "tokenizer.json").read_text())["model"]["merges"][n_base:]
    assert len(new) >= N_NEW and all(holds_prefix(a + b, code) for a, b in new)
    assert exp.meta["checked"]["english_docs_identical"] >= len(train_text("en"))


def test_two_targets_train_on_both(gpt2_base, cache, heldout):
    exp = build_tokenizer(tcfg(variant="expanded", base="gpt2", num_new_tokens=N_NEW, training_words=None),
                          cache_dir=cache, texts=train_text, targets=("hi", "ru"))
    assert exp.name == f"gpt2+hi-ru{N_NEW}" and set(exp.meta["training_words"]) == {"hi", "ru"}
    for code in ("hi", "ru"):
        assert tokens_per_word(exp.tokenizer, heldout[code]) < tokens_per_word(gpt2_base.tokenizer, heldout[code])


# --------------------------------------------------------------------------- byte prefixes
def dev(data: bytes) -> list[str]:
    return [B.to_alphabet(bytes([x])) for x in data]


def test_arabic_prefixes_are_the_lead_bytes():
    assert X.target_bytes(("ar",)).prefixes == X.ARABIC_LEAD_CHARS
    assert expand_mod.target_ranges(("ar",)) == expand_mod.ARABIC_RANGES
    assert expand_mod.target_test(("ar",)) is expand_mod.has_arabic
    fa = expand_mod.target_test(("fa",))
    assert all(fa(chr(cp)) == expand_mod.has_arabic(chr(cp)) for cp in range(0x10000) if not 0xD800 <= cp <= 0xDFFF)


def test_a_merge_must_hold_a_whole_prefix():
    """Devanagari's prefixes are two bytes (E0 A4, E0 A5): (E0, A4) holds one across the join;
    (A4, B9) holds none (A4 B9 also ends U+4939, a Han character) and never merges, however often
    it occurs or however low its ids."""
    tb = X.target_bytes(("hi",))
    e0, a4, b9 = dev(b"\xe0\xa4\xb9")  # ह
    assert tb.pair_holds(e0, a4) and not tb.pair_holds(a4, b9) and not tb.holds(e0) and not tb.holds(a4 + b9)
    assert tb.pair_holds(B.to_alphabet(b" ") + e0, a4 + b9) and not tb.pair_holds("x", e0)
    ids = {b9: 1, a4: 2, e0: 3}
    merges, new, _ = X.continue_bpe([([e0, a4, b9], 5), ([a4, b9, a4, b9], 50)], ids, set(), num_new=10,
                                    first_id=10, targets=("hi",))
    assert merges == [(e0, a4), (e0 + a4, b9)] and (a4, b9) not in merges
    # Arabic (one-byte prefixes) is unchanged by the same rule
    assert not X.target_bytes(("ar",)).pair_holds(a4, b9)


def test_target_text_is_found_through_its_prefixes():
    tb = X.target_bytes(("ko",))
    assert tb.in_text("한국어") and not tb.in_text("English, café, 中文")
    assert all(tb.holds(B.to_alphabet(chr(cp).encode())) for cp in (0xAC00, 0xD7A3, 0x1100))


# --------------------------------------------------------------------------- bilingual, report, refusals
def test_bilingual_trains_on_english_and_each_target(cache, heldout, spm_base):
    bil = build_tokenizer(tcfg(variant="bilingual", vocab_size=768, training_words=None), cache_dir=cache,
                          texts=train_text, targets=("hi",))
    assert bil.name == "bilingual-hi768" and set(bil.meta["training_words"]) == {"hi", "en"}
    assert tokens_per_word(bil.tokenizer, heldout["hi"]) < 0.8 * tokens_per_word(spm_base.tokenizer, heldout["hi"])


def test_report_covers_every_language(cache, tmp_path, spm_base):
    exp = build_tokenizer(tcfg(variant="expanded", english_vocab_size=512, num_new_tokens=N_NEW, training_words=None),
                          cache_dir=cache, texts=train_text, targets=("ko",))
    res = fertility_report([exp], tmp_path, lambda lang: _verses(lang, 40, 60), langs=("ko", "en"))
    r = res["variants"][exp.name]
    assert set(res["heldout_words"]) == {"ko", "en"} and "arabic_reduction_vs" not in r
    assert r["reduction_vs"]["ko"][spm_base.name] > 1.05
    assert (tmp_path / "tokenizer_report.png").is_file()


def _no_text(lang):
    raise AssertionError("read training text although the config cannot work")


def test_latin_target_expansion_is_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        build_tokenizer(tcfg(variant="expanded", base="gpt2"), cache_dir=tmp_path, texts=_no_text, targets=("hi", "sw"))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("tokenizer.variant=expanded: sw (Swahili) is written in Latin script")
    assert msg.endswith("use tokenizer=base or tokenizer=bilingual")


@pytest.mark.parametrize("targets,start", [(("xx",), "lang=xx: unknown language code"),
                                           (("en",), "lang=en: English is the base language"),
                                           ((), "tokenizer.variant=bilingual: no target language")])
def test_bad_targets_are_one_line(targets, start, tmp_path):
    with pytest.raises(ConfigError) as e:
        build_tokenizer(tcfg(variant="bilingual"), cache_dir=tmp_path, texts=_no_text, targets=targets)
    assert str(e.value).startswith(start) and "\n" not in str(e.value)
