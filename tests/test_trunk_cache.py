"""The frozen-trunk cache is exact: cached forward = full forward (values and LoRA gradients), in training and ranking."""

import json

import numpy as np
import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model

from trl_dynamicpo import DynamicPOTrainer
from trl_dynamicpo.data import tokenize_prompt_answers
from trl_dynamicpo.evaluation import score_candidates
from trl_dynamicpo.packing import DataCollatorForMultiNegativePreference, answer_logps, pack_answers
from trl_dynamicpo.trunk_cache import (
    ROWS_FILE,
    STATES_FILE,
    TrunkCache,
    TrunkCacheMismatchError,
    check_trainable_parameters,
)

from .testing_utils import make_tiny_model, make_tokenizer, tiny_config


ROWS = [
    {
        "prompt": "the user watched heat fargo alien choose from jaws up cars coco answer:",
        "chosen": "jaws",
        "rejected": ["up cars", "coco", "rocky"],
        "candidates": ["up cars", "jaws", "coco", "rocky"],
    },
    {
        "prompt": "the user watched dune answer:",
        "chosen": "heat",
        "rejected": ["star wars", "toy story", "rocky"],
        "candidates": ["star wars", "toy story", "heat", "rocky"],
    },
    {
        "prompt": "the user has read big red one two three answer:",
        "chosen": "the matrix",
        "rejected": ["up", "brave", "moana"],
        "candidates": ["up", "brave", "the matrix", "moana"],
    },
]
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def _model(tokenizer, arch="llama", seed=0):
    return make_tiny_model(tokenizer, arch=arch, seed=seed, num_hidden_layers=4, attn_implementation="sdpa")


def _lora(model, layers=(2, 3), seed=1):
    torch.manual_seed(seed)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=LORA_TARGETS, layers_to_transform=list(layers)))
    with torch.no_grad():  # non-zero B so that the adapter changes the forward pass
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.1)
    return model


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_cached_forward_equals_full_forward_for_any_answer_subset(tokenizer, tmp_path, arch):
    model = _lora(_model(tokenizer, arch))
    cache = TrunkCache.build(model, tokenizer, ROWS, tmp_path / "c", num_trainable_layers=2, show_progress=False)
    assert cache.first_layer == 2 and cache.trainable_layers == [2, 3] and len(cache) == 3
    # Subsets in any order, as the collator draws them: the chosen answer first, then K negatives.
    rows, selected = [2, 0, 1], [[2, 3], [1, 0, 3], [0]]
    cached = cache.batch(rows, selected, pad_token_id=tokenizer.pad_token_id)
    prompts, answers = [], []
    for r, sel in zip(rows, selected):
        prompt_ids, answer_ids = tokenize_prompt_answers(tokenizer, ROWS[r]["prompt"], ROWS[r]["candidates"])
        prompts.append(prompt_ids)
        answers.append([answer_ids[a] for a in sel])
    full = pack_answers(prompts, answers, tokenizer.pad_token_id)
    assert torch.equal(cached["input_ids"], full["input_ids"])
    a, b = answer_logps(model, cached), answer_logps(model, full)
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    # The LoRA gradients are those of the full forward too.
    grads = []
    for batch in (cached, full):
        model.zero_grad()
        answer_logps(model, batch).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6), name


def test_bfloat16_storage_and_autocast_stay_close(tokenizer, tmp_path):
    model = _model(tokenizer)
    exact = TrunkCache.build(model, tokenizer, ROWS, tmp_path / "fp32", num_trainable_layers=2, show_progress=False)
    rounded = TrunkCache.build(
        model,
        tokenizer,
        ROWS,
        tmp_path / "bf16",
        num_trainable_layers=2,
        storage_dtype="bfloat16",
        autocast_dtype="bfloat16",
        show_progress=False,
    )
    assert (tmp_path / "bf16" / STATES_FILE).stat().st_size * 2 == (tmp_path / "fp32" / STATES_FILE).stat().st_size
    a = answer_logps(model, exact.batch([0, 1, 2]))
    b = answer_logps(model, rounded.batch([0, 1, 2]))
    assert 0 < (a - b).abs().max() < 0.1


def test_build_reuses_resumes_and_refuses_other_settings(tokenizer, tmp_path, monkeypatch):
    model = _model(tokenizer)
    # One row per forward pass, so that padding cannot change the last bits between the two builds.
    reference = TrunkCache.build(
        model, tokenizer, ROWS, tmp_path / "ref", num_trainable_layers=2, batch_size=1, show_progress=False
    )
    # An interrupted build: one chunk of one row written, plus a torn half-written line and stray state bytes.
    folder = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        _build_interrupted(model, tokenizer, folder, monkeypatch)
    lines = (folder / ROWS_FILE).read_text().splitlines()
    assert len(lines) == 1
    with open(folder / ROWS_FILE, "a") as f:
        f.write('{"prompt_ids": [1, 2')
    with open(folder / STATES_FILE, "ab") as f:
        f.write(b"\0" * 12)
    with pytest.raises(FileNotFoundError, match="incomplete"):
        TrunkCache(folder)
    resumed = TrunkCache.build(
        model, tokenizer, ROWS, folder, num_trainable_layers=2, batch_size=1, chunk_rows=1, show_progress=False
    )
    assert (folder / STATES_FILE).read_bytes() == (tmp_path / "ref" / STATES_FILE).read_bytes()
    assert [resumed.answer_ids(r) for r in range(3)] == [reference.answer_ids(r) for r in range(3)]
    # A complete cache with the same settings is reused as it is (not rewritten).
    mtime = (folder / STATES_FILE).stat().st_mtime_ns
    TrunkCache.build(model, tokenizer, ROWS, folder, num_trainable_layers=2, show_progress=False)
    assert (folder / STATES_FILE).stat().st_mtime_ns == mtime
    with pytest.raises(TrunkCacheMismatchError, match="first_layer"):
        TrunkCache.build(model, tokenizer, ROWS, folder, num_trainable_layers=1, show_progress=False)


def _build_interrupted(model, tokenizer, folder, monkeypatch):
    """A build killed by Ctrl-C in its second chunk (one row per batch and per chunk)."""
    import trl_dynamicpo.trunk_cache as trunk_cache

    original, calls = trunk_cache.compute_trunk_states, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(trunk_cache, "compute_trunk_states", interrupted)
    try:
        TrunkCache.build(
            model, tokenizer, ROWS, folder, num_trainable_layers=2, batch_size=1, chunk_rows=1, show_progress=False
        )
    finally:
        monkeypatch.setattr(trunk_cache, "compute_trunk_states", original)


def test_mismatches_name_what_differs(tokenizer, tmp_path):
    model = _model(tokenizer)
    cache = TrunkCache.build(model, tokenizer, ROWS, tmp_path / "c", num_trainable_layers=2, show_progress=False)
    cache.check_model(_lora(_model(tokenizer)))  # an adapter above the trunk does not change the trunk
    with pytest.raises(TrunkCacheMismatchError, match="trunk"):
        cache.check_model(_model(tokenizer, seed=5))
    prompt_ids, answer_ids = tokenize_prompt_answers(tokenizer, ROWS[1]["prompt"], ["heat", "fargo"])
    with pytest.raises(TrunkCacheMismatchError, match=r"Row 1, field `rejected\[0\]`"):
        cache.locate(1, prompt_ids, answer_ids, ["chosen", "rejected[0]"])
    with pytest.raises(TrunkCacheMismatchError, match="Row 0, field `prompt`"):
        cache.locate(0, prompt_ids, answer_ids[:1], ["chosen"])
    with pytest.raises(TrunkCacheMismatchError, match="layers_to_transform"):
        check_trainable_parameters(_lora(_model(tokenizer), layers=(1, 2, 3)), cache.first_layer)
    with pytest.raises(ValueError, match="num_trainable_layers"):
        TrunkCache.build(model, tokenizer, ROWS, tmp_path / "d", num_trainable_layers=5, show_progress=False)


def test_trainer_with_trunk_cache_trains_the_same_adapter(tokenizer, tmp_path):
    dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in ROWS] * 2)
    cache = TrunkCache.build(
        _model(tokenizer), tokenizer, dataset, tmp_path / "c", num_trainable_layers=2, show_progress=False
    )
    adapters = []
    for trunk_cache in (None, str(tmp_path / "c")):
        for loss_type, k in ((["dynamicpo"], 2), (["sft"], 0)):
            torch.manual_seed(0)
            trainer = DynamicPOTrainer(
                _model(tokenizer),
                args=tiny_config(
                    tmp_path / str(len(adapters)),
                    loss_type=loss_type,
                    num_negatives=k,
                    max_steps=2,
                    learning_rate=1e-2,
                    trunk_cache=trunk_cache,
                ),
                train_dataset=dataset,
                processing_class=tokenizer,
                peft_config=LoraConfig(r=4, target_modules=LORA_TARGETS, layers_to_transform=cache.trainable_layers),
            )
            trainer.train()
            losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
            weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora" in n}
            adapters.append((loss_type[0], losses, weights))
    for (name, losses, weights), (_, cached_losses, cached_weights) in zip(adapters[:2], adapters[2:]):
        assert np.allclose(losses, cached_losses, atol=1e-5), name
        for key in weights:
            assert torch.allclose(weights[key], cached_weights[key], atol=1e-5), (name, key)


def test_trainer_refuses_an_adapter_in_the_trunk(tokenizer, tmp_path):
    dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in ROWS])
    TrunkCache.build(
        _model(tokenizer), tokenizer, dataset, tmp_path / "c", num_trainable_layers=2, show_progress=False
    )
    with pytest.raises(TrunkCacheMismatchError, match="below the trunk cache"):
        DynamicPOTrainer(
            _model(tokenizer),
            args=tiny_config(tmp_path, trunk_cache=str(tmp_path / "c")),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=LoraConfig(r=4, target_modules=LORA_TARGETS),
        )
    other = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in ROWS[::-1]])
    with pytest.raises(TrunkCacheMismatchError, match="Row 0, field `prompt`"):
        DynamicPOTrainer(
            _model(tokenizer),
            args=tiny_config(tmp_path, trunk_cache=str(tmp_path / "c")),
            train_dataset=other,
            processing_class=tokenizer,
            peft_config=LoraConfig(r=4, target_modules=LORA_TARGETS, layers_to_transform=[2, 3]),
        )


def test_collator_draws_negatives_from_the_cache(tokenizer, tmp_path):
    cache = TrunkCache.build(
        _model(tokenizer), tokenizer, ROWS, tmp_path / "c", num_trainable_layers=2, show_progress=False
    )
    prompt_ids, answer_ids = tokenize_prompt_answers(tokenizer, ROWS[0]["prompt"], ROWS[0]["candidates"])
    example = {
        "prompt_ids": prompt_ids,
        "chosen_ids": answer_ids[1],
        "rejected_ids": [answer_ids[i] for i in (0, 2, 3)],
        "row_index": 0,
        "trunk_row": 0,
        "trunk_answers": [1, 0, 2, 3],
    }
    plain = DataCollatorForMultiNegativePreference(pad_token_id=tokenizer.pad_token_id, num_negatives=2, seed=3)
    cached = DataCollatorForMultiNegativePreference(
        pad_token_id=tokenizer.pad_token_id, num_negatives=2, seed=3, trunk_cache=cache
    )
    a, b = plain([example]), cached([example])
    for key in ("input_ids", "labels", "position_ids", "segment_ids", "answer_mask"):
        assert torch.equal(a[key], b[key]), key
    assert b["inputs_embeds"].shape == (*b["input_ids"].shape, 32)


def test_ranking_with_trunk_cache_equals_full_ranking(tokenizer, tmp_path):
    model = _lora(_model(tokenizer))
    cache = TrunkCache.build(model, tokenizer, ROWS, tmp_path / "c", num_trainable_layers=2, show_progress=False)
    prompts, candidates = [r["prompt"] for r in ROWS], [r["candidates"] for r in ROWS]
    full = score_candidates(model, tokenizer, prompts, candidates, batch_size=2, show_progress=False)
    cached = score_candidates(
        model, tokenizer, prompts, candidates, batch_size=2, show_progress=False, trunk_cache=cache
    )
    np.testing.assert_allclose(cached, full, atol=1e-4)
    with pytest.raises(TrunkCacheMismatchError, match="Row 0, field `prompt`"):
        score_candidates(model, tokenizer, prompts[::-1], candidates[::-1], show_progress=False, trunk_cache=cache)


def test_meta_records_fingerprints(tokenizer, tmp_path):
    TrunkCache.build(_model(tokenizer), tokenizer, ROWS, tmp_path / "c", num_trainable_layers=1, show_progress=False)
    meta = json.loads((tmp_path / "c" / "trunk_cache.json").read_text())
    assert meta["complete"] and meta["first_layer"] == 3 and meta["num_rows"] == 3
    assert len(meta["fingerprint"]) == 64 and len(meta["rows_fingerprint"]) == 64


def test_auto_autocast_records_the_precision_that_ran_and_emulated_bf16_warns(tokenizer, tmp_path, monkeypatch):
    from trl_dynamicpo import device, trunk_cache

    model = _model(tokenizer)
    for fast, expected in ((False, None), (True, "bfloat16")):
        monkeypatch.setattr(trunk_cache, "fast_bf16", lambda fast=fast: fast)
        monkeypatch.setattr(device, "cpu_has_native_bf16", lambda fast=fast: fast)
        cache = TrunkCache.build(
            model,
            tokenizer,
            ROWS,
            tmp_path / f"auto-{fast}",
            num_trainable_layers=2,
            autocast_dtype="auto",
            show_progress=False,
        )
        meta = json.loads((tmp_path / f"auto-{fast}" / trunk_cache.META_FILE).read_text())
        assert meta["autocast_dtype"] == expected
        assert len(cache) == len(ROWS)
    # Asked for explicitly on a CPU that would emulate it: built as asked, with a warning that says why it is slow.
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="without native bf16"):
        TrunkCache.build(
            model,
            tokenizer,
            ROWS,
            tmp_path / "bf16",
            num_trainable_layers=2,
            autocast_dtype="bfloat16",
            show_progress=False,
        )
