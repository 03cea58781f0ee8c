"""init=pretrained beyond Llama-2: tiny checkpoints of every allowlisted architecture, saved with
``save_pretrained``, load through the project's own path (meta device, tensor-by-tensor fill)
with the published model's biases, q/k norms, tied embeddings and embedding scale; anything else
is refused with one line; the published shapes of the new model configs count exactly."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from allam.config import ConfigError
from allam.model.decoder import SUPPORTED, check_architecture, checkpoint_config
from allam.model.spec import ModelSpec
from allam.model.weights import PretrainedWeights, RandomWeights
from allam.tasks import plan as plan_task
from allam.tasks import train as train_task

SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=128, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=None)
SMALL_MODEL = ["model=micro", "model.num_kv_heads=2"]
FAST = ["trainer.max_steps=3", "data.batch_size=2", "data.val_bytes=2000", "trainer.val_every_steps=null"]


@pytest.fixture
def english8k(make_cfg):
    from allam.tasks import builders

    return builders.build_tokenizer(make_cfg())


def save_tiny(folder, arch: str, vocab: int, tie: bool = False, seed: int = 0, tokenizer=None):
    """A tiny checkpoint of `arch` with every parameter (biases and norms too) drawn at random, so a
    loader that dropped or reset any of them would change the logits."""
    cfg = AutoConfig.for_model(arch, vocab_size=vocab, tie_word_embeddings=tie, **SHAPE)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05 + (1.0 if p.ndim == 1 else 0.0))
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("arch,tie", [("llama", False), ("mistral", False), ("qwen2", False), ("qwen2", True),
                                      ("qwen3", True), ("gemma", True), ("gemma3_text", False)])
def test_pretrained_architectures_load_exactly(tmp_path, arch, tie):
    folder = save_tiny(tmp_path / arch, arch, vocab=300, tie=tie)
    cfg = checkpoint_config(str(folder), local_files_only=True)
    cfg._attn_implementation = "sdpa"
    ours = ModelSpec(cfg, lambda: PretrainedWeights(folder)).build().eval()
    ref = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa").eval()
    assert type(ours) is type(ref)
    assert {n for n, _ in ours.named_parameters()} == {n for n, _ in ref.named_parameters()}
    if arch == "qwen2":
        assert ours.model.layers[0].self_attn.q_proj.bias.abs().sum() > 0  # the biases are the checkpoint's
    if tie:
        assert ours.lm_head.weight.data_ptr() == ours.model.embed_tokens.weight.data_ptr()
    ids = torch.randint(3, 300, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (ours(ids).logits - ref(ids).logits).abs().max().item()
    assert diff < 1e-5, (arch, diff)


def test_gemma_scale_and_norm_offsets_are_the_models(tmp_path):
    """Gemma multiplies embeddings by sqrt(hidden) and scales norms by (1 + w): a random init gives
    its norms weight 0 (a scale of 1), and the loaded model keeps the embedding scale."""
    cfg = AutoConfig.for_model("gemma", vocab_size=100, **SHAPE)
    init = type("Init", (), {"std": 0.02, "scaled_residual": True, "seed": 0})()
    model = ModelSpec(cfg, lambda: RandomWeights.for_config(init, cfg)).build()
    assert torch.all(model.model.norm.weight == 0)
    llama = AutoConfig.for_model("llama", vocab_size=100, **SHAPE)
    assert torch.all(ModelSpec(llama, lambda: RandomWeights.for_config(init, llama)).build().model.norm.weight == 1)
    qwen = AutoConfig.for_model("qwen2", vocab_size=100, **SHAPE)
    assert torch.all(ModelSpec(qwen, lambda: RandomWeights.for_config(init, qwen)).build().model.layers[0].self_attn.k_proj.bias == 0)


def test_unsupported_architecture_is_one_line(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ConfigError, match=r"model_type 'gpt2' is not supported; init=pretrained loads llama, mistral, "
                                          r"qwen2, qwen3, gemma, gemma3_text") as e:
        checkpoint_config(str(tmp_path / "gpt2"), local_files_only=True)
    assert "\n" not in str(e.value)
    assert set(SUPPORTED) == {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma3_text"}


def test_qwen_checkpoint_under_llama_model_names_both(make_cfg, tmp_path, english8k):
    """A Qwen2 folder is not silently read as a Llama (which would drop its q/k/v biases)."""
    folder = save_tiny(tmp_path / "qwen", "qwen2", vocab=len(english8k.tokenizer), tokenizer=english8k.tokenizer)
    cfg = make_cfg("init=pretrained", f"init.checkpoint={folder}", *SMALL_MODEL, *FAST)
    with pytest.raises(ConfigError, match=r"disagrees with init.checkpoint=.*arch llama vs qwen2 \(model vs checkpoint\)"):
        train_task.run(cfg)
    m = make_cfg(*SMALL_MODEL, "model.arch=qwen2", "model.head_dim=32").model
    with pytest.raises(ConfigError, match=r"head_dim 32 vs 16"):
        check_architecture(m, checkpoint_config(str(folder), True), str(folder))


def test_train_from_a_qwen2_checkpoint(make_cfg, tmp_path, english8k):
    """The real Trainer continues a tied-embedding Qwen2 checkpoint (init=pretrained): the export is
    a Qwen2 folder whose weights moved a little from the checkpoint's, biases included."""
    folder = save_tiny(tmp_path / "qwen", "qwen2", vocab=len(english8k.tokenizer), tie=True, tokenizer=english8k.tokenizer)
    out = tmp_path / "run"
    res = train_task.run(make_cfg("init=pretrained", f"init.checkpoint={folder}", "model.arch=qwen2", *SMALL_MODEL,
                                  *FAST, out=out))
    assert res["choices"]["init"] == "pretrained" and res["status"] == "finished"
    before = AutoModelForCausalLM.from_pretrained(folder)
    after = AutoModelForCausalLM.from_pretrained(out / "hf")
    assert json.loads((out / "hf" / "config.json").read_text())["model_type"] == "qwen2"
    assert res["model.parameters"] == sum(p.numel() for p in before.parameters())
    b0, b1 = before.model.layers[0].self_attn.q_proj.bias, after.model.layers[0].self_attn.q_proj.bias
    assert not torch.equal(b0, b1) and (b1 - b0).abs().max() < 0.05  # trained from the checkpoint's biases


@pytest.mark.parametrize("shape,published", [("llama3_8b", 8_030_261_248), ("qwen2_5_7b", 7_615_616_512),
                                             ("mistral_nemo_12b", 12_247_782_400)])
def test_plan_counts_published_shapes(make_cfg, tmp_path, shape, published):
    """task=plan on the new model configs counts the published parameter totals exactly."""
    res = plan_task.run(make_cfg("task=plan", f"model={shape}", out=tmp_path / shape))
    assert res["model.parameters"] == published


@pytest.mark.parametrize("arch", SUPPORTED)
def test_every_arch_builds_from_the_model_group_and_trains(make_cfg, arch):
    """model.arch=<arch> with init=random: the model group's shape in that architecture's class,
    drawn from the init group's generator, takes a finite training step."""
    from allam.model.decoder import decoder_config

    cfg = make_cfg(*SMALL_MODEL, f"model.arch={arch}")
    hf = decoder_config(cfg.model, 97)
    model = ModelSpec(hf, lambda: RandomWeights.for_config(cfg.init, hf)).build()
    assert hf.model_type == arch and model.config.num_hidden_layers == 2
    ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(0))
    loss = model(ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss) and 4.0 < loss.item() < 5.0  # about ln(97) at init
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_settings_a_pretrained_init_keeps_from_the_checkpoint_are_named(caplog):
    """With a pretrained init only the model group's shape is checked; its other settings (here an
    override of rope_theta, as a long-context ablation would make) are the checkpoint's. The run
    says so in one warning instead of ignoring the override silently."""
    import logging

    from omegaconf import OmegaConf
    from transformers import LlamaConfig

    from allam.model.decoder import check_architecture

    ckpt = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=4, max_position_embeddings=128, rms_norm_eps=1e-5)
    m = OmegaConf.create(dict(name="micro", arch="llama", hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                              num_kv_heads=None, head_dim=None, seq_len=64, max_position_embeddings=None,
                              rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=False))
    with caplog.at_level(logging.WARNING, logger="allam"):
        check_architecture(m, ckpt, "ckpt")
        assert not caplog.records  # the same settings: nothing to say
        m.rope_theta = 500000.0
        check_architecture(m, ckpt, "ckpt")
    assert len(caplog.records) == 1
    assert "model.rope_theta=500000.0 (checkpoint: 10000.0)" in caplog.records[0].getMessage()
