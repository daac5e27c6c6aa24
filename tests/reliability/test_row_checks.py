"""Rows whose negatives cannot be told from the chosen answer are refused; one -inf log-prob does not poison a row."""

import math
import unicodedata

import pytest
import torch
from datasets import Dataset

from trl_dynamicpo import DynamicPOTrainer
from trl_dynamicpo.losses import compute_multi_negative_loss

from ..testing_utils import make_tiny_model, make_tokenizer, tiny_config


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer(extra_words=["amélie", unicodedata.normalize("NFD", "amélie")])


GOOD = {"prompt": "the user watched heat . answer:", "chosen": "jaws", "rejected": ["up", "cars"]}


@pytest.mark.parametrize(
    "chosen, rejected, message",
    [
        # The separator adds the space: " jaws" is the continuation "jaws" is.
        (
            "jaws",
            ["up", " jaws"],
            r"Row 1, field `rejected\[1\]`: the chosen answer 'jaws' is among its own negatives",
        ),
        # The EOS text is what the collator appends anyway: same token ids.
        ("jaws", ["jaws</s>", "up"], r"Row 1, field `rejected\[0\]`: tokenizes to the same token ids as `chosen`"),
        # The same title, precomposed (NFC) and with a combining accent (NFD).
        (
            unicodedata.normalize("NFC", "amélie"),
            ["up", unicodedata.normalize("NFD", "amélie")],
            r"Row 1, field `rejected\[1\]`: the chosen answer 'amélie' is among its own negatives",
        ),
        # Two negatives that are one answer to the model.
        (
            "jaws",
            ["up", "up</s>"],
            r"Row 1, field `rejected\[1\]`: tokenizes to the same token ids as `rejected\[0\]`",
        ),
    ],
)
def test_negatives_equal_to_the_chosen_answer_are_refused(tokenizer, tmp_path, chosen, rejected, message):
    rows = [GOOD, {"prompt": GOOD["prompt"], "chosen": chosen, "rejected": rejected}]
    with pytest.raises(ValueError, match=message):
        DynamicPOTrainer(
            make_tiny_model(tokenizer),
            args=tiny_config(tmp_path, loss_type=["dmpo"]),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )


@pytest.mark.parametrize("loss_type, dynamic_beta", [("dynamicpo", None), ("sdpo", True), ("dmpo", True)])
def test_minus_inf_log_prob_gives_the_limit_not_nan(loss_type, dynamic_beta):
    # Row 0 has a negative of log-prob -inf (zero probability); row 1 is the same row without it.
    chosen = torch.tensor([-2.0, -2.0], requires_grad=True)
    rejected = torch.tensor([[-1.0, -4.0, float("-inf"), -6.0], [-1.0, -4.0, -6.0, -6.0]], requires_grad=True)
    ref_chosen, ref_rejected = torch.tensor([-2.5, -2.5]), torch.tensor([[-1.5, -4.0, -5.0, -5.0]] * 2)
    mask = torch.tensor([[True] * 4, [True, True, True, False]])
    out = compute_multi_negative_loss(
        loss_type, chosen, rejected, ref_chosen, ref_rejected, mask, beta=1.0, dynamic_beta=dynamic_beta
    )
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all() and torch.isfinite(out.beta).all()
    assert torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()
    # The limit of the dual-margin formula as s_j -> -inf: mean_D -> -inf, so every other negative's ratio -> -1 and
    # the -inf negative's own ratio -> +1.
    low, high = 1 + 0.5 * math.tanh(-1.0), 1 + 0.5 * math.tanh(1.0)
    torch.testing.assert_close(out.beta[0], torch.tensor([low, low, high, low]), atol=1e-4, rtol=0)
    if loss_type == "dynamicpo":
        # Only -1.0 >= -2.0 is a boundary negative: -log σ(β_1 (r_w - r_1)) with r_w = r_1 = 0.5, i.e. log 2.
        assert out.losses[0].item() == pytest.approx(math.log(2.0), abs=1e-6)
        assert out.losses[1].item() == pytest.approx(math.log(2.0), abs=1e-6)
    if loss_type == "sdpo":
        # A zero-probability negative adds exp(-inf) = 0 to S-DPO's sum: row 0 is row 1 with its β's.
        margins = torch.tensor([0.0 - 0.5, 0.0 - 0.0, -1.0 - 0.5])  # r_j - r_w for -1, -4, -6 (ref -1.5, -4, -5)
        expected = -torch.nn.functional.logsigmoid(-torch.logsumexp(torch.tensor([low] * 3) * margins, 0))
        assert out.losses[0].item() == pytest.approx(expected.item(), abs=1e-4)
