#!/usr/bin/env bash
# Fetch the wheels benchmarks/gpu_check.sh installs on a GPU machine that lacks the project's
# other packages, into .whl/ at the repository root (run it where pip can reach the package index).
# The versions are the ones installed here (this checkout's environment); the GPU image has
# Python 3.12 on x86-64. antlr4-python3-runtime 4.9.3 (what omegaconf 2.3 needs) exists only as
# source, so it is built into a wheel (pure Python). Carry .whl/ along (about 45 MB; it ignores itself in git).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
version() { "$PYTHON" -m pip show "$1" 2>/dev/null | awk '/^Version:/{print $2}'; }
mkdir -p .whl && echo '*' > .whl/.gitignore
fetch() {
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "${GPU_PYTHON:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$@"
}
fetch "hydra-core==$(version hydra-core)" "omegaconf==$(version omegaconf)" "bitsandbytes==$(version bitsandbytes)" \
  "liger-kernel==${LIGER_VERSION:-0.8.5}"
"$PYTHON" -m pip wheel -q --no-deps -w .whl "antlr4-python3-runtime==$(version antlr4-python3-runtime)"
ls -la .whl
