"""Evaluation: the offline demo suite, the lm-evaluation-harness bridge, eval during training,
task=eval, eval=paper offline, and exports that ship tokenizer.json."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from allam.config import ConfigError, explain_compose_error
from allam.data.demo import demo_documents, split_of
from allam.eval import demo_suite

TINY = ["model=micro", "data.batch_size=2", "data.val_bytes=3000"]
BILINGUAL = ["tokenizer=bilingual", "tokenizer.vocab_size=4096", "tokenizer.training_words=100000"]


def _tiny_llama(tokenizer, max_positions: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=max_positions,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


# --------------------------------------------------------------------------- the items
def test_demo_items_come_from_held_out_units_in_closed_balanced_groups():
    hadith_keys = {d.key for d in demo_documents("hadith_ar", "val")}
    for task in demo_suite.TASKS:
        items = demo_suite.build_items(task)
        assert len(items) >= 180, task  # the hadith tasks lose a quarter of their hadith to the leak check
        assert all(len(it["choices"]) == 4 and 0 <= it["gold"] < 4 for it in items)
        # held out: every verse is from a book, every hadith from a hadith book, numbered a multiple of 20
        for it in items:
            if it["id"].startswith("bible"):
                assert split_of(int(it["id"].split()[1].split(":")[0])) == "val", it["id"]
        assert all(it["id"].split()[1] in hadith_keys for it in items if it["id"].startswith("hadith"))
        # answer positions balanced exactly; closed groups: one candidate set, each candidate the answer once
        assert set(Counter(it["gold"] for it in items).values()) == {len(items) // 4}, task
        for g in range(len(items) // 4):
            group = [it for it in items if it["group"] == g]
            assert len(group) == 4 and len({tuple(sorted(it["choices"])) for it in group}) == 1
            assert sorted(it["choices"][it["gold"]] for it in group) == sorted(group[0]["choices"])
            assert sorted(it["gold"] for it in group) == [0, 1, 2, 3]
    # deterministic by seed; another seed draws another order
    assert demo_suite.build_items("verse_en2ar") == demo_suite.build_items("verse_en2ar")
    assert demo_suite.build_items("verse_en2ar", seed=7)[:8] != demo_suite.build_items("verse_en2ar")[:8]


def test_demo_tasks_load_as_harness_tasks():
    pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    from allam.eval.harness import SUITE_DIR, own_tasks

    assert set(demo_suite.TASKS) <= set(own_tasks())
    tm = TaskManager(include_path=str(SUITE_DIR), include_defaults=False)
    assert set(demo_suite.TASKS) <= set(tm.all_tasks) and "allam_demo" in tm.all_tags
    task = tm.load(["hadith_topic"])["tasks"]["hadith_topic"]
    doc = task.eval_docs[0]
    assert task.doc_to_text(doc).endswith("Book:") and task.doc_to_choice(doc)[task.doc_to_target(doc)]


# --------------------------------------------------------------------------- scoring through the harness
@pytest.mark.parametrize("items", [40, pytest.param(200, marks=pytest.mark.slow)])
def test_untrained_model_scores_chance_on_every_demo_task(make_cfg, items):
    """An untrained model knows nothing: if any task leaked its answer through the choices (their
    length, script, position), it would score off chance here. With 200 items (50 closed groups) per
    task, chance ± 3 standard errors is 0.25 ± 0.09; the fast suite's 40 items (10 groups) catch
    only gross leaks (± 0.2)."""
    from allam.eval import harness
    from allam.tasks import builders

    cfg = make_cfg(*BILINGUAL, f"eval.limit={items}", "eval.batch_size=64")
    tokenizer = builders.build_tokenizer(cfg).tokenizer
    model = _tiny_llama(tokenizer, max_positions=64)
    scores = harness.evaluate(model, tokenizer, cfg.eval, harness.prepare(cfg.eval, Path(cfg.paths.output_dir)))
    assert set(scores) == set(demo_suite.TASKS)
    for task, s in scores.items():
        assert s["n"] == min(items, len(demo_suite.build_items(task))) and s["chance"] == 0.25
        for key in ("acc", "acc_norm"):
            assert abs(s[key] - 0.25) <= 3 * s[f"{key}_stderr"], (task, key, s)


# the fast suite memorizes a translation task and a book-title task; the slow set all six
@pytest.mark.parametrize("tasks", [("verse_ar2en", "hadith_topic"),
                                   pytest.param(tuple(demo_suite.TASKS), marks=pytest.mark.slow)], ids=["two", "all"])
def test_overfit_model_answers_the_items_it_memorized(make_cfg, tasks):
    """A tiny model trained on the correct prompt + answer texts of the first 9 items of each task
    (two closed groups each, so every wrong choice of those groups is the memorized answer of
    another prompt) must pick its answers: the scoring and the answer index point the right way."""
    from lm_eval.tasks import TaskManager

    from allam.eval import harness
    from allam.tasks import builders

    context = 160
    cfg = make_cfg(*BILINGUAL, "eval.limit=9", "eval.batch_size=32", f"eval.max_length={context}",
                   f"eval.tasks=[{','.join(tasks)}]")
    tokenizer = builders.build_tokenizer(cfg).tokenizer
    tm = TaskManager(include_path=str(harness.SUITE_DIR), include_defaults=False)
    seqs, answer_starts = [], []
    for task in tm.load(list(tasks))["tasks"].values():
        for doc in list(task.eval_docs)[:9]:
            prompt = task.doc_to_text(doc)
            answer = task.config.target_delimiter + task.doc_to_choice(doc)[task.doc_to_target(doc)]
            whole, head = tokenizer(prompt + answer)["input_ids"], tokenizer(prompt)["input_ids"]
            ids = whole[-(context + 1):]  # what the harness scores: BOS + prompt + answer, the last context + 1
            seqs.append(ids)
            answer_starts.append(len(ids) - (len(whole) - len(head)))
    assert len(seqs) == 9 * len(tasks)
    inputs = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long)
    targets = torch.full_like(inputs, -100)
    for i, (ids, start) in enumerate(zip(seqs, answer_starts)):
        inputs[i, : len(ids)] = torch.tensor(ids)
        targets[i, start : len(ids)] = torch.tensor(ids[start:])  # the loss on the answers
    model = _tiny_llama(tokenizer, max_positions=context).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    scored = targets[:, 1:] >= 0
    for _ in range(300):
        hidden = model.model(input_ids=inputs[:, :-1]).last_hidden_state[scored]  # the head on answer positions only
        loss = torch.nn.functional.cross_entropy(model.lm_head(hidden), targets[:, 1:][scored])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.02:
            break
    model.eval()
    scores = harness.evaluate(model, tokenizer, cfg.eval, harness.prepare(cfg.eval, Path(cfg.paths.output_dir)))
    assert {s["max_length"] for s in scores.values()} == {context}
    n = sum(s["n"] for s in scores.values())
    right = sum(s["acc"] * s["n"] for s in scores.values())
    assert set(scores) == set(tasks) and n == 9 * len(tasks) and right / n >= 0.9, {t: s["acc"] for t, s in scores.items()}


def test_eval_during_training_task_eval_and_lm_eval_agree(make_cfg, tmp_path):
    """Training with eval.every_tokens and eval.at_end logs eval/<task>/acc and writes eval.* keys;
    task=eval on the run scores the same; lm_eval on the exported folder gives the same numbers."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from allam.eval.harness import SUITE_DIR
    from allam.tasks import eval as eval_task
    from allam.tasks import train

    tasks = ["verse_en2ar", "hadith_topic"]
    pick = [f"eval.tasks=[{','.join(tasks)}]", "eval.limit=8"]
    run = tmp_path / "run"
    # 128 tokens per step: eval after step 2 (256 tokens) and at the end (step 3)
    res = train.run(make_cfg(*TINY, "trainer.max_steps=3", "eval.at_end=true", "eval.every_tokens=256", *pick,
                             "logger=csv", out=run))
    for t in tasks:
        for key in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n", "chance", "max_length", "seconds"):
            assert f"eval.{t}.{key}" in res, (t, key)
        assert res[f"eval.{t}.n"] == 8
    saved = json.loads((run / "results.json").read_text())
    assert saved["eval.verse_en2ar.acc"] == res["eval.verse_en2ar.acc"]
    header, *rows = (run / "csv" / "metrics.csv").read_text().splitlines()
    cols = header.split(",")
    logged = [dict(zip(cols, r.split(","))) for r in rows if r.split(",")[cols.index("eval/verse_en2ar/acc")]]
    assert [row["step"] for row in logged] == ["2"]
    assert (run / "hf" / "tokenizer.json").is_file()

    again = eval_task.run(make_cfg("task=eval", f"ckpt={run}", *pick, out=tmp_path / "eval"))
    assert again["source_run"] == str(run.resolve())
    assert again["choices"] == res["choices"]  # the groups of the run it scored, as its config is
    for t in tasks:
        for key in ("acc", "acc_norm", "n", "max_length"):
            assert again[f"eval.{t}.{key}"] == res[f"eval.{t}.{key}"], (t, key)

    tm = TaskManager(include_path=str(SUITE_DIR), include_defaults=False)
    for t in tasks:
        direct = simple_evaluate(
            model="hf", model_args={"pretrained": str(run / "hf"), "tokenizer": str(run / "hf"), "add_bos_token": True,
                                    "max_length": res[f"eval.{t}.max_length"], "dtype": "float32"},
            tasks=[t], task_manager=tm, limit=8, device="cpu", batch_size=16, log_samples=False)["results"][t]
        assert direct["acc,none"] == res[f"eval.{t}.acc"] and direct["acc_norm,none"] == res[f"eval.{t}.acc_norm"]
        assert direct["acc_stderr,none"] == pytest.approx(res[f"eval.{t}.acc_stderr"])


# --------------------------------------------------------------------------- one-line errors
def test_eval_one_line_errors(make_cfg, tmp_path):
    from hydra import compose, initialize_config_dir

    from allam.config import CONF_DIR
    from allam.tasks import eval as eval_task

    with pytest.raises(Exception) as exc, initialize_config_dir(str(CONF_DIR), version_base=None):
        compose("config", overrides=["task=eval", "eval=nope"])
    assert explain_compose_error(exc.value) == ("eval=nope: no such choice; allowed: competence, competence_fa, competence_hi, "
                                                "competence_ko, competence_ru, demo, paper")
    for ckpt, says in ((None, "ckpt=None: task=eval needs"), (tmp_path / "nope", "no such file or folder"),
                       (tmp_path, "neither a run directory")):
        with pytest.raises(ConfigError, match=says) as err:
            eval_task.run(make_cfg("task=eval", *([f"ckpt={ckpt}"] if ckpt else [])))
        assert "\n" not in str(err.value)
    damaged = tmp_path / "damaged-run"  # a run whose last checkpoint was cut off mid-write
    (damaged / "checkpoints").mkdir(parents=True)
    (damaged / "model_config.json").write_text("{}")
    (damaged / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 cut off")
    from allam.tasks import generate as generate_task

    for task in (eval_task, generate_task):
        with pytest.raises(ConfigError, match=r"damaged-run: unreadable .*; point ckpt= at a complete checkpoint") as err:
            task.run(make_cfg(f"task={task.__name__.rsplit('.', 1)[1]}", f"ckpt={damaged}", "prompt=hello"))
        assert "\n" not in str(err.value)
    for bad, says in (("eval.every_tokens=0", "must be positive"), ("eval.tasks=[]", "name at least one"),
                      (f"eval.data_dir={tmp_path / 'none'}", "no such folder")):
        with pytest.raises(ConfigError, match=says):
            eval_task.run(make_cfg("task=eval", bad))


def test_offline_harness_tasks_are_named_with_their_hub_datasets(make_cfg, tmp_path, monkeypatch):
    """eval.prepare offline, on the harness's real task configs (only their folders indexed, where
    the full library takes 10-40 s): one line naming each task and the hub dataset it reads."""
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    from allam.eval import harness

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    library = Path(lm_eval.__file__).parent / "tasks"
    folders = [str(library / f) for f in ("arc", "hellaswag", "arabicmmlu", "arabic_leaderboard_complete")]

    def manager(plan):
        assert plan.include_defaults  # what the real plan would index
        plan.task_manager = plan.task_manager or TaskManager(include_path=folders, include_defaults=False)
        return plan.task_manager

    monkeypatch.setattr(harness.Plan, "manager", manager)
    monkeypatch.setattr(harness, "in_local_cache", lambda path: False)  # whatever this machine's HF cache holds
    cfg = make_cfg("eval=paper", "eval.tasks=[arabicmmlu,arabic_leaderboard_acva,hellaswag,arc_challenge,verse_en2ar]")
    with pytest.raises(ConfigError) as err:
        harness.prepare(cfg.eval, tmp_path)
    line = str(err.value)
    assert "\n" not in line and line.startswith("eval=paper: offline mode is on")
    for name in ("arabicmmlu (MBZUAI/ArabicMMLU", "arabic_leaderboard_acva (OALL/ACVA)", "hellaswag (", "arc_challenge (",
                 "allenai/ai2_arc", "eval.data_dir=<folder>"):
        assert name in line, name
    assert "verse_en2ar" not in line  # the package's own tasks need no hub
    with pytest.raises(ConfigError, match=r"eval.tasks.no_such_task: no such lm-evaluation-harness task"):
        harness.prepare(make_cfg("eval=paper", "eval.tasks=[no_such_task]").eval, tmp_path)
    # the harness draws few-shot examples from the test items when a task has no other split: ours
    with pytest.raises(ConfigError, match=r"^eval\.num_fewshot\.word_order_ar=3: the project's own tasks have only"):
        harness.prepare(make_cfg("eval=competence", "+eval.num_fewshot.word_order_ar=3").eval, tmp_path)


@pytest.mark.slow  # the full task library's index takes 10-40 s; the quick test above indexes the suite's folders
def test_paper_suite_offline_stops_with_one_line_before_loading_the_model(tmp_path, cli, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # a Hugging Face folder whose weights are not safetensors at all: loading it would fail differently
    fake = tmp_path / "fake-hf"
    fake.mkdir()
    (fake / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (fake / "model.safetensors").write_bytes(b"not a model")
    line = cli("task=eval", "eval=paper", f"ckpt={fake}")
    assert line is not None and "\n" not in line, line
    assert line.startswith("error: eval=paper: offline mode is on")
    for name in ("arabicmmlu", "arabic_leaderboard_acva", "arabic_leaderboard_arabic_exams",
                 "arabic_leaderboard_alghafa", "mmlu", "hellaswag", "arc_challenge", "OALL/ACVA", "eval.data_dir"):
        assert name in line, name


@pytest.mark.slow
def test_data_dir_points_hub_tasks_at_local_copies(make_cfg, tmp_path, english_checkpoint):
    """eval.data_dir=<folder> holding <folder>/<dataset_path> runs a harness task offline: here a
    small stand-in for allenai/ai2_arc (ARC-Challenge, 3-shot)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from allam.eval import harness

    root = tmp_path / "hub" / "allenai" / "ai2_arc"
    (root / "ARC-Challenge").mkdir(parents=True)
    for split, n in (("train", 6), ("validation", 2), ("test", 12)):
        rows = [{"id": f"{split}{i}", "question": f"What follows {i}?", "answerKey": "A",
                 "choices": {"text": [str(i + 1), str(i + 5), str(i + 3), str(i + 9)], "label": list("ABCD")}}
                for i in range(n)]
        (root / "ARC-Challenge" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "README.md").write_text("---\nconfigs:\n- config_name: ARC-Challenge\n  data_files:\n" + "".join(
        f"  - split: {s}\n    path: ARC-Challenge/{s}.jsonl\n" for s in ("train", "validation", "test")) + "---\n")
    cfg = make_cfg("eval=paper", "eval.tasks=[arc_challenge]", "eval.num_fewshot={arc_challenge: 3}",
                   f"eval.data_dir={tmp_path / 'hub'}")
    plan = harness.prepare(cfg.eval, tmp_path / "work")
    assert plan.local_copies == {"allenai/ai2_arc": str(root)}
    rewritten = (tmp_path / "work").rglob("arc_easy.yaml")
    assert f"dataset_path: {root}" in next(rewritten).read_text()
    model = AutoModelForCausalLM.from_pretrained(str(english_checkpoint))
    tokenizer = AutoTokenizer.from_pretrained(str(english_checkpoint))
    scores = harness.evaluate(model, tokenizer, cfg.eval, plan)
    assert scores["arc_challenge"]["n"] == 12 and scores["arc_challenge"]["chance"] == 0.25


# --------------------------------------------------------------------------- exports
def test_exports_ship_a_fast_tokenizer_that_encodes_like_sentencepiece(make_cfg, english_checkpoint, tmp_path):
    import shutil

    import sentencepiece as spm
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from allam.tasks import builders

    texts = [d.text for name in ("hadith_ar", "bible_ar", "tafsir_ar", "hadith_en", "bible_en")
             for d in list(demo_documents(name, "val"))[:15]]
    expanded = tmp_path / "expanded-export"
    bundle = builders.build_tokenizer(make_cfg("tokenizer=expanded", "tokenizer.num_new_tokens=1024",
                                               "tokenizer.training_words=100000"))
    from allam.tokenizer import export_tokenizer

    export_tokenizer(bundle, expanded)
    for folder in (english_checkpoint, expanded):
        assert (folder / "tokenizer.json").is_file() and (folder / "tokenizer.model").is_file()
        sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
        fast = Tokenizer.from_file(str(folder / "tokenizer.json"))
        assert [e.ids for e in fast.encode_batch(texts, add_special_tokens=False)] == sp.encode(texts)
        # without tokenizer.model (nothing to convert): AutoTokenizer loads tokenizer.json alone
        alone = tmp_path / f"{folder.name}-json-only"
        alone.mkdir()
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(folder / name, alone / name)
        auto = AutoTokenizer.from_pretrained(str(alone))
        assert auto(texts, add_special_tokens=False)["input_ids"] == sp.encode(texts)
        assert auto("hello")["input_ids"][0] == sp.bos_id()


def test_an_answer_is_scored_after_the_context_the_whole_text_has():
    """Where the context's own tokens are a prefix of the whole text's (every SentencePiece
    tokenizer here), the split is the harness's; where a pre-tokenizer glues punctuation to the
    newlines after it (Qwen's, tekken's), the straddling token is scored with the answer rather
    than dropped (the model saw "man." then the answer, without the blank line)."""
    import regex
    from lm_eval.api.model import TemplateLM

    from allam.eval import harness

    vocab: dict[str, int] = {}

    def glued(text):  # punctuation with the newlines after it, as Qwen's pre-tokenizer groups them
        return [vocab.setdefault(t, len(vocab)) for t in regex.findall(r"[^\s\p{L}\p{N}]+[\r\n]*|\p{L}+|\s+", text)]

    def plain(text):
        return [vocab.setdefault(t, len(vocab)) for t in regex.findall(r"[^\s\p{L}\p{N}]|\p{L}+|\s+", text)]

    ctx, cont = harness.split_pair(glued, "a man.", "\n\nاني هو")
    ids = {v: k for k, v in vocab.items()}
    assert [ids[i] for i in ctx] == ["a", " ", "man"] and [ids[i] for i in cont] == [".\n\n", "اني", " ", "هو"]
    harness_own = TemplateLM._encode_pair(type("T", (), {"backend": "causal", "tok_encode": staticmethod(glued)})(),
                                          "a man.", "\n\nاني هو")
    assert [ids[i] for i in harness_own[0] + harness_own[1]] == ["a", " ", "man", ".", "اني", " ", "هو"]  # no blank line
    # where the context's tokens are a prefix, and with a trailing space, the split is the harness's
    for encode, context, continuation in ((plain, "a man.", "\n\nاني"), (plain, "Say ", "x y"), (glued, "Say ", "x y")):
        own = TemplateLM._encode_pair(type("T", (), {"backend": "causal", "tok_encode": staticmethod(encode)})(),
                                      context, continuation)
        assert harness.split_pair(encode, context, continuation) == own

