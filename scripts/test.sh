#!/usr/bin/env bash
# Install the project, make sure MariaDB/Redis/RabbitMQ are up, then lint, type-check
# (mypy --strict on the packages) and run the whole suite with coverage (fails under 80%).
#
# Without arguments the suite runs as two pytest processes side by side: the tests that spend
# most of their time waiting for processes of their own (`beside` below: tests/chaos, whose
# killed servers and processes come back, and the tests of `cloudmart up` on the default
# ports 8001-8005, which run one after another there) beside everything else, which keeps a
# core busy. Each writes its own coverage data; they are combined and checked at the end.
# Arguments go to a single pytest instead (`./scripts/test.sh tests/integration -k e2e`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh test
bash scripts/ensure-services.sh
bash scripts/ensure-browser.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
mapfile -t packages < <(bash scripts/packages.sh)
.venv/bin/mypy "${packages[@]}"
rm -f .coverage .coverage.*
pytest=(.venv/bin/python -m pytest -p no:cacheprovider --durations=15)

if (($#)); then
  exec "${pytest[@]}" --cov --cov-report=term "$@"
fi

beside=(
  tests/chaos
  tests/integration/test_cli.py
  tests/integration/test_choreography_cli.py
  tests/integration/test_openapi_fuzz.py
)
chaos_log=$(mktemp -t cloudmart-chaos.XXXXXX)
trap 'rm -f "$chaos_log"' EXIT
# --cov-fail-under=0: half a suite is not judged on its own; the combined data is, below.
# set -m: the chaos stream gets a process group of its own in which Ctrl-C is not ignored (a
# script's background jobs ignore it otherwise): an interrupted run passes the Ctrl-C on, and
# the chaos tests' fixtures stop the servers and processes they started.
set -m
COVERAGE_FILE=.coverage.chaos "${pytest[@]}" --cov --cov-report= --cov-fail-under=0 \
  "${beside[@]}" </dev/null >"$chaos_log" 2>&1 &
chaos_pid=$!
set +m
trap 'kill -INT -- "-$chaos_pid" 2>/dev/null; exit 130' INT TERM
main_status=0
COVERAGE_FILE=.coverage.main "${pytest[@]}" --cov --cov-report= --cov-fail-under=0 \
  "${beside[@]/#/--ignore=}" || main_status=$?
chaos_status=0
wait "$chaos_pid" || chaos_status=$?
echo
echo "======================= ${beside[*]} ======================="
cat "$chaos_log"
.venv/bin/python -m coverage combine --quiet
coverage_status=0
.venv/bin/python -m coverage report || coverage_status=$?
echo "suite: everything else exited $main_status, ${beside[*]} $chaos_status," \
  "coverage check $coverage_status"
((main_status == 0 && chaos_status == 0 && coverage_status == 0))
