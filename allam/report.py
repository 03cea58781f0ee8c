"""Tables and plots across runs. Reads only results.json files (through :mod:`allam.results`).

    python run.py task=report report_dir=multirun/2026-11-26/10-00-00

The table has one row per training run, the config keys that differ between the runs (the
ablation axes, found by comparing their resolved configs), the headline metrics and, where runs
were evaluated, the accuracy of every eval task (``eval.<task>.acc`` and ``acc_norm``).
A task=eval run's scores join the row of the run it scored (its ``source_run``); one that scored
no run under the folder (e.g. a Hugging Face folder) gets its own row. Every row shows the run's
``status`` (finished, preempted, failed; ``eval`` for an eval run's own row). A results.json that is
empty, not JSON (truncated, garbage) or written by another task is skipped, and so is a run folder
(a ``config.yaml`` outside ``.hydra/`` and W&B's ``wandb/``) with no results.json (killed, crashed or still running); the
report prints and records (``skipped``, and the end of report.md) each with the reason.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from allam.config.langs import lang_name
from allam.results import FILENAME, eval_tasks, languages, report_metrics

IGNORED_PREFIXES = ("paths.", "ckpt", "trainer.progress_bar", "report_dir", "eval.", "task")
EVAL_COLUMNS = ("acc", "acc_norm")  # eval.<task>.<column> in the table


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(node) if isinstance(node, list) else node}


def read_results(path: Path) -> tuple[dict | None, str | None]:
    """One results.json: (its object, None), or (None, why it cannot be read as one)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"unreadable ({type(exc).__name__}: {exc})"
    if not text.strip():
        return None, "empty file"
    try:
        res = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"not JSON, truncated or damaged ({exc.msg} at line {exc.lineno} column {exc.colno})"
    if not isinstance(res, dict):
        return None, f"not a results object (a JSON {type(res).__name__})"
    return res, None


def collect(root: Path) -> tuple[list[dict], list[dict], list[tuple[str, str]]]:
    """The training runs and the task=eval runs under `root` (or the one file `root`), in path
    order, each with its file as ``_path``, and every other results.json as (path, why skipped)."""
    root = Path(root)
    files = [root] if root.is_file() else sorted(root.rglob(FILENAME))
    runs, evals, skipped = [], [], []
    if root.is_dir():  # a run folder (its config.yaml is written at start) that never wrote results.json
        for cfg in sorted(root.rglob("config.yaml")):
            inside = cfg.relative_to(root).parts[:-1]
            if not {".hydra", "wandb"} & set(inside) and not (cfg.parent / FILENAME).exists():
                skipped.append((str(cfg.parent), "no results.json (killed, crashed or still running)"))
    for f in files:
        res, why = read_results(f)
        if res is not None and res.get("task") in ("train", "eval"):
            res["_path"] = str(f)
            (runs if res["task"] == "train" else evals).append(res)
        else:
            skipped.append((str(f), why or (f"written by task={res.get('task')}, not a training or eval run"
                                             if res.get("task") else "has no 'task' key")))
    return runs, evals, skipped


def differing_keys(runs: list[dict]) -> list[str]:
    flats = [_flatten(r.get("config", {})) for r in runs]
    keys = sorted(set().union(*flats)) if flats else []
    return [
        k
        for k in keys
        if not k.startswith(IGNORED_PREFIXES) and len({repr(f.get(k)) for f in flats}) > 1
    ]


def _fmt(v: Any) -> str:
    if isinstance(v, bool):  # before int: a bool is one
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:,.4f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "" if v is None else str(v)


def with_evals(runs: list[dict], evals: list[dict]) -> list[dict]:
    """Training runs with the eval.* scores of the task=eval runs that scored them (later files
    win), followed by the eval runs that scored no run in `runs`."""
    by_dir = {str(Path(r.get("run_dir") or Path(r["_path"]).parent).resolve()): r for r in runs}
    alone = []
    for e in evals:
        target = by_dir.get(str(Path(e["source_run"]).resolve())) if e.get("source_run") else None
        if target is None:
            alone.append(e)
        else:
            target.update({k: v for k, v in e.items() if k.startswith("eval.")})
    return [*runs, *alone]


def all_eval_tasks(runs: list[dict]) -> list[str]:
    return list(dict.fromkeys(t for r in runs for t in eval_tasks(r)))


def build_table(runs: list[dict]) -> tuple[list[str], list[list[str]]]:
    axes = differing_keys(runs)
    metrics = [m for m in report_metrics(runs) if any(m in r for r in runs)]
    metrics += [f"eval.{t}.{c}" for t in all_eval_tasks(runs) for c in EVAL_COLUMNS if any(f"eval.{t}.{c}" in r for r in runs)]
    header = ["run", "status", *axes, *metrics]
    rows = []
    for r in runs:
        flat = _flatten(r.get("config", {}))
        name = Path(r["_path"]).parent.name
        status = r.get("status") or ("eval" if r.get("task") == "eval" else "unknown")
        rows.append([name, status, *[_fmt(flat.get(k)) for k in axes], *[_fmt(r.get(m)) for m in metrics]])
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
    langs = languages(*runs) or ["ar", "en"]
    width = 0.8 / len(langs)
    values = []
    colors = {"ar": "tab:blue", "en": "tab:orange"}
    spare = iter(["tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"])
    for i, lang in enumerate(langs):
        vals = [r.get(f"val.{lang}.bpb") or 0.0 for r in runs]
        values += [v for v in vals if v > 0]
        xs = [j + (i - (len(langs) - 1) / 2) * width for j in range(len(runs))]
        color = colors.get(lang) or next(spare, None)
        bars = ax.bar(xs, vals, width, label=lang_name(lang), color=color)
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


def plot_eval(runs: list[dict], labels: list[str], path: Path) -> None:
    """Accuracy per eval task (groups) per run (bars, ±1 standard error), chance marked per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = all_eval_tasks(runs)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(tasks) * max(1, len(runs)) ** 0.5 + 3), 4.5))
    width = 0.8 / max(1, len(runs))
    for i, (run, label) in enumerate(zip(runs, labels)):
        xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(tasks))]
        vals = [run.get(f"eval.{t}.acc") for t in tasks]
        errs = [run.get(f"eval.{t}.acc_stderr") or 0.0 for t in tasks]
        ax.bar(xs, [v if v is not None else 0.0 for v in vals], width, yerr=errs, capsize=2, label=label)
    for j, t in enumerate(tasks):
        chances = [r[f"eval.{t}.chance"] for r in runs if isinstance(r.get(f"eval.{t}.chance"), (int, float))]
        if chances:
            ax.hlines(sum(chances) / len(chances), j - 0.45, j + 0.45, colors="black", linestyles="dashed",
                      label="chance" if j == 0 else None)
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels(tasks, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (±1 standard error)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_report(root: Path, out_dir: Path, mix_commits: bool = False) -> dict:
    train, evals, skipped = collect(root)
    runs = with_evals(train, evals)
    notes = [f"skipped {path}: {why}" for path, why in skipped]
    if not runs:
        from allam.config import ConfigError

        why = f" (skipped {len(skipped)}: " + "; ".join(f"{p}: {w}" for p, w in skipped[:3]) + ")" if skipped else ""
        raise ConfigError(f"report_dir={root}: no training results.json found under it{why}")
    header, rows = build_table(runs)
    table = markdown(header, rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.md").write_text(table + "\n" + "".join(f"\n- {n}" for n in notes) + ("\n" if notes else ""),
                                       encoding="utf-8")
    plot(runs, rows, out_dir / "report.png")
    print(table)
    for note in notes:
        print(note)
    res = {"runs": len(runs), "axes": differing_keys(runs), "header": header, "rows": rows,
           "skipped": [{"path": p, "reason": w} for p, w in skipped],
           "table": str(out_dir / "report.md"), "plot": str(out_dir / "report.png")}
    if all_eval_tasks(runs):
        plot_eval(runs, [row[0] for row in rows], out_dir / "report_eval.png")
        res["eval_plot"] = str(out_dir / "report_eval.png")
    res.update(claims_section(root, out_dir, runs, mix_commits))
    return res


def claims_section(root: Path, out_dir: Path, runs: list[dict], mix_commits: bool = False) -> dict:
    """When the runs include claim cells (conf/experiment/claim*.yaml): the seed-grouped verdicts of
    every claim with all its arms present, as CLAIMS.md and claim<N>.png in `out_dir`. An arm with
    runs from different git commits is an error unless `mix_commits` (report_mix_commits=true)."""
    from allam import claims as C
    from allam import claims_report as CR

    arms = set(C.group_by_seed(runs))
    numbers = [c.number for c in C.claims_by_number() if set(c.arms) <= arms]
    if not numbers:
        return {}
    rep = CR.run_claims_report(root, out_dir, numbers, f"python run.py task=report report_dir={root}",
                              mix_commits=mix_commits)
    print(f"claims {', '.join(map(str, numbers))}: {rep['claims_md']}")
    return {"claims": {str(k): v for k, v in rep["verdicts"].items()}, "claims_md": rep["claims_md"]}
