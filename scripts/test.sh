#!/usr/bin/env bash
# Install the project, make sure MariaDB/Redis/RabbitMQ are up, then lint, type-check
# (mypy --strict on the packages) and run the whole suite with coverage (fails under 80%).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh test
bash scripts/ensure-services.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy engine workflows activities services cloudmart orchestration_pattern choreography_pattern
rm -f .coverage .coverage.*
.venv/bin/python -m pytest --cov --cov-report=term -p no:cacheprovider --durations=15 "$@"
