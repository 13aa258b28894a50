#!/usr/bin/env bash
# Create the virtual environment the project is tested in: exactly requirements.lock (versions and sha256), then
# flux158 itself, editable. Both README commands and CI start with it. An existing venv at VENV is cleared first, so
# nothing outside the lock survives (reinstalling from pip's cache takes about a minute).
#
#   bash scripts/setup_env.sh           # .venv: the locked environment (~2 min)
#   bash scripts/setup_env.sh --mmcv    # ... plus mmcv 2.1.0 with ops for GenEval's detector (scripts/install_mmcv.sh:
#                                       #     ~15 min the first time on 2 cores, seconds once its wheel is cached)
#
# VENV (default .venv) and PYTHON (default python3) choose the environment and the interpreter. The lock's torch is
# PyPI's 2.14.1, a CUDA 13.0 build on Linux x86_64 (NVIDIA driver >= 580), which also runs on CPU. For another CUDA
# build set FLUX158_TORCH_INDEX, e.g. https://download.pytorch.org/whl/cu126: torch and torchvision then come from
# that index at the locked versions with their own CUDA libraries, and everything else from the lock.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
LOCK=requirements.lock
mmcv=0
for arg in "$@"; do
  case $arg in
    --mmcv) mmcv=1 ;;
    *) echo "setup_env: unknown argument $arg (only --mmcv)" >&2; exit 2 ;;
  esac
done

"$PYTHON" -m venv --clear "$VENV"
pip=("$VENV/bin/python" -m pip)
if [[ -n ${FLUX158_TORCH_INDEX:-} ]]; then
  locked() { sed -n "s/^$1==\([^ ;]*\).*/\1/p" "$LOCK" | head -1; }
  "${pip[@]}" install -q "torch==$(locked torch)" "torchvision==$(locked torchvision)" --index-url "$FLUX158_TORCH_INDEX"
  # drop the blocks of torch, torchvision and PyPI's CUDA 13 runtime from the lock: the index above brought its own
  LOCK=$(mktemp)
  trap 'rm -f "$LOCK"' EXIT
  awk '/^[^ #]/ { skip = ($0 ~ /^(torch|torchvision|triton|nvidia-[a-z0-9-]+|cuda-[a-z-]+)==/) } !skip' \
    requirements.lock > "$LOCK"
fi
"${pip[@]}" install -q --require-hashes -r "$LOCK"
"${pip[@]}" install -q --no-deps --no-build-isolation -e .
if (( mmcv )); then
  PYTHON="$VENV/bin/python" bash scripts/install_mmcv.sh
fi
"$VENV/bin/python" -c "import sys, flux158, torch; print('setup_env: flux158 in', sys.prefix, 'with torch', torch.__version__)"
