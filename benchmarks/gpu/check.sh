#!/usr/bin/env bash
# The GPU check of issue 27 in one call: installs the carried wheels, then runs benchmarks/gpu/check.py.
#
#     bash benchmarks/gpu/check.sh OUT_DIR          # on the GPU machine: run(command="bash benchmarks/gpu/check.sh $OUT",
#                                                   #   carry=[".whl"], timeout_s=540)
#     bash benchmarks/gpu/check.sh OUT_DIR --cpu    # dry run on CPU at tiny sizes (no install: the local env is used)
#
# Writes OUT_DIR/check.json and OUT_DIR/check.md (after every part, so a run cut short keeps what it finished), plus
# check.log (everything printed) and env.txt (the versions the run saw). Each part of check.py has its own time
# budget; the whole check is meant to end within 8 minutes on one H100. Build `.whl/` first, here, with
# benchmarks/gpu/fetch_wheels.sh.
set -uo pipefail
OUT=${1:?usage: bash benchmarks/gpu/check.sh OUT_DIR [--cpu]}
shift
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

SITE=""
if [[ " $* " != *" --cpu "* ]]; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    # The pins go to their own folder ahead of the image's packages; --no-deps keeps the image's torch (never
    # reinstalled) and its binary packages (pyarrow, tokenizers, numpy, ...).
    SITE=/tmp/trl_dynamicpo_site
    timeout 120 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" .whl/*.whl >"$OUT/pip.log" 2>&1 || echo "[check.sh] wheel install failed: see pip.log"
  else
    echo "[check.sh] no .whl/ folder: using the installed packages (build it with benchmarks/gpu/fetch_wheels.sh)"
  fi
fi
export PYTHONPATH=${SITE:+$SITE:}$PWD${PYTHONPATH:+:$PYTHONPATH}

# What this run sees, first: a package the image lacks or holds too old shows up here within seconds.
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$PYTHON" - <<'PY'
import importlib, importlib.metadata as md
for name in ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "huggingface_hub", "pyarrow",
             "tokenizers", "safetensors", "numpy", "triton"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", md.version(name)), getattr(module, "__file__", ""))
    except Exception as error:  # noqa: BLE001
        print(name, "FAILED:", type(error).__name__, error)
import torch
print("cuda", torch.cuda.is_available(), torch.version.cuda)
PY
} 2>&1 | tee "$OUT/env.txt"

# The parts' own budgets end the GPU check in ~7.5 minutes; this limit is the backstop. The CPU dry run checks that
# everything works, not how fast: a CPU shared with other jobs can make it 10x slower than its ~1 minute.
if [[ " $* " == *" --cpu "* ]]; then LIMIT=${CHECK_TIMEOUT:-3000}; else LIMIT=${CHECK_TIMEOUT:-480}; fi
timeout "$LIMIT" "$PYTHON" benchmarks/gpu/check.py "$OUT" "$@" 2>&1 | tee "$OUT/check.log"
status=$?
ls -la "$OUT"
exit $status
