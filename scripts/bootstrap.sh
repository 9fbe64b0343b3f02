#!/usr/bin/env bash
# Create .venv (if missing) and install the project into it, with the test extras when asked.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python3 -m venv .venv 2>/dev/null || [ -x .venv/bin/python ] || { echo "bootstrap: python3 -m venv failed" >&2; exit 1; }
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}"
# Byte-code up front: with PYTHONDONTWRITEBYTECODE set (as in the Dockerfile and many CI images)
# every process would otherwise compile the project again when it starts.
mapfile -t packages < <(bash scripts/packages.sh)
.venv/bin/python -m compileall -q -j 0 "${packages[@]}" >/dev/null
