import pytest
import torch
from peft import LoraConfig, get_peft_model

from trl_dynamicpo.packing import (
    DataCollatorForMultiNegativePreference,
    answer_logps,
    ensure_fused_lm_head,
    pack_answers,
    packed_attention_mask,
)

from .testing_utils import make_tiny_model, make_tokenizer


PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [15]]
ANSWERS = [
    [[20, 21, 3], [22, 3], [23, 24, 25, 3], [26, 3]],
    [[27, 3], [28, 29, 3]],
    [[30, 31, 32, 3], [33, 3], [34, 3]],
]


def naive_logps(model, prompts, answers):
    """One plain forward per (prompt, answer) with full logits and log_softmax: the reference."""
    out = torch.zeros(len(prompts), max(len(a) for a in answers))
    for b, (prompt, row) in enumerate(zip(prompts, answers)):
        for a, answer in enumerate(row):
            ids = torch.tensor([prompt + answer])
            logprobs = model(input_ids=ids).logits.float().log_softmax(-1)[0]
            out[b, a] = sum(logprobs[len(prompt) - 1 + t, tok] for t, tok in enumerate(answer))
    return out


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def test_pack_answers_layout():
    batch = pack_answers([[5, 6, 7]], [[[8, 2], [9, 2]]], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 2, 7, 9, 2]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 2, 3, 4]]
    assert batch["segment_ids"].tolist() == [[0, 0, 1, 1, 1, 2, 2, 2]]
    assert batch["labels"].tolist() == [[-100, -100, -100, 8, 2, -100, 9, 2]]
    assert batch["answer_mask"].tolist() == [[True, True]]


def test_packed_attention_mask_blocks_other_answers():
    batch = pack_answers([[5, 6, 7]], [[[8, 2], [9]]], pad_token_id=0, pad_to_multiple_of=8)
    allowed = packed_attention_mask(batch["segment_ids"], torch.float32)[0, 0] == 0
    # Token "9" (index 6) sees the prefix (0, 1), its own segment (5, 6), and not answer 0 (2, 3, 4).
    assert allowed[6].nonzero().flatten().tolist() == [0, 1, 5, 6]
    # Padding queries see only themselves, so that no mask row is fully masked.
    assert allowed[7].nonzero().flatten().tolist() == [7]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_and_concatenated_match_naive(tokenizer, arch, attn):
    model = make_tiny_model(tokenizer, arch=arch, attn_implementation=attn)
    ensure_fused_lm_head(model)
    packed = answer_logps(model, pack_answers(PROMPTS, ANSWERS, tokenizer.pad_token_id))
    concatenated = answer_logps(model, pack_answers(PROMPTS, ANSWERS, tokenizer.pad_token_id, layout="concatenated"))
    with torch.no_grad():
        reference = naive_logps(model, PROMPTS, ANSWERS)
    mask = pack_answers(PROMPTS, ANSWERS, 0)["answer_mask"]
    torch.testing.assert_close(packed, reference, atol=1e-4, rtol=0)
    torch.testing.assert_close(concatenated, reference, atol=1e-4, rtol=0)
    assert (packed[~mask] == 0).all() and (reference[mask] < 0).all()


def test_token_counts(tokenizer):
    model = make_tiny_model(tokenizer)
    ensure_fused_lm_head(model)
    for layout in ("packed", "concatenated"):
        _, counts = answer_logps(model, pack_answers(PROMPTS, ANSWERS, 0, layout=layout), return_token_counts=True)
        assert counts.tolist() == [[3, 2, 4, 2], [2, 3, 0, 0], [4, 2, 2, 0]]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_lora_gradients_packed_equal_concatenated(tokenizer, attn):
    grads = {}
    for layout in ("packed", "concatenated"):
        model = make_tiny_model(tokenizer, attn_implementation=attn)
        model = get_peft_model(
            model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
        )
        ensure_fused_lm_head(model)
        logps = answer_logps(model, pack_answers(PROMPTS, ANSWERS, 0, layout=layout))
        # A loss that weighs every answer differently, so that a mix-up between answers would show.
        weights = torch.arange(logps.numel(), dtype=logps.dtype).view_as(logps) / 10 - 0.3
        (logps * weights).sum().backward()
        grads[layout] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    for name, grad in grads["packed"].items():
        other = grads["concatenated"][name]
        rel = (grad - other).norm() / other.norm().clamp(min=1e-12)
        assert rel < 1e-4, (name, rel.item())


def test_flash_attention_refused_for_packed(tokenizer):
    model = make_tiny_model(tokenizer)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="concatenated"):
        answer_logps(model, pack_answers(PROMPTS, ANSWERS, 0))


def test_pack_answers_rejects_empty_prompt():
    with pytest.raises(ValueError, match="Row 1: the prompt has no tokens"):
        pack_answers([[1], []], [[[2]], [[3]]], 0)


def _examples(k=6):
    return [
        {
            "prompt_ids": [1, 2, 3],
            "chosen_ids": [4, 3],
            "rejected_ids": [[10 + j, 3] for j in range(k)],
            "row_index": i,
            "ref_chosen_logps": -1.0 - i,
            "ref_rejected_logps": [-10.0 - j for j in range(k)],
            "rejected_scores": [float(j) for j in range(k)],
        }
        for i in range(3)
    ]


def test_collator_samples_negatives_per_epoch_and_keeps_alignment():
    collator = DataCollatorForMultiNegativePreference(pad_token_id=0, num_negatives=3, seed=7)
    first = collator(_examples())
    again = collator(_examples())
    assert torch.equal(first["input_ids"], again["input_ids"])  # same seed, epoch, rows -> same draw
    assert first["answer_mask"].shape == (3, 4) and first["negative_mask"].all()
    # The sampled negatives, their reference log-probs and their scores stay aligned: negative 10+j has ref -10-j.
    for b in range(3):
        labels = first["labels"][b]
        negatives = [tok for tok in labels.tolist() if tok >= 10]
        assert first["ref_logps"][b, 1:].tolist() == [-10.0 - (tok - 10) for tok in negatives]
        assert first["rejected_scores"][b].tolist() == [float(tok - 10) for tok in negatives]
        assert first["ref_logps"][b, 0].item() == -1.0 - b
    draws = set()
    for epoch in range(6):
        collator.epoch = epoch
        labels = collator(_examples())["labels"][0].tolist()
        draws.add(tuple(tok for tok in labels if tok >= 10))
    assert len(draws) > 1  # re-drawn across epochs


def test_collator_masks_missing_negatives():
    examples = _examples(k=6)
    examples[1]["rejected_ids"] = examples[1]["rejected_ids"][:2]
    examples[1]["ref_rejected_logps"] = examples[1]["ref_rejected_logps"][:2]
    examples[1]["rejected_scores"] = examples[1]["rejected_scores"][:2]
    batch = DataCollatorForMultiNegativePreference(pad_token_id=0, num_negatives=4)(examples)
    assert batch["negative_mask"].sum(dim=1).tolist() == [4, 2, 4]
    assert batch["ref_logps"][1].tolist() == [-2.0, -10.0, -11.0, 0.0, 0.0]


def test_packed_block_mask_equals_the_dense_mask():
    """FlexAttention with the block mask of the packing segments attends exactly where the dense float mask lets SDPA
    attend (padding queries included), and the packed layout scores answers the same under both."""
    from torch.nn.attention.flex_attention import flex_attention

    from trl_dynamicpo.packing import packed_block_mask

    batch = pack_answers(PROMPTS, ANSWERS, pad_token_id=0)
    segment_ids = batch["segment_ids"]
    torch.manual_seed(0)
    query, key, value = (torch.randn(segment_ids.size(0), 2, segment_ids.size(1), 8) for _ in range(3))
    dense = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=packed_attention_mask(segment_ids, torch.float32)
    )
    with torch.compiler.set_stance("force_eager"):  # eager FlexAttention: no compiler needed on CPU
        flex = flex_attention(query, key, value, block_mask=packed_block_mask(segment_ids))
    torch.testing.assert_close(flex, dense, atol=1e-5, rtol=1e-5)


def test_packed_layout_under_flex_attention_matches_sdpa(tokenizer):
    model = make_tiny_model(tokenizer, attn_implementation="sdpa")
    batch = pack_answers(PROMPTS, ANSWERS, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad(), torch.compiler.set_stance("force_eager"):  # no backward: FlexAttention has none on CPU
        expected = answer_logps(model, batch)
        model.set_attn_implementation("flex_attention")
        torch.testing.assert_close(answer_logps(model, batch), expected, atol=1e-5, rtol=1e-5)
