#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite, slow end-to-end tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check --quiet qkdlink qkdops exporters dashboards calibration_jobs gameday tests bench
.venv/bin/lint-imports --no-cache   # the layers' import contracts (pyproject.toml [tool.importlinter])
exec .venv/bin/python -m pytest "$@"
