import copy
import math
import os

import pytest
import torch
import yaml
from datasets import Dataset
from peft import LoraConfig, PeftModel, get_peft_model
from trl import DPOConfig, DPOTrainer

from trl_dynamicpo import DynamicPOConfig, DynamicPOTrainer
from trl_dynamicpo.losses import mppo_loss
from trl_dynamicpo.packing import answer_logps

from .testing_utils import make_tiny_model, make_tokenizer, tiny_config


ROWS = [
    {
        "prompt": "the user watched heat fargo alien . choose from jaws up cars coco dune . answer:",
        "chosen": "jaws",
        "rejected": ["up", "cars", "coco", "dune"],
    },
    {
        "prompt": "the user listened red blue green . choose from one two three . answer:",
        "chosen": "two",
        "rejected": ["one", "three"],
    },
    {
        "prompt": "the user read matrix rocky . choose from psycho vertigo casablanca babe big hook . answer:",
        "chosen": "vertigo",
        "rejected": ["psycho", "casablanca", "babe", "big", "hook"],
    },
    {
        "prompt": "the user watched toy story . choose from brave frozen moana . answer:",
        "chosen": "moana",
        "rejected": ["brave", "frozen"],
    },
]


def config(tmp_path, **kwargs):
    return tiny_config(tmp_path, **{"max_steps": 3, "learning_rate": 1e-2, **kwargs})


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def first_batch(trainer, n=4):
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(n)])
    return {k: v.to(trainer.accelerator.device) for k, v in batch.items()}


def test_config_defaults_and_validation(tmp_path):
    args = config(tmp_path)
    assert args.loss_type == ["dynamicpo"] and args.beta == 1.0 and args.layout == "packed"
    assert args.bf16 is False  # no GPU here: fp32 by default
    assert DynamicPOConfig(str(tmp_path), loss_type="sigmoid").loss_type == ["dpo"]
    with pytest.raises(ValueError, match="Unknown loss_type 'hinge'"):
        DynamicPOConfig(str(tmp_path), loss_type=["hinge"])
    with pytest.raises(ValueError, match="dynamic_beta|dpo"):
        DynamicPOConfig(str(tmp_path), loss_type=["dpo"], dynamic_beta=True)
    with pytest.raises(ValueError, match="layout"):
        DynamicPOConfig(str(tmp_path), layout="interleaved")
    with pytest.raises(ValueError, match="num_negatives"):
        DynamicPOConfig(str(tmp_path), num_negatives=0)


def test_k1_dpo_equals_trl_sigmoid(tokenizer, tmp_path):
    """With one negative, `dpo` is TRL's `sigmoid` loss on the same batch, with the same reference model."""
    rows = [{"prompt": r["prompt"], "chosen": " " + r["chosen"], "rejected": " " + r["rejected"][0]} for r in ROWS]
    dataset = Dataset.from_list(rows)
    policy, reference = make_tiny_model(tokenizer, seed=1), make_tiny_model(tokenizer, seed=2)
    common = dict(output_dir=str(tmp_path), report_to=[], beta=0.5, gradient_checkpointing=False, bf16=False)
    ours = DynamicPOTrainer(
        copy.deepcopy(policy),
        ref_model=copy.deepcopy(reference),
        args=DynamicPOConfig(loss_type=["dpo"], completion_separator="", **common),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    trl = DPOTrainer(
        copy.deepcopy(policy),
        ref_model=copy.deepcopy(reference),
        args=DPOConfig(loss_type=["sigmoid"], **common),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    assert ours.train_dataset[0]["chosen_ids"] == trl.train_dataset[0]["chosen_ids"]
    ours_loss = ours.compute_loss(ours.model, first_batch(ours))
    trl_loss = trl.compute_loss(trl.model, first_batch(trl))
    torch.testing.assert_close(ours_loss, trl_loss, atol=1e-5, rtol=1e-5)
    assert ours_loss.item() != pytest.approx(math.log(2), abs=1e-3)  # the policy really differs from the reference
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"):
        assert ours._metrics["train"][key][-1] == pytest.approx(trl._metrics["train"][key][-1], abs=1e-4), key


def test_mppo_is_reference_free_and_matches_the_loss_on_the_batch(tokenizer, tmp_path):
    trainer = DynamicPOTrainer(
        make_tiny_model(tokenizer, seed=1),
        args=config(tmp_path, loss_type=["mppo"], beta=3.0),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tokenizer,
    )
    batch = first_batch(trainer)
    assert not trainer._needs_reference(batch)
    calls = []
    trainer.compute_ref_log_probs = lambda *args: calls.append(args)  # any reference forward would be recorded
    loss = trainer.compute_loss(trainer.model, batch)
    assert calls == []
    logps = answer_logps(trainer.model, batch)
    mask = batch["answer_mask"][:, 1:]
    expected = mppo_loss(logps[:, 0], logps[:, 1:], mask, 3.0).mean()
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_lora_training_changes_adapter_only_and_reloads(tokenizer, tmp_path, arch):
    model = make_tiny_model(tokenizer, arch=arch)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = DynamicPOTrainer(
        model,
        args=config(tmp_path, num_negatives=2),
        train_dataset=Dataset.from_list(ROWS * 2),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]),
    )
    lora_before = {n: p.clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    assert trainer.data_collator.epoch == 1  # 3 steps of 2 per epoch: the negatives were re-drawn for epoch 1
    lora_after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(lora_before[n], lora_after[n]) for n in lora_before)
    for name, value in trainer.model.get_base_model().state_dict().items():
        if "lora_" in name:
            continue
        key = name.replace("base_layer.", "")
        assert torch.equal(value, base_state[key]), name
    # Metrics were logged with the multi-negative names.
    logged = trainer.state.log_history[0]
    for key in ("loss", "rewards/accuracies", "dynamicpo/boundary_fraction", "dynamicpo/beta_mean", "num_negatives"):
        assert key in logged, key
    assert logged["num_negatives"] == 2.0
    assert 0.5 <= logged["dynamicpo/beta_min"] <= logged["dynamicpo/beta_max"] <= 1.5

    # Save and reload the adapter: identical log-probs.
    trainer.save_model(str(tmp_path / "adapter"))
    batch = first_batch(trainer)
    trainer.model.eval()
    with torch.no_grad():
        expected = answer_logps(trainer.model, batch)
        base = make_tiny_model(tokenizer, arch=arch)
        reloaded = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
        from trl_dynamicpo.packing import ensure_fused_lm_head

        ensure_fused_lm_head(reloaded)
        torch.testing.assert_close(answer_logps(reloaded, batch), expected, atol=1e-5, rtol=0)


def test_reference_is_pretrained_adapter_for_peft_model(tokenizer, tmp_path):
    """A PeftModel holding an SFT adapter is trained against a frozen copy of that adapter, not the raw base."""
    model = get_peft_model(
        make_tiny_model(tokenizer), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    trainer = DynamicPOTrainer(
        model, args=config(tmp_path), train_dataset=Dataset.from_list(ROWS), processing_class=tokenizer
    )
    batch = first_batch(trainer)
    with torch.no_grad():
        policy = answer_logps(trainer.model, batch)
        reference = trainer.compute_ref_log_probs(trainer.model, batch)
        with trainer.model.disable_adapter():
            base = answer_logps(trainer.model, batch)
    torch.testing.assert_close(reference, policy)
    assert (reference - base).abs().max() > 1e-3


def test_explicit_ref_model_and_precomputed_reference_agree(tokenizer, tmp_path):
    policy, reference = make_tiny_model(tokenizer, seed=3), make_tiny_model(tokenizer, seed=4)
    dataset = Dataset.from_list(ROWS)
    losses = []
    for precompute in (False, True):
        trainer = DynamicPOTrainer(
            copy.deepcopy(policy),
            ref_model=copy.deepcopy(reference),
            args=config(tmp_path, precompute_ref_log_probs=precompute, num_negatives=2, loss_type=["sdpo"]),
            train_dataset=dataset,
            processing_class=tokenizer,
        )
        batch = first_batch(trainer)
        with torch.no_grad():
            losses.append(trainer.compute_loss(trainer.model, batch))
            if precompute:
                # The precomputed columns hold the reference model's log-probs of every negative.
                direct = trainer.compute_ref_log_probs(trainer.ref_model, batch)
                torch.testing.assert_close(batch["ref_logps"], direct, atol=1e-5, rtol=0)
                assert len(trainer.train_dataset[0]["ref_rejected_logps"]) == 4
    torch.testing.assert_close(losses[0], losses[1], atol=1e-5, rtol=0)


def test_reference_log_probs_given_with_the_rows_are_used_as_they_are(tokenizer, tmp_path):
    # Several runs from one reference (the quality study) compute its log-probs once and pass them as columns.
    rows = [
        {**r, "ref_chosen_logps": -1.0 - i, "ref_rejected_logps": [-2.0 - k for k in range(len(r["rejected"]))]}
        for i, r in enumerate(ROWS)
    ]
    trainer = DynamicPOTrainer(
        make_tiny_model(tokenizer),
        args=config(tmp_path, precompute_ref_log_probs=True, loss_type=["dmpo"]),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    assert trainer.train_dataset[2]["ref_chosen_logps"] == -3.0
    batch = first_batch(trainer)
    expected = torch.tensor([[-1.0 - i, *(-2.0 - k for k in range(5))] for i in range(4)])
    expected = expected * batch["answer_mask"]
    torch.testing.assert_close(batch["ref_logps"], expected[:, : batch["ref_logps"].size(1)])


@pytest.mark.parametrize(
    "rows",
    [
        [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"][0]} for r in ROWS],
        [
            {
                "prompt": r["prompt"],
                "chosen": r["chosen"],
                "rejected1": r["rejected"][0],
                "rejected2": r["rejected"][1],
            }
            for r in ROWS
        ],
        [
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "chosen": [{"role": "assistant", "content": r["chosen"]}],
                "rejected": [[{"role": "assistant", "content": x}] for x in r["rejected"]],
            }
            for r in ROWS
        ],
    ],
    ids=["single-string", "sdpo-columns", "conversational"],
)
def test_input_formats(tokenizer, tmp_path, rows):
    trainer = DynamicPOTrainer(
        make_tiny_model(tokenizer),
        args=config(tmp_path, max_steps=1, loss_type=["sdpo"]),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    row = trainer.train_dataset[0]
    expected_k = (
        len(rows[0]["rejected"]) if isinstance(rows[0].get("rejected"), list) else (2 if "rejected2" in rows[0] else 1)
    )
    assert len(row["rejected_ids"]) == expected_k
    if isinstance(rows[0]["prompt"], list):
        # Chat template applied: the prompt ends with the generation prompt, the answer ends with EOS.
        assert row["prompt_ids"][-1] == tokenizer.convert_tokens_to_ids("<|assistant|>")
        assert row["chosen_ids"][-1] == tokenizer.eos_token_id
    trainer.train()
    assert math.isfinite(trainer.state.log_history[0]["loss"])


@pytest.mark.parametrize(
    "bad_row, message",
    [
        (
            {"prompt": "answer:", "chosen": "jaws", "rejected": []},
            r"Row 2, field `rejected`: the list of negatives is empty",
        ),
        (
            {"prompt": "answer:", "chosen": "jaws", "rejected": ["up", "jaws"]},
            r"Row 2, field `rejected\[1\]`.*among its own",
        ),
        (
            {"prompt": "answer:", "chosen": "jaws", "rejected": ["up", "up"]},
            r"Row 2, field `rejected\[1\]`: duplicate",
        ),
        (
            {"prompt": "answer:", "chosen": "jaws", "rejected": ["up", ""]},
            r"Row 2, field `rejected\[1\]`: the answer is empty",
        ),
        (
            {"prompt": "one " * 60 + "answer:", "chosen": "jaws", "rejected": ["up"]},
            r"Row 2, field `prompt`.*max_length=32",
        ),
    ],
)
def test_bad_rows_name_row_and_field(tokenizer, tmp_path, bad_row, message):
    good = {"prompt": "the user watched heat . answer:", "chosen": "jaws", "rejected": ["up", "cars"]}
    rows = [good, good, bad_row]
    with pytest.raises(ValueError, match=message):
        DynamicPOTrainer(
            make_tiny_model(tokenizer),
            args=config(tmp_path, max_length=32),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )


def test_missing_column_is_named(tokenizer, tmp_path):
    with pytest.raises(ValueError, match=r"missing the column\(s\) rejected"):
        DynamicPOTrainer(
            make_tiny_model(tokenizer),
            args=config(tmp_path),
            train_dataset=Dataset.from_list([{"prompt": "a", "chosen": "b"}]),
            processing_class=tokenizer,
        )


def test_model_card(tokenizer, tmp_path):
    trainer = DynamicPOTrainer(
        make_tiny_model(tokenizer),
        args=config(tmp_path),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, target_modules=["q_proj"]),
    )
    trainer.create_model_card(model_name="tiny-dynamicpo")
    text = open(os.path.join(trainer.args.output_dir, "README.md")).read()
    metadata = yaml.safe_load(text.split("---")[1])
    assert {"trl", "trl-dynamicpo", "recommendation"} <= set(metadata["tags"])
    assert "None" not in text and "base_model" not in metadata  # the base came from no Hub id
    assert "2605.00327" in text and "2406.09215" in text and "dynamicpo" in text.lower()
