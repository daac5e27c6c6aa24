"""Hybrid item tokens: marking, exact injection (cached = uncached, packed = a naive per-answer forward), truncation and
rotation, gradients, and a save / reload round trip."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel, get_peft_model

from trl_dynamicpo import DynamicPOTrainer
from trl_dynamicpo.evaluation import generate_answers, score_candidates, score_over_orders
from trl_dynamicpo.evaluation.orders import reorder_rows
from trl_dynamicpo.item_tokens import (
    ITEM_TABLE_FILE,
    ItemEmbeddingTable,
    ItemTokenProjector,
    ItemTokens,
    attach_item_tokens,
    get_item_tokens,
    injecting,
    item_token_id,
    load_item_tokens,
    mark_items,
    save_item_tokens,
)
from trl_dynamicpo.trunk_cache import TrunkCache

from .testing_utils import make_tiny_model, make_tokenizer, tiny_config


TITLES = ["heat", "fargo", "alien", "jaws", "up", "cars", "coco", "dune", "rocky", "psycho"]
DIM = 6
ROWS = [
    {
        "prompt": "the user watched\nheat\nfargo\nalien\nchoose from\njaws\nup\ncars\ncoco\nanswer:",
        "history": ["heat", "fargo", "alien"],
        "candidates": ["jaws", "up", "cars", "coco"],
        "chosen": "jaws",
        "rejected": ["up", "cars", "coco"],
    },
    {
        "prompt": "the user watched\ndune\nchoose from\nrocky\npsycho\nheat\nanswer:",
        "history": ["dune"],
        "candidates": ["rocky", "psycho", "heat"],
        "chosen": "psycho",
        "rejected": ["rocky", "heat"],
    },
]
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


@pytest.fixture(scope="module")
def tokenizer():
    tokenizer = make_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<item>"]})
    return tokenizer


@pytest.fixture(scope="module")
def table():
    rng = np.random.default_rng(0)
    return ItemEmbeddingTable(TITLES, rng.normal(size=(len(TITLES), DIM)).astype(np.float32), source="test")


def _states():
    rng = np.random.default_rng(1)
    return rng.normal(size=(len(ROWS), DIM)).astype(np.float32).tolist()


def _model(tokenizer, layers=4):
    return make_tiny_model(tokenizer, num_hidden_layers=layers, attn_implementation="sdpa")


def _projector(tokenizer, layer, features="item", seed=2):
    projector = ItemTokenProjector(
        DIM * (2 if features == "item+state" else 1),
        32,
        item_token_id(tokenizer, "<item>"),
        layer,
        item_token="<item>",
        features=features,
        projector_hidden=16,
    )
    torch.manual_seed(seed)
    with torch.no_grad():  # non-zero output, so that the injection changes the scores
        projector.net[2].weight.normal_(0.0, 0.5)
    return projector


def _write_table(folder, table):
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table({"item_id": [str(i) for i in range(len(table))], "title": table.titles,
                  "embedding": table.embeddings.tolist()}),
        folder / ITEM_TABLE_FILE,
    )  # fmt: skip
    return folder


def _naive_scores(model, tokenizer, projector, prompt, candidates, table, state=None, max_prompt_length=None):
    """One unpacked forward per candidate from `inputs_embeds`, the projected vectors added to the embeddings of the
    item tokens (layer 0), the titles read back from the marked prompt's lines."""
    marked, titles = mark_items(prompt, table, "<item>")
    prompt_ids = tokenizer(marked).input_ids
    if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
        prompt_ids = prompt_ids[-max_prompt_length:]
    positions = [i for i, t in enumerate(prompt_ids) if t == projector.item_token_id]
    titles = titles[len(titles) - len(positions) :]
    vectors = torch.from_numpy(table.lookup(titles))
    if projector.config["features"] == "item+state":
        vectors = torch.cat([vectors, vectors * torch.tensor(state)], dim=1)
    scores = []
    with torch.no_grad():
        delta = projector.net(vectors)
        for title in candidates:
            answer = tokenizer(" " + title).input_ids + [tokenizer.eos_token_id]
            ids = torch.tensor([prompt_ids + answer])
            embeds = model.get_input_embeddings()(ids).clone()
            embeds[0, positions] += delta
            logits = model(inputs_embeds=embeds).logits.log_softmax(-1)[0]
            start = len(prompt_ids)
            scores.append(sum(float(logits[start - 1 + j, t]) for j, t in enumerate(answer)))
    return np.array(scores)


def test_mark_items_marks_title_lines_only(table):
    marked, titles = mark_items(ROWS[0]["prompt"], table, "<item>")
    assert titles == ["heat", "fargo", "alien", "jaws", "up", "cars", "coco"]
    assert marked.split("\n")[0] == "the user watched"  # template text is left alone
    assert marked.split("\n")[1:4] == ["heat<item>", "fargo<item>", "alien<item>"]
    with pytest.raises(ValueError, match="already contains the item token"):
        mark_items(marked, table, "<item>")


def test_unknown_title_names_the_row(table):
    tokens = ItemTokens(table, "<item>")
    with pytest.raises(KeyError, match="Row 3: item 'nope'"):
        tokens.features_for(["heat", "nope"], row=3)


def test_zero_initialized_projector_changes_nothing(tokenizer, table):
    model = _model(tokenizer)
    plain = score_candidates(model, tokenizer, [r["prompt"] for r in ROWS], [r["candidates"] for r in ROWS])
    projector = ItemTokenProjector(DIM, 32, item_token_id(tokenizer, "<item>"), 2, item_token="<item>")
    attach_item_tokens(model, projector)
    tokens = ItemTokens.for_model(model, table)
    hybrid = score_candidates(
        model, tokenizer, [r["prompt"] for r in ROWS], [r["candidates"] for r in ROWS], item_tokens=tokens
    )
    # The marker token itself is new context, so only the vectors' contribution is zero: compare against the marked
    # prompts scored without vectors.
    marked = tokens.mark([r["prompt"] for r in ROWS])[0]
    model.item_token_projector._handle.remove()
    without = score_candidates(model, tokenizer, marked, [r["candidates"] for r in ROWS])
    np.testing.assert_allclose(hybrid, without, atol=1e-6)
    assert not np.allclose(plain, hybrid)  # the marked prompt is another prompt


@pytest.mark.parametrize("features", ["item", "item+state"])
def test_packed_injection_equals_naive_forward_with_truncation_and_rotation(tokenizer, table, features):
    model = _model(tokenizer)
    projector = attach_item_tokens(model, _projector(tokenizer, layer=0, features=features))
    tokens = ItemTokens.for_model(model, table)
    prompts, candidates = [r["prompt"] for r in ROWS], [r["candidates"] for r in ROWS]
    states = _states()
    # 12 tokens keep only the end of row 0's prompt: its history markers are cut, the candidates' stay.
    per_order = score_over_orders(
        model, tokenizer, prompts, candidates, 2, item_tokens=tokens, user_states=states, max_prompt_length=12,
        show_progress=False,
    )  # fmt: skip
    rotated_prompts, rotated_candidates = reorder_rows(prompts, candidates, 1, 2)
    for i in range(len(ROWS)):
        expected = _naive_scores(
            model, tokenizer, projector, prompts[i], candidates[i], table, states[i], max_prompt_length=12
        )
        np.testing.assert_allclose(per_order[0, i, : len(candidates[i])], expected, atol=1e-4)
        rotated = _naive_scores(
            model, tokenizer, projector, rotated_prompts[i], rotated_candidates[i], table, states[i], 12
        )
        back = {title: s for title, s in zip(rotated_candidates[i], rotated)}
        np.testing.assert_allclose(per_order[1, i, : len(candidates[i])], [back[c] for c in candidates[i]], atol=1e-4)


def test_cached_equals_uncached(tokenizer, table, tmp_path):
    model = _model(tokenizer)
    projector = attach_item_tokens(model, _projector(tokenizer, layer=2))
    tokens = ItemTokens.for_model(model, table)
    prompts, candidates = [r["prompt"] for r in ROWS], [r["candidates"] for r in ROWS]
    rows = Dataset.from_dict({"prompt": prompts, "candidates": candidates})
    cache = TrunkCache.build(
        model, tokenizer, rows, tmp_path / "cache", num_trainable_layers=2, item_tokens=tokens, show_progress=False
    )
    full = score_candidates(model, tokenizer, prompts, candidates, item_tokens=tokens, show_progress=False)
    cached = score_candidates(
        model, tokenizer, prompts, candidates, item_tokens=tokens, trunk_cache=cache, show_progress=False
    )
    np.testing.assert_allclose(cached, full, atol=1e-4)
    projector.net[2].weight.data.zero_()
    projector.net[2].bias.data.zero_()
    assert not np.allclose(score_candidates(model, tokenizer, prompts, candidates, item_tokens=tokens), full)


def test_trainer_trains_projector_with_trunk_cache_and_round_trips(tokenizer, table, tmp_path):
    folder = _write_table(tmp_path / "data", table)
    model = _model(tokenizer)
    args = tiny_config(tmp_path, loss_type=["dynamicpo"], num_negatives=2, max_steps=3, learning_rate=1e-2)
    args.item_embeddings = str(folder)
    args.item_token = "<item>"
    args.precompute_ref_log_probs = True
    rows = Dataset.from_list(ROWS * 2)
    tokens = ItemTokens(table, "<item>", token_id=item_token_id(tokenizer, "<item>"))
    cache = TrunkCache.build(
        model, tokenizer, rows, tmp_path / "cache", num_trainable_layers=2, item_tokens=tokens, show_progress=False
    )
    args.trunk_cache = str(cache.cache_dir)
    trainer = DynamicPOTrainer(
        model,
        args=args,
        train_dataset=rows,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, target_modules=LORA_TARGETS, layers_to_transform=[2, 3]),
    )
    projector = get_item_tokens(trainer.model)
    assert projector.layer == 2 and projector.config["item_token"] == "<item>"
    before = projector.net[2].weight.detach().clone()
    trainer.train()
    assert not torch.equal(before, projector.net[2].weight.detach())  # the projector learned
    trainer.save_model(str(tmp_path / "adapter"))
    prompts, candidates = [r["prompt"] for r in ROWS], [r["candidates"] for r in ROWS]
    tokens = ItemTokens.for_model(trainer.model, table)
    expected = score_candidates(trainer.model, tokenizer, prompts, candidates, item_tokens=tokens)

    reloaded = PeftModel.from_pretrained(_model(tokenizer), str(tmp_path / "adapter"))
    assert load_item_tokens(reloaded, tmp_path / "adapter") is not None
    again = score_candidates(
        reloaded, tokenizer, prompts, candidates, item_tokens=ItemTokens.for_model(reloaded, table)
    )
    np.testing.assert_allclose(again, expected, atol=1e-5)


def test_projector_gets_gradient_without_cache(tokenizer, table, tmp_path):
    folder = _write_table(tmp_path / "data", table)
    model = get_peft_model(_model(tokenizer), LoraConfig(r=4, target_modules=LORA_TARGETS, layers_to_transform=[3]))
    args = tiny_config(tmp_path, loss_type=["sft"], num_negatives=0, max_steps=1)
    args.item_embeddings, args.item_token, args.item_features = str(folder), "<item>", "item+state"
    rows = Dataset.from_list([{**r, "embedding": s} for r, s in zip(ROWS, _states())])
    trainer = DynamicPOTrainer(model, args=args, train_dataset=rows, processing_class=tokenizer)
    projector = get_item_tokens(trainer.model)
    assert projector.layer == 3  # the lowest layer the adapter trains
    batch = next(iter(trainer.get_train_dataloader()))
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    assert projector.net[2].weight.grad is not None and projector.net[2].weight.grad.abs().sum() > 0
    assert batch["item_features"].shape[-1] == 2 * DIM


def test_save_without_projector_writes_nothing(tokenizer, tmp_path):
    assert save_item_tokens(_model(tokenizer), tmp_path) is False
    assert load_item_tokens(_model(tokenizer), tmp_path) is None


def test_generation_injects_vectors_in_the_prefill(tokenizer, table):
    model = _model(tokenizer)
    projector = attach_item_tokens(model, _projector(tokenizer, layer=0, seed=5))
    tokens = ItemTokens.for_model(model, table)
    prompts = [r["prompt"] for r in ROWS]
    answers = generate_answers(model, tokenizer, prompts, item_tokens=tokens, max_new_tokens=1, show_progress=False)
    for prompt, answer in zip(prompts, answers):
        # Naive: the first greedy token from the embeddings with the vectors added at the item tokens.
        marked, titles = mark_items(prompt, table, "<item>")
        ids = tokenizer(marked).input_ids
        positions = [i for i, t in enumerate(ids) if t == projector.item_token_id]
        with torch.no_grad():
            embeds = model.get_input_embeddings()(torch.tensor([ids])).clone()
            embeds[0, positions] += projector.net(torch.from_numpy(table.lookup(titles)))
            first = int(model(inputs_embeds=embeds).logits[0, -1].argmax())
        assert answer == tokenizer.decode([first], skip_special_tokens=True)


def test_load_recommender_restores_the_projector(tokenizer, table, tmp_path):
    from trl_dynamicpo.hub import load_recommender

    base = _model(tokenizer)
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    model = get_peft_model(base, LoraConfig(r=4, target_modules=LORA_TARGETS, layers_to_transform=[2, 3]))
    attach_item_tokens(model, _projector(tokenizer, layer=2, features="item+state"))
    model.save_pretrained(tmp_path / "adapter")
    assert save_item_tokens(model, tmp_path / "adapter")
    prompts, candidates = [r["prompt"] for r in ROWS], [r["candidates"] for r in ROWS]
    expected = score_candidates(
        model, tokenizer, prompts, candidates, item_tokens=ItemTokens.for_model(model, table), user_states=_states()
    )
    loaded, loaded_tokenizer = load_recommender(tmp_path / "adapter", base_model=str(tmp_path / "base"))
    assert get_item_tokens(loaded).config["features"] == "item+state"
    again = score_candidates(
        loaded, loaded_tokenizer, prompts, candidates, item_tokens=ItemTokens.for_model(loaded, table),
        user_states=_states(),
    )  # fmt: skip
    np.testing.assert_allclose(again, expected, atol=1e-5)


def test_evaluate_recommender_scores_and_generates_with_the_item_vectors(tokenizer, table):
    """Both protocols of `evaluate_recommender` inject the vectors (with the rows' `embedding` as the user state) and
    give what `score_candidates` / `generate_answers` give when called with the item tokens directly."""
    from trl_dynamicpo.evaluation import evaluate_recommender, ranking_metrics, target_indices

    model = _model(tokenizer)
    attach_item_tokens(model, _projector(tokenizer, layer=2, features="item+state"))
    tokens = ItemTokens.for_model(model, table)
    rows = [{**r, "target": r["chosen"], "embedding": state} for r, state in zip(ROWS, _states())]
    prompts, candidates = [r["prompt"] for r in rows], [r["candidates"] for r in rows]
    expected = score_candidates(model, tokenizer, prompts, candidates, item_tokens=tokens, user_states=_states())
    results = evaluate_recommender(
        model, tokenizer, Dataset.from_list(rows), item_tokens=tokens, return_scores=True, max_new_tokens=2,
        bootstrap_resamples=0,
    )  # fmt: skip
    np.testing.assert_allclose(results["ranking/scores"], expected, atol=1e-5)
    target = target_indices(candidates, [r["target"] for r in rows])
    assert results["ranking/hr@1"] == ranking_metrics(expected, target)["hr@1"]
    answers = generate_answers(
        model, tokenizer, prompts, item_tokens=tokens, user_states=_states(), max_new_tokens=2, show_progress=False
    )
    assert results["generation/outputs"] == answers
    plain = score_candidates(model, tokenizer, prompts, candidates)  # unmarked prompts: other scores
    assert not np.allclose(plain, expected, atol=1e-3)
    without_states = [{k: v for k, v in r.items() if k != "embedding"} for r in rows]
    with pytest.raises(ValueError, match="embedding"):
        evaluate_recommender(model, tokenizer, without_states, item_tokens=tokens, bootstrap_resamples=0)


def test_curriculum_rows_without_vectors_score_like_the_text_only_prompt(tokenizer, table):
    """`item_weight` 0 on a row: its markers stay in the prompt but receive no vector (a zero projector's scores);
    1: the full vectors."""
    from trl_dynamicpo.data import tokenize_prompt_answers
    from trl_dynamicpo.packing import answer_logps, pack_answers

    model = _model(tokenizer)
    projector = attach_item_tokens(model, _projector(tokenizer, layer=2))
    tokens = ItemTokens.for_model(model, table)

    def logps(weights):
        prompts, titles = tokens.mark([r["prompt"] for r in ROWS])
        ids = [tokenize_prompt_answers(tokenizer, p, r["candidates"]) for p, r in zip(prompts, ROWS)]
        batch = pack_answers([i[0] for i in ids], [i[1] for i in ids], pad_token_id=tokenizer.pad_token_id)
        rows = [{"prompt_ids": i[0], "item_titles": t} for i, t in zip(ids, titles)]
        batch["item_features"], batch["item_mask"] = tokens.batch_features(rows)
        if weights is not None:
            batch["item_weight"] = torch.tensor(weights)
        with torch.no_grad(), injecting(model, batch):
            return answer_logps(model.eval(), batch)

    full, mixed = logps(None), logps([1.0, 0.0])
    torch.testing.assert_close(mixed[0], full[0])
    projector.net[2].weight.data.zero_()
    projector.net[2].bias.data.zero_()
    torch.testing.assert_close(mixed[1], logps(None)[1])  # row 1 as with no vectors at all
    assert not torch.allclose(full[1], mixed[1], atol=1e-4)


def test_curriculum_share_rises_and_only_adds_rows(tokenizer, table, tmp_path):
    from trl_dynamicpo.packing import DataCollatorForMultiNegativePreference

    collator = DataCollatorForMultiNegativePreference(pad_token_id=0, seed=3)
    draws = [collator.row_draw(i) for i in range(200)]
    assert draws == [collator.row_draw(i) for i in range(200)]  # fixed per row
    kept = {share: {i for i, u in enumerate(draws) if u < share} for share in (0.0, 0.3, 0.6, 1.0)}
    assert kept[0.0] == set() and kept[1.0] == set(range(200))
    assert kept[0.3] < kept[0.6] and 40 < len(kept[0.3]) < 80  # rows join, none leaves

    folder = _write_table(tmp_path / "data", table)
    args = tiny_config(tmp_path, loss_type=["dmpo"], num_negatives=2, max_steps=6, learning_rate=1e-2)
    args.item_embeddings, args.item_token, args.item_token_curriculum = str(folder), "<item>", 0.5
    trainer = DynamicPOTrainer(
        _model(tokenizer),
        args=args,
        train_dataset=Dataset.from_list(ROWS * 4),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, target_modules=LORA_TARGETS, layers_to_transform=[2, 3]),
    )
    seen = []
    original = trainer.data_collator.torch_call

    def recording(examples):
        seen.append(trainer.data_collator.item_share)
        return original(examples)

    trainer.data_collator.torch_call = recording
    trainer.train()
    # 6 steps, ramp over the first half (3 steps): the share after k steps is k / 3. The data loader collates a batch
    # ahead of its step, so which share a batch sees lags by up to a step; the shares rise from 0 and reach 1.
    assert seen[0] == 0.0 and seen == sorted(seen) and seen[-1] == 1.0
    assert {round(3 * share, 9) for share in seen} <= {0, 1, 2, 3} and len(set(seen)) >= 3
    assert trainer.data_collator.item_share == 1.0


def test_curriculum_fraction_is_validated(tmp_path):
    with pytest.raises(ValueError, match="item_token_curriculum"):
        tiny_config(tmp_path, item_token_curriculum=1.5)
