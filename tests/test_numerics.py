"""The formulas behind the logged numbers, checked against values worked out by hand."""
from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig

from allam.eval.bpb import BitsPerByte
from allam.model.build import flops_per_token
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
