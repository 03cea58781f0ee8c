"""task=generate: greedy equals transformers' generate, seeds, run directories as ckpt, chat
templates, one-line errors, and the streamed text (on the session's tiny English Llama)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from omegaconf import OmegaConf

from allam.config import ConfigError, validate
from allam.results import GENERATE_KEYS

TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


@pytest.fixture(scope="module")
def hf(english_checkpoint):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(english_checkpoint), dtype="float32").eval()
    return model, AutoTokenizer.from_pretrained(str(english_checkpoint))


def _results(tmp_path) -> dict:
    return json.loads((tmp_path / "run" / "results.json").read_text(encoding="utf-8"))


def test_greedy_equals_model_generate_and_streams_what_it_returns(cli, tmp_path, english_checkpoint, hf, capsys):
    """The command line's prompt is taken literally (commas, colons, ${...}, Arabic); greedy
    decoding gives transformers' own greedy tokens; the terminal shows the returned text."""
    model, tok = hf
    prompt = "In the beginning, said he: ${x} مرحبا"
    assert cli("task=generate", f"ckpt={english_checkpoint}", f"prompt={prompt}", "generate.temperature=0",
               "generate.max_new_tokens=12", "generate.chat=false") is None
    res = _results(tmp_path)
    assert res["task"] == "generate" and res["prompt"] == prompt and res["generate.chat"] is False
    assert res["source_run"] is None and res["generate.prompt_text"] == prompt
    assert {k for k in res if k.startswith("generate.")} == set(GENERATE_KEYS)
    ids = tok(prompt, return_tensors="pt").input_ids
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12)[0, ids.shape[1]:]
    assert res["generate.token_ids"] == ref.tolist() and res["generate.tokens"] == len(ref)
    assert res["generate.prompt_tokens"] == ids.shape[1] and res["generate.seconds"] > 0
    text = res["generate.text"]
    assert text.strip() == tok.decode(ref, skip_special_tokens=True).strip() != ""
    assert tok.decode(ids[0].tolist() + ref.tolist(), skip_special_tokens=True).endswith(text)
    out = capsys.readouterr().out
    assert f"{text}\ngenerated {len(ref)} tokens in " in out


def test_a_seed_reproduces_a_sample_and_another_seed_differs(hf, capsys):
    from allam.tasks.generate import Echo, continuation, sample

    model, tok = hf
    ids = tok("The kingdom of heaven").input_ids
    gen = OmegaConf.create({"temperature": 1.0, "top_p": 1.0, "seed": 7})
    stream = Echo(tok, ids)
    first = sample(model, tok, ids, gen, 16, streamer=stream)
    assert capsys.readouterr().out == continuation(tok, ids, first) + "\n"
    assert sample(model, tok, ids, gen, 16) == first
    assert sample(model, tok, ids, OmegaConf.merge(gen, {"seed": 8}), 16) != first
    greedy = sample(model, tok, ids, OmegaConf.merge(gen, {"temperature": 0}), 16)
    assert greedy == sample(model, tok, ids, OmegaConf.merge(gen, {"temperature": 0, "seed": 8}), 16)


def test_a_run_directory_works_as_ckpt(make_cfg, tmp_path, english_checkpoint, hf):
    """A run directory (config.yaml, model_config.json, checkpoints/last.ckpt, as training writes
    them) samples what its Hugging Face export samples; the tokenizer is rebuilt from its config."""
    from allam.tasks import generate
    from allam.tasks.train import save_run_config

    model, tok = hf
    run = tmp_path / "trained"
    run.mkdir()
    save_run_config(make_cfg(out=run), model.config, run)
    (run / "checkpoints").mkdir()
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "global_step": 0, "loops": {}},
               run / "checkpoints" / "last.ckpt")  # what eval and generate verify before loading
    args = ("task=generate", "prompt=The kingdom of heaven", "generate.temperature=0", "generate.max_new_tokens=8")
    res = generate.run(make_cfg(*args, f"ckpt={run}", out=tmp_path / "from-run"))
    # the run was trained by pretraining: chat=auto sends plain text (the HF folder is told so)
    again = generate.run(make_cfg(*args, f"ckpt={english_checkpoint}", "generate.chat=false", out=tmp_path / "from-hf"))
    assert res["generate.chat"] is False and res["source_run"] == str(run.resolve()) and res["ckpt"] == str((run / "checkpoints" / "last.ckpt").resolve())
    assert res["generate.token_ids"] == again["generate.token_ids"] and len(res["generate.token_ids"]) == 8
    assert res["generate.prompt_text"] == again["generate.prompt_text"]
    assert res["config"]["paths"]["output_dir"] == str(run)  # the run's own config, not this command's


def test_a_chat_template_carries_the_prompt_as_one_user_message(make_cfg, tmp_path, english_checkpoint, hf):
    from transformers import AutoTokenizer

    from allam.tasks import generate

    tok = hf[1]  # the project's bundles carry a chat template: chat=auto uses it
    text, ids, used = generate.prompt_ids(tok, "Who wrote Psalms?", "auto")
    assert used and text == tok.apply_chat_template([{"role": "user", "content": "Who wrote Psalms?"}],
                                                    tokenize=False, add_generation_prompt=True)
    assert ids == tok(text, add_special_tokens=False).input_ids and ids.count(tok.bos_token_id) == 1

    folder = tmp_path / "chat-model"
    shutil.copytree(english_checkpoint, folder)
    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.chat_template = TEMPLATE
    tok.save_pretrained(str(folder))
    args = (f"ckpt={folder}", "task=generate", "prompt=Who wrote Psalms?", "generate.max_new_tokens=4")
    res = generate.run(make_cfg(*args, out=tmp_path / "auto"))
    rendered = "<s><|user|>\nWho wrote Psalms?\n<|assistant|>\n"
    assert res["generate.chat"] is True and res["generate.prompt_text"] == rendered
    ids = tok(rendered, add_special_tokens=False).input_ids
    assert res["generate.prompt_tokens"] == len(ids) and ids.count(tok.bos_token_id) == 1
    plain = generate.run(make_cfg(*args, "generate.chat=false", out=tmp_path / "plain"))
    assert plain["generate.chat"] is False and plain["generate.prompt_text"] == "Who wrote Psalms?"


def test_chat_without_a_template_is_one_line_before_the_model_loads(cli, tmp_path, english_checkpoint, monkeypatch):
    from allam.eval import load

    folder = tmp_path / "no-template"
    shutil.copytree(english_checkpoint, folder)
    (folder / "chat_template.jinja").unlink()

    def no_model(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(load, "load_model", no_model)
    line = cli("task=generate", f"ckpt={folder}", "prompt=hello", "generate.chat=true")
    assert line is not None and "\n" not in line
    assert line.startswith("error: generate.chat=true: this tokenizer has no chat template")
    assert "generate.chat=false" in line


@pytest.mark.parametrize("bad, says", [
    ("generate.temperature=-0.5", "generate.temperature=-0.5: must be a number >= 0"),
    ("generate.top_p=0", "generate.top_p=0.0: must be in (0, 1]"),
    ("generate.top_p=1.5", "generate.top_p=1.5: must be in (0, 1]"),
    ("generate.max_new_tokens=0", "generate.max_new_tokens=0: must be positive"),
    ("generate.seed=-1", "generate.seed=-1: must be non-negative"),
    ("generate.chat=maybe", "generate.chat=maybe: allowed: auto, true, false"),
    ("prompt=null", "prompt=None: task=generate needs prompt="),
])
def test_generate_settings_fail_in_one_line(make_cfg, bad, says):
    cfg = make_cfg("task=generate", "prompt=hi", bad)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value).startswith(says) and "\n" not in str(err.value)


def test_generate_needs_a_ckpt(make_cfg):
    from allam.tasks import generate

    with pytest.raises(ConfigError, match="^ckpt=None: task=generate needs ckpt="):
        generate.run(make_cfg("task=generate", "prompt=hi"))


def test_the_prompt_is_taken_literally_from_the_command_line():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from allam.config.errors import compose_overrides

    parser = OverridesParser.create()
    for text in ("it's \\' a \"quote\"", "back\\slash\\", "\\${x} and ${y}", "two\nlines\\\n", "", "true", "a=b, c"):
        (arg,) = compose_overrides([f"prompt={text}"])
        assert OmegaConf.create({"prompt": parser.parse_override(arg).value()}).prompt == text, arg
    assert compose_overrides(["prompt='already, quoted'"]) == ["prompt='already, quoted'"]


def test_generation_stops_at_end_of_text_and_fits_the_context(hf):
    import copy

    from allam.tasks.generate import new_token_budget, sample, stop_ids

    model, tok = hf
    assert model.config.max_position_embeddings == 128 and stop_ids(model, tok) == [tok.eos_token_id]
    assert new_token_budget(model, 10, 50) == 50 and new_token_budget(model, 100, 50) == 28
    with pytest.raises(ConfigError, match="^prompt: 128 tokens, but the model's context is 128 tokens"):
        new_token_budget(model, 128, 1)
    eos_only = copy.deepcopy(model)  # a head whose every logit is 0 but end-of-text's
    eos_only.lm_head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    torch.nn.init.zeros_(eos_only.lm_head.weight)
    with torch.no_grad():
        eos_only.lm_head.bias.zero_()[tok.eos_token_id] = 10.0
    ids = tok("The kingdom of heaven").input_ids
    gen = OmegaConf.create({"temperature": 0, "top_p": 1.0, "seed": 0})
    assert sample(eos_only, tok, ids, gen, 16) == [tok.eos_token_id]
    padded = copy.deepcopy(eos_only)  # 3 padding rows past the tokenizer, with the highest logits
    padded.lm_head = torch.nn.Linear(model.config.hidden_size, len(tok) + 3, bias=True)
    torch.nn.init.zeros_(padded.lm_head.weight)
    with torch.no_grad():
        padded.lm_head.bias.zero_()[tok.eos_token_id] = 30.0  # sampled too: end-of-text all but surely
        padded.lm_head.bias[len(tok):] = 40.0
    assert sample(padded, tok, ids, gen, 16) == [tok.eos_token_id]
    assert sample(padded, tok, ids, OmegaConf.create({"temperature": 1.0, "top_p": 1.0, "seed": 0}), 16) == [tok.eos_token_id]


def test_sampling_is_softmax_over_logits_at_temperature_without_a_top_k_cut(hf):
    """At top_p=1 the tokens are those a plain loop draws from softmax(logits / T) over the whole
    vocabulary with the same seed (a top-k cut of 50 would draw other tokens from this flat model)."""
    from allam.tasks.generate import sample

    model, tok = hf
    ids = tok("The kingdom of heaven").input_ids
    got = sample(model, tok, ids, OmegaConf.create({"temperature": 0.8, "top_p": 1.0, "seed": 3}), 8)
    torch.manual_seed(3)
    seq = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(8):
            probs = torch.softmax(model(seq).logits[:, -1].float() / 0.8, dim=-1)
            seq = torch.cat([seq, torch.multinomial(probs, num_samples=1)], dim=1)
    assert got == seq[0, len(ids):].tolist()


@pytest.mark.slow
def test_a_trained_run_and_its_export_generate_the_same(make_cfg, tmp_path):
    """A real run (one step of the micro model, exported): greedy from the run directory equals
    greedy from its Hugging Face export (the hand-made run directory above covers this path fast)."""
    from allam.tasks import generate, train

    run = tmp_path / "run"
    train.run(make_cfg("model=micro", "data.batch_size=2", "data.val_bytes=3000", "trainer.max_steps=1", out=run))
    args = ("task=generate", "prompt=The kingdom of heaven", "generate.temperature=0", "generate.max_new_tokens=6")
    from_run = generate.run(make_cfg(*args, f"ckpt={run}", out=tmp_path / "g-run"))
    from_hf = generate.run(make_cfg(*args, f"ckpt={run / 'hf'}", out=tmp_path / "g-hf"))
    assert from_run["source_run"] == from_hf["source_run"] == str(run.resolve())
    assert from_run["generate.token_ids"] == from_hf["generate.token_ids"]
    assert from_run["generate.prompt_text"] == from_hf["generate.prompt_text"]


def test_auto_chat_follows_what_the_run_was_trained_for():
    """Every project tokenizer carries the template; auto uses it only after sft or dpo (or for a
    folder from elsewhere whose tokenizer has one); true and false are kept as given."""
    from allam.tasks import generate

    from omegaconf import OmegaConf

    pretrained = OmegaConf.create({"objective": {"name": "pretrain"}})
    assert generate.chat_mode("auto", pretrained) == "false"
    assert generate.chat_mode("auto", OmegaConf.create({"model": {}})) == "false"  # a run from before the objective group
    for name in ("sft", "dpo"):
        assert generate.chat_mode("auto", OmegaConf.create({"objective": {"name": name}})) == "auto"
    assert generate.chat_mode("auto", None) == "auto" and generate.chat_mode(True, pretrained) == "true"
    assert generate.chat_mode("false", OmegaConf.create({"objective": {"name": "sft"}})) == "false"
