#!/usr/bin/env bash
# The test command: lint, format check, then the default (fast) test suite.
# Tests over a minute are marked `slow`: .venv/bin/python -m pytest -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/python" -m pytest -q "$@"
