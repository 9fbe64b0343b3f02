#!/usr/bin/env bash
# The runs behind the Performance section's charts, one after another in one sitting, and the
# charts drawn from them: `cloudmart bench --out` files in OUT/results, then
# `cloudmart bench report` (PNG charts and report.md) in OUT. notebooks/performance.ipynb draws
# the same charts from OUT/results (its CLOUDMART_BENCH_RESULTS).
#
#   scripts/bench-charts.sh [OUT]      (default docs/bench; about 10 minutes on 2 cores)
#
# Needs what `cloudmart bench --start --floor now` needs: MariaDB, RabbitMQ and Redis on
# loopback (CLOUDMART_DATABASE_URL etc. default to them). Every run starts its own deployment
# on ports 27001-27005 against a database made afresh (cloudmart_bench_charts), measures the
# floor in the same minutes, and ends with `cloudmart check`.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-docs/bench}")
mkdir -p "$out/results"
export CLOUDMART_DATABASE_URL=${CLOUDMART_DATABASE_URL:-mysql+aiomysql://root@127.0.0.1:3306/cloudmart_bench_charts}
export CLOUDMART_RABBITMQ_URL=${CLOUDMART_RABBITMQ_URL:-amqp://guest:guest@127.0.0.1:5672/}
export CLOUDMART_REDIS_URL=${CLOUDMART_REDIS_URL:-redis://127.0.0.1:6379/0}
cloudmart=$PWD/.venv/bin/cloudmart
work=$(mktemp -d -t cloudmart-bench-charts.XXXXXX)
trap 'rm -rf "$work"' EXIT

# name, then the run's arguments
runs=(
  "orchestration-c1 --pattern orchestration --concurrency 1 --sagas 200"
  "orchestration-c8 --pattern orchestration --concurrency 8 --sagas 600"
  "orchestration-c32 --pattern orchestration --concurrency 32 --sagas 1000"
  "orchestration-c32-mix --pattern orchestration --concurrency 32 --sagas 1000 --mix stock=0.1,payment=0.1,shipping=0.1"
  "choreography-c1 --pattern choreography --concurrency 1 --sagas 200"
  "choreography-c8 --pattern choreography --concurrency 8 --sagas 600"
  "choreography-c32 --pattern choreography --concurrency 32 --sagas 1000"
  "colocated-c1 --pattern orchestration --colocated --concurrency 1 --sagas 200"
  "colocated-c32 --pattern orchestration --colocated --concurrency 32 --sagas 1000"
)
for run in "${runs[@]}"; do
  read -r name args <<<"$run"
  echo "== $name: cloudmart bench --start --floor now $args"
  "$cloudmart" db init --seed --reset >"$work/init.log" 2>&1 || { cat "$work/init.log"; exit 1; }
  # shellcheck disable=SC2086 # the arguments are words
  (cd "$work" && "$cloudmart" bench --start --base-port 27000 --floor now $args \
    --out "$out/results/$name.json") | tail -n 12
done
"$cloudmart" bench report "$out"/results/*.json --out-dir "$out"
