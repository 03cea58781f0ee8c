"""Hugging Face decoder configs from the `model` group, and the checks a checkpoint must pass.

Architectures (``model.arch``, a checkpoint's ``model_type``): llama, mistral, qwen2, qwen3, gemma
and gemma3_text, each built by its own transformers class, so its biases (Qwen2's q/k/v), q/k
norms (Qwen3), tied embeddings and embedding scale (Gemma) are the published model's. Anything
else is refused with one line: its parts would be silently dropped or mis-mapped."""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from transformers import AutoConfig, PretrainedConfig

from allam.config import Arch, ConfigError

SUPPORTED = tuple(str(a) for a in Arch)


def padded(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple) if multiple > 1 else n


def decoder_config(m, vocab_size: int, attention: str = "sdpa", bos_id: int = 1, eos_id: int = 2) -> PretrainedConfig:
    """The Hugging Face config of architecture ``m.arch`` for the model group `m` and a vocabulary
    of `vocab_size` rows."""
    arch, hd = str(getattr(m, "arch", "llama")), getattr(m, "head_dim", None)  # shapes built by hand may omit them
    extra = {"head_dim": int(hd)} if hd else {}
    if arch in ("qwen2", "qwen3", "mistral"):
        extra["sliding_window"] = None  # full attention (Gemma-3 keeps its interleaved local layers)
    cfg = AutoConfig.for_model(
        arch,
        vocab_size=vocab_size,
        hidden_size=m.hidden_size,
        intermediate_size=m.intermediate_size,
        num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_heads,
        num_key_value_heads=m.num_kv_heads or m.num_heads,
        max_position_embeddings=m.max_position_embeddings or m.seq_len,
        rope_theta=float(m.rope_theta),
        rms_norm_eps=float(m.norm_eps),
        tie_word_embeddings=bool(m.tie_embeddings),
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=None,
        use_cache=False,
        **extra,
    )
    cfg._attn_implementation = attention
    return cfg


def _check_safetensors(path: str) -> None:
    p = Path(path)
    if p.is_dir() and not any(p.glob("*.safetensors")):
        if any(p.glob("*.bin")) or any(p.glob("*.pt")):
            raise ConfigError(
                f"init.checkpoint={path}: holds only pickle weights (.bin/.pt); allam loads safetensors only"
            )
        raise ConfigError(f"init.checkpoint={path}: no *.safetensors weights in this folder")


def _model_type(path: str, local_files_only: bool) -> str | None:
    """The checkpoint's ``model_type`` read from its config.json alone (no class is loaded)."""
    try:
        d, _ = PretrainedConfig.get_config_dict(path, local_files_only=local_files_only, trust_remote_code=False)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"init.checkpoint={path}: cannot read its config.json ({first})") from exc
    return d.get("model_type")


def checkpoint_config(path: str, local_files_only: bool = False) -> PretrainedConfig:
    """The checkpoint's config, for an allowlisted ``model_type`` only (one line otherwise)."""
    if not Path(path).exists() and (path.startswith((".", "/", "~")) or os.sep in path.strip("/").split("/", 1)[-1]):
        raise ConfigError(f"init.checkpoint={path}: no such folder")
    kind = _model_type(path, local_files_only)
    if kind not in SUPPORTED:
        raise ConfigError(f"init.checkpoint={path}: model_type {kind!r} is not supported; init=pretrained loads "
                          f"{', '.join(SUPPORTED)}")
    try:
        cfg = AutoConfig.from_pretrained(path, local_files_only=local_files_only, trust_remote_code=False)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"init.checkpoint={path}: cannot read its {kind} config ({first})") from exc
    return cfg


def head_dim(cfg: PretrainedConfig) -> int:
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


def check_architecture(m, ckpt_cfg: PretrainedConfig, path: str) -> None:
    """The model group must agree with the checkpoint's architecture: an error names both."""
    pairs = {
        "arch": (str(m.arch), ckpt_cfg.model_type),
        "head_dim": (m.head_dim or m.hidden_size // m.num_heads, head_dim(ckpt_cfg)),
        "hidden_size": (m.hidden_size, ckpt_cfg.hidden_size),
        "num_layers": (m.num_layers, ckpt_cfg.num_hidden_layers),
        "num_heads": (m.num_heads, ckpt_cfg.num_attention_heads),
        "num_kv_heads": (m.num_kv_heads or m.num_heads, ckpt_cfg.num_key_value_heads or ckpt_cfg.num_attention_heads),
        "intermediate_size": (m.intermediate_size, ckpt_cfg.intermediate_size),
    }
    bad = [f"{k} {a} vs {b}" for k, (a, b) in pairs.items() if a != b]
    if bad:
        raise ConfigError(
            f"model={m.name} disagrees with init.checkpoint={path}: " + ", ".join(bad) + " (model vs checkpoint)"
        )
    kept = _kept_from_checkpoint(m, ckpt_cfg)
    if kept:
        import logging

        logging.getLogger("allam").warning(
            "init.checkpoint=%s keeps its own %s: the model group's values are not used with a pretrained init "
            "(only its shape is checked against the checkpoint)", path, ", ".join(kept))
    limit = ckpt_cfg.max_position_embeddings
    if m.seq_len > limit:
        raise ConfigError(f"model.seq_len={m.seq_len}: init.checkpoint={path} allows at most {limit} positions")


def _kept_from_checkpoint(m, ckpt_cfg: PretrainedConfig) -> list[str]:
    """The model group's position settings that differ from the checkpoint's, which a pretrained
    init keeps ("model.rope_theta=500000 (checkpoint: 10000)"): the ones a long-context ablation
    would override. (norm_eps and tie_embeddings are the checkpoint's too, but a model group's
    defaults differ from many checkpoints' without anyone having asked for them.)"""
    rope = getattr(ckpt_cfg, "rope_parameters", None) or {}
    theirs = {"rope_theta": rope.get("rope_theta", getattr(ckpt_cfg, "rope_theta", None)),
              "max_position_embeddings": getattr(ckpt_cfg, "max_position_embeddings", None)}
    ours = {"rope_theta": m.rope_theta, "max_position_embeddings": m.max_position_embeddings}
    return [f"model.{key}={mine} (checkpoint: {theirs[key]})" for key, mine in ours.items()
            if mine is not None and theirs[key] is not None
            and not math.isclose(float(mine), float(theirs[key]), rel_tol=1e-9)]


def pretrained_config(m, init) -> PretrainedConfig:
    """The checkpoint's config after checking it agrees with model group `m` (an error names both
    sides) and holds safetensors weights."""
    path = init.checkpoint
    ckpt_cfg = checkpoint_config(path, init.local_files_only)
    check_architecture(m, ckpt_cfg, path)
    if Path(path).exists():
        _check_safetensors(path)
    return ckpt_cfg


def checkpoint_folder(init) -> Path:
    """The local folder of init.checkpoint (a hub id resolves to its cached snapshot: config and
    safetensors files only, never code)."""
    path = Path(os.path.expanduser(init.checkpoint))
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(init.checkpoint, allow_patterns=["*.json", "*.safetensors"],
                                   local_files_only=init.local_files_only)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"init.checkpoint={init.checkpoint}: cannot fetch its safetensors weights ({first})") from exc
    _check_safetensors(folder)
    return Path(folder)


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())  # a tied head is the same tensor, counted once
    emb = 0 if model.config.tie_word_embeddings else model.get_input_embeddings().weight.numel()
    return {"total": total, "non_embedding": total - emb, "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def flops_per_token(model_cfg: PretrainedConfig, non_embedding_params: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N + 12·L·H·Q·T (N without the input embedding, Q the head dim)."""
    L = model_cfg.num_hidden_layers
    H = model_cfg.num_attention_heads
    Q = head_dim(model_cfg)
    return 6.0 * non_embedding_params + 12.0 * L * H * Q * seq_len


def check_tokenizer_fits_checkpoint(tok, init, bundle, rows: int) -> None:
    """With a pretrained init, token ids must mean what the checkpoint learned them to mean: the
    base tokenizer must be the checkpoint's own (tokenizer.base=auto) or have the same vocabulary,
    and an unexpanded tokenizer must fit the checkpoint's `rows` embedding rows.

    `tok`, `init`: the tokenizer and init groups; `bundle`: the built TokenizerBundle."""
    expanded = str(tok.variant) == "expanded"
    base = bundle.base if expanded else bundle
    if str(tok.variant) == "base" and len(base.tokenizer) > rows:
        raise ConfigError(
            f"init.checkpoint={init.checkpoint}: has {rows} embedding rows but tokenizer "
            f"({bundle.name}) has {len(bundle.tokenizer)} pieces; use tokenizer=expanded to grow the vocabulary"
        )
    if tok.base == "auto":
        return  # the base is the checkpoint's own tokenizer
    try:
        from allam.tokenizer.hf_folder import load

        own = load(init.checkpoint, local_files_only=init.local_files_only)
    except Exception:
        own = None
    if own is not None and own.get_vocab() != base.tokenizer.get_vocab():
        raise ConfigError(
            f"tokenizer.base={tok.base}: its vocabulary differs from the tokenizer of "
            f"init.checkpoint={init.checkpoint}; use tokenizer.base=auto (the checkpoint's own)"
        )
    if own is None and len(base.tokenizer) != rows:
        raise ConfigError(
            f"tokenizer.base={tok.base}: {len(base.tokenizer)} pieces, but init.checkpoint="
            f"{init.checkpoint} has {rows} embedding rows and no tokenizer to compare with"
        )
