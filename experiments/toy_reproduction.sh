#!/usr/bin/env bash
# The paper's main comparison at toy scale on a CPU, one seed (the claims suite, reproduce.py, is the evidence):
#   1. an English base (the offline stand-in for Llama-2),
#   2. ALLaM's adaptation of it (expanded tokenizer, constant LR) and the re-warm/cosine arm,
#   3. training from scratch with a bilingual vocabulary, English first, then the mix,
# then one table across the runs (outputs/toy/report/report.md).
# Experiment configs live in conf/experiment/ (Hydra config group `experiment`).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-outputs/toy}
common=(trainer.progress_bar=false)
python run.py experiment=english_base hydra.run.dir="$out/english_base" "${common[@]}"
python run.py experiment=adapt_toy init.checkpoint="$out/english_base/hf" hydra.run.dir="$out/adapt_constant" "${common[@]}"
python run.py experiment=adapt_toy init.checkpoint="$out/english_base/hf" optim=rewarm_cosine hydra.run.dir="$out/adapt_rewarm" "${common[@]}"
python run.py experiment=scratch_toy hydra.run.dir="$out/scratch" "${common[@]}"
python run.py task=report report_dir="$out" hydra.run.dir="$out/report"
