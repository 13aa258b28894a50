#!/usr/bin/env bash
# Regenerate requirements.lock: every transitive dependency of flux158 (extras dev, geneval-mmdet and build), with
# its version and the sha256 of each of its files on PyPI, for every platform and Python >= 3.10 (`--universal`),
# around the torch pair in constraints.txt. Then run the tests (`bash .ci/run`) and commit both files.
#
#   bash scripts/update_lock.sh              # after a change to pyproject.toml: keeps every pin it can
#   bash scripts/update_lock.sh --upgrade    # take today's newest releases within the ranges
#   bash scripts/update_lock.sh --upgrade-package transformers   # one package (and what it needs)
#
# Needs uv (`pip install uv`) and network access to PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-uv}
"$UV" pip compile pyproject.toml --extra dev --extra geneval-mmdet --extra build -c constraints.txt \
  --universal --python-version 3.10 --generate-hashes --index-url https://pypi.org/simple \
  --custom-compile-command "bash scripts/update_lock.sh" -o requirements.lock "$@"
