"""The fertility report: tokenizer variants measured on held-out text of each language (Arabic and
English unless told otherwise).

The caller passes the text (``texts(lang)``; the tasks pass the configured sources' held-out
split, allam.data.source_texts.SourceTexts): tokenizer code reads no corpus itself.

Per variant and language: tokens per word (whitespace-separated words), characters per token,
and the share of words split into more than 3 pieces (each word segmented as it appears in
running text, with its leading space marker). Written as ``tokenizer_report.json`` and
``tokenizer_report.png`` into ``out_dir``; the table is printed.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Sequence

from allam.config.langs import BASE_LANG, lang_name
from allam.tokenizer.bundle import TokenizerBundle

log = logging.getLogger(__name__)

LANGS = ("ar", "en")


def _langs(results: dict) -> list[str]:
    """The report's languages, in the order measured."""
    return list(results["heldout_words"])


def fertility(tokenizer, docs: Sequence[str], batch: int = 256) -> dict:
    """Tokens per word, characters per token and the share of words in more than 3 pieces."""
    words = Counter(w for d in docs for w in d.split())
    n_words = sum(words.values())
    n_chars = sum(len(d) for d in docs)
    n_tokens = 0
    for i in range(0, len(docs), batch):
        n_tokens += sum(len(x) for x in tokenizer(list(docs[i : i + batch]), add_special_tokens=False)["input_ids"])
    # a word mid-text is " word": the tokenizer's dummy prefix gives the lone word that same space
    uniq = list(words)
    over3 = 0
    for i in range(0, len(uniq), 4096):
        chunk = uniq[i : i + 4096]
        for w, ids in zip(chunk, tokenizer(chunk, add_special_tokens=False)["input_ids"]):
            if len(ids) > 3:
                over3 += words[w]
    return {
        "docs": len(docs),
        "words": n_words,
        "chars": n_chars,
        "tokens": n_tokens,
        "tokens_per_word": n_tokens / n_words if n_words else float("nan"),
        "chars_per_token": n_chars / n_tokens if n_tokens else float("nan"),
        "words_over_3_pieces": over3 / n_words if n_words else float("nan"),
    }


def format_table(results: dict) -> str:
    langs = _langs(results)
    head = f"{'tokenizer':<28}{'vocab':>8}" + "".join(
        f"{lang_name(l) + ' tok/word':>18}{'chars/tok':>11}{'>3 pieces':>11}" for l in langs
    )
    lines = [head, "-" * len(head)]
    for name, r in results["variants"].items():
        row = f"{name:<28}{r['vocab_size']:>8}"
        for l in langs:
            f = r[l]
            row += f"{f['tokens_per_word']:>18.3f}{f['chars_per_token']:>11.2f}{f['words_over_3_pieces']:>10.1%} "
        lines.append(row.rstrip())
    for name, r in results["variants"].items():
        for lang, vs in r.get("reduction_vs", {}).items():
            for base, ratio in vs.items():
                lines.append(f"{name}: {lang_name(lang)} tokens/word {ratio:.2f}x fewer than {base}")
    return "\n".join(lines)


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["variants"])
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.6 * len(names) + 3), 4))
    metrics = (("tokens_per_word", "tokens per word"), ("words_over_3_pieces", "share of words in >3 pieces"))
    langs = _langs(results)
    width = 0.8 / len(langs)
    for ax, (key, title) in zip(axes, metrics):
        for k, lang in enumerate(langs):
            vals = [results["variants"][n][lang][key] for n in names]
            xs = [i + (k - (len(langs) - 1) / 2) * width for i in range(len(names))]
            bars = ax.bar(xs, vals, width, label=lang_name(lang))
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        ax.set_title(title + " (held-out)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fertility_report(
    variants: list[TokenizerBundle],
    out_dir: Path,
    texts: Callable[[str], Iterable[str]],
    *,
    max_words: int | None = None,
    langs: Sequence[str] = LANGS,
) -> dict:
    """Fertility of each variant on held-out text ``texts(lang)`` of each of ``langs``.

    Prints the table, writes ``tokenizer_report.json`` and ``tokenizer_report.png`` into
    ``out_dir`` and returns the JSON content. The base of an expanded variant is added when it
    is not in ``variants``; each expanded variant gets ``reduction_vs`` (per language but
    English: its tokens-per-word reduction factor against every base in the report) and, with
    Arabic among ``langs``, ``arabic_reduction_vs`` (the Arabic entry).
    """
    langs = tuple(dict.fromkeys(langs))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    docs = {}
    for lang in langs:
        kept, n = [], 0
        for d in texts(lang):
            kept.append(d)
            n += len(d.split())
            if max_words is not None and n >= max_words:
                break
        docs[lang] = kept
    names = {b.name for b in variants}
    variants = list(variants) + [b.base for b in variants if b.base is not None and b.base.name not in names]
    results: dict = {"heldout_words": {l: sum(len(d.split()) for d in docs[l]) for l in langs}, "variants": {}}
    for b in variants:
        log.info("fertility of %s ...", b.name)
        results["variants"][b.name] = {
            "vocab_size": len(b.tokenizer),
            "path": str(b.path),
            "base": b.base.name if b.base is not None else None,
            **{l: fertility(b.tokenizer, docs[l]) for l in langs},
        }
    bases = {r["base"] for r in results["variants"].values() if r["base"]}
    tpw = {n: {l: r[l]["tokens_per_word"] for l in langs} for n, r in results["variants"].items()}
    for b in variants:
        if b.base is None:
            continue
        refs = sorted(({b.base.name} | bases) & set(results["variants"]) - {b.name})
        entry = results["variants"][b.name]
        reduction = {l: {n: tpw[n][l] / tpw[b.name][l] for n in refs} for l in langs if l != BASE_LANG}
        if "ar" in reduction:
            entry["arabic_reduction_vs"] = reduction["ar"]
        entry["reduction_vs"] = reduction
    (out_dir / "tokenizer_report.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    _plot(results, out_dir / "tokenizer_report.png")
    print(format_table(results))
    print(f"tokenizer report: {out_dir / 'tokenizer_report.json'}")
    return results

