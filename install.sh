#!/usr/bin/env bash
# Create .venv inside the repository and install poisonlab with its pinned stack (constraints.txt).
# Usage: ./install.sh            (re-running updates the environment in place)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[test]"
# img2dataset pulls in the 'dataclasses' backport, which shadows the standard library on Python >= 3.7
# and kills Prefect's ephemeral API server; the standard library already provides it.
.venv/bin/python -m pip uninstall --quiet --yes dataclasses 2>/dev/null || true
.venv/bin/python -c "import dataclasses, sys; assert 'site-packages' not in (dataclasses.__file__ or ''), dataclasses.__file__"
echo "poisonlab installed in $(pwd)/.venv"
