#!/usr/bin/env bash
# The one script to run on a GPU machine: checks everything GPU-only within a deadline (default
# 540 s) on one H100/H200 and prints one JSON line per check as it finishes and one JSON summary as
# its last line (what each check does: benchmarks/gpu_check.py).
#
#   bash benchmarks/gpu_check.sh                # on the GPU machine, from anywhere
#   bash benchmarks/gpu_check.sh --cpu-smoke    # the same with tiny shapes on a CPU (a test runs it)
#   bash benchmarks/gpu_check.sh --out DIR      # JSON lines, summary and log tails in DIR ($OUT wins where set)
#   bash benchmarks/gpu_check.sh --deadline 300 # stop starting checks after 300 s (env GPU_CHECK_DEADLINE)
#
# The machine needs torch (a CUDA build), lightning, transformers, sentencepiece, tokenizers,
# safetensors, numpy and pyyaml. The project's other packages travel as wheels in .whl/ at the
# repository root (GPU_CHECK_WHEELS_DIR to use another folder): make them on a machine with
# internet access with benchmarks/gpu_wheels.sh (hydra-core, omegaconf, antlr4-python3-runtime,
# protobuf, bitsandbytes, liger-kernel); this script installs them into /tmp/allam-site and puts
# that folder and the repository on PYTHONPATH. A needed module that is neither in the image nor
# carried stops the check at once with a JSON line naming it (exit 2); no wheels carried is said
# in that line. Nothing is downloaded here, and no demo corpus is needed: the training check reads
# generated text. benchmarks/rehearse_gpu_image.sh rehearses all of this on a CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
WHEELS="${GPU_CHECK_WHEELS_DIR:-.whl}"
fail() {  # one JSON line, to stdout and (where there is an output folder) to its checks.jsonl
  local line="{\"check\": \"wheels\", \"ok\": false, \"error\": \"$1\"}"
  echo "$line"
  if [[ -n "${OUT:-}" ]]; then mkdir -p "$OUT" && echo "$line" >> "$OUT/checks.jsonl"; fi
  exit 2
}
export GPU_CHECK_CARRIED=""
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/allam-site "$WHEELS"/*.whl \
    || fail "installing $WHEELS/*.whl with pip failed"
  export PYTHONPATH="/tmp/allam-site${PYTHONPATH:+:$PYTHONPATH}"
  GPU_CHECK_CARRIED="$(cd "$WHEELS" && ls *.whl | tr '\n' ' ')"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-/tmp/allam-inductor-cache}"  # compiled layers reused across checks
exec "$PYTHON" benchmarks/gpu_check.py "$@"
