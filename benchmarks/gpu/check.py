"""The GPU check (issue 27): packed vs concatenated training steps, the trainer's CUDA path in bf16, and the speed of
the two evaluation protocols, in one call that fits the device machine's limits (<= 8 minutes on one H100).

Parts, each in its own subprocesses with a time budget, each recorded even when it fails (its error is kept):

- `forward`: one training step (reference forward, policy forward, backward, AdamW on LoRA r=8) through
  `DynamicPOTrainer.compute_loss`, packed vs concatenated layout, bf16, for SmolLM2-135M and a Qwen2.5-1.5B-style
  model built from their configs with random weights; K in {1, 3, 7, 15}; one ~300-token prompt, then a batch of 8.
  Median step time, peak `torch.cuda.max_memory_allocated` above the post-load baseline, and which attention kernels
  ran (profiler) / which SDPA backends accept each layout's attention call (`sdpa_kernel` probe). Where packed falls
  short of the issue's target (>= 5x time and memory at the largest K), the fix is measured too: the packed layout
  under FlexAttention with a block mask built from the packing segments (`trl_dynamicpo.packing.packed_block_mask`),
  with its largest log-prob difference from the dense mask.
- `trainer`: `DynamicPOTrainer.train` for 20 steps, bf16 autocast on CUDA, packed layout, `precompute_ref_log_probs`,
  on the tiny random model and on the SmolLM2-135M config; the same run's step 1 in fp32 on CPU. Checks: finite
  losses, step-1 loss and chosen log-prob within bf16 tolerance of CPU fp32; steps/s (steps 2-20).
- `protocols`: the ranking protocol (packed scoring of 20 candidates) vs the generation protocol (greedy, 20 new
  tokens), SmolLM2-135M config in bf16, batch 8, on rows shaped like MovieLens-100K's (random weights never emit EOS,
  so generation always decodes its 20 tokens: its upper bound).

Writes `check.json` (every number, per part `status`, `seconds`, `error`) and `check.md` (the tables) to OUT_DIR after
each part, so a run cut short still leaves the parts it finished.

    python benchmarks/gpu/check.py OUT_DIR          # on the GPU machine (through benchmarks/gpu/check.sh)
    python benchmarks/gpu/check.py OUT_DIR --cpu    # dry run: every part at tiny sizes on CPU, ~1 minute
"""

import argparse
import importlib.metadata
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path


BENCHMARKS = Path(__file__).resolve().parents[1]
ROOT = BENCHMARKS.parent
# This checkout's package first (workers run this file as a script); `benchmarks/` appended, not prepended, so that
# `benchmarks/evaluate.py` does not shadow the `evaluate` package.
sys.path.insert(0, str(ROOT))
sys.path.append(str(BENCHMARKS))

import _measure  # noqa: E402


TARGET_RATIO = 5.0  # issue 27: packed should be >= 5x faster and >= 5x smaller than concatenated at K = 15
DEFAULT_TOKENIZER = ROOT / ".whl" / "smollm2-tokenizer"

# Sizes and time budgets (seconds) of each mode. The GPU budgets and their kill margins add up to ~7 minutes 15 s
# at most, leaving room for the wheel install and the version print inside the issue's 8 minutes.
SIZES = {
    "gpu": dict(
        device="cuda",
        dtype="bfloat16",
        overrides=None,
        forward_models=["qwen2.5-1.5b", "smollm2-135m"],
        negatives=[1, 3, 7, 15],
        batch_sizes=[1, 8],
        prompt_tokens=300,
        warmup=1,  # after the profiled step, which is a warm-up step too
        steps=3,
        forward_budgets={"qwen2.5-1.5b": 130, "smollm2-135m": 55, "flex": 65},
        trainer_models=["tiny", "smollm2-135m"],
        trainer_steps=20,
        trainer_batch=4,
        trainer_negatives=3,
        trainer_prompt_tokens=128,
        trainer_budget=90,
        protocol_prompts=64,
        protocol_candidates=20,
        protocol_prompt_tokens=378,
        protocol_batch=8,
        protocol_new_tokens=20,
        protocol_budget=45,
    ),
    "cpu": dict(
        device="cpu",
        dtype="float32",
        overrides={**_measure.DRY_RUN_OVERRIDES, "vocab_size": 1024},
        forward_models=["qwen2.5-1.5b", "smollm2-135m"],
        negatives=[1, 3],
        batch_sizes=[1, 2],
        prompt_tokens=48,
        warmup=1,
        steps=1,
        # Generous: the dry run checks that every part works, and a CPU shared with other jobs can be 10x slower.
        forward_budgets={"qwen2.5-1.5b": 300, "smollm2-135m": 300, "flex": 300},
        trainer_models=["tiny", "smollm2-135m"],
        trainer_steps=3,
        trainer_batch=2,
        trainer_negatives=2,
        trainer_prompt_tokens=32,
        trainer_budget=450,
        protocol_prompts=4,
        protocol_candidates=5,
        protocol_prompt_tokens=48,
        protocol_batch=2,
        protocol_new_tokens=4,
        protocol_budget=300,
    ),
}

# bf16 tolerance of the step-1 comparison with CPU fp32: 2% of the value (about 5 bf16 ulps), at least 0.02.
BF16_RTOL = 0.02


# ---------------------------------------------------------------------------------------------------------------
# Workers (run in subprocesses through `_measure.run_many(..., script=__file__)`)


def _close(value: float, reference: float) -> bool:
    return abs(value - reference) <= BF16_RTOL * max(1.0, abs(reference))


def trainer_smoke(spec: dict) -> dict:
    """Train `spec["model"]` for `spec["steps"]` steps (packed, precomputed reference log-probs, LoRA r=8) and return
    the logged losses and chosen log-probs and the steps/s of steps 2..N.

    The model is built on CPU in fp32 from a fixed seed and then moved, so a CPU run and a CUDA run start from the same
    weights and draw the same batches.
    """
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback

    from trl_dynamicpo import DynamicPOConfig, DynamicPOTrainer

    tokenizer = _measure.load_tokenizer(spec.get("tokenizer"))
    overrides = spec.get("overrides") if spec["model"] != "tiny" else None
    model = _measure.random_model(spec["model"], tokenizer, overrides=overrides, seed=0)
    # The same rows for the CPU reference (1 step) as for the device run: the first batch must be the same one.
    rows = _measure.make_rows(tokenizer, spec["num_rows"], spec["num_negatives"], spec["prompt_tokens"])
    on_cpu = spec["device"] == "cpu"

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available() and not on_cpu:
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())

    times = StepTimes()
    with tempfile.TemporaryDirectory() as folder:
        args = DynamicPOConfig(
            output_dir=folder,
            layout="packed",
            precompute_ref_log_probs=True,
            per_device_train_batch_size=spec["batch_size"],
            max_steps=spec["steps"],
            learning_rate=1e-3,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            seed=0,
            bf16=spec["bf16"],
            use_cpu=on_cpu,
            gradient_checkpointing=False,
            max_length=None,
            dataloader_num_workers=0,
        )
        trainer = DynamicPOTrainer(
            model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            peft_config=LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
            callbacks=[times],
        )
        start = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - start
    logs = [h for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
    ends = times.ends
    return {
        **spec,
        "device_used": str(next(trainer.model.parameters()).device),
        "losses": [float(h["loss"]) for h in logs],
        "logps_chosen": [float(h.get("logps/chosen", math.nan)) for h in logs],
        "steps_per_s": (len(ends) - 1) / (ends[-1] - ends[0]) if len(ends) > 1 else math.nan,
        "train_s": total,
    }


def protocol_speed(spec: dict) -> dict:
    """Time the generation and ranking protocols (`_measure.time_protocols`) on a random model of the SmolLM2 config."""
    import torch

    tokenizer = _measure.load_tokenizer(spec.get("tokenizer"))
    model = _measure.random_model(
        spec["model"], tokenizer, overrides=spec.get("overrides"), dtype=spec["dtype"], device=spec["device"]
    ).eval()
    rows = _measure.make_candidate_rows(tokenizer, spec["num_prompts"], spec["num_candidates"], spec["prompt_tokens"])
    prompts = [r["prompt"] for r in rows]
    candidates = [r["candidates"] for r in rows]
    with torch.no_grad():
        timings, _, _ = _measure.time_protocols(
            model,
            tokenizer,
            prompts,
            candidates,
            batch_size=spec["batch_size"],
            max_new_tokens=spec["max_new_tokens"],
            chunk_size=spec["chunk_size"],
        )
    n = len(rows)
    return {
        **spec,
        "mean_prompt_tokens": sum(len(tokenizer(p)["input_ids"]) for p in prompts) / n,
        "generation_s_per_prompt": timings["generation"] / n,
        "ranking_s_per_prompt": timings["ranking"] / n,
        "speed_ratio": timings["generation"] / timings["ranking"],
    }


WORKERS = {"step": _measure.worker, "trainer": trainer_smoke, "protocols": protocol_speed}


def _dispatch(spec: dict) -> dict:
    return WORKERS[spec.get("kind", "step")](spec)


# ---------------------------------------------------------------------------------------------------------------
# Parts (run in the parent process)


def _finite(*values) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)


_FLEX_KEYS = ("kind", "model", "arch", "tokenizer", "overrides", "device", "dtype", "layout", "batch_size")
_FLEX_KEYS += ("num_negatives", "prompt_tokens", "warmup", "steps", "attention_report")


def _flex_spec(spec: dict, deadline: float) -> dict:
    return dict(
        {key: spec[key] for key in _FLEX_KEYS if key in spec}, attn_implementation="flex_attention", deadline=deadline
    )


def part_forward(sizes: dict, common: dict, flex_mode: str) -> dict:
    """Packed vs concatenated training steps per model, batch size and K; then the FlexAttention fix where needed.

    On the GPU each model runs in its own process with its own budget, then the fix in a third one, for the pairs
    below the target at the largest K (`flex_mode="auto"`). The CPU dry run puts everything in one process (process
    starts dominate there) and always checks the fix's numbers once (FlexAttention has no CPU backward to time).
    """
    dry_run = sizes["device"] == "cpu"
    rows, groups = [], []
    for model in sizes["forward_models"]:
        budget = sizes["forward_budgets"][model]
        specs = [
            dict(
                common,
                model=model,
                layout=layout,
                batch_size=batch,
                num_negatives=k,
                prompt_tokens=sizes["prompt_tokens"],
                warmup=sizes["warmup"],
                steps=sizes["steps"],
                attention_report=True,
            )
            # Batch 8 after batch 1, larger K last: the configurations most likely to run out of memory (or time) come
            # after the ones the issue's target needs.
            for batch in sizes["batch_sizes"]
            for k in sizes["negatives"]
            for layout in ("packed", "concatenated")
        ]
        groups.append((specs, budget))
    if dry_run:
        flex = (
            []
            if flex_mode == "never"
            else [_flex_spec(dict(groups[0][0][0], num_negatives=max(sizes["negatives"])), 0)]
        )
        groups = [([s for specs, _ in groups for s in specs] + flex, sum(b for _, b in groups))]
    for specs, budget in groups:
        deadline = time.time() + budget
        rows += _measure.run_many([dict(s, deadline=deadline) for s in specs], timeout=budget + 10, script=__file__)
    flex = [r for r in rows if r.get("attn_implementation") == "flex_attention"]
    rows = [r for r in rows if r.get("attn_implementation") != "flex_attention"]
    pairs = _pairs(rows)
    if not dry_run and flex_mode != "never":
        budget = sizes["forward_budgets"]["flex"]
        deadline = time.time() + budget
        specs = []
        for (_, _, k), pair in pairs.items():
            if k != max(sizes["negatives"]) or "error" in pair.get("packed", {"error": ""}):
                continue
            # A concatenated step that ran out of memory where packed fit is a win for packed: no fix needed there.
            ratios = (pair["time_ratio"], pair["memory_ratio"])
            below = None not in ratios and min(ratios) < TARGET_RATIO
            if below or flex_mode == "always":
                specs.append(_flex_spec(pair["packed"], deadline))
        if specs:
            flex = _measure.run_many(specs, timeout=budget + 10, script=__file__)
    for result in flex:
        pair = pairs[(result["model"], result["batch_size"], result["num_negatives"])]
        for layout in ("concatenated", "packed"):
            other = pair.get(layout, {})
            if _finite(result.get("step_s"), other.get("step_s")):
                result[f"time_ratio_vs_{layout}"] = other["step_s"] / result["step_s"]
                result[f"memory_ratio_vs_{layout}"] = other["peak_mb"] / max(result["peak_mb"], 1e-3)
    return {"rows": rows, "pairs": [dict(p, key=list(key)) for key, p in pairs.items()], "flex": flex}


def _pairs(rows: list[dict]) -> dict:
    pairs = {}
    for row in rows:
        pair = pairs.setdefault((row["model"], row["batch_size"], row["num_negatives"]), {})
        pair[row["layout"]] = row
    for pair in pairs.values():
        p, c = pair.get("packed", {}), pair.get("concatenated", {})
        ok = _finite(p.get("step_s"), c.get("step_s"))
        pair["time_ratio"] = c["step_s"] / p["step_s"] if ok else None
        pair["memory_ratio"] = c["peak_mb"] / max(p["peak_mb"], 1e-3) if ok else None
        pair["same_loss"] = abs(p["loss"] - c["loss"]) < 5e-2 if ok else None  # bf16: same objective, close numbers
    return pairs


def part_trainer(sizes: dict, common: dict) -> dict:
    """The trainer smoke on the device (bf16 where CUDA) against step 1 of the same run in fp32 on CPU."""
    budget = sizes["trainer_budget"]
    base = dict(
        kind="trainer",
        tokenizer=common["tokenizer"],
        overrides=sizes["overrides"],
        batch_size=sizes["trainer_batch"],
        num_negatives=sizes["trainer_negatives"],
        prompt_tokens=sizes["trainer_prompt_tokens"],
        num_rows=sizes["trainer_batch"] * sizes["trainer_steps"],
    )
    device_specs = [
        dict(base, model=m, device=sizes["device"], bf16=True, steps=sizes["trainer_steps"])
        for m in sizes["trainer_models"]
    ]
    cpu_specs = [dict(base, model=m, device="cpu", bf16=False, steps=1) for m in sizes["trainer_models"]]
    if sizes["device"] == "cpu":  # dry run: one process for both
        results = _measure.run_many(device_specs + cpu_specs, timeout=budget, script=__file__)
        runs, references = results[: len(device_specs)], results[len(device_specs) :]
    else:  # two processes: accelerate's state is per process, so a CPU run and a CUDA run cannot share one
        runs = _measure.run_many(device_specs, timeout=budget * 0.55, script=__file__)
        references = _measure.run_many(cpu_specs, timeout=budget * 0.45, script=__file__)
    results = []
    for run, reference in zip(runs, references):
        row = {"model": run["model"], "device": run, "cpu_fp32": reference}
        if "losses" in run:
            row["all_losses_finite"] = all(math.isfinite(x) for x in run["losses"])
            row["steps_logged"] = len(run["losses"])
            row["steps_per_s"] = run["steps_per_s"]
        if "losses" in run and "losses" in reference and run["losses"] and reference["losses"]:
            row["step1_loss"] = run["losses"][0]
            row["step1_loss_cpu_fp32"] = reference["losses"][0]
            row["step1_logps_chosen"] = run["logps_chosen"][0]
            row["step1_logps_chosen_cpu_fp32"] = reference["logps_chosen"][0]
            row["step1_matches_cpu_fp32"] = _close(row["step1_loss"], row["step1_loss_cpu_fp32"]) and _close(
                row["step1_logps_chosen"], row["step1_logps_chosen_cpu_fp32"]
            )
        row["passed"] = bool(row.get("all_losses_finite") and row.get("step1_matches_cpu_fp32"))
        results.append(row)
    return {"rows": results, "bf16_rtol": BF16_RTOL}


def part_protocols(sizes: dict, common: dict) -> dict:
    """Ranking vs generation protocol speed on the device."""
    spec = dict(
        kind="protocols",
        model="smollm2-135m",
        tokenizer=common["tokenizer"],
        overrides=sizes["overrides"],
        device=sizes["device"],
        dtype=sizes["dtype"],
        num_prompts=sizes["protocol_prompts"],
        num_candidates=sizes["protocol_candidates"],
        prompt_tokens=sizes["protocol_prompt_tokens"],
        batch_size=sizes["protocol_batch"],
        max_new_tokens=sizes["protocol_new_tokens"],
        chunk_size=2 * sizes["protocol_batch"],
    )
    return {"rows": _measure.run_many([spec], timeout=sizes["protocol_budget"], script=__file__)}


# ---------------------------------------------------------------------------------------------------------------
# Report


def _fmt(value, digits=3, unit="") -> str:
    return f"{value:.{digits}f}{unit}" if _finite(value) else "-"


def _cell(row: dict, key: str, scale=1.0, digits=1) -> str:
    if "error" in row:
        return "OOM" if row["error"].startswith("out of memory") else "error"
    if "skipped" in row:
        return "skipped"
    return _fmt(row.get(key, math.nan) * scale, digits)


def _attention(row: dict) -> str:
    att = row.get("attention") or {}
    ran = "+".join(att.get("ran") or []) or "-"
    accepts = ",".join(att.get("accepts") or [])
    return f"{ran} (accepts: {accepts or '-'})"


def markdown(report: dict) -> str:
    meta = report["meta"]
    sizes = meta["sizes"]
    lines = [
        f"# GPU check ({'CPU dry run' if meta['cpu'] else meta.get('gpu') or 'no GPU found'})",
        "",
        f"torch {meta['versions'].get('torch')}, transformers {meta['versions'].get('transformers')}, trl "
        f"{meta['versions'].get('trl')}, peft {meta['versions'].get('peft')}; tokenizer: {meta['tokenizer']}; "
        f"total {meta.get('seconds', 0):.0f} s.",
    ]
    parts = report["parts"]
    forward = parts.get("forward", {})
    lines += ["", f"## Forward: packed vs concatenated training step ({forward.get('status', 'not run')})", ""]
    if forward.get("error"):
        lines += [f"Error: `{forward['error']}`", ""]
    if forward.get("pairs"):
        lines += [
            "| model | batch | K | tokens packed / concat | packed step (ms) | concat step (ms) | speed-up | packed peak "
            "(MiB) | concat peak (MiB) | memory ratio | packed attention | concat attention |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        for pair in forward["pairs"]:
            p, c = pair.get("packed", {}), pair.get("concatenated", {})
            model, batch, k = pair["key"]
            lines.append(
                f"| {model} | {batch} | {k} | {p.get('num_tokens', '-')} / {c.get('num_tokens', '-')} | "
                f"{_cell(p, 'step_s', 1000)} | {_cell(c, 'step_s', 1000)} | {_fmt(pair['time_ratio'], 1, 'x')} | "
                f"{_cell(p, 'peak_mb')} | {_cell(c, 'peak_mb')} | {_fmt(pair['memory_ratio'], 1, 'x')} | "
                f"{_attention(p)} | {_attention(c)} |"
            )
        target = [p for p in forward["pairs"] if p["key"] == [sizes["forward_models"][0], 1, max(sizes["negatives"])]]
        for pair in target:  # the issue's target: the 1.5B config, one prompt, the largest K
            met = None not in (pair["time_ratio"], pair["memory_ratio"])
            met = met and min(pair["time_ratio"], pair["memory_ratio"]) >= report["meta"]["target_ratio"]
            lines.append(
                f"\nTarget ({pair['key'][0]}, batch 1, K = {pair['key'][2]}): {_fmt(pair['time_ratio'], 1, 'x')} time, "
                f"{_fmt(pair['memory_ratio'], 1, 'x')} memory, goal >= {report['meta']['target_ratio']:.0f}x both: "
                f"**{'met' if met else 'not met'}**."
            )
        errors = [r for r in forward.get("rows", []) if "error" in r and not r["error"].startswith("out of memory")]
        for row in errors[:5]:
            lines.append(
                f"\nError, {row['model']} {row['layout']} batch {row['batch_size']} K {row['num_negatives']}: "
                f"`{row['error']}`"
            )
    if forward.get("flex"):
        lines += [
            "",
            "FlexAttention fix (packed layout, block mask from the packing segments):",
            "",
            "| model | batch | K | flex step (ms) | speed-up vs concat / vs packed | flex peak (MiB) | memory ratio vs "
            "concat / vs packed | max abs log-prob diff vs dense mask | note |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for row in forward["flex"]:
            lines.append(
                f"| {row['model']} | {row['batch_size']} | {row['num_negatives']} | {_cell(row, 'step_s', 1000)} | "
                f"{_fmt(row.get('time_ratio_vs_concatenated'), 1, 'x')} / {_fmt(row.get('time_ratio_vs_packed'), 1, 'x')}"
                f" | {_cell(row, 'peak_mb')} | {_fmt(row.get('memory_ratio_vs_concatenated'), 1, 'x')} / "
                f"{_fmt(row.get('memory_ratio_vs_packed'), 1, 'x')} | "
                f"{_fmt(row.get('flex_max_abs_diff'), 4)} | {row.get('skipped') or row.get('error') or ''} |"
            )
    trainer = parts.get("trainer", {})
    lines += [
        "",
        f"## Trainer smoke: {sizes['trainer_steps']} bf16 steps on {sizes['device']}, packed, precomputed reference "
        f"({trainer.get('status', 'not run')})",
    ]
    lines += [""]
    if trainer.get("error"):
        lines += [f"Error: `{trainer['error']}`", ""]
    if trainer.get("rows"):
        lines += [
            "| model | steps | losses finite | step-1 loss (device / CPU fp32) | step-1 chosen log-prob (device / CPU "
            "fp32) | steps/s | passed |",
            "|---|---:|---|---|---|---:|---|",
        ]
        for row in trainer["rows"]:
            error = row["device"].get("error") or row["cpu_fp32"].get("error")
            lines.append(
                f"| {row['model']} | {row.get('steps_logged', '-')} | {row.get('all_losses_finite', '-')} | "
                f"{_fmt(row.get('step1_loss'), 4)} / {_fmt(row.get('step1_loss_cpu_fp32'), 4)} | "
                f"{_fmt(row.get('step1_logps_chosen'), 3)} / {_fmt(row.get('step1_logps_chosen_cpu_fp32'), 3)} | "
                f"{_fmt(row.get('steps_per_s'), 2)} | {row['passed']}{f' ({error})' if error else ''} |"
            )
    protocols = parts.get("protocols", {})
    lines += ["", f"## Evaluation protocols: ranking vs generation ({protocols.get('status', 'not run')})", ""]
    if protocols.get("error"):
        lines += [f"Error: `{protocols['error']}`", ""]
    for row in protocols.get("rows", []):
        if "error" in row:
            lines.append(f"Error: `{row['error']}`")
            continue
        lines += [
            f"{row['num_prompts']} prompts (mean {row['mean_prompt_tokens']:.0f} tokens, {row['num_candidates']} "
            f"candidates), batch {row['batch_size']}, {row['dtype']}:",
            "",
            "| protocol | s / prompt |",
            "|---|---:|",
            f"| generation (greedy, {row['max_new_tokens']} new tokens) | {row['generation_s_per_prompt']:.4f} |",
            f"| ranking (packed, {row['num_candidates']} candidates) | {row['ranking_s_per_prompt']:.4f} |",
            "",
            f"Speed ratio (generation time / ranking time): **{row['speed_ratio']:.2f}x** (CPU figure: 0.61x).",
        ]
    return "\n".join(lines) + "\n"


def _safe_markdown(report: dict) -> str:
    """`markdown(report)`, or the reason it failed: a table that cannot be written must not lose check.json."""
    try:
        return markdown(report)
    except Exception:  # noqa: BLE001
        return f"# GPU check\n\nThe table could not be written (the numbers are in check.json):\n\n```\n{traceback.format_exc()}```\n"


def _versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "huggingface-hub", "pyarrow"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _gpu_name() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"], capture_output=True, text=True
    )
    return out.stdout.strip() or None


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--cpu", action="store_true", help="Dry run: every part at tiny sizes on CPU.")
    parser.add_argument(
        "--tokenizer", default=str(DEFAULT_TOKENIZER), help="Saved tokenizer folder (else word-level)."
    )
    parser.add_argument("--parts", nargs="+", default=["forward", "trainer", "protocols"])
    parser.add_argument(
        "--flex",
        choices=["auto", "always", "never"],
        default="auto",
        help="Measure the FlexAttention fix: where packed is below the target at the largest K (auto), or always.",
    )
    args = parser.parse_args(argv)
    # `timeout` (check.sh) stops this process with SIGTERM: exiting through SystemExit lets `subprocess.run` kill the
    # running worker too, instead of leaving it running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # Nothing is downloaded: without these, the trainer's Hub look-ups wait for network timeouts (a minute each on a
    # machine that reaches no registry, which the device machine is).
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(name, "1")
    sizes = SIZES["cpu" if args.cpu else "gpu"]
    tokenizer = args.tokenizer if os.path.isdir(args.tokenizer) else None
    if args.cpu:
        tokenizer = None  # the word-level tokenizer keeps the dry run fast and free of carried files
        os.environ["TORCHDYNAMO_DISABLE"] = "1"  # no inductor compile of FlexAttention on CPU: eager, for numbers
        # One thread per worker: on a shared CPU, OpenMP threads spinning against other jobs made the dry run 15x
        # slower (108 s instead of 7 s for three tiny training steps).
        os.environ["OMP_NUM_THREADS"] = "1"
    common = dict(
        arch=True, tokenizer=tokenizer, overrides=sizes["overrides"], device=sizes["device"], dtype=sizes["dtype"]
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    report = {
        "meta": {
            "cpu": args.cpu,
            "gpu": _gpu_name(),
            "versions": _versions(),
            "tokenizer": "SmolLM2 (carried)" if tokenizer else "word-level (tests/testing_utils)",
            "sizes": sizes,
            "target_ratio": TARGET_RATIO,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)),
        },
        "parts": {},
    }
    parts = {
        "forward": lambda: part_forward(sizes, common, args.flex),
        "trainer": lambda: part_trainer(sizes, common),
        "protocols": lambda: part_protocols(sizes, common),
    }
    for name in args.parts:
        part_start = time.time()
        try:
            result = {"status": "ok", **parts[name]()}
            failed = [r for r in result.get("rows", []) if "error" in r and not r["error"].startswith("out of")]
            if failed or (name == "trainer" and not all(r["passed"] for r in result["rows"])):
                result["status"] = "failed"
        except Exception as error:  # noqa: BLE001 - one part's failure must not lose the others
            result = {"status": "error", "error": f"{type(error).__name__}: {error}", "trace": traceback.format_exc()}
        result["seconds"] = time.time() - part_start
        report["parts"][name] = result
        report["meta"]["seconds"] = time.time() - start
        (args.out_dir / "check.json").write_text(json.dumps(report, indent=1, default=str))
        (args.out_dir / "check.md").write_text(_safe_markdown(report))
        print(f"[check] {name}: {result['status']} in {result['seconds']:.0f} s", flush=True)
    print(_safe_markdown(report))
    return report


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        _measure._worker_list(json.loads(sys.argv[2]), work=_dispatch)
    else:
        # Exit status 1 when a part did not pass; its numbers and error are in check.json either way.
        sys.exit(0 if all(p["status"] == "ok" for p in main()["parts"].values()) else 1)
