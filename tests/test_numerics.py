"""The formulas behind the logged numbers, checked against values worked out by hand."""
from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig

from allam.eval.bpb import BitsPerByte
from allam.model.decoder import flops_per_token
from allam.train.optim import lr_factor


def test_flops_per_token_is_6n_plus_attention():
    cfg = LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, vocab_size=32000)
    n = 6_607_343_616  # Llama-2-7B without its input embedding
    # 6N + 12 * L * H * Q * T with L=32, H=32, Q=128, T=4096
    assert flops_per_token(cfg, n, 4096) == 6 * n + 12 * 32 * 32 * 128 * 4096


def test_lr_schedule_warmup_cosine_and_constant():
    assert lr_factor(0, 100, 10, "cosine", 0.1) == pytest.approx(0.1)  # (0 + 1) / 10
    assert lr_factor(9, 100, 10, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine", 0.1) == pytest.approx(0.1 + 0.9 * 0.5)  # half way down
    assert lr_factor(100, 100, 10, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(500, 100, 10, "constant", 0.1) == 1.0


def test_bits_per_byte_by_hand():
    """Uniform logits over 4 tokens: NLL ln 4 per scored token; bytes from the table."""
    logits = torch.zeros(1, 4, 4)
    targets = torch.tensor([[1, 2, 3, -100]])  # the padded position is not scored
    token_bytes = torch.tensor([0, 2, 3, 0])  # token 3 carries no bytes (a special token)
    acc = BitsPerByte()
    acc.update(logits, targets, token_bytes)
    assert acc.tokens_all == 3
    assert acc.loss == pytest.approx(math.log(4))
    assert acc.bytes == 5
    assert acc.bpb == pytest.approx(2 * math.log(4) / (math.log(2) * 5))  # 2 byte-carrying tokens, 2 bits each / 5 bytes


def test_held_out_blocks_cover_the_stream_once_with_equal_counts_per_rank():
    import numpy as np

    from allam.data.datamodule import HeldOutBlocks

    stream = np.arange(1, 14)  # 13 tokens: 12 targets
    per_rank = [HeldOutBlocks(stream, 4, r, 2) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == 2  # 3 real blocks, padded to 2 per rank
    blocks = [b[i] for b in per_rank for i in range(len(b))]
    targets = torch.cat([blk[1:] for blk in blocks])
    assert sorted(targets[targets >= 0].tolist()) == list(range(2, 14))  # every token after the first, once
    assert (blocks[-1] == -100).all()  # rank 1's second block lies past the end


def test_weight_decay_by_name_not_by_shape():
    from omegaconf import OmegaConf
    from transformers import LlamaForCausalLM

    from allam.model.decoder import decoder_config
    from allam.train.optim import param_groups

    m = OmegaConf.create(dict(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4, num_kv_heads=None,
                              seq_len=16, max_position_embeddings=None, rope_theta=1e4, norm_eps=1e-5,
                              tie_embeddings=False))
    model = LlamaForCausalLM(decoder_config(m, 64))
    names = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, 0.1)
    emb, body, norms = ([names[id(p)] for p in g["params"]] for g in groups)
    assert sorted(emb) == ["lm_head.weight", "model.embed_tokens.weight"]
    assert all("norm" in n for n in norms) and not any("norm" in n for n in body)
    assert groups[1]["weight_decay"] == 0.1 and groups[2]["weight_decay"] == 0.0 and groups[1]["body"]
