import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset

from trl_dynamicpo import DynamicPOTrainer
from trl_dynamicpo.napo import NapoMarginState, share_in_batch_negatives
from trl_dynamicpo.packing import answer_logps, pack_answers

from .testing_utils import make_tiny_model, make_tokenizer, tiny_config


# Row 1's chosen answer ("up") is a negative of row 0, and row 0's chosen ("jaws") a negative of row 1.
ROWS = [
    {
        "prompt": "the user watched heat fargo . answer:",
        "chosen": "jaws",
        "rejected": ["up", "cars"],
        "rejected_scores": [0.2, 0.4],
    },
    {
        "prompt": "the user watched alien dune . answer:",
        "chosen": "up",
        "rejected": ["jaws", "coco"],
        "rejected_scores": [0.6, 0.8],
    },
    {
        "prompt": "the user listened red blue . answer:",
        "chosen": "one",
        "rejected": ["two", "three"],
        "rejected_scores": [0.1, 0.3],
    },
    {
        "prompt": "the user read matrix rocky . answer:",
        "chosen": "big",
        "rejected": ["hook", "babe"],
        "rejected_scores": [0.5, 0.9],
    },
]


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def config(tmp_path, **kwargs):
    napo = {"max_steps": 2, "loss_type": ["napo"], "in_batch_negatives": True, "in_batch_fraction": 1.0}
    return tiny_config(tmp_path, **{**napo, **kwargs})


def test_share_excludes_own_answers_and_duplicates():
    answers = [[[1], [2], [3]], [[2], [1], [4]], [[5], [3], [4], [6]]]
    out = share_in_batch_negatives(answers, [0, 1, 2], fraction=1.0)
    assert out[0] == [[1], [2], [3], [4], [6]]  # row 1's [1] is row 0's chosen; row 2's [3] it already has
    assert out[1] == [[2], [1], [4], [3], [6]]
    assert out[2] == [[5], [3], [4], [6], [2], [1]]
    with_chosen = share_in_batch_negatives(answers, [0], fraction=1.0, include_chosen=True)
    assert with_chosen[0] == [[1], [2], [3], [4], [5], [6]]
    capped = share_in_batch_negatives(answers, [0], fraction=1.0, max_negatives=3)
    assert capped[0] == [[1], [2], [3], [4]]


def test_share_selection_random_and_similarity():
    answers = [[[i], [10 + i]] for i in range(10)]
    first = share_in_batch_negatives(answers, [0], fraction=0.5, seed=3, step=7)
    assert first == share_in_batch_negatives(answers, [0], fraction=0.5, seed=3, step=7)
    assert len(first[0]) == 2 + round(0.5 * 9)
    assert any(share_in_batch_negatives(answers, [0], fraction=0.5, seed=3, step=s) != first for s in range(5))
    embeddings = np.eye(10)
    embeddings[4] = embeddings[0] + 0.1  # row 4 is the most similar to row 0, then row 7
    embeddings[7] = embeddings[0] + 0.5 * embeddings[7]
    out = share_in_batch_negatives(answers, [0], fraction=2 / 9, selection="similarity", embeddings=embeddings)
    assert out[0] == [[0], [10], [14], [17]]
    with pytest.raises(ValueError, match="embedding"):
        share_in_batch_negatives(answers, [0], selection="similarity")


def test_margin_state_ema():
    state = NapoMarginState(decay=0.9)
    assert state.update(0.5) == 0.5  # starts at the first batch mean
    assert state.update(1.0) == pytest.approx(0.9 * 0.5 + 0.1 * 1.0)
    restored = NapoMarginState()
    restored.load_state_dict(json.loads(json.dumps(state.state_dict())))
    assert restored == state


def test_shared_negatives_are_scored_under_own_prompt(tokenizer, tmp_path):
    trainer = DynamicPOTrainer(
        make_tiny_model(tokenizer),
        args=config(tmp_path),
        train_dataset=Dataset.from_list(ROWS[:2]),
        processing_class=tokenizer,
    )
    raw = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    batch = trainer._share_in_batch_negatives(raw)
    ids = lambda word: tokenizer.convert_tokens_to_ids(word)  # noqa: E731
    eos = tokenizer.eos_token_id
    # Row 0 (chosen jaws; up, cars) gets row 1's "coco" but not "jaws" (its own chosen answer).
    row0 = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert row0 == [ids("jaws"), eos, ids("up"), eos, ids("cars"), eos, ids("coco"), eos]
    assert batch["own_negative_mask"][0].tolist() == [True, True, False]
    assert batch["num_shared"].tolist() == [1.0, 1.0]
    model = trainer.model
    with torch.no_grad():
        logps = answer_logps(model, batch)
        prompt = trainer.train_dataset[0]["prompt_ids"]
        direct = answer_logps(model, pack_answers([prompt], [[[ids("coco"), eos]]], tokenizer.pad_token_id))
    torch.testing.assert_close(logps[0, 3], direct[0, 0])


def test_napo_margin_follows_teacher_scores(tokenizer, tmp_path):
    trainer = DynamicPOTrainer(
        make_tiny_model(tokenizer),
        args=config(tmp_path, in_batch_negatives=False, napo_alpha=0.5, napo_gamma0=2.0),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tokenizer,
    )
    trainer.model.train()
    first = trainer.data_collator([trainer.train_dataset[i] for i in (0, 1)])  # scores mean 0.5
    second = trainer.data_collator([trainer.train_dataset[i] for i in (2, 3)])  # scores mean 0.45
    trainer.compute_loss(trainer.model, first)
    trainer.compute_loss(trainer.model, second)
    metrics = trainer._metrics["train"]
    assert metrics["napo/gamma"][0] == pytest.approx(2.0)  # M = M_b on the first batch
    running = 0.9 * 0.5 + 0.1 * 0.45
    assert metrics["napo/running_mean"][1] == pytest.approx(running)
    assert metrics["napo/gamma"][1] == pytest.approx(2.0 * (1 - 0.5 * (0.45 - running)))
    # Reference-free NAPO with teacher scores needs no reference forward: rewards are β·s.
    assert metrics["rewards/chosen"][1] == pytest.approx(metrics["logps/chosen"][1])


def test_napo_state_survives_checkpoint_resume(tokenizer, tmp_path):
    def run(out, **kwargs):
        trainer = DynamicPOTrainer(
            make_tiny_model(tokenizer),
            args=config(
                tmp_path,
                output_dir=str(out),
                per_device_train_batch_size=2,
                save_strategy="steps",
                save_steps=1,
                in_batch_negatives=False,
            ),
            train_dataset=Dataset.from_list(ROWS),
            processing_class=tokenizer,
        )
        trainer.train(**kwargs)
        return trainer

    full = run(tmp_path / "a")
    saved = json.loads((tmp_path / "a" / "checkpoint-1" / "napo_state.json").read_text())
    assert saved["num_updates"] == 1
    resumed = run(tmp_path / "a", resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-1"))
    assert resumed._napo_state.running_mean == pytest.approx(full._napo_state.running_mean)
    assert resumed._napo_state.num_updates == 2


def test_in_batch_training_logs(tokenizer, tmp_path):
    trainer = DynamicPOTrainer(
        make_tiny_model(tokenizer),
        args=config(tmp_path, loss_type=["napo"], dynamic_boundary_selection=True, dynamic_beta=True),
        train_dataset=Dataset.from_list([{k: v for k, v in r.items() if k != "rejected_scores"} for r in ROWS]),
        processing_class=tokenizer,
    )
    trainer.train()
    logged = trainer.state.log_history[0]
    assert logged["in_batch/shared_negatives"] > 0
    assert 0 < logged["napo/batch_mean"] <= 1  # the reference's per-token probability of the negatives
    assert logged["num_negatives"] > 2  # own (2) + shared


def test_config_rejects_precompute_with_sharing(tmp_path):
    with pytest.raises(ValueError, match="precompute_ref_log_probs"):
        config(tmp_path, precompute_ref_log_probs=True)


def test_multiprocess_gather(tmp_path):
    """Two CPU processes: each row receives negatives from the other process's rows, and M_b is the global mean."""
    script = Path(__file__).parent / "scripts" / "napo_multiprocess.py"
    # accelerate's `--cpu` launcher starts one process without MPI; torchrun's (`--multi_gpu`) starts two, which
    # DynamicPOConfig (no GPU: `use_cpu`) puts in a gloo process group.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    cmd += ["--mixed_precision", "no"]
    cmd += ["--dynamo_backend", "no", str(script), str(tmp_path)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for rank, report in enumerate(reports):
        other = reports[1 - rank]
        assert set(report["shared_words"]) & set(other["own_negative_words"]), report
        assert report["batch_mean"] == pytest.approx(np.mean(report["all_scores"]))
    assert reports[0]["batch_mean"] == reports[1]["batch_mean"]
