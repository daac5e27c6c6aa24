"""A training run cut after a checkpoint and resumed from it ends exactly where the uninterrupted run ends.

The resumed run must draw the same negatives (the collator's epoch), count the same tokens and reach the same
weights: a user who resumes after a crash must not get a different model than one whose run never crashed.
"""

import pytest
import torch
from datasets import Dataset

from trl_dynamicpo import DynamicPOTrainer

from ..test_trainer import ROWS
from ..testing_utils import make_tiny_model, make_tokenizer, tiny_config


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def _train(tokenizer, out, resume_from_checkpoint=None):
    trainer = DynamicPOTrainer(
        make_tiny_model(tokenizer, seed=0),
        args=tiny_config(
            out.parent,
            output_dir=str(out),
            loss_type=["dmpo"],
            num_negatives=2,  # subsampled negatives: a resumed run must draw the same ones as the full run
            per_device_train_batch_size=1,
            num_train_epochs=2,  # 4 steps per epoch, 8 in all
            learning_rate=5e-3,
            save_strategy="steps",
            save_steps=1,
        ),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tokenizer,
    )
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    return trainer


@pytest.mark.parametrize("cut_at_step", [3, 7])  # epoch 0.75 and 1.75: mid-epoch, past its middle
def test_resumed_run_reaches_the_same_weights_and_token_count(tokenizer, tmp_path, cut_at_step):
    full = _train(tokenizer, tmp_path / "full")
    # Resuming from the full run's own checkpoint is the state a run killed right after that save leaves behind.
    resumed = _train(
        tokenizer, tmp_path / "full", resume_from_checkpoint=str(tmp_path / "full" / f"checkpoint-{cut_at_step}")
    )
    assert resumed.state.global_step == full.state.global_step == 8
    final = dict(resumed.model.named_parameters())
    for name, param in full.model.named_parameters():
        torch.testing.assert_close(final[name].detach(), param.detach(), rtol=0, atol=1e-6, msg=name)
    tokens = [entry["num_tokens"] for entry in full.state.log_history if "num_tokens" in entry]
    tokens_resumed = [entry["num_tokens"] for entry in resumed.state.log_history if "num_tokens" in entry]
    assert tokens_resumed[-1] == tokens[-1] > 0
    assert tokens_resumed == tokens  # the resumed run carries the logged history and continues it
