"""Post-training data: the chat template on every tokenizer kind, the assistant-only loss mask, chat
and preference readers (drops counted, wrong file kinds), padding, the export, the demo sets."""
from __future__ import annotations

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from allam.config import ConfigError, TokenizerConfig
from allam.data import chat, chat_demo, demo
from allam.data.demo import demo_texts
from allam.tokenizer import build_tokenizer, export_tokenizer
from allam.tokenizer.chat_template import CHAT_TEMPLATE

SMALL = dict(english_vocab_size=1024, num_new_tokens=1024, vocab_size=2048, training_words=120_000)
KINDS = {"english": dict(SMALL), "expanded": dict(variant="expanded", **SMALL),
         "bilingual": dict(variant="bilingual", **SMALL), "gpt2": dict(base="gpt2")}
CONVERSATION = [
    {"role": "system", "content": "You translate between Arabic and English."},
    {"role": "user", "content": "Translate into Arabic:\nIn the beginning God created the heavens and the earth."},
    {"role": "assistant", "content": "في البدء خلق الله السموات والارض."},
    {"role": "user", "content": "ترجم إلى الإنجليزية:\nوكانت الارض خربة وخالية"},
    {"role": "assistant", "content": "The earth was formless and empty."},
]


def tcfg(**kw):
    return OmegaConf.merge(OmegaConf.structured(TokenizerConfig), kw)


@pytest.fixture(scope="module")
def bundles(cache_dir):
    cache = cache_dir
    built = {}

    def get(kind):
        if kind not in built:
            built[kind] = build_tokenizer(tcfg(**KINDS[kind]), cache_dir=cache, texts=lambda lang: demo_texts(lang, "train"))
        return built[kind]

    return get


def label_runs(ex):
    """Contiguous runs of labelled positions, as lists of ids."""
    runs, cur = [], []
    for tok, lab in zip(ex["input_ids"], ex["labels"]):
        if lab != chat.IGNORE_INDEX:
            assert lab == tok
            cur.append(tok)
        elif cur:
            runs.append(cur)
            cur = []
    return runs + ([cur] if cur else [])


@pytest.mark.parametrize("kind", list(KINDS))
def test_only_the_two_answers_carry_labels(bundles, kind):
    tok = bundles(kind).tokenizer
    assert tok.chat_template == CHAT_TEMPLATE
    ex = chat.sft_example(tok, CONVERSATION)
    runs = label_runs(ex)
    assert [tok.decode(r).strip() for r in runs] == [CONVERSATION[2]["content"] + tok.eos_token,
                                                    CONVERSATION[4]["content"] + tok.eos_token]
    unlabelled = tok.decode([t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab == chat.IGNORE_INDEX])
    for m in CONVERSATION:
        assert (m["content"] in unlabelled) == (m["role"] != "assistant"), m
    assert chat.sft_example(tok, CONVERSATION, max_length=len(ex["input_ids"]) - 1) is None


@pytest.mark.parametrize("kind", ["english", "gpt2"])
def test_preference_pair_shares_the_prompt_and_labels_only_its_answer(bundles, kind):
    tok = bundles(kind).tokenizer
    prompt = CONVERSATION[:4]  # an earlier answer inside the prompt stays unlabelled
    ex = chat.preference_example(tok, prompt, "The earth was formless and empty.", "In the beginning God created.")
    n = ex["prompt_length"]
    assert ex["chosen_input_ids"][:n] == ex["rejected_input_ids"][:n]
    assert tok.decode(ex["chosen_input_ids"][:n]).endswith("[/INST]")
    for side, answer in (("chosen", "The earth was formless and empty."), ("rejected", "In the beginning God created.")):
        runs = label_runs({"input_ids": ex[f"{side}_input_ids"], "labels": ex[f"{side}_labels"]})
        assert [tok.decode(r).strip() for r in runs] == [answer + tok.eos_token]
        assert all(lab == chat.IGNORE_INDEX for lab in ex[f"{side}_labels"][:n])


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


GOOD = CONVERSATION[1:3]


def test_bad_rows_are_dropped_and_counted_one_line_per_reason(tmp_path, bundles, caplog):
    rows = [
        {"messages": GOOD},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]},  # unknown role
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]},  # no assistant
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]},  # empty answer
        {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]},  # order
        {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]},  # malformed
        {"messages": [{"role": "user", "content": "long " * 400}, {"role": "assistant", "content": "a"}]},  # too long
    ]
    src = chat.file_source(write_jsonl(tmp_path / "chat.jsonl", rows))
    with caplog.at_level(logging.INFO, logger="allam"):
        examples, got = chat.load_sft("demo_chat", src, bundles("english").tokenizer, max_length=256)
    assert len(examples) == 1 and got.read == 7
    assert got.dropped == {"unknown_role": 1, "no_assistant": 1, "empty_answer": 1, "turn_order": 1, "malformed": 1, "too_long": 1}
    lines = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(lines) == 6 and all(line.startswith("chat data demo_chat: dropped 1 rows: ") for line in lines)
    assert "chat data demo_chat: kept 1 of 7 rows" in caplog.messages  # the too-long row is not kept
    more = chat.read_chat("more", chat.file_source(write_jsonl(tmp_path / "more.jsonl", [{"messages": GOOD}] * 3)))
    assert len(chat.tokenize_sft(bundles("english").tokenizer, more, 256, limit=2)) == 2
    assert more.report()[0] == "chat data more: kept 2 of 3 rows, 1 not used (the example limit)"

    prefs = [
        {"prompt": "Translate into Arabic:\nGod", "chosen": "الله", "rejected": "الارض"},
        {"prompt": GOOD, "chosen": "a", "rejected": "b"},  # prompt ends with an answer
        {"prompt": "q", "chosen": "", "rejected": "b"},
        {"prompt": "q", "chosen": "same", "rejected": " same "},
        {"prompt": [{"role": "narrator", "content": "q"}], "chosen": "a", "rejected": "b"},
        {"prompt": "q", "chosen": ["a"], "rejected": "b"},
    ]
    got = chat.read_preferences("demo_pref", chat.file_source(write_jsonl(tmp_path / "pref.jsonl", prefs)))
    assert len(got.rows) == 1 and got.rows[0][0] == [{"role": "user", "content": "Translate into Arabic:\nGod"}]
    assert got.dropped == {"turn_order": 1, "empty_answer": 1, "same_answers": 1, "unknown_role": 1, "malformed": 1}
    assert len(got.report()) == 6


def test_a_file_of_the_other_kind_is_one_line_naming_it(tmp_path):
    chat_file = write_jsonl(tmp_path / "chat.jsonl", [{"messages": GOOD}])
    pref_file = write_jsonl(tmp_path / "pref.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    with pytest.raises(ConfigError) as e:
        chat.read_chat("sft", chat.file_source(pref_file))
    assert str(e.value) == (f"data.sources.sft.path={pref_file}: holds preference data (rows of 'prompt', 'chosen', "
                            "'rejected'), but chat data (rows of 'messages') is expected")
    with pytest.raises(ConfigError, match=rf"^data.sources.dpo.path={chat_file}: holds chat data .* but preference data"):
        chat.read_preferences("dpo", chat.file_source(chat_file))
    write_jsonl(tmp_path / "odd.jsonl", [{"text": "plain"}])
    with pytest.raises(ConfigError, match=r"odd.jsonl line 1 has no 'messages'; expected chat data"):
        chat.read_chat("sft", chat.file_source(tmp_path / "odd.jsonl"))
    (tmp_path / "broken.jsonl").write_text('{"messages": [\n')
    with pytest.raises(ConfigError, match=r"^data.sources.sft: .*broken.jsonl line 1 is not valid JSON"):
        chat.read_chat("sft", chat.file_source(tmp_path / "broken.jsonl"))


def test_the_template_strips_content_and_refuses_unknown_roles(bundles):
    tok = bundles("english").tokenizer
    padded = [{"role": m["role"], "content": f"  {m['content']}\n"} for m in CONVERSATION]
    assert tok.apply_chat_template(padded, tokenize=False) == tok.apply_chat_template(CONVERSATION, tokenize=False)
    assert tok.apply_chat_template(GOOD[:1], tokenize=False, add_generation_prompt=True) == \
        tok.apply_chat_template(GOOD[:1], tokenize=False)
    with pytest.raises(Exception, match="unknown role: bot"):
        tok.apply_chat_template([{"role": "bot", "content": "x"}], tokenize=False)


def test_chat_rows_read_from_parquet_and_a_folder(tmp_path, bundles):
    pq.write_table(pa.Table.from_pylist([{"messages": GOOD}, {"messages": CONVERSATION}]), tmp_path / "a.parquet")
    assert chat.read_chat("p", chat.file_source(tmp_path / "a.parquet")).rows == [GOOD, CONVERSATION]
    (tmp_path / "f").mkdir()
    write_jsonl(tmp_path / "f" / "x.jsonl", [{"messages": GOOD}])
    (tmp_path / "f" / "notes.txt").write_text("not read")
    assert chat.read_chat("f", chat.file_source(tmp_path / "f")).rows == [GOOD]
    # a folder of parquet shards, the Hub's layout (it went to the jsonl reader: "no .jsonl/.json file")
    (tmp_path / "hub" / "data").mkdir(parents=True)
    for k, rows in enumerate([[GOOD], [CONVERSATION]]):
        pq.write_table(pa.Table.from_pylist([{"messages": m} for m in rows]), tmp_path / "hub" / "data" / f"train-{k}.parquet")
    (tmp_path / "hub" / "README.md").write_text("card")
    src = chat.file_source(tmp_path / "hub")
    assert src["loader"] == "parquet" and chat.read_chat("train", src).rows == [GOOD, CONVERSATION]


def test_a_post_training_file_error_names_the_objective_key(tmp_path, bundles):
    from allam.config import ConfigError
    from allam.data.post_datamodule import load_examples

    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"^objective\.val=.*empty: folder has no \.jsonl/\.json file$"):
        load_examples("sft", "val", chat.file_source(tmp_path / "empty"), bundles("english").tokenizer, 128)


@pytest.mark.slow
def test_preference_rows_read_from_a_saved_hf_dataset(tmp_path):
    """A folder written by datasets' save_to_disk (slow: importing datasets takes ~10 s here;
    the pretraining loaders' hf path has its own fast test)."""
    import datasets

    datasets.Dataset.from_list([{"prompt": "q", "chosen": "a", "rejected": "b"}]).save_to_disk(str(tmp_path / "ds"))
    src = chat.file_source(tmp_path / "ds")
    assert src["loader"] == "hf" and chat.read_preferences("h", src).rows == [([{"role": "user", "content": "q"}], "a", "b")]


def test_batches_are_right_padded_to_the_longest(bundles):
    tok = bundles("english").tokenizer
    short, long_ = chat.sft_example(tok, GOOD), chat.sft_example(tok, CONVERSATION)
    pad = chat.pad_id(tok)
    assert tok.pad_token_id is None and pad == tok.eos_token_id
    b = chat.collate_sft([short, long_], pad)
    n, m = len(short["input_ids"]), len(long_["input_ids"])
    assert b["input_ids"].shape == (2, m) and b["input_ids"][0, :n].tolist() == short["input_ids"]
    assert b["input_ids"][0, n:].eq(pad).all() and b["labels"][0, n:].eq(-100).all()
    assert b["attention_mask"].sum(1).tolist() == [n, m] and b["labels"][1].tolist() == long_["labels"]
    p = chat.preference_example(tok, GOOD[:1], "a short one", "a much longer rejected answer than the chosen one")
    pb = chat.collate_preferences([p], pad)
    assert pb["chosen_input_ids"].shape == pb["rejected_input_ids"].shape == (1, len(p["rejected_input_ids"]))
    assert pb["chosen_attention_mask"].sum().item() == len(p["chosen_input_ids"])


@pytest.mark.parametrize("kind", ["expanded", "gpt2"])
def test_the_template_ships_in_the_export_and_reloads(bundles, kind, tmp_path):
    bundle = bundles(kind)
    out = export_tokenizer(bundle, tmp_path / "hf")
    assert (out / "chat_template.jinja").read_text(encoding="utf-8") == CHAT_TEMPLATE
    reloaded = AutoTokenizer.from_pretrained(str(out))
    assert reloaded.chat_template == CHAT_TEMPLATE
    assert chat.sft_example(reloaded, CONVERSATION) == chat.sft_example(bundle.tokenizer, CONVERSATION)
    reloaded.chat_template = None
    with pytest.raises(ConfigError, match="has no chat template, which supervised fine-tuning needs"):
        chat.tokenize_sft(reloaded, chat.Rows("chat", "x", [GOOD]))


def test_demo_sets_are_seeded_held_out_by_book_and_bilingual(tmp_path):
    paths = chat_demo.write_demo_sets(tmp_path / "a", seed=3, sft_items=400, preference_items=200, heldout_items=80)
    again = chat_demo.write_demo_sets(tmp_path / "b", seed=3, sft_items=400, preference_items=200, heldout_items=80)
    other = chat_demo.write_demo_sets(tmp_path / "c", seed=4, sft_items=400, preference_items=200, heldout_items=80)
    for name, path in paths.items():
        assert path.read_bytes() == again[name].read_bytes() != other[name].read_bytes(), name
    rows = {name: [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] for name, path in paths.items()}
    held = {p.id for p in chat_demo.pools()["val"]}
    held_text = {t for p in chat_demo.pools()["val"] for t in (p.en, p.ar)}
    units = {p.id: p.unit for split in ("train", "val") for p in chat_demo.pools()[split]}
    for name, items in rows.items():
        ids = [r["id"].rsplit(" ", 1)[0] for r in items]
        assert {demo.split_of(units[i]) for i in ids} == {"val" if name.endswith("heldout") else "train"}, name
        if name.endswith("train"):
            assert not set(ids) & held
            texts = [m["content"] for r in items for m in r.get("messages", [])] + [r.get(k) for r in items for k in ("chosen", "rejected")]
            assert not set(texts) & held_text
    prompts = [r["messages"][0]["content"] for r in rows["sft_train"]] + [r["prompt"] for r in rows["preference_train"]]
    firsts = {p.split("\n", 1)[0] for p in prompts}
    assert firsts == {i for d in chat_demo.INSTRUCTIONS.values() for i in d.values()}  # both directions, both languages
    assert {r["rejected_kind"] for r in rows["preference_train"]} == {"neighbour", "wrong_language"}
    assert all(r["chosen"] != r["rejected"] for name in ("preference_train", "preference_heldout") for r in rows[name])
    assert {r["id"].split()[0] for r in rows["sft_train"]} == {"bible", "hadith"}
    sft = chat.read_chat("demo", chat.file_source(paths["sft_train"]))
    pref = chat.read_preferences("demo", chat.file_source(paths["preference_heldout"]))
    assert (len(sft.rows), sum(sft.dropped.values()), len(pref.rows), sum(pref.dropped.values())) == (400, 0, 80, 0)
