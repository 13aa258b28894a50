#!/usr/bin/env bash
# GenEval's detector stack: mmcv 2.1.0 *with ops* (built from the sdist: no wheels exist for recent torch, and
# mmcv-lite lacks the ops Mask2Former needs), mmengine 0.10.7 and mmdet 3.3.0, into PYTHON's environment.
#
#   bash scripts/install_mmcv.sh                       # PYTHON defaults to .venv/bin/python
#
# The built wheel is cached in $FLUX158_WHEEL_CACHE (default ~/.cache/flux158/wheels), keyed by the torch build and
# the CUDA architectures, so later runs on the same machine install it in seconds. The build takes ~15 min on
# 2 cores. On a GPU machine with nvcc the CUDA ops are built too (FORCE_CUDA=1); set TORCH_CUDA_ARCH_LIST for your
# GPUs first, e.g. TORCH_CUDA_ARCH_LIST="8.0;9.0" (A100, H100/H200), or it builds for the visible GPU only.
set -euo pipefail
PYTHON=${PYTHON:-.venv/bin/python}
CACHE=${FLUX158_WHEEL_CACHE:-$HOME/.cache/flux158/wheels}

if "$PYTHON" -c "import mmcv, mmcv.ops, mmdet, mmengine; assert mmcv.__version__ == '2.1.0'" 2>/dev/null; then
  echo "install_mmcv: mmcv 2.1.0 (with ops) and mmdet already importable"
  exit 0
fi
"$PYTHON" -m pip install -q "setuptools<81" wheel ninja "mmengine==0.10.7" "mmdet==3.3.0"

cuda=$("$PYTHON" -c "import torch; print('cuda' if torch.cuda.is_available() and torch.version.cuda else 'cpu')")
if [[ $cuda == cuda ]] && ! command -v nvcc >/dev/null; then
  echo "install_mmcv: a GPU is visible but nvcc is not on PATH; building CPU ops only (GPU inference will fail)" >&2
  cuda=cpu
fi
torch_tag=$("$PYTHON" -c "import torch, sys; print(f'torch{torch.__version__}-py{sys.version_info[0]}{sys.version_info[1]}')")
key="$torch_tag-$cuda${TORCH_CUDA_ARCH_LIST:+-sm${TORCH_CUDA_ARCH_LIST//[^0-9]/_}}"
wheels="$CACHE/mmcv-2.1.0/$key"
if ! ls "$wheels"/mmcv-2.1.0-*.whl >/dev/null 2>&1; then
  echo "install_mmcv: building mmcv 2.1.0 from source for $key (about 15 min on 2 cores)"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "$PYTHON" -m pip download -q --no-deps --no-binary :all: "mmcv==2.1.0" -d "$work"
  tar -xzf "$work"/mmcv-2.1.0.tar.gz -C "$work"
  # torch >= 2.14's headers require C++20; mmcv 2.1.0 hard-codes -std=c++17 (host and nvcc flags)
  sed -i 's/-std=c++17/-std=c++20/g' "$work/mmcv-2.1.0/setup.py"
  mkdir -p "$wheels"
  export MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2}
  [[ $cuda == cuda ]] && export FORCE_CUDA=1
  "$PYTHON" -m pip wheel -q --no-build-isolation --no-deps "$work/mmcv-2.1.0" -w "$work/dist"
  mv "$work"/dist/mmcv-2.1.0-*.whl "$wheels/"
fi
"$PYTHON" -m pip install -q --no-deps "$wheels"/mmcv-2.1.0-*.whl
"$PYTHON" -c "import mmcv, mmdet; from mmcv.ops import MultiScaleDeformableAttention; print('install_mmcv: mmcv', mmcv.__version__, 'mmdet', mmdet.__version__)"
