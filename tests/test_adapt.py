"""ALLaM's adaptation path: an English Llama, its tokenizer expanded with Arabic pieces,
embeddings resized and initialized, continued pretraining; and exports."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from allam.config import ConfigError
from allam.tasks import builders
from allam.tasks import export as export_task
from allam.tasks import train as train_task
from allam.train.checkpointing import MARKER

SMALL_MODEL = ["model=micro"]
SMALL_EXPANSION = ["tokenizer=expanded", "tokenizer.num_new_tokens=512", "tokenizer.training_words=60000"]


def test_expanded_model_keeps_english_logits(make_cfg, english_checkpoint):
    cfg = make_cfg("init=llama2", f"init.checkpoint={english_checkpoint}", *SMALL_MODEL, *SMALL_EXPANSION)
    bundle = builders.build_tokenizer(cfg)
    base_tok = AutoTokenizer.from_pretrained(english_checkpoint)
    assert len(bundle.tokenizer) == len(base_tok) + 512
    english = "In the beginning God created the heavens and the earth. The reward of deeds depends on intentions."
    assert bundle.tokenizer(english).input_ids == base_tok(english).input_ids

    model = builders.build_model(cfg.model, cfg.init, cfg.tokenizer, bundle, "sdpa").eval()
    base = LlamaForCausalLM.from_pretrained(english_checkpoint).eval()
    rows = model.get_input_embeddings().weight.shape[0]
    assert rows % 64 == 0 and rows >= len(bundle.tokenizer)
    old = base.get_input_embeddings().weight.shape[0]
    assert torch.equal(model.get_input_embeddings().weight[:old], base.get_input_embeddings().weight)
    assert torch.equal(model.lm_head.weight[:old], base.lm_head.weight)

    ids = torch.tensor([base_tok(english).input_ids])
    with torch.no_grad():
        a = model(ids).logits[..., :old]
        b = base(ids).logits
    assert (a - b).abs().max().item() < 1e-5

    # a new Arabic piece starts as the mean of the base rows of its sub-pieces
    new_id = len(base_tok) + 3
    text = bundle.tokenizer.convert_tokens_to_string([bundle.tokenizer.convert_ids_to_tokens(new_id)])
    sub = base_tok(text, add_special_tokens=False).input_ids
    expect = base.get_input_embeddings().weight[sub].mean(0)
    torch.testing.assert_close(model.get_input_embeddings().weight[new_id], expect)


def test_output_rows_fill_is_one_override(make_cfg, english_checkpoint):
    """init.new_output_embeddings=mean through the run's model builder: the new input rows stay
    sub-token means, the head's new rows are the mean of the base head's rows."""
    cfg = make_cfg("init=llama2", f"init.checkpoint={english_checkpoint}", "init.new_output_embeddings=mean",
                   *SMALL_MODEL, *SMALL_EXPANSION)
    bundle = builders.build_tokenizer(cfg)
    model = builders.build_model(cfg.model, cfg.init, cfg.tokenizer, bundle, "sdpa")
    base = LlamaForCausalLM.from_pretrained(english_checkpoint)
    base_tok = AutoTokenizer.from_pretrained(english_checkpoint)
    old, new_id = len(base_tok), len(base_tok) + 3
    text = bundle.tokenizer.convert_tokens_to_string([bundle.tokenizer.convert_ids_to_tokens(new_id)])
    sub = base_tok(text, add_special_tokens=False).input_ids
    with torch.no_grad():
        torch.testing.assert_close(model.get_input_embeddings().weight[new_id], base.get_input_embeddings().weight[sub].mean(0))
        torch.testing.assert_close(model.lm_head.weight[new_id], base.lm_head.weight[:old].mean(0))
        assert torch.equal(model.lm_head.weight[:old], base.lm_head.weight)


@pytest.mark.slow
def test_english_base_then_adaptation_end_to_end(make_cfg, tmp_path):
    """experiment=english_base, exported, then adapted with an expanded tokenizer: tiny settings."""
    base_out = tmp_path / "english_base"
    res = train_task.run(make_cfg("experiment=english_base", *SMALL_MODEL, "trainer.max_steps=4", "data.batch_size=2",
                                  "data.val_bytes=1500", "trainer.val_every_steps=null",
                                  "trainer.checkpoint_every_steps=null", out=base_out))
    assert res["data"]["realized_ar_ratio"] <= 0.125  # english_base: 1% Arabic, at most one of its 8 blocks
    export = base_out / "hf"
    adapt_out = tmp_path / "adapt"
    res = train_task.run(make_cfg("experiment=adapt_toy", f"init.checkpoint={export}", *SMALL_MODEL, *SMALL_EXPANSION[1:],
                                  "trainer.max_steps=4", "data.batch_size=2", "data.val_bytes=1500", out=adapt_out))
    saved = json.loads((adapt_out / "results.json").read_text())
    assert saved["choices"]["init"] == "llama2" and saved["choices"]["tokenizer"] == "expanded"
    assert saved["tokenizer.vocab_size"] == 8192 + 512
    assert abs(saved["data"]["realized_ar_ratio"] - 0.45) < 0.2  # 8 blocks: within one block of 45%
    assert saved["config"]["optim"]["schedule"] == "constant"
    # the starting checkpoint was scored first, so English forgetting is a measured number
    assert saved["delta.val.en.bpb"] == pytest.approx(saved["val.en.bpb"] - saved["start.val.en.bpb"])
    # the adapted export loads with Auto* classes and generates Arabic and English
    tok = AutoTokenizer.from_pretrained(adapt_out / "hf")
    model = AutoModelForCausalLM.from_pretrained(adapt_out / "hf")
    assert model.get_input_embeddings().weight.shape[0] >= len(tok)
    for prompt in ("قال رسول الله", "The Lord said"):
        ids = tok(prompt, return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=4, do_sample=False)
        assert out.shape[1] == ids.shape[1] + 4
        assert isinstance(tok.decode(out[0]), str)


def test_export_from_sharded_checkpoint(make_cfg, tmp_path):
    """A sharded (torch.distributed.checkpoint) folder in the layout FSDP2 runs write is exported tensor by tensor."""
    import torch.distributed.checkpoint as dcp

    out = tmp_path / "run"
    train_task.run(make_cfg(*SMALL_MODEL, "trainer.max_steps=1", "data.batch_size=1", "data.val_bytes=1500",
                            "export=false", out=out))
    full = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    sharded = out / "checkpoints" / "sharded.ckpt"
    dcp.save({"state_dict": full["state_dict"]}, checkpoint_id=str(sharded), no_dist=True)
    assert sharded.is_dir()
    exp = tmp_path / "exported"
    with pytest.raises(ConfigError, match="no COMPLETE marker"):  # a folder cut off before its marker
        export_task.run(make_cfg("task=export", f"ckpt={sharded}", out=exp))
    torch.save({k: v for k, v in full.items() if k not in ("state_dict", "optimizer_states")}, sharded / "meta.pt")
    (sharded / MARKER).write_text("")  # what Lightning's sharded save and the atomic swap leave
    export_task.run(make_cfg("task=export", f"ckpt={sharded}", out=exp))
    model = AutoModelForCausalLM.from_pretrained(exp / "hf")
    key = "model.model.layers.0.mlp.up_proj.weight"
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, full["state_dict"][key])
