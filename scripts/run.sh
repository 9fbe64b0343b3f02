#!/usr/bin/env bash
# Install the project and run CloudMart. With no CLOUDMART_DATABASE_URL it runs embedded
# (SQLite file + in-process messaging, one process) with a demo catalogue, so sagas run at once.
# Extra arguments go to `cloudmart up` (e.g. --pattern choreography).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/cloudmart db init --seed
exec .venv/bin/cloudmart up "$@"
