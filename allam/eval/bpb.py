"""Bits per byte: a tokenizer-independent measure of how well a model predicts text.

bpb = (sum of next-token NLL in nats) / (ln 2 x UTF-8 bytes of the predicted text).
Each target token contributes the bytes it decodes to (`token_bytes[id]`); tokens that decode
to no bytes (EOS and other special tokens) are left out of both sums, so models with
different tokenizers are compared on the same bytes.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class BitsPerByte:
    """Accumulates NLL, token and byte counts for one language over a validation pass."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.nll_all = 0.0  # every target token (for the mean loss)
        self.tokens_all = 0
        self.nll_bytes = 0.0  # only tokens that carry bytes (for bpb)
        self.bytes = 0

    def update(self, logits: torch.Tensor, targets: torch.Tensor, token_bytes: torch.Tensor) -> None:
        """targets < 0 (padding of the last held-out block) are not scored."""
        targets = targets.reshape(-1)
        scored = targets >= 0
        logits, targets = logits.reshape(-1, logits.size(-1))[scored], targets[scored]
        nll = F.cross_entropy(logits.float(), targets, reduction="none")
        nb = token_bytes[targets]
        carry = nb > 0
        self.nll_all += float(nll.sum())
        self.tokens_all += nll.numel()
        self.nll_bytes += float(nll[carry].sum())
        self.bytes += int(nb.sum())

    def merge(self, nll_all: float, tokens_all: int, nll_bytes: float, nbytes: int) -> None:
        self.nll_all, self.tokens_all, self.nll_bytes, self.bytes = nll_all, tokens_all, nll_bytes, nbytes

    def state(self) -> list[float]:
        return [self.nll_all, float(self.tokens_all), self.nll_bytes, float(self.bytes)]

    @property
    def loss(self) -> float:
        return self.nll_all / max(1, self.tokens_all)

    @property
    def bpb(self) -> float:
        return self.nll_bytes / (math.log(2) * max(1, self.bytes))
