"""Byte-level BPE bases (Tekken from mistral-common, Qwen from dashscope, GPT-2 from whisper) and
ALLaM's expansion of them: the converted vocabularies encode exactly as their packages do, and an
expansion keeps every base and special id, encodes all English demo text token for token as the
base does, round-trips bytes, loads with AutoTokenizer, and cuts Arabic tokens per word."""
from __future__ import annotations

import itertools
import json
from collections import Counter

import pytest
from omegaconf import OmegaConf
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from allam.config import ConfigError, TokenizerConfig
from allam.data.demo import demo_texts
from allam.tokenizer import build_tokenizer
from allam.tokenizer import bytelevel as B
from allam.tokenizer import bytelevel_expand as X

SMALL = dict(num_new_tokens=1000, training_words=80_000)
N_NEW = SMALL["num_new_tokens"]


def tcfg(**kw):
    return OmegaConf.merge(OmegaConf.structured(TokenizerConfig), kw)


def train_text(lang):
    return demo_texts(lang, "train")


def need(name: str):
    if B.SHIPPED[name].path() is None:
        pytest.skip(f"{B.SHIPPED[name].package} is not installed ({B.SHIPPED[name].install})")


@pytest.fixture(scope="module")
def cache(cache_dir):
    return cache_dir  # the session's cache: tokenizers another test file built are read, not rebuilt


@pytest.fixture(scope="module")
def heldout():
    return {lang: list(itertools.islice(demo_texts(lang, "val"), 150)) for lang in ("ar", "en")}


@pytest.fixture(scope="module")
def all_english():
    return list(demo_texts("en", "train")) + list(demo_texts("en", "val"))


def tokens_per_word(tok, docs):
    return sum(len(x) for x in tok(docs, add_special_tokens=False)["input_ids"]) / sum(len(d.split()) for d in docs)


# tekken's and qwen's exactness checks take 15-30 s each on 2 cores (slow set); gpt2's stays in the fast
# suite, and there the tokenizer report (tests/test_tasks.py) still converts and expands tekken
@pytest.mark.parametrize("name", [pytest.param("tekken", marks=pytest.mark.slow), pytest.param("qwen", marks=pytest.mark.slow),
                                  "gpt2"])
def test_shipped_base_encodes_like_its_package(name, cache, heldout):
    need(name)
    bundle = build_tokenizer(tcfg(base=name), cache_dir=cache, texts=train_text)
    ref = B.reference_encoder(name)
    docs = heldout["ar"] + heldout["en"]
    ours = bundle.tokenizer(docs, add_special_tokens=False)["input_ids"]
    assert [i for i, (a, d) in enumerate(zip(ours, docs)) if a != ref(d)] == []
    assert len(bundle.tokenizer) == {"tekken": 131_072, "qwen": 151_665, "gpt2": 50_257}[name]
    assert (bundle.path / "tokenizer.json").is_file() and bundle.sp_model_path is None


@pytest.mark.parametrize("name", [pytest.param("tekken", marks=pytest.mark.slow), pytest.param("qwen", marks=pytest.mark.slow), "gpt2"])
def test_expansion_keeps_english_and_ids(name, cache, heldout, all_english):
    need(name)
    base = build_tokenizer(tcfg(base=name), cache_dir=cache, texts=train_text)
    exp = build_tokenizer(tcfg(variant="expanded", base=name, **SMALL), cache_dir=cache, texts=train_text)
    b, e = base.tokenizer, exp.tokenizer
    assert len(e) == len(b) + N_NEW and exp.base.name == name
    vb, ve = b.get_vocab(), e.get_vocab()
    assert all(ve[t] == i for t, i in vb.items())  # every base id, special tokens included
    assert sorted(set(ve.values()) - set(vb.values())) == list(range(len(b), len(b) + N_NEW))
    assert [e.convert_tokens_to_ids(s) for s in b.all_special_tokens] == [b.convert_tokens_to_ids(s) for s in b.all_special_tokens]
    # every English document of the demo corpus encodes token for token as the base does
    assert e(all_english, add_special_tokens=False)["input_ids"] == b(all_english, add_special_tokens=False)["input_ids"]
    for doc in heldout["ar"][:50] + heldout["en"][:20]:
        norm = e.backend_tokenizer.normalizer.normalize_str(doc) if e.backend_tokenizer.normalizer else doc
        assert e.decode(e.encode(doc, add_special_tokens=False)) == norm
    assert tokens_per_word(e, heldout["ar"]) < 0.95 * tokens_per_word(b, heldout["ar"])
    again = AutoTokenizer.from_pretrained(str(exp.path))  # a plain Hugging Face folder
    assert again(heldout["ar"][:5])["input_ids"] == e(heldout["ar"][:5])["input_ids"]
    merges = json.loads((exp.path / "tokenizer.json").read_text())["model"]["merges"]
    base_merges = json.loads((base.path / "tokenizer.json").read_text())["model"]["merges"]
    assert merges[: len(base_merges)] == base_merges  # appended after the base's last rank


def test_every_new_merge_needs_an_arabic_lead_byte(cache):
    need("gpt2")
    base = build_tokenizer(tcfg(base="gpt2"), cache_dir=cache, texts=train_text)
    exp = build_tokenizer(tcfg(variant="expanded", base="gpt2", **SMALL), cache_dir=cache, texts=train_text)
    n_base = len(json.loads((base.path / "tokenizer.json").read_text())["model"]["merges"])
    new = json.loads((exp.path / "tokenizer.json").read_text())["model"]["merges"][n_base:]
    assert len(new) >= N_NEW
    assert all(not X.ARABIC_LEAD_CHARS.isdisjoint(a + b) for a, b in new)
    vocab = exp.tokenizer.get_vocab()
    assert all(a in vocab and b in vocab and a + b in vocab for a, b in new)  # every merge loads


def test_continue_bpe_merges_most_frequent_pair_first():
    """On a toy: the counts decide, ties go to the lower ids, non-Arabic pairs never merge, and a
    merge's result feeds the next."""
    a, b, c = B.to_alphabet("ب".encode()), B.to_alphabet("ت".encode()), B.to_alphabet("ث".encode())
    ids = {a: 10, b: 11, c: 12, "x": 1, "y": 2}
    words = [([a, b, c], 5), ([a, b], 3), (["x", "y"], 100), ([c, a], 2)]
    merges, new, last = X.continue_bpe(words, ids, set(), num_new=3, first_id=20)
    assert merges == [(a, b), (a + b, c), (c, a)]
    assert new == {a + b: 20, a + b + c: 21, c + a: 22} and last == 2
    merges, new, _ = X.continue_bpe(words, ids, set(), num_new=10, first_id=20, min_count=3)
    assert merges == [(a, b), (a + b, c)]  # pairs seen fewer than 3 times are not merged


def test_special_tokens_outside_the_model_vocab_keep_their_ids(cache):
    """A Llama-3-style file lists its special tokens only as added tokens: they are pinned into the
    model's vocabulary at their ids, so appending tokens cannot renumber them."""
    need("gpt2")
    base = build_tokenizer(tcfg(base="gpt2"), cache_dir=cache, texts=train_text)
    spec = json.loads((base.path / "tokenizer.json").read_text())
    del spec["model"]["vocab"]["<|endoftext|>"]
    merged, stats = X.expand(json.dumps(spec), itertools.islice(demo_texts("ar"), 3000), 300)
    tok = Tokenizer.from_str(merged)
    assert tok.token_to_id("<|endoftext|>") == 50256 and stats.first_new_id == 50257
    assert stats.added == 300 and tok.get_vocab_size(with_added_tokens=True) == 50257 + 300


def test_byte_level_folder_base_expands(tmp_path, cache):
    """A byte-level tokenizer.json folder (what a Qwen or Llama-3 checkpoint ships) is a base too."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bl = ByteLevelBPETokenizer()
    bl.train_from_iterator(itertools.islice(demo_texts("en"), 400), vocab_size=600, special_tokens=["<|endoftext|>"])
    folder = tmp_path / "bytelevel"
    PreTrainedTokenizerFast(tokenizer_object=bl._tokenizer, eos_token="<|endoftext|>").save_pretrained(str(folder))
    exp = build_tokenizer(tcfg(variant="expanded", base=str(folder), num_new_tokens=300, training_words=50_000),
                          cache_dir=cache, texts=train_text)
    assert len(exp.tokenizer) == 900 and exp.tokenizer.eos_token == "<|endoftext|>"
    en = list(itertools.islice(demo_texts("en", "val"), 100))
    assert exp.tokenizer(en)["input_ids"] == exp.base.tokenizer(en)["input_ids"]


def test_too_few_pairs_is_one_line(cache):
    need("gpt2")
    with pytest.raises(ConfigError, match=r"^tokenizer.num_new_tokens=50000: the Arabic training text .* supports only \d+ new tokens over gpt2"):
        build_tokenizer(tcfg(variant="expanded", base="gpt2", num_new_tokens=50_000, training_words=3000),
                        cache_dir=cache, texts=train_text)


def test_missing_package_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(B.ShippedBase, "path", lambda self: None)
    with pytest.raises(ConfigError, match=r"^tokenizer.base=qwen: resources/qwen.tiktoken of the dashscope package is "
                                          r"not installed \(pip install --no-deps dashscope==2.0.2\)$"):
        build_tokenizer(tcfg(base="qwen"), cache_dir=tmp_path, texts=train_text)


def test_arabic_pretokens_are_cut_by_the_base():
    need("gpt2")
    tok = Tokenizer.from_str(B.shipped_tokenizer_json("gpt2")[0])
    counts = X.arabic_pretokens(tok, ["قال الله قال", "English only"])
    assert counts == Counter({B.to_alphabet("قال".encode()): 1, B.to_alphabet(" الله".encode()): 1,
                              B.to_alphabet(" قال".encode()): 1})
