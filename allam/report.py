"""Tables and plots across runs. Reads only results.json files (through :mod:`allam.results`).

    python run.py task=report report_dir=multirun/2026-11-26/10-00-00

The table has one row per training run, the config keys that differ between the runs (the
ablation axes, found by comparing their resolved configs) and the headline metrics.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from allam.results import REPORT_METRICS, collect_runs

IGNORED_PREFIXES = ("paths.", "ckpt", "trainer.progress_bar", "report_dir")


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(node) if isinstance(node, list) else node}


def differing_keys(runs: list[dict]) -> list[str]:
    flats = [_flatten(r.get("config", {})) for r in runs]
    keys = sorted(set().union(*flats)) if flats else []
    return [
        k
        for k in keys
        if not k.startswith(IGNORED_PREFIXES) and len({repr(f.get(k)) for f in flats}) > 1
    ]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.4f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "" if v is None else str(v)


def build_table(runs: list[dict]) -> tuple[list[str], list[list[str]]]:
    axes = differing_keys(runs)
    metrics = [m for m in REPORT_METRICS if any(m in r for r in runs)]
    header = ["run", *axes, *metrics]
    rows = []
    for r in runs:
        flat = _flatten(r.get("config", {}))
        name = Path(r["_path"]).parent.name
        rows.append([name, *[_fmt(flat.get(k)) for k in axes], *[_fmt(r.get(m)) for m in metrics]])
    return header, rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def plot(runs: list[dict], rows: list[list[str]], path: Path) -> None:
    """Validation bits per byte per run and language (log scale when the values span 10x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [row[0] for row in rows]  # run folder names: experiment names or Hydra's override_dirname
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(runs) + 2), 4.5))
    width = 0.4
    values = []
    for i, (lang, color) in enumerate((("ar", "tab:blue"), ("en", "tab:orange"))):
        vals = [r.get(f"val.{lang}.bpb") or 0.0 for r in runs]
        values += [v for v in vals if v > 0]
        xs = [j + (i - 0.5) * width for j in range(len(runs))]
        bars = ax.bar(xs, vals, width, label={"ar": "Arabic", "en": "English"}[lang], color=color)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    if values and max(values) / min(values) > 10:
        ax.set_yscale("log")
    ax.set_xticks(range(len(runs)))
    ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("validation bits per byte")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_report(root: Path, out_dir: Path) -> dict:
    runs = collect_runs(root)
    if not runs:
        from allam.config import ConfigError

        raise ConfigError(f"report_dir={root}: no training results.json found under it")
    header, rows = build_table(runs)
    table = markdown(header, rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.md").write_text(table + "\n", encoding="utf-8")
    plot(runs, rows, out_dir / "report.png")
    print(table)
    return {"runs": len(runs), "axes": differing_keys(runs), "header": header, "rows": rows,
            "table": str(out_dir / "report.md"), "plot": str(out_dir / "report.png")}
