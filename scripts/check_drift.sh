#!/usr/bin/env bash
# Drift check for maintainers: install today's releases within pyproject.toml's ranges (no lock) into a fresh venv,
# list where they differ from requirements.lock, and run the default test suite. A failure here is the next
# breaking release, seen before a user sees it. Not part of CI (it downloads whatever is newest).
#
#   bash scripts/check_drift.sh                 # venv in a temporary directory, removed afterwards
#   VENV=/tmp/drift bash scripts/check_drift.sh # a new venv there, kept for a closer look
#
# mmcv is taken from the wheel cache of scripts/install_mmcv.sh (built once per torch version, ~15 min).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [[ -n ${VENV:-} ]]; then
  [[ -e $VENV ]] && { echo "check_drift: $VENV exists; name a new directory" >&2; exit 2; }
else
  scratch=$(mktemp -d)
  VENV=$scratch/venv
  [[ ${KEEP:-0} == 1 ]] || trap 'rm -rf "$scratch"' EXIT
fi
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[dev,geneval-mmdet,build]"
PYTHON="$VENV/bin/python" bash scripts/install_mmcv.sh
"$VENV/bin/python" - <<'PY'
"""Print each installed distribution whose version differs from the lock's pin for this interpreter."""
from importlib.metadata import distributions

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

locked = {}
for line in open("requirements.lock"):
    if line[:1].isalnum():  # "name==version ; marker \" opens each entry; hashes and comments follow indented
        req = Requirement(line.rstrip().rstrip("\\").strip())
        if req.marker is None or req.marker.evaluate():
            locked[canonicalize_name(req.name)] = next(iter(req.specifier)).version
installed = {canonicalize_name(d.metadata["Name"]): d.version for d in distributions()}
changed = sorted((n, locked[n], v) for n, v in installed.items() if n in locked and locked[n] != v)
new = sorted(n for n in installed if n not in locked and n not in {"flux158", "pip", "mmcv"})
print(f"drift: {len(changed)} of {len(locked)} locked distributions differ from the lock")
for name, was, now in changed:
    print(f"  {name}: {was} -> {now}")
if new:
    print("  not in the lock:", ", ".join(new))
PY
"$VENV/bin/python" -m pytest
