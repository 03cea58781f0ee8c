#!/usr/bin/env bash
# The one script to run on a GPU machine: checks everything GPU-only in under 8 minutes on one
# H100 and prints one JSON summary as its last line (what each check does: benchmarks/gpu_check.py).
#
#   bash benchmarks/gpu_check.sh                # on the GPU machine, from anywhere
#   bash benchmarks/gpu_check.sh --cpu-smoke    # the same with tiny shapes on a CPU (a test runs it)
#   bash benchmarks/gpu_check.sh --out DIR      # keep logs and runs in DIR (default: a temp folder)
#
# The machine needs torch (a CUDA build), lightning, transformers, sentencepiece, tokenizers,
# safetensors, numpy and pyyaml. The project's other packages travel as wheels in .whl/ at the
# repository root: make them on a machine with internet access with benchmarks/gpu_wheels.sh
# (hydra-core, omegaconf, antlr4-python3-runtime, bitsandbytes, liger-kernel); this script
# installs them into /tmp/allam-site and puts that folder and the repository on PYTHONPATH.
# Nothing is downloaded here, and no demo corpus is needed: the training check reads generated text.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/allam-site .whl/*.whl \
    || { echo '{"check": "gpu_check", "ok": false, "error": "installing .whl/*.whl failed"}'; exit 1; }
  export PYTHONPATH="/tmp/allam-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-/tmp/allam-inductor-cache}"  # compiled layers reused across checks
exec "$PYTHON" benchmarks/gpu_check.py "$@"
