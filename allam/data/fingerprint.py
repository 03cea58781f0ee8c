"""The data fingerprint: what decides the token stream, stored in checkpoints, and the check made
when resuming."""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Sequence

from allam.config import ConfigError, SourceConfig, Stage

OVERRIDE_KEY = "data.allow_fingerprint_change"


# every field of a source decides its token stream (its reader, cleaning, pairing, kind and weight)
SOURCE_FIELDS = tuple(f.name for f in fields(SourceConfig))


def data_fingerprint(sources: dict[str, Any], contents: dict[str, str], stages: Sequence[Stage], *,
                     parallel_pairs: bool, seed: int, seq_len: int, tokenizer: str,
                     train_tokens: dict[str, int] | None = None) -> dict:
    """Everything that decides the token stream: each source's fields (plain values, as
    allam.data.sources.source_values gives them) and content fingerprint, the stages, the pair
    option, the seed, seq_len and the tokenizer's hash."""
    return {
        "sources": {name: {**{k: src[k] for k in SOURCE_FIELDS}, "content": contents[name],
                           **({"train_tokens": train_tokens[name]} if name in (train_tokens or {}) else {})}
                    for name, src in sources.items()},
        "stages": [_stage(s) for s in stages],
        "parallel_pairs": bool(parallel_pairs),
        "seed": seed,
        "seq_len": seq_len,
        "tokenizer": tokenizer,
    }


def _stage(s: Stage) -> dict:
    """A stage as the fingerprint records it: an Arabic/English stage as it always has been (so
    older checkpoints resume), any other mix with its shares too."""
    out = {"tokens": s.tokens, "ar_ratio": s.ar_ratio, "translated_share": s.translated_share}
    if [c for c, _ in s.shares] != ["ar", "en"]:
        out["shares"] = dict(s.shares)
    return out


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(d, (list, tuple)):
        out = {}
        for i, v in enumerate(d):
            out.update(_flatten(v, f"{prefix}.{i}"))
        if not d:
            out[prefix] = []
        return out
    return {prefix: d}


def _short(v: Any) -> str:
    s = str(v)
    return s[:12] if isinstance(v, str) and len(s) == 64 and all(c in "0123456789abcdef" for c in s) else s


def fingerprint_diff(saved: dict, current: dict) -> list[str]:
    """'key: old -> new' for every leaf that differs (missing leaves show as <absent>; a source's
    ``train_tokens``, the tokens its built shards hold, only when both record it), the sources in
    another order (the blend chains them in that order; Hydra keeps ``+data.sources.X`` overrides
    in command-line order), and a stage's languages in another order (the blend splits them in that
    order: a run saved before the order was fixed, with another table order, drew another stream)."""
    a, b = _flatten(saved), _flatten(current)
    out = []
    for k in sorted(set(a) | set(b)):
        if k.endswith(".train_tokens") and (k not in a or k not in b):  # recorded since shards are counted
            continue
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if va != vb:
            out.append(f"{k}: {_short(va)} -> {_short(vb)}")
    x, y = (list(f.get("sources") or {}) for f in (saved, current))
    if set(x) == set(y) and x != y:  # the blend chains the sources in this order
        out.append(f"sources order: {','.join(x)} -> {','.join(y)}")
    for i, (sa, sb) in enumerate(zip(saved.get("stages") or [], current.get("stages") or [])):
        x, y = (s.get("shares") if isinstance(s, dict) else None for s in (sa, sb))
        if isinstance(x, dict) and isinstance(y, dict) and set(x) == set(y) and list(x) != list(y):
            out.append(f"stages.{i}.shares order: {','.join(x)} -> {','.join(y)}")
    return out


def check_fingerprint(saved: dict, current: dict, allow_change: bool) -> list[str]:
    """Refuses (ConfigError, one line naming what changed) when the data fingerprint saved in a
    checkpoint differs from the current one, unless allow_change. Returns the differences."""
    diffs = fingerprint_diff(saved or {}, current or {})
    if diffs and not allow_change:
        shown = "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
        raise ConfigError(
            f"data fingerprint differs from the checkpoint's ({shown}); set {OVERRIDE_KEY}=true to resume anyway"
        )
    return diffs

