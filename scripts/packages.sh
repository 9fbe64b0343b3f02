#!/usr/bin/env bash
# The project's packages, one a line: the one list, pyproject.toml's coverage source.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["tool"]["coverage"]["run"]["source"], sep="\n")'
