"""Grow a model's vocabulary: resize the input embedding and output head, fill the new rows.

Strategies for the rows of new tokens (``init.new_embeddings``):
- ``subtoken_mean`` (ALLaM): the mean of the base rows of the pieces the base tokenizer splits the
  new token's text into, computed separately for the input embedding and the output head;
- ``mean``: the mean of all base rows;
- ``random``: normal with mean 0 and the standard deviation of the base rows' entries.

The output head of an untied model may take another strategy (``init.new_output_embeddings``):
e.g. sub-token-mean input rows with mean output rows, so a new piece starts with the average
logit rather than about the logit of the pieces it replaces.

Rows past the new tokenizer's length (padding up to a multiple of 64) get the mean of the base
rows under ``subtoken_mean`` and ``mean`` (their logits then sit at the average instead of at an
arbitrary value), and random rows under ``random``. Base rows are never written.
"""
from __future__ import annotations

import logging

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

STRATEGIES = ("subtoken_mean", "mean", "random")


def check_strategy(strategy, key: str = "init.new_embeddings") -> str:
    """`strategy` (the value of `key`) as a string, or ConfigError (one line) when it is not one of STRATEGIES."""
    value = str(strategy)
    if value not in STRATEGIES:
        from allam.config import ConfigError

        raise ConfigError(f"{key}={value}: allowed: {', '.join(STRATEGIES)}")
    return value


def fill_strategies(new_embeddings, new_output_embeddings=None, tied: bool = False) -> tuple[str, str]:
    """(input, output) strategies from ``init.new_embeddings`` and ``init.new_output_embeddings``
    (None: the same); ConfigError (one line) for an unknown one, or for two different strategies
    on a model whose input and output embeddings are one matrix."""
    inp = check_strategy(new_embeddings)
    if new_output_embeddings is None:
        return inp, inp
    out = check_strategy(new_output_embeddings, "init.new_output_embeddings")
    if tied and out != inp:
        from allam.config import ConfigError

        raise ConfigError(f"init.new_output_embeddings={out}: the model ties its output head to its input "
                          f"embedding, so one fill ({inp}, init.new_embeddings) serves both; leave it unset")
    return inp, out


def base_subtoken_ids(base_tokenizer: PreTrainedTokenizerBase, new_tokenizer: PreTrainedTokenizerBase, token_id: int) -> list[int]:
    """Ids of the base tokenizer's pieces for the text of ``new_tokenizer``'s token ``token_id``.

    The piece string itself (with its "▁" space marker, if any) is segmented by the base
    tokenizer's model, so a word-internal piece gets no spurious dummy-prefix space. Falls back to
    decode + encode (no special tokens) for tokenizers whose model cannot segment a piece.
    """
    piece = new_tokenizer.convert_ids_to_tokens(token_id)
    backend = getattr(base_tokenizer, "backend_tokenizer", None)
    if backend is not None and piece:
        try:
            ids = [t.id for t in backend.model.tokenize(piece)]
            if ids:
                return ids
        except Exception:  # a model without tokenize, or a piece it rejects
            pass
    text = new_tokenizer.decode([token_id])
    return list(base_tokenizer.encode(text, add_special_tokens=False))


def _weights(model: PreTrainedModel) -> list[torch.Tensor]:
    """The input embedding and, unless tied to it, the output head."""
    inp = model.get_input_embeddings().weight
    out_emb = model.get_output_embeddings()
    out = out_emb.weight if out_emb is not None else None
    return [inp] if out is None or out.data_ptr() == inp.data_ptr() else [inp, out]


@torch.no_grad()
def init_new_embedding_rows(
    model: PreTrainedModel,
    base_tokenizer: PreTrainedTokenizerBase | None,
    new_tokenizer: PreTrainedTokenizerBase | None,
    num_old_rows: int,
    strategy: str = "subtoken_mean",
    seed: int = 0,
    output_strategy: str | None = None,
) -> int:
    """Fills rows ``num_old_rows:`` of the input embedding and output head in place (the head per
    ``output_strategy`` when given and the model is untied, else per ``strategy``).

    ``num_old_rows`` is the number of base rows (the base tokenizer's length): statistics use only
    those rows and only later rows are written. Tokens of ``new_tokenizer`` from ``num_old_rows``
    up to its length are new tokens; later rows are padding. Returns the number of new-token rows
    initialized per ``strategy``. ``base_tokenizer`` and ``new_tokenizer`` are needed for
    ``subtoken_mean`` only (``new_tokenizer`` also bounds the new-token rows when given).
    """
    weights = _weights(model)
    strategy, out_strategy = fill_strategies(strategy, output_strategy, tied=len(weights) == 1)
    rows = weights[0].shape[0]
    if not 0 < num_old_rows <= rows:
        raise ValueError(f"num_old_rows={num_old_rows} must be in 1..{rows} (the model's embedding rows)")
    n_tokens = min(len(new_tokenizer), rows) if new_tokenizer is not None else rows
    new_ids = list(range(num_old_rows, max(n_tokens, num_old_rows)))
    groups = None
    if "subtoken_mean" in (strategy, out_strategy):
        if base_tokenizer is None or new_tokenizer is None:
            raise ValueError("subtoken_mean needs base_tokenizer and new_tokenizer")
        groups = new_token_groups(base_tokenizer, new_tokenizer, num_old_rows, rows)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    for w, s in zip(weights, (strategy, out_strategy)):
        fill_new_rows(w, num_old_rows, len(new_ids), s, gen, groups if s == "subtoken_mean" else None)
    log.info("initialized %d new embedding rows (%s) and %d padding rows", len(new_ids),
             strategy if out_strategy == strategy else f"{strategy} input, {out_strategy} output", rows - num_old_rows - len(new_ids))
    return len(new_ids)


@torch.no_grad()
def fill_new_rows(w: torch.Tensor, num_old_rows: int, num_new: int, strategy: str, gen: torch.Generator,
                  groups: list[list[int]] | None = None) -> None:
    """Fill rows ``num_old_rows:`` of one embedding matrix ``w`` in place from its first
    ``num_old_rows`` rows: ``num_new`` new-token rows per ``strategy`` (``groups``: the base ids of
    each new token's pieces, for ``subtoken_mean``), then padding rows. ``random`` draws from ``gen``
    (the whole-model functions of this module, which tests and scripts use). Training fills ``random``
    rows through :func:`allam.model.weights.normal_rows` instead, one generator per block of rows, so
    a rank draws only its own rows; the distribution is the same, the values are not."""
    rows = w.shape[0]
    old = w[:num_old_rows].float()
    mean = old.mean(dim=0)
    if strategy == "random":
        std = old.std().item()
        fill = torch.randn((rows - num_old_rows, w.shape[1]), generator=gen) * std
        w[num_old_rows:] = fill.to(w.dtype).to(w.device)
        return
    if strategy == "mean":
        w[num_old_rows : num_old_rows + num_new] = mean.to(w.dtype)
    else:
        assert groups is not None and len(groups) == num_new
        lengths = torch.tensor([len(g) for g in groups], device=w.device)
        flat = torch.tensor([j for g in groups for j in g], dtype=torch.long, device=w.device)
        owner = torch.repeat_interleave(torch.arange(len(groups), device=w.device), lengths)
        sums = torch.zeros((len(groups), w.shape[1]), dtype=torch.float32, device=w.device)
        sums.index_add_(0, owner, old[flat])
        w[num_old_rows : num_old_rows + num_new] = (sums / lengths.clamp(min=1)[:, None]).to(w.dtype)
    w[num_old_rows + num_new :] = mean.to(w.dtype)


def new_token_groups(base_tokenizer, new_tokenizer, num_old_rows: int, rows: int) -> list[list[int]]:
    """For each new token (ids ``num_old_rows`` up to the new tokenizer's length, at most ``rows``),
    the base ids of its pieces; checked to index only base rows."""
    if num_old_rows < len(base_tokenizer):
        raise ValueError(f"num_old_rows={num_old_rows} is below the base tokenizer's {len(base_tokenizer)} pieces")
    new_ids = range(num_old_rows, max(min(len(new_tokenizer), rows), num_old_rows))
    groups = [base_subtoken_ids(base_tokenizer, new_tokenizer, i) for i in new_ids]
    if any(j >= num_old_rows for g in groups for j in g):
        raise ValueError("the base tokenizer produced ids beyond num_old_rows; is base_tokenizer the model's tokenizer?")
    return groups


def resize_embeddings(
    model: PreTrainedModel,
    new_tokenizer: PreTrainedTokenizerBase,
    base_tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    strategy: str = "subtoken_mean",
    seed: int = 0,
    pad_to: int = 64,
    output_strategy: str | None = None,
) -> int:
    """Resizes input embedding and output head to ``len(new_tokenizer)`` padded to ``pad_to`` and
    fills the new rows (see :func:`init_new_embedding_rows`). Returns the number of base rows.

    Base rows are the base tokenizer's length (or the model's current rows when no base tokenizer
    is given). Rows the model already had beyond the base tokenizer (padding) are re-initialized as
    new rows. Call before any sharding (FSDP): it replaces the embedding modules' weights.
    """
    rows = model.get_input_embeddings().weight.shape[0]
    num_old = min(len(base_tokenizer), rows) if base_tokenizer is not None else rows
    target = len(new_tokenizer)
    if target > rows:
        model.resize_token_embeddings(target, pad_to_multiple_of=pad_to or None, mean_resizing=False)
    if model.get_input_embeddings().weight.shape[0] > num_old:
        init_new_embedding_rows(model, base_tokenizer, new_tokenizer, num_old, strategy, seed, output_strategy)
    return num_old
