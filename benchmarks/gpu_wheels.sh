#!/usr/bin/env bash
# Fetch the wheels benchmarks/gpu_check.sh installs on a GPU machine that lacks the project's
# other packages, into .whl/ at the repository root (run it where pip can reach the package index).
# The versions are the ones installed here (this checkout's environment); the GPU image has
# Python 3.12 on x86-64. antlr4-python3-runtime 4.9.3 (what omegaconf 2.3 needs) exists only as
# source, so it is built into a wheel (pure Python). protobuf travels too: sentencepiece's model
# protos (allam/tokenizer/spm.py, imported by every training run) need it, and the image may lack it.
# .whl/ ignores itself in git. It travels with the working tree, whose limit is 64 MiB in all
# (WHEEL_LIMIT_MIB to change): this prints the folder's size and the wheels, and refuses (exit 1,
# .whl/ removed) when the wheels and the repository's files together would not fit.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
LIMIT_MIB="${WHEEL_LIMIT_MIB:-64}"
version() { "$PYTHON" -m pip show "$1" 2>/dev/null | awk '/^Version:/{print $2}'; }
for pkg in hydra-core omegaconf bitsandbytes protobuf antlr4-python3-runtime; do  # the versions come from here
  if [[ -z "$(version "$pkg")" ]]; then
    echo "error: $pkg is not installed for $PYTHON, whose versions the wheels take; run this from the project's environment (or set PYTHON=.venv/bin/python)" >&2
    exit 1
  fi
done
rm -rf .whl && mkdir -p .whl && echo '*' > .whl/.gitignore
fetch() {
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "${GPU_PYTHON:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$@"
}
fetch "hydra-core==$(version hydra-core)" "omegaconf==$(version omegaconf)" "bitsandbytes==$(version bitsandbytes)" \
  "liger-kernel==${LIGER_VERSION:-0.8.5}" "protobuf==$(version protobuf)"
"$PYTHON" -m pip wheel -q --no-deps -w .whl "antlr4-python3-runtime==$(version antlr4-python3-runtime)"
whl=$(du -sb .whl | cut -f1)
tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 du -cb 2>/dev/null | awk 'END{print $1+0}')
ls -la .whl
echo "wheels: $((whl / 1024)) KiB; repository files: $((tree / 1024)) KiB; carry limit: ${LIMIT_MIB} MiB"
if (( whl + tree > LIMIT_MIB * 1024 * 1024 )); then
  echo "error: .whl/ ($((whl / 1048576)) MiB) and the repository ($((tree / 1048576)) MiB) exceed the ${LIMIT_MIB} MiB carry limit; .whl/ removed" >&2
  rm -rf .whl
  exit 1
fi
