"""Data pipeline: exact blend on windows, stages, shards cache, resume, fingerprint, bad input.

Everything here uses a tiny byte-level BPE trained in the session and tiny corpora written to
tmp dirs (no demo corpus, no downloads), so the file runs in well under a minute on 2 cores.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from allam.config import ConfigError, DataConfig, SourceConfig, Stage
from allam.data.blend import Blend, Permutation, SourceInfo, bcount
from allam.data.datamodule import AllamDataModule
from allam.data.fingerprint import check_fingerprint

AR_WORDS = ("كتاب قلم بيت مدرسة علم نور ماء شمس قمر بحر جبل طريق مدينة سماء أرض شجرة زهرة "
            "رجل امرأة ولد بنت صديق عمل يوم ليل صباح مساء كلام حديث قال كان").split()
EN_WORDS = ("the of and book house school light water sun moon sea mountain road city sky earth "
            "tree flower man woman child friend work day night morning evening word said was").split()


def _docs(words, n, seed, length=24):
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(length)) for _ in range(n)]


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def tok():
    from conftest import tiny_bytelevel_tokenizer

    return tiny_bytelevel_tokenizer(_docs(AR_WORDS, 200, 0) + _docs(EN_WORDS, 200, 1), 400)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path_factory.mktemp("corpus")
    (d / "ar_nat.txt").write_text("\n".join(_docs(AR_WORDS, 300, 10)) + "\n", encoding="utf-8")
    en_orig = _docs(EN_WORDS, 200, 11)
    with open(d / "ar_tr.jsonl", "w", encoding="utf-8") as fh:
        for en, ar in zip(en_orig, _docs(AR_WORDS, 200, 12)):
            fh.write(json.dumps({"text": ar, "en": en}, ensure_ascii=False) + "\n")
    pq.write_table(pa.table({"text": _docs(EN_WORDS, 300, 13)}), d / "en.parquet")
    (d / "en2").mkdir()
    (d / "en2" / "a.txt").write_text("\n".join(_docs(EN_WORDS, 60, 14)) + "\n", encoding="utf-8")
    (d / "en2" / "b.txt").write_text("\n".join(_docs(EN_WORDS, 60, 15)) + "\n", encoding="utf-8")
    return d


def sources(corpus: Path) -> dict:
    return {
        "ar_nat": {"lang": "ar", "kind": "natural", "loader": "text", "path": str(corpus / "ar_nat.txt")},
        "ar_tr": {"lang": "ar", "kind": "translated", "loader": "jsonl", "path": str(corpus / "ar_tr.jsonl"), "pair_field": "en"},
        "en_pq": {"lang": "en", "kind": "natural", "loader": "parquet", "path": str(corpus / "en.parquet")},
        "en_glob": {"lang": "en", "kind": "natural", "loader": "text", "path": str(corpus / "en2" / "*.txt")},
    }


def data_cfg(srcs: dict, **kw):
    cfg = OmegaConf.structured(DataConfig)
    cfg.sources = {k: OmegaConf.merge(OmegaConf.structured(SourceConfig), v) for k, v in srcs.items()}
    return OmegaConf.merge(cfg, OmegaConf.create({"batch_size": 4, "val_bytes": 0, **kw}))


def make_dm(tok, cache, srcs, *, seq_len=32, train_batches=40, workers=1, world=1, **kw):
    return AllamDataModule(data_cfg(srcs, **kw), tok, seq_len=seq_len, cache_dir=cache,
                           train_batches=train_batches, workers=workers, progress=False, world=world)


# --------------------------------------------------------------------------- the blend
SRC5 = [SourceInfo("a1", "ar", "natural", 300), SourceInfo("a2", "ar", "translated", 500),
        SourceInfo("a3", "ar", "translated", 70), SourceInfo("e1", "en", "natural", 1000),
        SourceInfo("e2", "en", "natural", 30)]


def _max_window_dev(x: np.ndarray, p: float, sizes) -> float:
    cs = np.concatenate([[0], np.cumsum(x, dtype=np.float64)])
    return max(float(np.abs(cs[n:] - cs[:-n] - p * n).max()) for n in sizes if n <= len(x))


@pytest.mark.parametrize("ratio", [0.0, 0.1, 1 / 3, 0.45, 0.5, 0.9, 1.0])
def test_every_window_within_one_block_of_target(ratio):
    blend = Blend(SRC5, [Stage(None, ratio, 0.5, "data")], 256, seed=7)
    n = 4000
    src, _ = blend.locate(np.arange(n))
    is_ar = np.isin(src, [0, 1, 2])
    sizes = list(range(1, 80)) + [128, 1000, 3999]
    assert _max_window_dev(is_ar, ratio, sizes) < 1.0  # Arabic (so also English) per window
    if ratio > 0:
        tr = np.isin(src[is_ar], [1, 2])  # translated share inside the Arabic blocks of any window
        assert _max_window_dev(tr, 0.5, sizes) < 1.0
    # realized totals per source stay within ~one block of the target (nested splits)
    targets = blend.targets(n)[0]
    for s in range(len(SRC5)):
        assert abs(int((src == s).sum()) - targets.get(s, 0.0)) < 1.5


def test_translated_share_by_size_and_weights():
    blend = Blend(SRC5, [Stage(None, 0.5, None, "data")], 64, seed=0)
    t = blend.targets(10_000)[0]
    assert t[1] / (t[0] + t[1] + t[2]) == pytest.approx(570 / 870 * 500 / 570)
    assert t[3] / t[4] == pytest.approx(1000 / 30)
    weighted = [SourceInfo(s.name, s.lang, s.kind, s.blocks, w) for s, w in zip(SRC5, [1, 1, 3, 1, 1])]
    t = Blend(weighted, [Stage(None, 0.5, 0.5, "data")], 64, seed=0).targets(10_000)[0]
    assert t[2] / t[1] == pytest.approx(3.0) and t[3] == pytest.approx(t[4])
    mixed = [SourceInfo(s.name, s.lang, s.kind, s.blocks, w) for s, w in zip(SRC5, [None, 1, None, None, None])]
    with pytest.raises(ConfigError, match="weight"):
        Blend(mixed, [Stage(None, 0.5, 0.5, "data")], 64, seed=0)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4097])
def test_permutation_is_a_bijection(n):
    p = Permutation(n, 1234, "src", 3)(np.arange(n))
    assert sorted(p.tolist()) == list(range(n))
    if n > 16:
        assert not np.array_equal(p, Permutation(n, 1234, "src", 4)(np.arange(n)))  # new order each epoch


def test_stage_switch_at_configured_token_count():
    stages = [Stage(1000 * 32, 0.0, None, "data.stages.0"), Stage(None, 0.6, 0.5, "data.stages.1")]
    blend = Blend(SRC5, stages, 32, seed=1)
    assert blend.starts == [0, 1000]
    src, k = blend.locate(np.arange(3000))
    is_ar = np.isin(src, [0, 1, 2])
    assert not is_ar[:1000].any() and is_ar[1000]  # English only, then the mix from token 32,000
    assert _max_window_dev(is_ar[1000:], 0.6, range(1, 50)) < 1.0
    # sources continue where the previous stage left them (no block consumed twice in an epoch)
    e1 = k[src == 3]
    assert np.array_equal(e1, np.arange(len(e1)))
    # a switch that does not fall on a block boundary happens at the first block at or after it
    assert Blend(SRC5, [Stage(100, 0.0, None, "s"), Stage(None, 0.5, None, "s")], 32, 1).starts == [0, 4]


# --------------------------------------------------------------------------- the datamodule
def test_batches_mix_and_validation(tok, corpus, tmp_path, capsys):
    dm = make_dm(tok, tmp_path / "cache", sources(corpus), ar_ratio=0.45, workers=2)
    dm.prepare()
    table = capsys.readouterr().out
    assert "target tok" in table and "ar_nat" in table and "arabic share" in table
    assert dm.val_languages == ["ar", "en"]
    batches = list(dm.train_dataloader())
    assert len(batches) == 40 and all(b.shape == (4, 33) and b.dtype == torch.int64 for b in batches)
    # every delivered block is the block the blend names, read from the source's shard
    src, block = dm.blend.blocks(np.arange(160))
    flat = torch.cat(batches).numpy()
    for i in (0, 1, 57, 159):
        sh = dm._shard_list[src[i]]
        assert np.array_equal(flat[i], sh.tokens("train")[block[i] * 33 : block[i] * 33 + 33])
    is_ar = np.array([dm._shard_list[s].lang == "ar" for s in src])
    assert abs(is_ar.sum() - 0.45 * 160) < 1
    assert (flat == tok.eos_token_id).any()  # document boundaries
    rep = dm.mix_report()
    assert rep["realized_ar_ratio"] == pytest.approx(0.45, abs=1 / 160)
    # the fingerprint holds what the built shards hold: a rebuild under other rules is named on resume
    assert {n: f["train_tokens"] for n, f in dm.fingerprint()["sources"].items()} == \
        {sh.name: int(sh.meta["train"]["tokens"]) for sh in dm._shard_list}
    assert sum(v["realized_tokens"] for v in rep["sources"].values()) == 160 * 32
    assert rep["sources"]["ar_tr"]["kind"] == "translated" and rep["sources"]["en_glob"]["epochs"] > 0
    val = dm.val_dataloader()
    ar_val = torch.cat(list(val[0]))
    assert ar_val.shape[1] == 33 and len(ar_val) == len(val[0].dataset) > 0
    # blocks overlap by one token: together they are exactly the held-out stream of the Arabic sources
    stream = torch.cat([ar_val[0, :1], ar_val[:, 1:].reshape(-1)])
    stream = stream[stream != -100].numpy()
    held_out = np.concatenate([sh.tokens("val") for sh in dm._shard_list if sh.lang == "ar"])
    assert np.array_equal(stream, held_out)
    text = tok.decode(ar_val[0][ar_val[0] >= 0].tolist())
    assert any(w in text for w in AR_WORDS) and not any(w in text.split() for w in EN_WORDS)


def test_parallel_pairs_put_original_and_translation_in_one_sequence(tok, corpus, tmp_path):
    srcs = {k: v for k, v in sources(corpus).items() if k in ("ar_tr", "en_pq")}
    plain = make_dm(tok, tmp_path / "c", srcs, ar_ratio=0.5)
    paired = make_dm(tok, tmp_path / "c", srcs, ar_ratio=0.5, parallel_pairs=True)
    plain.prepare(), paired.prepare()
    a, b = plain.shards["ar_tr"], paired.shards["ar_tr"]
    assert a.path != b.path and b.meta["train"]["tokens"] > 1.5 * a.meta["train"]["tokens"]
    doc = tok.decode(b.tokens("train")[:400].tolist()).split("</s>")[0].removeprefix("<s>")  # documents are [BOS] text EOS
    en, ar = doc.split("\n\n")
    assert set(en.split()) <= set(EN_WORDS) and set(ar.split()) <= set(AR_WORDS)
    assert b.meta["val"]["tokens"] == a.meta["val"]["tokens"]  # validation stays monolingual
    srcs["ar_tr"] = {**srcs["ar_tr"], "pair_field": None}
    with pytest.raises(ConfigError, match=r"data.sources.ar_tr.pair_field=None"):
        make_dm(tok, tmp_path / "c", srcs, parallel_pairs=True).prepare()


def test_the_split_count_is_exact_past_two_to_the_32_blocks():
    """The loader's numpy count equals the report's integer count at paper-scale block counts
    (5e9 blocks x a 0.9 split overflowed 64 bits before)."""
    rate = int(round(0.9 * 2**32))
    n = np.array([0, 1, 7, 2**32 - 1, 2**32, 5 * 10**9, 2**40 + 3, 2**63], dtype=np.uint64)
    assert [int(v) for v in bcount(rate, n)] == [bcount(rate, int(v)) for v in n]
    assert int(bcount(rate, np.array([5 * 10**9]))[0]) == 4_500_000_000


def test_ranks_read_disjoint_slices_of_one_blend(tok, corpus, tmp_path):
    one = make_dm(tok, tmp_path / "c", sources(corpus), train_batches=8)
    ref = list(one.train_dataloader())
    for rank in (0, 1):
        dm = make_dm(tok, tmp_path / "c", sources(corpus), train_batches=4)
        dm.rank, dm.world = rank, 2
        got = list(dm.train_dataloader())
        for m in range(4):
            assert torch.equal(got[m], ref[2 * m + rank])


def test_cache_reuse_and_invalidation(tok, corpus, tmp_path, capsys):
    cache = tmp_path / "cache"
    srcs = {k: v for k, v in sources(corpus).items() if k in ("ar_nat", "en_pq")}
    first = make_dm(tok, cache, srcs)
    first.prepare()
    assert "docs read" in capsys.readouterr().out
    again = make_dm(tok, cache, srcs)
    again.prepare()
    assert "docs read" not in capsys.readouterr().out  # reused, nothing rebuilt
    assert again.shards["ar_nat"].path == first.shards["ar_nat"].path
    assert torch.equal(next(iter(again.train_dataloader())), next(iter(first.train_dataloader())))
    # a cleaning option rebuilds only that source
    changed = dict(srcs, ar_nat={**srcs["ar_nat"], "min_chars": 30})
    dm = make_dm(tok, cache, changed)
    dm.prepare()
    out = capsys.readouterr().out
    assert "ar_nat:" in out and "en_pq:" not in out
    assert dm.shards["ar_nat"].path != first.shards["ar_nat"].path
    # a different tokenizer rebuilds everything
    other = tok.__class__(tokenizer_object=tok.backend_tokenizer.__class__.from_str(
        tok.backend_tokenizer.to_str().replace('"</s>"', '"<eos>"')), eos_token="<eos>")
    dm = make_dm(other, cache, srcs)
    dm.prepare()
    assert dm.shards["en_pq"].path != first.shards["en_pq"].path
    # changed content rebuilds
    f = tmp_path / "small.txt"
    f.write_text("\n".join(_docs(EN_WORDS, 40, 99)) + "\n", encoding="utf-8")
    s2 = {"a": srcs["ar_nat"], "e": {"lang": "en", "loader": "text", "path": str(f)}}
    p1 = make_dm(tok, cache, s2)
    p1.prepare()
    with open(f, "a", encoding="utf-8") as fh:
        fh.write(" ".join(EN_WORDS) + " more text\n")
    p2 = make_dm(tok, cache, s2)
    p2.prepare()
    assert p2.shards["e"].path != p1.shards["e"].path
    assert p2.shards["e"].meta["docs_read"] == p1.shards["e"].meta["docs_read"] + 1


def test_fingerprint_survives_a_touch_and_a_copy_but_not_an_edit(tmp_path):
    """A source's content fingerprint is its files' names, sizes and sampled bytes: the same bytes
    touched or copied to another folder keep it; a same-size edit of a sampled byte changes it."""
    import os

    from allam.data import holdout
    from allam.data import source_files as S

    def fp(path):
        return S.content_fingerprint("e", {"loader": "text", "path": str(path), "lang": "en"})

    small = tmp_path / "a" / "e.txt"
    big = tmp_path / "a" / "big.txt"
    small.parent.mkdir()
    small.write_text("\n".join(_docs(EN_WORDS, 40, 5)) + "\n", encoding="utf-8")
    big.write_bytes(("\n".join(_docs(EN_WORDS, 12000, 6)) + "\n").encode())
    assert big.stat().st_size > holdout.SAMPLE_BLOCKS * holdout.SAMPLE_BYTES  # sampled, not read whole
    for f in (small, big):
        before = fp(f)
        os.utime(f, (1, 1))  # touch (to another mtime)
        assert fp(f) == before
        copy = tmp_path / "elsewhere" / f.name
        copy.parent.mkdir(exist_ok=True)
        copy.write_bytes(f.read_bytes())
        assert fp(copy) == before
        data = bytearray(f.read_bytes())
        data[-2] = ord("X") if data[-2] != ord("X") else ord("Y")  # the last block is always sampled
        f.write_bytes(bytes(data))
        assert fp(f) != before


def test_shards_use_uint32_when_vocab_exceeds_uint16(tmp_path, corpus):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(EN_WORDS + AR_WORDS + ["[UNK]"])}
    vocab.update({f"pad{i}": 70_000 + i for i in range(10)})
    vocab["</s>"] = 70_010
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    big = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="</s>")
    dm = make_dm(big, tmp_path / "c", {k: v for k, v in sources(corpus).items() if k in ("ar_nat", "en_pq")})
    dm.prepare()
    assert dm.shards["ar_nat"].meta["dtype"] == "uint32"
    assert int(dm.shards["ar_nat"].tokens("train").max()) == 70_010  # EOS survives


# --------------------------------------------------------------------------- resume
def _stage_cfg():
    return {"stages": [{"tokens": 20 * 4 * 32, "ar_ratio": 0.0}, {"tokens": None, "ar_ratio": 0.5, "translated_share": 0.5}]}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_state_round_trips_through_torch_save(tok, corpus, tmp_path, num_workers):
    srcs = sources(corpus)
    ref = list(make_dm(tok, tmp_path / "c", srcs, **_stage_cfg()).train_dataloader())
    dm = make_dm(tok, tmp_path / "c", srcs, num_workers=num_workers, **_stage_cfg())
    it = iter(dm.train_dataloader())
    first = [next(it) for _ in range(17)]
    torch.save(dm.state_dict(), tmp_path / "state.pt")
    del it
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    fresh = make_dm(tok, tmp_path / "c", srcs, num_workers=num_workers, **_stage_cfg())
    fresh.load_state_dict(state)
    rest = list(fresh.train_dataloader())  # crosses the stage switch at batch 20
    got = first + rest
    assert len(got) == len(ref) == 40
    assert all(torch.equal(a, b) for a, b in zip(got, ref))


def test_fingerprint_refusal_names_what_changed(tok, corpus, tmp_path):
    srcs = sources(corpus)
    dm = make_dm(tok, tmp_path / "c", srcs)
    state = dm.state_dict()
    other = make_dm(tok, tmp_path / "c", srcs, ar_ratio=0.3)
    with pytest.raises(ConfigError, match=r"stages\.0\.ar_ratio: 0\.45 -> 0\.3.*data.allow_fingerprint_change=true"):
        other.load_state_dict(state)
    allowed = make_dm(tok, tmp_path / "c", srcs, ar_ratio=0.3, allow_fingerprint_change=True)
    allowed.load_state_dict(state)
    srcs2 = dict(srcs, ar_nat={**srcs["ar_nat"], "strip_diacritics": True})
    with pytest.raises(ConfigError, match=r"sources\.ar_nat\.strip_diacritics: False -> True"):
        make_dm(tok, tmp_path / "c", srcs2).load_state_dict(state)
    with pytest.raises(ConfigError, match="seq_len: 32 -> 16"):
        make_dm(tok, tmp_path / "c", srcs, seq_len=16).load_state_dict(state)
    assert check_fingerprint({"a": 1}, {"a": 1}, allow_change=False) == []
    assert check_fingerprint({"a": 1}, {"a": 2}, allow_change=True) == ["a: 1 -> 2"]


# --------------------------------------------------------------------------- bad input
def _one(corpus, **override):
    srcs = {k: v for k, v in sources(corpus).items() if k in ("ar_nat", "en_pq")}
    for k, v in override.items():
        srcs[k] = v
    return srcs


def test_bad_input_errors(tok, corpus, tmp_path):
    c = tmp_path / "c"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"data.sources.e: empty source"):
        make_dm(tok, c, _one(corpus, e={"lang": "en", "loader": "text", "path": str(empty)})).prepare()
    with pytest.raises(ConfigError, match=r"data.sources.e.path=.*nope.txt: no such file"):
        make_dm(tok, c, _one(corpus, e={"lang": "en", "loader": "text", "path": str(tmp_path / "nope.txt")})).prepare()
    with pytest.raises(ConfigError, match=r"data.sources.e.path=.*: the glob matches no file"):
        make_dm(tok, c, _one(corpus, e={"lang": "en", "loader": "text", "path": str(tmp_path / "*.none")})).prepare()
    # English text declared Arabic
    with pytest.raises(ConfigError, match=r"data.sources.wrong.lang=ar: .* mostly not Arabic script"):
        make_dm(tok, c, _one(corpus, wrong={"lang": "ar", "loader": "parquet", "path": str(corpus / "en.parquet")})).prepare()
    # Arabic share asked for without an Arabic source
    with pytest.raises(ConfigError, match=r"data.ar_ratio=0.45: is above 0 but data.sources has no Arabic source"):
        make_dm(tok, c, {"en_pq": sources(corpus)["en_pq"]}).prepare()
    with pytest.raises(ConfigError, match=r"model.seq_len=64: larger than the model allows"):
        AllamDataModule(data_cfg(_one(corpus)), tok, seq_len=64, cache_dir=c, train_batches=1, max_seq_len=32)
    with pytest.raises(ConfigError, match=r"data.sources.ar_nat: exhausted: .*data.allow_repeat=false"):
        make_dm(tok, c, _one(corpus), train_batches=2000, allow_repeat=False).prepare()
    # the ranks count before any trainer exists: 150 micro-batches of 4 blocks need 270 of
    # ar_nat's 455 blocks on one rank, 540 on each of 2 ranks' share of the run
    make_dm(tok, c, _one(corpus), train_batches=150, allow_repeat=False).prepare()
    with pytest.raises(ConfigError, match=r"data.sources.ar_nat: exhausted: the run needs 540 blocks .*allow_repeat=false"):
        make_dm(tok, c, _one(corpus), train_batches=150, world=2, allow_repeat=False).prepare()
    with pytest.raises(ConfigError, match=r"translated_share=0.5: is above 0 but no Arabic source has kind=translated"):
        make_dm(tok, c, _one(corpus), translated_share=0.5).prepare()
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("the book of the sea and the sun\n" * 1, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"data.sources.e: .* fewer than one block"):
        make_dm(tok, c, _one(corpus, e={"lang": "en", "loader": "text", "path": str(tiny)}), seq_len=512).prepare()


def test_non_utf8_is_an_error_with_offset_or_skipped_and_counted(tok, corpus, tmp_path):
    good = "\n".join(_docs(EN_WORDS, 120, 5)) + "\n"
    bad = tmp_path / "bad.txt"
    bad.write_bytes(good.encode() + b"the sea \xff\xfe broken line of text here\n" + good.encode())
    offset = len(good.encode()) + len(b"the sea ")
    src = {"lang": "en", "loader": "text", "path": str(bad)}
    with pytest.raises(ConfigError, match=rf"bad.txt is not valid UTF-8 at byte offset {offset} .*skip_bad_utf8=true"):
        make_dm(tok, tmp_path / "c", _one(corpus, e=src)).prepare()
    dm = make_dm(tok, tmp_path / "c", _one(corpus, e={**src, "skip_bad_utf8": True}))
    dm.prepare()
    assert dm.shards["e"].meta["drops"]["bad_utf8"] == 1
    assert dm.mix_report()["sources"]["e"]["dropped"]["duplicate"] == 120  # the file repeats itself


def test_cleaning_steps_count_their_drops(tok, tmp_path, corpus):
    from allam.data.cleaning import Cleaner

    cl = Cleaner(lang="ar", strip_diacritics=True, strip_tatweel=True, strip_bidi=True, min_chars=5)
    assert cl.clean("كِتَابٌ\u200fـــ  جميل")[0] == "كتاب جميل"
    assert cl.clean("   ")[1] == "empty" and cl.clean("قلم")[1] == "too_short"
    assert cl.clean("this is all english text")[1] == "wrong_script"
    assert cl.clean("كتاب جميل جدا في البيت with english")[0] is not None  # 11 of 29 letters Latin: kept
    assert Cleaner(lang="ar", max_wrong_script=1.0).clean("this is all english text")[0] is not None
    f = tmp_path / "mixed.txt"
    lines = _docs(EN_WORDS, 60, 3) + ["short", "كتاب قلم بيت مدرسة علم نور ماء شمس قمر"] + _docs(EN_WORDS, 5, 3)
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    dm = make_dm(tok, tmp_path / "c", _one(corpus, e={"lang": "en", "loader": "text", "path": str(f), "min_chars": 10}))
    dm.prepare()
    drops = dm.mix_report()["sources"]["e"]["dropped"]
    assert (drops["too_short"], drops["wrong_script"], drops["duplicate"], drops["empty"]) == (1, 1, 5, 0)
    assert dm.shards["e"].meta["docs_read"] == 67


def test_source_fields_have_one_home(tok, corpus, tmp_path):
    """The cleaner, the shard cache's reader key and the data fingerprint take a source's fields
    from SourceConfig (their roles), as plain values, absent fields at their defaults."""
    from dataclasses import fields

    from allam.config import source_fields
    from allam.data.cleaning import Cleaner
    from allam.data.source_files import reader_key
    from allam.data.sources import source_values

    validated = data_cfg(sources(corpus)).sources["ar_nat"]
    plain = {"lang": "ar", "loader": "text", "path": validated.path, "kind": "natural", "min_chars": None}
    assert source_values(plain) == source_values(validated)  # a dict gets SourceConfig's defaults
    src = source_values(validated)
    assert set(src) == {f.name for f in fields(SourceConfig)} and type(src["lang"]) is str
    cleaner = Cleaner.from_source(validated)
    assert tuple(cleaner.options()) == source_fields("cleaning")
    assert cleaner == Cleaner.from_source(plain) and type(cleaner.lang) is str
    assert type(Cleaner(lang="en", max_wrong_script=1).max_wrong_script) is float  # typed as its default
    assert tuple(reader_key(src)["reader"]) == source_fields("reader")
    with pytest.raises(TypeError, match="no option weight"):
        Cleaner(lang="ar", weight=1.0)
    fp = make_dm(tok, tmp_path / "c", sources(corpus)).fingerprint()
    assert set(fp["sources"]["ar_nat"]) == {f.name for f in fields(SourceConfig)} | {"content"}
    assert {type(v) for v in fp["sources"]["ar_nat"].values()} <= {str, int, float, bool, type(None)}


def test_the_fingerprint_names_reordered_sources_and_rebuilt_shards(make_cfg):
    """The blend chains the sources in their order, which Hydra takes from the command line
    (+data.sources.X in another order is another stream), and draws blocks by each source's token
    count, which a rebuild under other cleaning rules or Unicode tables can change while the raw
    files stay the same: both are named on resume (a checkpoint from before the counts were
    recorded compares without them)."""
    from allam.data.fingerprint import fingerprint_diff

    news, web = ("+data.sources.news={lang: en, loader: text, path: /x/news.txt}",
                 "+data.sources.web={lang: en, loader: text, path: /x/web.txt}")
    assert list(make_cfg(news, web).data.sources)[-2:] == ["news", "web"]
    assert list(make_cfg(web, news).data.sources)[-2:] == ["web", "news"]
    src = {"lang": "en", "content": "c"}
    saved = {"sources": {"news": {**src, "train_tokens": 100}, "web": {**src}}}
    assert fingerprint_diff(saved, {"sources": {"web": {**src}, "news": {**src, "train_tokens": 100}}}) == [
        "sources order: news,web -> web,news"]
    assert fingerprint_diff(saved, {"sources": {"news": {**src, "train_tokens": 90}, "web": {**src, "train_tokens": 5}}}) == [
        "sources.news.train_tokens: 100 -> 90"]


def test_duplicate_memory_is_exact_across_merges():
    from allam.data.cleaning import HashSet

    hs = HashSet()
    assert hs.first_seen(np.array([1, 2, 2, 3], np.uint64)).tolist() == [True, True, False, True]
    assert hs.first_seen(np.array([3, 4, 5, 1, 6], np.uint64)).tolist() == [False, True, True, False, True]
    assert len(hs) == 6 and [len(r) for r in hs.runs] == [6]  # the second batch's run merged into the first
    assert hs.first_seen(np.array([6, 7, 0], np.uint64)).tolist() == [False, True, True]
    assert [len(r) for r in hs.runs] == [6, 2]
    # many batches: the runs merge like a binary counter and the answers stay those of a plain set
    rng = np.random.default_rng(0)
    hs, seen = HashSet(), set()
    for _ in range(300):
        batch = rng.integers(0, 3000, size=int(rng.integers(1, 40)), dtype=np.uint64)
        want = []
        for h in batch.tolist():
            want.append(h not in seen)
            seen.add(h)
        assert hs.first_seen(batch).tolist() == want
    assert len(hs) == len(seen) and len(hs.runs) <= int(np.log2(len(seen))) + 1
    assert all(len(a) > len(b) for a, b in zip(hs.runs, hs.runs[1:]))  # sizes strictly decrease
    assert all(bool((np.diff(r.hashes.astype(np.int64)) > 0).all()) for r in hs.runs)  # each run sorted, distinct


def test_hf_dataset_from_disk(tok, corpus, tmp_path):
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "hf_en"
    datasets.Dataset.from_dict({"content": _docs(EN_WORDS, 120, 21)}).save_to_disk(str(path))
    srcs = _one(corpus, en_pq={"lang": "en", "loader": "hf", "path": str(path), "text_field": "content"})
    dm = make_dm(tok, tmp_path / "c", srcs)
    dm.prepare()
    meta = dm.shards["en_pq"].meta
    assert meta["docs_read"] == 120 and meta["val"]["docs"] == 50  # chapter 1 (docs 50-99) is held out
    bad = _one(corpus, en_pq={"lang": "en", "loader": "hf", "path": str(path), "text_field": "text"})
    with pytest.raises(ConfigError, match=r"data.sources.en_pq.text_field=text: no such column"):
        make_dm(tok, tmp_path / "c", bad).prepare()


def test_bad_jsonl_line_names_file_and_line(tok, corpus, tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text(json.dumps({"text": "the sea and the sun " * 3}) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"data.sources.e: .*x.jsonl line 2 is not valid JSON .*skip_bad_json=true"):
        make_dm(tok, tmp_path / "c", _one(corpus, e={"lang": "en", "loader": "jsonl", "path": str(f)})).prepare()


def test_skip_bad_json_counts_and_names_the_lines(tok, corpus, tmp_path, capsys):
    f = tmp_path / "x.jsonl"
    good = [json.dumps({"text": " ".join(_docs(EN_WORDS, 1, i)[0].split()[:20])}) for i in range(60)]
    f.write_text("\n".join(good[:10] + ["{not json"] + good[10:40] + ["[1, 2", "also not"] + good[40:]) + "\n",
                 encoding="utf-8")
    dm = make_dm(tok, tmp_path / "c", _one(corpus, e={"lang": "en", "loader": "jsonl", "path": str(f), "skip_bad_json": True}))
    dm.prepare()
    meta = dm.shards["e"].meta
    assert meta["drops"]["bad_json"] == 3 and meta["docs_read"] == 60
    out = capsys.readouterr().out
    assert f"data: e: skipped 3 lines that are not JSON (skip_bad_json): {f} line 11, {f} line 42, {f} line 43" in out


def test_stage_switch_in_delivered_batches(tok, corpus, tmp_path):
    stages = [{"tokens": 10 * 4 * 32, "ar_ratio": 0.0}, {"tokens": None, "ar_ratio": 1.0, "translated_share": 0.5}]
    dm = make_dm(tok, tmp_path / "c", sources(corpus), stages=stages, train_batches=20)
    batches = torch.cat(list(dm.train_dataloader())).numpy()
    src, block = dm.blend.blocks(np.arange(80))
    langs = [dm._shard_list[s].lang for s in src]
    assert langs[:40] == ["en"] * 40 and langs[40:] == ["ar"] * 40  # switch exactly at token 1,280
    assert np.array_equal(batches[40], dm._shard_list[src[40]].tokens("train")[block[40] * 33:][:33])
    st = dm.mix_report()["stages"]
    assert (st[1]["start_token"], st[1]["start_block"], st[1]["ar_blocks"]) == (1280, 40, 40)


@pytest.mark.slow
def test_benchmark_runs(tok, tmp_path):
    import subprocess
    import sys

    pytest.importorskip("datasets")  # the baseline of the benchmark (extra "hf")
    from allam.config import ROOT

    tok.save_pretrained(str(tmp_path / "tok"))
    cmd = [sys.executable, str(ROOT / "benchmarks" / "data_pipeline.py"), "--tokenizer", str(tmp_path / "tok"),
           "--docs", "60", "--sources", "tafsir_ar,bible_en", "--loader-batches", "20", "--skip-num-proc"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("pretokenize_tokens_per_s", "baseline_tokens_per_s", "pretokenize_speedup", "loader_tokens_per_s"):
        assert key in result
    assert result["pipeline_tokens"] > 0 and result["loader_tokens_per_s"] > 0


def test_documents_are_bos_text_eos(tok, corpus, tmp_path):
    """Llama's document format: every document opens with BOS and closes with EOS."""
    srcs = {k: v for k, v in sources(corpus).items() if k in ("ar_tr", "en_pq")}
    dm = make_dm(tok, tmp_path / "c", srcs, ar_ratio=0.5)
    dm.prepare()
    ids = dm.shards["en_pq"].tokens("train")
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    after_eos = ids[1:][ids[:-1] == tok.eos_token_id]
    assert len(after_eos) > 0 and (after_eos == tok.bos_token_id).all()
    assert (ids == tok.bos_token_id).sum() == (ids == tok.eos_token_id).sum()


def test_validation_scores_the_same_documents_under_any_tokenizer(tok, corpus, tmp_path):
    """val_bytes picks whole held-out documents by their bytes, so bits per byte of runs with
    different tokenizers are measured on the same text."""
    import importlib.util
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path / "mistral"
    folder.mkdir()
    spec = importlib.util.find_spec("mistral_common")
    shutil.copy(Path(list(spec.submodule_search_locations)[0]) / "data" / "tokenizer.model.v1", folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text('{"tokenizer_class": "LlamaTokenizer"}')
    other = AutoTokenizer.from_pretrained(folder)
    srcs = sources(corpus)
    a = make_dm(tok, tmp_path / "a", srcs, ar_ratio=0.5, val_bytes=400)
    b = make_dm(other, tmp_path / "b", srcs, ar_ratio=0.5, val_bytes=400)
    a.prepare(), b.prepare()
    for lang in ("ar", "en"):
        assert a.val_info[lang]["docs"] == b.val_info[lang]["docs"] > 0
        assert a.val_info[lang]["bytes"] == b.val_info[lang]["bytes"]
        assert a.val_info[lang]["bytes"] < sum(sh.meta["val"]["bytes"] for sh in a._shard_list if sh.lang == lang)
        stream = a._val[lang]
        assert stream[0] == tok.bos_token_id and stream[-1] == tok.eos_token_id
        assert (stream == tok.bos_token_id).sum() == a.val_info[lang]["docs"]


@pytest.mark.parametrize("ratio", [0.2, 0.45, 0.7])
@pytest.mark.parametrize("tau", [0.3, 0.5, 0.8])
def test_every_stream_bound_on_every_window(ratio, tau):
    """The bounds the blend really keeps, on every window of every size: Arabic vs English within
    one block (the ratio data.ar_ratio names); each (language, kind) stream within two blocks;
    each source within 2.5 blocks. (A one-block bound for three or more streams at arbitrary
    rates cannot exist: only special rate sets have balanced sequences.)"""
    blend = Blend(SRC5, [Stage(None, ratio, tau, "data")], 256, seed=7)
    n = 4000
    src, _ = blend.locate(np.arange(n))
    sizes = list(range(1, 80)) + [128, 1000, 3999]
    assert _max_window_dev(np.isin(src, [0, 1, 2]), ratio, sizes) < 1.0
    assert _max_window_dev(src == 0, ratio * (1 - tau), sizes) < 2.0
    assert _max_window_dev(np.isin(src, [1, 2]), ratio * tau, sizes) < 2.0
    targets = blend.targets(n)[0]
    for s in range(len(SRC5)):
        assert _max_window_dev(src == s, targets.get(s, 0.0) / n, sizes) < 2.5


def test_a_source_in_a_deeper_chain_stays_below_three_blocks():
    """Four English sources in one stream (a review's worst case of 150 random configurations):
    a source strays further than in a pair (2.97 blocks on a window of 1,093), still below 3."""
    sizes = [1215, 2338, 4453, 4011, 388, 110, 4283]
    srcs = [SourceInfo("nat", "ar", "natural", sizes[0]), SourceInfo("tr1", "ar", "translated", sizes[1]),
            SourceInfo("tr2", "ar", "translated", sizes[2])] + \
           [SourceInfo(f"e{i}", "en", "natural", x) for i, x in enumerate(sizes[3:])]
    blend = Blend(srcs, [Stage(None, 1 / 3, 0.237, "data")], 256, seed=0)
    n = 6000
    src, _ = blend.locate(np.arange(n))
    targets = blend.targets(n)[0]
    worst = max(_max_window_dev(src == s, targets[s] / n, range(1, n)) for s in range(len(srcs)))
    assert 2.5 < worst < 3.0


def test_dedup_benchmark_keeps_what_the_baseline_keeps(monkeypatch, capsys):
    """benchmarks/dedup_scaling.py at small sizes: both structures keep exactly the distinct hashes
    (the script asserts it) and the JSON line carries the times and the fitted exponents."""
    import sys

    from allam.config import ROOT

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import dedup_scaling

    monkeypatch.setattr(sys, "argv", ["dedup_scaling.py", "--sizes", "20000", "60000", "--buffer", "4096"])
    dedup_scaling.main()
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["docs"] for r in result["rows"]] == [20000, 60000]
    assert all(0 < r["kept"] < r["docs"] and r["seconds"] > 0 for r in result["rows"])
    assert "exponent" in result and "baseline_exponent" in result


def test_progress_in_a_log_file_is_plain_lines_with_bytes_rate_and_eta():
    import io

    from allam.data.progress import Progress

    log = io.StringIO()  # not a terminal
    p = Progress("tokenize src", 4_000_000, every_s=0.0, stream=log)
    p.read[0] = 1_000_000
    p.update(10, 1234)
    p.read[0] = 4_000_000
    p.update(30, 5678)
    p.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 3
    assert lines[0].startswith("tokenize src: 1.0 MB of 4.0 MB (25%), ") and "/s, ETA " in lines[0]
    assert lines[0].endswith("10 docs, 1,234 tokens")
    assert "4.0 MB of 4.0 MB (100%)" in lines[-1] and "ETA 0s" in lines[-1] and lines[-1].endswith("40 docs, 5,678 tokens")
    quiet = io.StringIO()
    q = Progress("tokenize other", None, every_s=3600.0, stream=quiet)  # size unknown: documents only
    q.update(5, 50)
    q.close()
    assert quiet.getvalue().startswith("tokenize other: 5 docs, 50 tokens in ")


def test_a_build_reports_every_byte_of_its_files(tok, corpus, tmp_path, capsys):
    """Text, JSONL, parquet and saved Hugging Face sources: the last progress line of each reaches
    its files' total (a dataset's Arrow files)."""
    from allam.data.progress import human_bytes
    from allam.data.source_files import source_bytes

    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": _docs(EN_WORDS, 300, 23)}).save_to_disk(str(tmp_path / "hf"), max_shard_size="20KB")
    srcs = {k: v for k, v in sources(corpus).items() if k in ("ar_nat", "ar_tr", "en_pq", "en_glob")}
    srcs["en_hf"] = {"lang": "en", "kind": "natural", "loader": "hf", "path": str(tmp_path / "hf")}
    dm = AllamDataModule(data_cfg(srcs), tok, seq_len=32, cache_dir=tmp_path / "cache", train_batches=10,
                         workers=1, progress=True)
    dm.prepare()
    err = capsys.readouterr().err  # not a terminal under pytest: plain lines
    for name, src in srcs.items():
        total = source_bytes(name, OmegaConf.merge(OmegaConf.structured(SourceConfig), src))
        last = [line for line in err.splitlines() if line.startswith(f"tokenize {name}: ")][-1]
        assert total and f"{human_bytes(total)} of {human_bytes(total)} (100%)" in last, last


def test_a_source_changing_while_being_prepared_is_one_line_and_nothing_is_cached(tok, tmp_path, monkeypatch):
    from allam.data import sources as S

    f = tmp_path / "moving.txt"
    f.write_text("\n".join(_docs(EN_WORDS, 200, 3)) + "\n", encoding="utf-8")
    srcs = {"moving": {"lang": "en", "loader": "text", "path": str(f)}}
    real = S._read_text

    def read_then_append(*a, **k):  # another writer appends to the file while it is read
        yield from real(*a, **k)
        with open(f, "a", encoding="utf-8") as fh:
            fh.write("one more line written during the build\n")

    monkeypatch.setattr(S, "_read_text", read_then_append)
    dm = make_dm(tok, tmp_path / "cache", srcs, ar_ratio=0.0)
    with pytest.raises(ConfigError, match=r"^data.sources.moving: its files changed while being prepared .*nothing was written"):
        dm.prepare()
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]  # no shard folder, no temporary one


# --------------------------------------------------------------------------- the validation hold-out
def test_hold_out_fraction_spreads_chapters_and_keeps_the_default_rule():
    from fractions import Fraction

    from allam.data.sources import chapter_is_val

    assert [c for c in range(200) if chapter_is_val(c, Fraction(1, 20))] == [c for c in range(200) if c % 20 == 1]
    assert [c for c in range(40) if chapter_is_val(c, Fraction(1, 10))] == [1, 11, 21, 31]
    held = [c for c in range(10_000) if chapter_is_val(c, Fraction(3, 1000))]
    assert len(held) == 30 and held[0] == 1 and max(b - a for a, b in zip(held, held[1:])) <= 334  # evenly spread
    assert not any(chapter_is_val(c, Fraction(0)) for c in range(100))
    from allam.data.sources import _fraction

    assert _fraction(1e-7) == Fraction(1, 10**7) and chapter_is_val(1, _fraction(1e-7))  # tiny fractions stay exact


def test_hold_out_fraction_and_cap_decide_the_prepared_val_docs(tok, corpus, tmp_path):
    """Issue 21: a text source of 600 documents (12 chapters): at val_fraction 0.25 chapters 1, 5
    and 9 are validation; a cap of one byte keeps only the first; the default keeps chapter 1 and
    the cache key of before the setting existed."""
    from allam.data.source_files import reader_key
    from allam.data.sources import HOLD_OUT_RULE, source_values

    f = tmp_path / "en.txt"
    docs = _docs(EN_WORDS, 600, 31)
    f.write_text("\n".join(docs) + "\n", encoding="utf-8")
    src = {"lang": "en", "loader": "text", "path": str(f)}
    got = {}
    for label, extra in {"default": {}, "quarter": {"val_fraction": 0.25},
                         "capped": {"val_fraction": 0.25, "val_max_bytes": 1}}.items():
        dm = make_dm(tok, tmp_path / "c", _one(corpus, e={**src, **extra}))
        dm.prepare()
        got[label] = dm.shards["e"].meta["val"]
    assert got["default"]["docs"] == 50 and got["quarter"]["docs"] == 150 and got["capped"]["docs"] == 50
    chapter1 = sum(len(d.encode()) for d in docs[50:100])
    assert got["capped"]["bytes"] == got["default"]["bytes"] and got["capped"]["bytes"] <= chapter1
    from allam.data.source_texts import source_texts  # what tokenizers train on: the same training side
    assert len(list(source_texts({"e": {**src, "val_fraction": 0.25}}, "en", "val"))) == 150
    assert len(list(source_texts({"e": {**src, "val_fraction": 0.25}}, "en", "train"))) == 450
    assert reader_key(source_values(src))["hold_out"] == HOLD_OUT_RULE
    assert reader_key(source_values({**src, "val_fraction": 0.25}))["hold_out"] != HOLD_OUT_RULE


def test_validate_shares_the_language_cap_and_refuses_it_on_demo_sources(make_cfg, tmp_path):
    from allam.config import ConfigError, validate

    cfg = make_cfg("data.val_fraction=0.01", "data.val_cap_bytes=1000000",
                   f"+data.sources.f1={{lang: en, loader: text, path: {tmp_path}/a.txt}}",
                   f"+data.sources.f2={{lang: en, loader: text, path: {tmp_path}/b.txt, val_fraction: 0.1}}",
                   f"+data.sources.f3={{lang: ar, loader: text, path: {tmp_path}/c.txt}}")
    validate(cfg)
    s = cfg.data.sources
    assert (s.f1.val_fraction, s.f1.val_max_bytes) == (0.01, 500_000)  # English's cap over its two file sources
    assert (s.f2.val_fraction, s.f2.val_max_bytes) == (0.1, 500_000)  # its own fraction stays
    assert (s.f3.val_fraction, s.f3.val_max_bytes) == (0.01, 1_000_000)
    assert s.bible_en.val_fraction is None and s.bible_en.val_max_bytes is None  # demo books stay
    with pytest.raises(ConfigError, match=r"data.sources.bible_en.val_fraction=0.1: a demo source keeps its held-out books"):
        validate(make_cfg("++data.sources.bible_en.val_fraction=0.1"))
    with pytest.raises(ConfigError, match=r"data.val_fraction=1.0: must be below 1"):
        validate(make_cfg("data.val_fraction=1.0"))
    with pytest.raises(ConfigError, match=r"tokenizer.training_words=10: must be at least 64"):
        validate(make_cfg("tokenizer.training_words=10"))


def test_an_unreadable_file_in_a_glob_is_one_line(tok, corpus, tmp_path):
    """Issue 21's bad input: a file the system will not read, among a glob's files, stops the build
    with one line naming the source and the file (not a traceback). As root no permission bit stops
    a read, so there the file is a link to a /proc file that refuses reads."""
    folder = tmp_path / "g"
    folder.mkdir()
    (folder / "a.txt").write_text("\n".join(_docs(EN_WORDS, 60, 41)) + "\n", encoding="utf-8")
    bad = folder / "b.txt"
    if os.geteuid() == 0:
        bad.symlink_to("/proc/self/clear_refs")  # a regular file that only takes writes
    else:
        bad.write_text("the sea and the sun and the moon\n", encoding="utf-8")
        bad.chmod(0)
    with pytest.raises(ConfigError, match=r"^data.sources.e.path: cannot read .*b.txt \(.*\); fix its permissions"):
        make_dm(tok, tmp_path / "c", _one(corpus, e={"lang": "en", "loader": "text", "path": str(folder / "*.txt")})).prepare()


def test_a_full_disk_while_preparing_fails_in_one_line_and_leaves_no_shard(tok, corpus, tmp_path, monkeypatch):
    """Issue 21's bad input: the disk fills while a source's shards are written (the shard file
    takes part of a write, then the write fails with ENOSPC, as Python's buffered file does on a full
    disk; checked once on a real 256 KiB tmpfs too): one line naming the source and the cache
    folder, no folder left in the cache (nothing half-written can be used), and the same command
    builds it once there is room."""
    import builtins
    import errno

    from allam.config import RunFailed
    from allam.data import shard_writer

    class FullAfter:
        """A shard file on a disk that holds `room` more bytes."""

        def __init__(self, fh, room):
            self.fh, self.room = fh, room

        def write(self, data):
            data = bytes(data)
            if len(data) > self.room:
                self.fh.write(data[: self.room])
                self.room = 0
                raise OSError(errno.ENOSPC, "No space left on device")
            self.room -= len(data)
            return self.fh.write(data)

        def close(self):
            self.fh.close()

    def small_disk(path, mode="r", *a, **k):
        fh = builtins.open(path, mode, *a, **k)
        return FullAfter(fh, 4000) if Path(path).parent.name.startswith("e-") and str(path).endswith(".bin") else fh

    f = tmp_path / "en.txt"
    f.write_text("\n".join(_docs(EN_WORDS, 1200, 51)) + "\n", encoding="utf-8")  # several batches
    srcs = _one(corpus, e={"lang": "en", "loader": "text", "path": str(f)})
    cache = tmp_path / "c"
    monkeypatch.setattr(shard_writer, "open", small_disk, raising=False)
    with pytest.raises(RunFailed) as err:
        make_dm(tok, cache, srcs).prepare()
    line = str(err.value)
    assert "\n" not in line and line.startswith("data.sources.e: No space left on device while writing its shards in")
    assert "GiB free" in line and "nothing was added to the cache" in line
    assert not [p for p in cache.rglob("*") if p.is_dir() and p.name.startswith("e-")]  # no shard folder of e
    monkeypatch.undo()
    dm = make_dm(tok, cache, srcs)
    dm.prepare()
    assert dm.shards["e"].meta["docs_read"] == 1200


def test_a_run_saved_before_the_hold_out_settings_resumes_unchanged():
    """A checkpoint's config without the hold-out keys (saved before they existed) is not a changed
    setting while they keep the old rule; a different fraction is."""
    from allam.tasks.rundir import changed_keys

    old = {"data": {"val_bytes": 100, "sources": {"f": {"lang": "en", "loader": "text"}}}}
    now = {"data": {"val_bytes": 100, "val_fraction": 0.05, "val_cap_bytes": None,
                    "sources": {"f": {"lang": "en", "loader": "text", "val_fraction": 0.05, "val_max_bytes": None}}}}
    assert changed_keys(old, now) == []
    now["data"]["val_fraction"] = 0.01
    now["data"]["sources"]["f"]["val_fraction"] = 0.01
    assert changed_keys(old, now) == ["data.sources.f.val_fraction", "data.val_fraction"]


def test_a_parquet_row_whose_pair_is_not_utf8_is_skipped_whole_as_in_jsonl(tmp_path):
    """With skip_bad_utf8, a row whose English original (the pair) is not UTF-8 is skipped and
    counted once, as a JSONL line is; it used to train unpaired while also counting as bad."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from allam.data.sources import read_texts, source_values

    ar = [f"نص عربي رقم {i}".encode() for i in range(4)]
    en = [f"English text {i}".encode() for i in range(4)]
    en[2] = b"bad \xff byte"
    pq.write_table(pa.table({"text": pa.array(ar, pa.binary()), "en": pa.array(en, pa.binary())}), tmp_path / "t.parquet")
    src = source_values({"lang": "ar", "kind": "translated", "loader": "parquet", "path": str(tmp_path / "t.parquet"),
                         "pair_field": "en", "skip_bad_utf8": True})
    bad = [0]
    rows = list(read_texts("t", src, True, bad))
    assert bad == [1] and [p for _, p in rows] == ["English text 0", "English text 1", "English text 3"]
