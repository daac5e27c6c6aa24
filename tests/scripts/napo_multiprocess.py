"""Run under `accelerate launch --num_processes 2 --cpu`: in-batch sharing and NAPO's margin across processes.

Each process collates its own two rows; the report of each rank (written to `<out>/rank<r>.json`) lets the test check
that rows received negatives of the other process's rows and that the margin's batch mean is the global one.
"""

import json
import sys
from pathlib import Path

import torch
from datasets import Dataset


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.test_napo import ROWS  # noqa: E402
from tests.testing_utils import make_tiny_model, make_tokenizer  # noqa: E402
from trl_dynamicpo import DynamicPOConfig, DynamicPOTrainer  # noqa: E402


def main(out: Path):
    tokenizer = make_tokenizer()
    args = DynamicPOConfig(
        output_dir=str(out / "trainer"),
        loss_type=["napo"],
        in_batch_negatives=True,
        in_batch_fraction=1.0,
        report_to=[],
        gradient_checkpointing=False,
        per_device_train_batch_size=2,
    )
    trainer = DynamicPOTrainer(
        make_tiny_model(tokenizer), args=args, train_dataset=Dataset.from_list(ROWS), processing_class=tokenizer
    )
    rank = trainer.accelerator.process_index
    local = [trainer.train_dataset[i] for i in (2 * rank, 2 * rank + 1)]
    batch = trainer._share_in_batch_negatives(trainer.data_collator(local))
    trainer.model.train()
    with torch.no_grad():
        trainer.compute_loss(trainer.model, trainer.data_collator(local))
    words = tokenizer.convert_ids_to_tokens
    labels = batch["labels"]
    segments = batch["segment_ids"]
    shared, own = [], []
    for b in range(labels.size(0)):
        num_own = int(batch["own_negative_mask"][b].sum())
        for answer in range(1, int(batch["answer_mask"][b].sum())):
            tokens = labels[b][(segments[b] == answer + 1) & (labels[b] != -100)].tolist()
            (own if answer <= num_own else shared).append(words(tokens[0]))
    report = {
        "shared_words": shared,
        "own_negative_words": own,
        "batch_mean": trainer._metrics["train"]["napo/batch_mean"][-1],
        "all_scores": [s for row in ROWS for s in row["rejected_scores"]],
    }
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    # Leave together and close the gloo group: a rank that exits while the other's gloo threads still talk to it can
    # abort at exit ("terminate called without an active exception"), which failed CI once.
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
