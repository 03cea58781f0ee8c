"""New embedding rows after a vocabulary expansion, on a tiny LlamaForCausalLM built here."""
from __future__ import annotations

import pytest
import sentencepiece as spm
import torch
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM

from allam.config import ConfigError, TokenizerConfig
from allam.data.demo import demo_texts
from allam.model.embeddings import base_subtoken_ids, init_new_embedding_rows, resize_embeddings
from allam.tokenizer import build_tokenizer

torch.set_num_threads(2)
SIZES = dict(english_vocab_size=512, num_new_tokens=200, training_words=40_000)


@pytest.fixture(scope="module")
def expanded(cache_dir):
    cfg = OmegaConf.merge(OmegaConf.structured(TokenizerConfig), dict(variant="expanded", **SIZES))
    return build_tokenizer(cfg, cache_dir=cache_dir, texts=lambda lang: demo_texts(lang, "train"))


def tiny_llama(vocab: int, tie: bool = False, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        max_position_embeddings=64, tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(cfg).eval()


def rows(model):
    return model.get_input_embeddings().weight.detach().clone(), model.get_output_embeddings().weight.detach().clone()


def test_resize_subtoken_mean_keeps_base_rows_and_averages_pieces(expanded):
    base, new = expanded.base.tokenizer, expanded.tokenizer
    assert (len(base), len(new)) == (512, 712)
    model = tiny_llama(512)
    inp0, out0 = rows(model)
    num_old = resize_embeddings(model, new, base, strategy="subtoken_mean", seed=0, pad_to=64)
    inp, out = rows(model)
    assert num_old == 512 and inp.shape[0] == out.shape[0] == 768  # 712 padded to a multiple of 64
    assert model.config.vocab_size == 768
    assert torch.equal(inp[:512], inp0) and torch.equal(out[:512], out0)
    sp_base = spm.SentencePieceProcessor(model_file=str(expanded.base.sp_model_path))
    checked = 0
    for i in range(512, 712):
        ids = base_subtoken_ids(base, new, i)
        piece = new.convert_ids_to_tokens(i)
        assert base.decode(ids) == piece.replace("▁", " ").removeprefix(" ")  # decode drops the prefix space
        if piece.startswith("▁"):  # independent check: SentencePiece puts the same "▁" in front
            assert ids == sp_base.encode(piece[1:])
            checked += 1
        torch.testing.assert_close(inp[i], inp0[ids].mean(0))
        torch.testing.assert_close(out[i], out0[ids].mean(0))
    assert checked > 20
    for w, w0 in ((inp, inp0), (out, out0)):  # padding rows: the base mean
        torch.testing.assert_close(w[712:], w0.mean(0).expand(768 - 712, -1))


def test_english_logits_unchanged_after_resize(expanded):
    base, new = expanded.base.tokenizer, expanded.tokenizer
    model = tiny_llama(512)
    ids = torch.tensor([new.encode("The prophet said to the people of the city.")])
    assert ids.max() < 512
    with torch.no_grad():
        before = model(ids).logits
        resize_embeddings(model, new, base)
        after = model(ids).logits
    torch.testing.assert_close(after[..., :512], before, rtol=0, atol=1e-6)


@pytest.mark.parametrize("tie", [False, True])
def test_mean_and_random_strategies(expanded, tie):
    new = expanded.tokenizer
    model = tiny_llama(512, tie=tie)
    inp0, out0 = rows(model)
    model.resize_token_embeddings(768, mean_resizing=False)
    init_new_embedding_rows(model, None, new, 512, "mean")
    inp, out = rows(model)
    torch.testing.assert_close(inp[512:], inp0.mean(0).expand(256, -1))
    torch.testing.assert_close(out[512:], out0.mean(0).expand(256, -1))
    assert torch.equal(inp[:512], inp0) and torch.equal(out[:512], out0)
    if tie:
        assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()

    init_new_embedding_rows(model, None, new, 512, "random", seed=3)
    inp, out = rows(model)
    assert torch.equal(inp[:512], inp0) and torch.equal(out[:512], out0)
    assert abs(inp[512:].std().item() / inp0.std().item() - 1) < 0.1
    assert abs(inp[512:].mean().item()) < 3 * inp0.std().item() / 256**0.5
    again = rows(model)
    init_new_embedding_rows(model, None, new, 512, "random", seed=3)
    assert torch.equal(rows(model)[0], again[0])  # seeded


def test_bad_strategy_and_rows(expanded):
    model = tiny_llama(512)
    with pytest.raises(ConfigError, match="init.new_embeddings=bogus"):
        init_new_embedding_rows(model, expanded.base.tokenizer, expanded.tokenizer, 512, "bogus")
    with pytest.raises(ValueError, match="needs base_tokenizer"):
        init_new_embedding_rows(model, None, expanded.tokenizer, 400, "subtoken_mean")
    with pytest.raises(ValueError, match="num_old_rows=900"):
        init_new_embedding_rows(model, None, expanded.tokenizer, 900, "mean")


def test_output_rows_may_take_another_strategy_on_both_paths(expanded, tmp_path):
    """init.new_output_embeddings=mean with sub-token-mean inputs: the input rows average the pieces,
    the head's new rows are the mean of its base rows; the same from a saved checkpoint through
    PretrainedWeights (the training path) as through resize_embeddings. A tied model refuses two
    strategies in one line; unset, the head follows new_embeddings."""
    from allam.model.embeddings import fill_strategies, new_token_groups
    from allam.model.weights import PretrainedWeights

    base, new = expanded.base.tokenizer, expanded.tokenizer
    model = tiny_llama(512)
    model.save_pretrained(tmp_path / "ckpt")
    inp0, out0 = rows(model)
    resize_embeddings(model, new, base, strategy="subtoken_mean", output_strategy="mean", pad_to=64)
    inp, out = rows(model)
    for i in (512, 600, 711):
        ids = base_subtoken_ids(base, new, i)
        torch.testing.assert_close(inp[i], inp0[ids].mean(0))
        torch.testing.assert_close(out[i], out0.mean(0))
    assert not torch.allclose(out[600], out0[base_subtoken_ids(base, new, 600)].mean(0))

    groups = new_token_groups(base, new, 512, 768)
    src = PretrainedWeights(tmp_path / "ckpt", rows=768, num_old_rows=512, num_new=200, strategy="subtoken_mean",
                            groups=groups, output_strategy="mean")
    torch.testing.assert_close(src.rows("model.embed_tokens.weight", inp.shape, 0, 768), inp)
    torch.testing.assert_close(src.rows("lm_head.weight", out.shape, 0, 768), out)
    same = PretrainedWeights(tmp_path / "ckpt", rows=768, num_old_rows=512, num_new=200, strategy="subtoken_mean",
                             groups=groups)
    torch.testing.assert_close(same.rows("lm_head.weight", out.shape, 512, 513)[0], out0[groups[0]].mean(0))

    assert fill_strategies("subtoken_mean") == ("subtoken_mean", "subtoken_mean")
    assert fill_strategies("subtoken_mean", "mean") == ("subtoken_mean", "mean")
    assert fill_strategies("mean", "mean", tied=True) == ("mean", "mean")
    with pytest.raises(ConfigError, match=r"^init\.new_output_embeddings=mean: the model ties its output head"):
        fill_strategies("subtoken_mean", "mean", tied=True)
    with pytest.raises(ConfigError, match=r"^init\.new_output_embeddings=bogus: allowed: subtoken_mean, mean, random$"):
        fill_strategies("subtoken_mean", "bogus")
