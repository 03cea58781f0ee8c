"""What model a run trains, decided before any weight exists: its final Hugging Face config
(vocabulary growth included) and where its starting weights come from.

A :class:`ModelSpec` builds the model on the meta device (free), and materializes it either
whole (:meth:`ModelSpec.build`) or, after FSDP2 has sharded it, shard by shard inside the
LightningModule's ``configure_model`` (:func:`allam.model.weights.materialize`). Both paths read
the same weight source, so they give the same values.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from allam.config import ConfigError, InitName, TokenizerVariant
from allam.model.decoder import check_tokenizer_fits_checkpoint, checkpoint_folder, decoder_config, padded, pretrained_config


@dataclass
class ModelSpec:
    config: PretrainedConfig  # the final shape, vocabulary growth included (model_type: allam.model.decoder.SUPPORTED)
    weights: Callable[[], object]  # a fresh weight source (random draws restart from the seed)
    description: str = ""

    def meta(self) -> PreTrainedModel:
        """The model on the meta device: shapes and parameter counts, no memory."""
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(self.config, dtype=torch.float32)

    def build(self, device: str | torch.device = "cpu") -> PreTrainedModel:
        """The whole model, materialized on `device` (single device and DDP)."""
        from allam.model.weights import materialize

        model = self.meta().to_empty(device=device)
        if getattr(self.config, "tie_word_embeddings", False):
            model.tie_weights()  # to_empty gives the head its own storage; FSDP2's keeps one parameter
        materialize(model, self.weights())
        return model


def build_random(m, init, vocab_size: int, attention: str, bos_id: int = 1, eos_id: int = 2):
    """A whole fresh model of model group `m` with `vocab_size` rows, initialized per init group `init`."""
    from allam.model.weights import RandomWeights

    cfg = decoder_config(m, vocab_size, attention, bos_id, eos_id)
    return ModelSpec(cfg, lambda: RandomWeights.for_config(init, cfg)).build()


def build_meta(m, vocab_size: int):
    """The model on the meta device: shapes and parameter counts, no memory, no weights."""
    return ModelSpec(decoder_config(m, vocab_size, "sdpa"), lambda: None).meta()


def model_spec(model_cfg, init, tok, bundle, attention: str) -> ModelSpec:
    """The spec for the model group, init group and tokenizer group, for the built tokenizer
    `bundle`: a fresh model of ``model.arch`` sized for the tokenizer (init=random), or a checkpoint
    of a supported architecture whose vocabulary grows to the expanded tokenizer (init=pretrained,
    alias llama2)."""
    from allam.model.weights import RandomWeights

    vocab = len(bundle.tokenizer)
    if init.name == InitName.random:
        rows = model_cfg.vocab_size or padded(vocab, model_cfg.pad_vocab_to)
        if rows < vocab:
            raise ConfigError(f"model.vocab_size={rows}: smaller than the tokenizer's {vocab} pieces")
        t = bundle.tokenizer
        cfg = decoder_config(model_cfg, rows, attention, t.bos_token_id, t.eos_token_id)
        return ModelSpec(cfg, lambda: RandomWeights.for_config(init, cfg), f"random init (seed {init.seed})")
    return _pretrained_spec(model_cfg, init, tok, bundle, attention)


def _pretrained_spec(model_cfg, init, tok, bundle, attention: str) -> ModelSpec:
    from allam.model.weights import PretrainedWeights

    ckpt_cfg = pretrained_config(model_cfg, init)
    folder = checkpoint_folder(init)
    rows = ckpt_cfg.vocab_size
    check_tokenizer_fits_checkpoint(tok, init, bundle, rows)
    grow = {}
    if tok.variant == TokenizerVariant.expanded:
        from allam.model.embeddings import fill_strategies, new_token_groups

        strategy, out_strategy = fill_strategies(init.new_embeddings, init.get("new_output_embeddings"),
                                                 tied=bool(getattr(ckpt_cfg, "tie_word_embeddings", False)))
        num_old = min(len(bundle.base.tokenizer), rows)
        target = len(bundle.tokenizer)
        total = padded(target, model_cfg.pad_vocab_to) if target > rows else rows
        if total > num_old:
            num_new = max(0, min(target, total) - num_old)
            groups = (new_token_groups(bundle.base.tokenizer, bundle.tokenizer, num_old, total)
                      if "subtoken_mean" in (strategy, out_strategy) else None)
            grow = dict(rows=total, num_old_rows=num_old, num_new=num_new, strategy=strategy, groups=groups,
                        output_strategy=out_strategy)
            ckpt_cfg.vocab_size = total
    ckpt_cfg._attn_implementation = attention
    ckpt_cfg.use_cache = False
    ckpt_cfg.torch_dtype = "float32"
    seed = init.seed
    fills = "" if not grow else (grow["strategy"] if grow["output_strategy"] == grow["strategy"]
                                 else f"{grow['strategy']} input rows, {grow['output_strategy']} output rows")
    what = f"{init.checkpoint}" + (f", vocabulary {rows} -> {grow['rows']} ({fills})" if grow else "")
    return ModelSpec(ckpt_cfg, lambda: PretrainedWeights(folder, seed=seed, **grow), what)


def spec_from_saved(config_file: Path, weights: Callable[[], object] | None = None) -> ModelSpec:
    """A run's final shape from its model_config.json (export needs no hub access)."""
    cfg = saved_config(config_file)
    cfg._attn_implementation = "sdpa"
    return ModelSpec(cfg, weights or (lambda: None), f"saved shape {config_file}")


def saved_config(config_file: Path) -> PretrainedConfig:
    """The config a run saved (model_config.json, or an export's config.json), of its own model_type."""
    import json

    d = json.loads(Path(config_file).read_text())
    return AutoConfig.for_model(d.pop("model_type", "llama"), **d)
