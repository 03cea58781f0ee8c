"""How many embedding rows a run will have, from the config alone (no tokenizer trained): what
``task=plan`` sizes the model with."""
from __future__ import annotations

from allam.config import ConfigError, TokenizerVariant, is_pretrained
from allam.model.decoder import checkpoint_config, padded


def planned_vocab(tok, model, init) -> tuple[int, str]:
    """Embedding rows the run will have, and where the number comes from, without training a
    tokenizer or reading weights. Reads at most a tokenizer's files or a checkpoint's config.json
    (a hub id's are fetched from the hub unless ``init.local_files_only``).

    `tok`, `model`, `init`: the tokenizer, model and init groups."""
    pretrained = is_pretrained(init.name)
    if tok.variant == TokenizerVariant.bilingual:
        n, source = tok.vocab_size, "tokenizer.vocab_size"
    else:
        base = tok.base
        if base == "auto" and pretrained:
            if model.vocab_size:
                n, source = model.vocab_size, f"model.vocab_size (the {model.name} checkpoint's vocabulary)"
            else:
                n, source = checkpoint_config(init.checkpoint, init.local_files_only).vocab_size, "init.checkpoint config"
        elif base in ("auto", "english8k"):
            n, source = tok.english_vocab_size, "tokenizer.english_vocab_size"
        else:
            from allam.tokenizer.variants import resolve_base_size

            n, source = resolve_base_size(base, init.local_files_only), f"tokenizer.base={base}"
        if tok.variant == TokenizerVariant.expanded:
            n, source = n + tok.num_new_tokens, source + " + tokenizer.num_new_tokens (an upper bound)"
    if pretrained:  # the checkpoint's rows, grown (and padded, as training pads them) when the tokenizer is larger
        rows = model.vocab_size or checkpoint_config(init.checkpoint, init.local_files_only).vocab_size
        return (padded(n, model.pad_vocab_to) if n > rows else rows), source
    if model.vocab_size and n > model.vocab_size:
        raise ConfigError(f"model.vocab_size={model.vocab_size}: smaller than the tokenizer's {n:,} pieces ({source}); "
                          "set model.vocab_size=null (the tokenizer's size, padded) or a larger size")
    return (model.vocab_size or padded(n, model.pad_vocab_to)), source
