"""Shared measurement code of the benchmarks: `median_time` (`lm_head.py`, `trunk_cache.py`) and the per-process
training-step runs of `forward.py` and `napo.py`.

Each configuration runs in a fresh subprocess so that peak memory is its own: the process loads the model, resets the
kernel's peak-RSS counter (`/proc/self/clear_refs`), then runs warm-up and timed training steps (reference forward,
policy forward, backward, AdamW step) through `DynamicPOTrainer.compute_loss`, and reports the median step time and
the peak resident memory above the post-load baseline.
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


def _titles(tokenizer, count: int, seed: int) -> list[str]:
    """Distinct, realistic movie titles (about 6-10 tokens each)."""
    import random

    words = "Star Wars Toy Story Heat Fargo Alien Return Jedi Empire Strikes Back Godfather Casablanca Vertigo".split()
    rng = random.Random(seed)
    titles = set()
    while len(titles) < count:
        titles.add(f"{' '.join(rng.sample(words, 3))} ({rng.randint(1930, 1998)})")
    return sorted(titles)


def make_rows(tokenizer, batch_size: int, num_negatives: int, prompt_tokens: int) -> list[dict]:
    rows = []
    for b in range(batch_size):
        titles = _titles(tokenizer, 1 + num_negatives + 200, seed=b)
        answers, history = titles[: 1 + num_negatives], titles[1 + num_negatives :]
        prompt = "This user has watched these movies recently:"
        i = 0
        while len(tokenizer(prompt)["input_ids"]) < prompt_tokens - 12:
            prompt += f" {history[i]},"
            i += 1
        prompt += " Predict the next movie this user will watch. Answer:"
        rows.append({"prompt": prompt, "chosen": answers[0], "rejected": answers[1:]})
    return rows


def load_model(name: str, layers: int | None):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_dynamicpo.model_utils import convert_gguf, smollm2_gguf_path

    folder = convert_gguf(*smollm2_gguf_path())
    if name == "tiny":
        sys.path.insert(0, str(ROOT))
        from tests.testing_utils import make_tiny_model

        # The real SmolLM2 tokenizer (so prompts have realistic token counts) with a 2-layer random model.
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = make_tiny_model(tokenizer, attn_implementation="sdpa", hidden_size=64, intermediate_size=128)
        return model, tokenizer
    kwargs = {"num_hidden_layers": layers} if layers else {}
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa", **kwargs)
    return model, AutoTokenizer.from_pretrained(folder)


def worker(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig

    from trl_dynamicpo import DynamicPOConfig, DynamicPOTrainer

    torch.manual_seed(0)
    model, tokenizer = load_model(spec["model"], spec.get("layers"))
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
    trainer = DynamicPOTrainer(
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
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    prompt_len = len(trainer.train_dataset[0]["prompt_ids"])
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    trainer.model.train()
    _reset_peak_rss()
    baseline = _rss_kb("VmRSS")
    times = []
    for _ in range(spec["warmup"] + spec["steps"]):
        start = time.perf_counter()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    peak = _rss_kb("VmHWM") - baseline
    return {
        **spec,
        "prompt_len": prompt_len,
        "step_s": statistics.median(times[spec["warmup"] :]),
        "peak_mb": peak / 1024,
        "loss": float(loss),
        "num_answers": int(trainer._metrics["train"]["num_negatives"][-1]) + 1,
    }


def run(spec: dict) -> dict:
    """Run `spec` in a fresh Python process and return its measurements."""
    env = {**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, env=env, cwd=ROOT
    )
    if out.returncode != 0:
        raise RuntimeError(f"benchmark worker failed for {spec}:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", required=True)
    result = worker(json.loads(parser.parse_args().worker))
    print(json.dumps(result))
