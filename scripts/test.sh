#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite, slow end-to-end tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
QKDOPS_SETUP_TESTS=1 bash scripts/setup.sh
.venv/bin/ruff check --quiet .   # every package, tests and bench (pyproject.toml [tool.ruff])
.venv/bin/lint-imports --no-cache   # the layers' import contracts (pyproject.toml [tool.importlinter])
exec .venv/bin/python -m pytest "$@"
