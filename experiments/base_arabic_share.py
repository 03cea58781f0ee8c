"""Does the toy English base know enough Arabic for sub-token-mean rows to transfer anything?

Claim 3's mechanism: a new Arabic token's row, set to the mean of the rows of the base-tokenizer
pieces it replaces, starts out better than a random row. That needs a base whose Arabic pieces
carry knowledge. This script trains the claims' English base (``experiment=claims_english_base``,
its 393,216 tokens) at several Arabic shares (the share of its training tokens and of its
tokenizer's training words) and, for each base, scores the step-0 Arabic and English bits per byte
of the adapted model under each new-row fill (one training step each, ``experiment=claim1_adapt``,
whose expanded tokenizer grows the base's own; the scores at step 0 come before the step). One
seed; runs already finished are read back.

``--new-tokens`` also varies how many Arabic pieces the expansion adds (the claims add 16,000).

    python experiments/base_arabic_share.py --shares 0.01 0.05 0.2 --new-tokens 16000 2000 \
        --out outputs/base_share --json experiments/base_arabic_share.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from reproduce import ROOT, finished, run_cell  # the claims suite's runner (same folder)

from allam import results as R  # noqa: E402  (importable once reproduce has put the project on sys.path)

# a fill: init.new_embeddings, or "<input>+<output>" for init.new_output_embeddings=<output>
FILLS = ("subtoken_mean", "random", "mean", "subtoken_mean+mean", "mean+subtoken_mean")


def fill_args(fill: str) -> list[str]:
    inp, _, out = fill.partition("+")
    return [f"init.new_embeddings={inp}"] + ([f"init.new_output_embeddings={out}"] if out else [])


def run(args: list[str], folder: Path) -> dict:
    """The results of ``run.py <args>`` in `folder`, run unless it finished there (log: <folder>.log)."""
    if not finished(folder):
        print("[run]", " ".join(args), flush=True)
        if run_cell([*args, f"hydra.run.dir={folder}", "trainer.progress_bar=false"], Path(f"{folder}.log")):
            raise SystemExit(f"failed: {folder} (see {folder}.log)")
    return R.read(folder / R.FILENAME)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shares", type=float, nargs="+", default=[0.01, 0.05, 0.2])
    p.add_argument("--new-tokens", type=int, nargs="+", default=[16000], help="tokenizer.num_new_tokens values")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "base_share")
    p.add_argument("--json", type=Path, default=None, help="where to write the table (default: print only)")
    a = p.parse_args()
    seed = [f"trainer.seed={a.seed}", f"init.seed={a.seed}", f"data.seed={a.seed}"]
    rows = []
    for share in a.shares:
        base_dir = a.out / f"share{share:g}" / "base"
        base = run(["experiment=claims_english_base", f"data.ar_ratio={share}", f"tokenizer.base_ar_share={share}",
                    *seed], base_dir)
        for n_new in a.new_tokens:
            row = {"share": share, "new_tokens": n_new, "base.val.ar.bpb": base["val.ar.bpb"],
                   "base.val.en.bpb": base["val.en.bpb"]}
            for fill in FILLS:
                name = fill.replace("+", "-out-") if n_new == 16000 else f"{fill.replace('+', '-out-')}-new{n_new}"
                res = run(["experiment=claim1_adapt", f"init.checkpoint={base_dir / 'hf'}", *fill_args(fill),
                           f"tokenizer.num_new_tokens={n_new}", "trainer.max_steps=1", "logger=none", *seed],
                          a.out / f"share{share:g}" / name)
                row[f"{fill}.start.val.ar.bpb"] = res["start.val.ar.bpb"]
                row[f"{fill}.start.val.en.bpb"] = res["start.val.en.bpb"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    if a.json:
        a.json.write_text(json.dumps({"seed": a.seed, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
