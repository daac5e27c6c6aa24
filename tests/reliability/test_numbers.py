"""Numbers that would train silently wrong are refused: at config time by option name and range, in the rows by row
and field, and at run time (a non-finite loss) by step, before the weights change."""

import pytest
import torch
from datasets import Dataset

from trl_dynamicpo import DynamicPOConfig, DynamicPOTrainer

from ..test_trainer import ROWS, config
from ..testing_utils import make_tiny_model, make_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("beta", -1.0, r"`beta` must be a finite number > 0, got -1.0"),
        ("beta", 0.0, r"`beta` must be a finite number > 0, got 0.0"),
        ("beta", float("nan"), r"`beta` must be a finite number > 0, got nan"),
        ("napo_ema_decay", 1.0, r"`napo_ema_decay` must lie in \[0, 1\), got 1.0"),
        ("napo_ema_decay", -0.1, r"`napo_ema_decay` must lie in \[0, 1\), got -0.1"),
        ("napo_gamma0", float("inf"), r"`napo_gamma0` must be finite, got inf"),
        ("label_smoothing", 0.1, r"`label_smoothing=0.1` is not supported"),
    ],
)
def test_config_refuses_numbers_that_would_train_silently_wrong(tmp_path, option, value, message):
    with pytest.raises(ValueError, match=message):
        DynamicPOConfig(str(tmp_path), **{option: value})
    DynamicPOConfig(str(tmp_path), napo_ema_decay=0.0)  # the edge of the range is valid


def test_non_finite_loss_stops_training_before_the_weights_change(tokenizer, tmp_path):
    # A model whose forward gives NaN (here: a NaN final norm) makes the loss NaN: training stops at that step, naming
    # it, and the optimizer never writes NaN into the other weights.
    model = make_tiny_model(tokenizer)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = DynamicPOTrainer(
        model,
        args=config(tmp_path, loss_type=["dmpo"], per_device_train_batch_size=4),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tokenizer,
    )
    with pytest.raises(FloatingPointError, match=r"Non-finite training loss \(nan\) at step 1"):
        trainer.train()
    for name, param in trainer.model.named_parameters():
        torch.testing.assert_close(param.detach(), before[name], rtol=0, atol=0, equal_nan=True, msg=name)


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("rejected_scores", [0.1], r"Row 0, field `rejected_scores`: expected one number per negative \(4"),
        ("rejected_scores", [0.1, float("nan"), 0.2, 0.3], r"Row 0, field `rejected_scores\[1\]`: expected a finite"),
        ("ref_rejected_logps", [-1.0, -2.0], r"Row 0, field `ref_rejected_logps`: expected one number per negative"),
        ("ref_chosen_logps", float("-inf"), r"Row 0, field `ref_chosen_logps`: expected a finite number, got -inf"),
        ("prompt", "  ", r"Row 0, field `prompt`: the prompt is empty"),
    ],
)
def test_bad_numbers_and_empty_prompts_name_the_row_and_field(tokenizer, tmp_path, column, value, message):
    rows = [dict(r) for r in ROWS]
    rows[0][column] = value
    with pytest.raises(ValueError, match=message):
        DynamicPOTrainer(
            make_tiny_model(tokenizer),
            args=config(tmp_path, loss_type=["dmpo"]),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )


@pytest.mark.parametrize(
    "options, message",
    [
        (
            {"loss_type": ["sdpo", "sft"], "loss_weights": [0.0, -1.0]},
            r"`loss_weights` must be finite and >= 0 .*-1.0",
        ),
        ({"loss_type": ["sdpo", "sft"], "loss_weights": [0.0, 0.0]}, r"at least one > 0, got \[0.0, 0.0\]"),
        ({"loss_type": ["dmpo"], "beta_margin": float("nan")}, r"`beta_margin` must be a finite number, got nan"),
        ({"learning_rate": float("inf")}, r"`learning_rate` must be a finite number, got inf"),
    ],
)
def test_config_refuses_negative_loss_weights_and_non_finite_floats(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        DynamicPOConfig(str(tmp_path), report_to=[], **options)


def test_command_line_nan_is_refused_as_a_value_not_as_a_string(tmp_path, capsys):
    from recipes.run import main

    from ..test_recipes import MINIMAL, write_yaml

    path = write_yaml(tmp_path / "r.yaml", {**MINIMAL, "output_dir": str(tmp_path / "out")})
    for option, value, expected in [
        ("--preference.beta", "nan", "`beta` must be a finite number > 0, got nan"),
        ("--preference.beta_margin", "inf", "`beta_margin` must be a finite number, got inf"),
        ("--preference.loss_weights", "-1", "`loss_weights` must be finite and >= 0"),
    ]:
        assert main([str(path), option, value]) == 2
        err = capsys.readouterr().err
        assert expected in err and "got str" not in err, err
    assert not (tmp_path / "out").exists()
