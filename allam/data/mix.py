"""The mix report: target vs realized tokens per source and per stage over a run, with each
source's epochs, documents and drops (results.json "data"), and the table printed when the data
is prepared."""
from __future__ import annotations

from typing import Optional, Sequence

from allam.config import ConfigError
from allam.config.langs import BASE_LANG, lang_name
from allam.data.blend import Blend
from allam.data.shards import SourceShards


def mix_report(blend: Blend, shards: Sequence[SourceShards], *, total: int, batch_size: int, world: int,
               validation: dict, fingerprint: dict, prepare_seconds: Optional[float]) -> dict:
    """The report over the first ``total`` blocks of the blend; ``shards[i]`` is the shards of
    ``blend.sources[i]``, ``validation`` the held-out docs/bytes/tokens scored per language."""
    seq_len = blend.seq_len
    counts = blend.counts(total)
    targets = blend.targets(total)
    sources = {}
    for i, (info, sh) in enumerate(zip(blend.sources, shards)):
        realized = sum(c.get(i, 0) for c in counts)
        target = sum(t.get(i, 0.0) for t in targets)
        avail = info.blocks
        meta = sh.meta
        sources[info.name] = {
            "lang": sh.lang,
            "kind": sh.kind,
            "target_tokens": round(target * seq_len),
            "realized_tokens": realized * seq_len,
            "target_share": target / total if total else 0.0,
            "realized_share": realized / total if total else 0.0,
            "blocks": realized,
            "available_blocks": avail,
            "epochs": realized / avail if avail else 0.0,
            "train_tokens": meta["train"]["tokens"],
            "val_tokens": meta["val"]["tokens"],
            "docs_read": meta["docs_read"],
            "docs_kept": meta["train"]["docs"] + meta["val"]["docs"],
            "dropped": dict(meta["drops"]),
            "cache": str(sh.path),
        }
    ar_blocks = sum(v["blocks"] for v in sources.values() if v["lang"] == "ar")
    langs = list(dict.fromkeys([c for st in blend.stages for c in st.langs()] + [v["lang"] for v in sources.values()]))
    languages = {}
    for code in langs:
        mine = [v for v in sources.values() if v["lang"] == code]
        blocks = sum(v["blocks"] for v in mine)
        languages[code] = {"target_share": sum(v["target_share"] for v in mine),
                           "realized_share": blocks / total if total else 0.0, "blocks": blocks}
    stages = []
    for s, (lo, hi) in enumerate(blend.stage_ranges(total)):
        st = blend.stages[s]
        stages.append({"tokens": st.tokens, "ar_ratio": st.ar_ratio, "shares": dict(st.shares),
                       "translated_share": st.translated_share,
                       "start_block": lo, "end_block": hi, "start_token": lo * seq_len,
                       "blocks": hi - lo, "ar_blocks": sum(counts[s].get(i, 0) for i, sh in enumerate(shards)
                                                            if sh.lang == "ar"),
                       "lang_blocks": {c: sum(counts[s].get(i, 0) for i, sh in enumerate(shards) if sh.lang == c)
                                       for c in st.langs()}})
    return {
        "seq_len": seq_len,
        "block_tokens": seq_len + 1,
        "batch_size": batch_size,
        "world_size": world,
        "blocks": total,
        "tokens": total * seq_len,
        "target_ar_ratio": (sum(v["target_share"] for v in sources.values() if v["lang"] == "ar")),
        "realized_ar_ratio": ar_blocks / total if total else 0.0,
        "languages": languages,
        "stages": stages,
        "sources": sources,
        "validation": validation,
        "seed": blend.seed,
        "fingerprint": fingerprint,
        "prepare_seconds": prepare_seconds,
    }


def check_repeats(report: dict, allow_repeat: bool) -> None:
    """With ``data.allow_repeat=false``, refuses a run that reads some source past its end."""
    if allow_repeat:
        return
    for name, v in report["sources"].items():
        if v["blocks"] > v["available_blocks"]:
            raise ConfigError(
                f"data.sources.{name}: exhausted: the run needs {v['blocks']:,} blocks ({v['epochs']:.2f} epochs) "
                f"but it has {v['available_blocks']:,}; data.allow_repeat=false"
            )


def format_mix_table(r: dict) -> str:
    """The report as the table printed when the data is prepared."""
    n_st = len(r["stages"])
    lines = [
        f"data mix: {r['blocks']:,} blocks of {r['block_tokens']} tokens = {r['tokens']:,} training tokens "
        f"({r['seq_len']} per block), {n_st} stage{'s' if n_st != 1 else ''}, seed {r['seed']}",
    ]
    if n_st > 1:
        for i, s in enumerate(r["stages"]):
            tr = "by size" if s["translated_share"] is None else f"{s['translated_share']:.3f}"
            shares = (f"ar_ratio {s['ar_ratio']:.3f}" if list(s.get("shares", {"ar": 0, "en": 0})) == ["ar", "en"]
                      else "mix " + ", ".join(f"{c} {v:.3f}" for c, v in s["shares"].items()))
            lines.append(f"  stage {i}: blocks {s['start_block']:,}-{s['end_block']:,} (from token {s['start_token']:,}), "
                         f"{shares}, translated_share {tr}")
    hdr = (f"  {'source':<16}{'lang':<5}{'kind':<11}{'target tok':>14}{'realized tok':>14}{'target':>8}{'real':>8}"
           f"{'epochs':>8}{'avail tok':>13}  docs kept/read (dropped)")
    lines.append(hdr)
    for name, v in r["sources"].items():
        drops = ", ".join(f"{k} {n:,}" for k, n in v["dropped"].items() if n)
        lines.append(
            f"  {name:<16}{v['lang']:<5}{v['kind']:<11}{v['target_tokens']:>14,}{v['realized_tokens']:>14,}"
            f"{v['target_share']:>8.3f}{v['realized_share']:>8.3f}{v['epochs']:>8.2f}{v['train_tokens']:>13,}"
            f"  {v['docs_kept']:,}/{v['docs_read']:,}" + (f" ({drops})" if drops else "")
        )
    langs = r.get("languages") or {"ar": {"target_share": r["target_ar_ratio"], "realized_share": r["realized_ar_ratio"]}}
    for code, v in langs.items():
        if code != BASE_LANG or len(langs) > 2:
            lines.append(f"  {lang_name(code).lower() + ' share':<32}{'':>14}{'':>14}{v['target_share']:>8.3f}"
                         f"{v['realized_share']:>8.3f}")
    return "\n".join(lines)
