"""Tests of `recipes/run.py` and its schema `recipes/recipe_config.py`: strict recipe loading, command-line overrides,
stage skipping / reuse / resume, a tiny end-to-end run (data -> SFT -> DynamicPO -> evaluation -> publish), a failed
push, and a 2-process run whose logged token counts must be summed over both processes.

The tiny runs use a random 2-layer Llama and a word-level tokenizer (`tests/testing_utils.py`) saved to a temporary
folder, and MovieLens-100K-format raw files written by the test (9 interactions for each of 8 users on 24 titled
movies), built by `dataset_builders` inside the run.
"""

import dataclasses
import importlib.util
import json
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from recipes.recipe_config import (
    MANAGED,
    SECTIONS,
    STAGES,
    RecipeArguments,
    RecipeError,
    format_help,
    load_recipe,
    parse_overrides,
)
from recipes.run import main, parse_command_line

from .testing_utils import make_tiny_model, make_tokenizer


REPO = Path(__file__).resolve().parents[1]
RUN_PY = REPO / "recipes" / "run.py"
BUILD_OPTIONS = {"num_candidates": 6, "max_history": 4, "progress": False, "verbose": False}
TITLES = (
    "heat fargo alien titanic matrix jaws rocky psycho vertigo casablanca up cars coco brave frozen moana dune rush "
    "drive her babe big hook red"
).split()


def write_raw_movielens(folder: Path, users: int = 8, per_user: int = 9, seed: int = 0) -> Path:
    """MovieLens-100K-format `u.item` / `u.data` (Latin-1, `|` and tab separated) for a tiny catalog."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    items = [
        f"{i}|{t.capitalize()} ({1990 + i % 8})|01-Jan-1995||http://x|" + "|".join("0" * 19)
        for i, t in enumerate(TITLES, 1)
    ]
    (folder / "u.item").write_text("\n".join(items) + "\n", encoding="latin-1")
    rows, timestamp = [], 880_000_000
    for user in range(1, users + 1):
        for item in rng.sample(range(1, len(TITLES) + 1), per_user):
            timestamp += rng.randint(1, 1000)
            rows.append(f"{user}\t{item}\t{rng.randint(1, 5)}\t{timestamp}")
    (folder / "u.data").write_text("\n".join(rows) + "\n", encoding="latin-1")
    return folder


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    """(root, raw folder, model folder): raw data and a tiny model whose vocabulary covers every prompt word."""
    from dataset_builders import build_dataset

    root = tmp_path_factory.mktemp("recipes")
    raw = write_raw_movielens(root / "raw")
    built = build_dataset("movielens-100k", root / "vocab-build", raw_dir=str(raw), **BUILD_OPTIONS)
    words = set()
    for split in built.values():
        for row in split:
            words.update(row["prompt"].split())
            for title in row["candidates"]:
                words.update(title.split())
    tokenizer = make_tokenizer(sorted(words))
    model = make_tiny_model(tokenizer)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root, raw, root / "model"


def tiny_recipe(folder: Path, model_dir: Path, raw_name: str = "raw", **sections) -> Path:
    """A recipe for the tiny world, written next to the raw folder (so `raw_dir: raw` is relative to it)."""
    train = {
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "learning_rate": 0.01,
        "warmup_steps": 0,
        "logging_steps": 1,
        "save_steps": 1,
        "save_total_limit": None,
        "lr_scheduler_type": "cosine",
        "max_grad_norm": 0.3,
        "optim": "adamw_torch",
        "max_length": 512,
    }
    recipe = {
        "output_dir": str(folder / "out"),
        "seed": 0,
        "model": {
            "model_name_or_path": str(model_dir),
            "attn_implementation": "eager",
            "lora_r": 8,
            "lora_alpha": 32,
            "lora_dropout": 0.1,
            "lora_target_modules": ["q_proj", "v_proj"],
        },
        "data": {"dataset_name": "movielens-100k", "raw_dir": raw_name, "build_options": dict(BUILD_OPTIONS)},
        "sft": dict(train),
        "preference": {**train, "num_negatives": 3},
        "evaluation": {"max_samples": 4, "generation_max_samples": 2, "max_new_tokens": 3, "batch_size": 2},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            recipe.setdefault(key, {}).update(value)
        else:
            recipe[key] = value
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def summary(output_dir) -> dict[str, str]:
    data = json.loads((Path(output_dir) / "run_summary.json").read_text())
    return {record["stage"]: record["status"] for record in data["stages"]}


def done_ids(output_dir) -> dict[str, str]:
    out = {}
    for stage, folder in zip(STAGES, ("data", "sft", "preference", "evaluate", "final")):
        path = Path(output_dir) / folder / "DONE.json"
        if path.exists():
            out[stage] = json.loads(path.read_text())["id"]
    return out


def copy_run(folder: Path, target: Path, **changes) -> Path:
    """Copy a finished run; its recipe keeps the same (absolute) raw folder, so that no stage looks changed."""
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns("raw"))
    recipe = yaml.safe_load((folder / "recipe.yaml").read_text())
    recipe["output_dir"] = str(target / "out")
    recipe["data"]["raw_dir"] = str((folder / "raw").resolve())
    recipe.update(changes)
    path = target / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


# ----------------------------------------------------------------------------------------------------------------------
# Recipe loading
# ----------------------------------------------------------------------------------------------------------------------
def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


MINIMAL = {"model": {"model_name_or_path": "some/model"}, "data": {"dataset_id_or_path": "some/dataset"}}


def test_unknown_key_fails_before_any_work_naming_key_and_file(tmp_path, capsys):
    out = tmp_path / "never-created"
    path = write_yaml(
        tmp_path / "bad.yaml", {**MINIMAL, "output_dir": str(out), "preference": {"max_step": 5, "beta": 1.0}}
    )
    with pytest.raises(RecipeError) as excinfo:
        load_recipe(path)
    message = str(excinfo.value)
    assert str(path) in message and "'preference.max_step'" in message and "'preference.max_steps'" in message

    # Through the command line: exit code 2, the same message, and nothing was created.
    assert main([str(path)]) == 2
    assert "preference.max_step" in capsys.readouterr().err
    assert not out.exists()

    for recipe, key in [
        ({**MINIMAL, "modle": {"model_name_or_path": "x"}}, "'modle'"),
        (
            {
                "model": MINIMAL["model"],
                "data": {"dataset_name": "movielens-100k", "build_options": {"max_histroy": 3}},
            },
            "'data.build_options.max_histroy'",
        ),
        ({**MINIMAL, "sft": {"not_a_training_arg": 1}}, "'sft.not_a_training_arg'"),
    ]:
        path = write_yaml(tmp_path / "bad2.yaml", recipe)
        with pytest.raises(RecipeError) as excinfo:
            load_recipe(path)
        assert str(path) in str(excinfo.value) and key in str(excinfo.value)


@pytest.mark.parametrize(
    "section, value, expected",
    [
        ({"sft": {"learning_rate": "fast"}}, "sft.learning_rate", "float"),
        ({"sft": {"max_steps": 2.5}}, "sft.max_steps", "int"),
        ({"model": {"model_name_or_path": "m", "lora_target_modules": [1, 2]}}, "model.lora_target_modules[0]", "str"),
        ({"publish": {"push_to_hub": "yes"}}, "publish.push_to_hub", "bool"),
        ({"evaluation": {"models": ["sft", "teacher"]}}, "evaluation.models", "one of"),
        ({"preference": {"loss_type": ["hinge"]}}, "preference", "Unknown loss_type"),
        ({"stages": "sft"}, None, None),  # a single string is a one-element list: valid
    ],
)
def test_wrong_type_fails_naming_key_and_file(tmp_path, section, value, expected):
    path = write_yaml(tmp_path / "recipe.yaml", {**MINIMAL, **section})
    if value is None:
        assert load_recipe(path).stages == ["sft"]
        return
    with pytest.raises(RecipeError) as excinfo:
        load_recipe(path)
    message = str(excinfo.value)
    assert str(path) in message and value in message and expected in message


def test_cross_field_errors(tmp_path):
    with pytest.raises(RecipeError, match="exactly one of 'data.dataset_name'"):
        load_recipe(write_yaml(tmp_path / "a.yaml", {"model": {"model_name_or_path": "m"}}))
    with pytest.raises(RecipeError, match="hub_model_id"):
        load_recipe(write_yaml(tmp_path / "b.yaml", {**MINIMAL, "publish": {"push_to_hub": True}}))
    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(RecipeError, match="needs bitsandbytes"):
            load_recipe(
                write_yaml(
                    tmp_path / "c.yaml", {**MINIMAL, "model": {"model_name_or_path": "m", "load_in_4bit": True}}
                )
            )


def test_command_line_overrides(tmp_path):
    path = write_yaml(tmp_path / "recipe.yaml", {**MINIMAL, "sft": {"max_steps": 100, "learning_rate": 1e-5}})
    overrides = parse_overrides(
        [
            "--sft.max_steps",
            "5",
            "--preference.loss_type=sdpo",
            "--stages",
            "sft",
            "preference",
            "--evaluation.models",
            "sft,final",
            "--data.build_options.seed",
            "7",
            "--model.model_revision",
            "1234",
            "--publish.push_to_hub",
            "--publish.hub_model_id",
            "me/model",
            "--preference.num_negatives",
            "null",
            "--sft.learning_rate",
            "-3e-5",
        ]
    )
    recipe = load_recipe(path, overrides)
    assert recipe.sft.max_steps == 5 and recipe.sft.learning_rate == -3e-5
    assert recipe.preference.loss_type == ["sdpo"] and recipe.preference.num_negatives is None
    assert recipe.stages == ["sft", "preference"] and recipe.evaluation.models == ["sft", "final"]
    assert recipe.data.build_options == {"seed": 7}
    assert recipe.model.model_revision == "1234"  # a string field keeps the text, not the YAML integer
    assert recipe.publish.push_to_hub is True
    assert load_recipe(path).sft.max_steps == 100  # the file itself is unchanged
    # PyYAML reads `1e-5` (no dot) as a string; a float field takes it as the number it is meant to be.
    path.write_text(path.read_text().replace("learning_rate: 1.0e-05", "learning_rate: 1e-5"))
    assert "1e-5" in path.read_text() and load_recipe(path).sft.learning_rate == 1e-5

    with pytest.raises(RecipeError, match=r"command line: unknown key 'sft.max_step'.*'sft.max_steps'"):
        parse_overrides(["--sft.max_step", "5"])
    with pytest.raises(RecipeError, match=r"command line: 'sft.max_steps' must be int"):
        load_recipe(path, parse_overrides(["--sft.max_steps", "many"]))


def test_positional_and_config_flag_are_the_same(tmp_path):
    path = str(write_yaml(tmp_path / "recipe.yaml", MINIMAL))
    positional = parse_command_line([path, "--sft.max_steps", "3"])
    flag = parse_command_line(["--config", path, "--sft.max_steps=3"])
    flag_eq = parse_command_line(["--sft.max_steps", "3", f"--config={path}"])
    assert positional == flag == flag_eq == (path, {"sft.max_steps": 3})
    with pytest.raises(RecipeError, match="two recipe files"):
        parse_command_line([path, "--config", path])


def test_paths_in_the_file_are_relative_to_it_and_on_the_command_line_to_the_cwd(tmp_path, monkeypatch):
    folder = tmp_path / "recipes"
    folder.mkdir()
    path = write_yaml(
        folder / "r.yaml",
        {"model": {"model_name_or_path": "m"}, "data": {"dataset_name": "movielens-100k", "raw_dir": "../raw"}},
    )
    recipe = load_recipe(path)
    assert recipe.data.raw_dir == str(tmp_path / "raw")
    assert recipe.output_dir == os.path.join("outputs", "r")
    monkeypatch.chdir(tmp_path)
    assert load_recipe(path, {"data.raw_dir": "elsewhere"}).data.raw_dir == "elsewhere"


def test_help_documents_every_key(capsys):
    text = format_help()
    for section, classes in SECTIONS.items():
        for name in {f.name for cls in classes for f in dataclasses.fields(cls) if f.init} - set(
            MANAGED.get(section, ())
        ):
            assert f"--{section}.{name} " in text
    for name in {f.name for f in dataclasses.fields(RecipeArguments)} | {"output_dir", "seed", "stages", "overwrite"}:
        assert f"--{name} " in text
    assert main(["--help"]) == 0 and "--preference.num_negatives" in capsys.readouterr().out


def test_shipped_recipes_and_accelerate_configs_are_valid():
    from accelerate.commands.config.config_args import ClusterConfig

    for name in ("quickstart", "movielens", "lastfm", "goodreads"):
        recipe = load_recipe(REPO / "recipes" / f"{name}.yaml")
        assert recipe.stages == list(STAGES)
    quick = load_recipe(REPO / "recipes" / "quickstart.yaml")
    assert quick.model.model_name_or_path == "smollm2-135m-instruct"
    assert quick.data.raw_dir == str((REPO.parent / "shared" / "data" / "movielens" / "ml-100k").resolve())
    paper = load_recipe(REPO / "recipes" / "movielens.yaml")
    assert (paper.model.lora_r, paper.model.lora_alpha, paper.model.lora_dropout) == (8, 32, 0.1)
    assert paper.sft.per_device_train_batch_size * paper.sft.gradient_accumulation_steps == 128
    assert paper.preference.per_device_train_batch_size * paper.preference.gradient_accumulation_steps == 128
    assert (paper.preference.num_negatives, paper.preference.beta, paper.preference.learning_rate) == (15, 1.0, 1e-5)

    configs = sorted((REPO / "recipes" / "accelerate_configs").glob("*.yaml"))
    names = {p.stem for p in configs}
    assert {"cpu", "single_gpu", "multi_gpu", "deepspeed_zero2", "deepspeed_zero3", "fsdp"} <= names
    for path in configs:
        config = ClusterConfig.from_yaml_file(str(path))  # raises on unknown keys
        assert config.num_processes >= 1


def test_sft_rows_are_tokenized_like_the_preference_trainer_reads_the_chosen_answer():
    from trl_dynamicpo.data import tokenize_rows
    from trl_dynamicpo.sft_data import tokenize_sft_rows

    tokenizer = make_tokenizer()
    batch = {
        "prompt": ["the user watched heat fargo alien choose from jaws up cars answer:", "the user read dune answer:"],
        "chosen": ["jaws", "big red hook"],
        "rejected": [["up", "cars"], ["coco"]],
    }
    reference = tokenize_rows(dict(batch), [0, 1], tokenizer=tokenizer, separator=" ")
    rows = tokenize_sft_rows(batch, tokenizer, separator=" ", max_length=None)
    for i in range(2):
        prompt, chosen = reference["prompt_ids"][i], reference["chosen_ids"][i]
        assert chosen[-1] == tokenizer.eos_token_id
        assert rows["input_ids"][i] == prompt + chosen
        assert rows["labels"][i] == [-100] * len(prompt) + chosen  # loss on the answer (and EOS) only

    # Too long: the prompt loses its beginning (the answer and "answer:" stay); an answer alone too long is dropped.
    prompt, chosen = reference["prompt_ids"][0], reference["chosen_ids"][0]
    short = tokenize_sft_rows(batch, tokenizer, separator=" ", max_length=len(chosen) + 3)
    assert short["input_ids"][0] == prompt[-3:] + chosen and short["labels"][0] == [-100] * 3 + chosen
    assert tokenize_sft_rows(batch, tokenizer, separator=" ", max_length=2)["input_ids"] == [[], []]


# ----------------------------------------------------------------------------------------------------------------------
# Runs on the tiny world
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tiny_world):
    """A full tiny run (all five stages), reused read-only or copied by the tests below."""
    root, _, model_dir = tiny_world
    folder = root / "full"
    folder.mkdir()
    shutil.copytree(root / "raw", folder / "raw")
    path = tiny_recipe(folder, model_dir)
    assert main([str(path)]) == 0
    return folder, path


def _answer_logps(model, tokenizer, prompt, answers):
    from trl_dynamicpo.data import tokenize_prompt_answers
    from trl_dynamicpo.packing import answer_logps, ensure_fused_lm_head, pack_answers

    prompt_ids, answer_ids = tokenize_prompt_answers(tokenizer, prompt, answers)
    ensure_fused_lm_head(model)
    batch = pack_answers([prompt_ids], [answer_ids], pad_token_id=tokenizer.pad_token_id)
    import torch

    with torch.no_grad():
        return answer_logps(model.eval(), batch)[0]


def test_end_to_end_tiny_run(finished_run, tiny_world):
    import torch
    from datasets import load_from_disk
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_dynamicpo.evaluation import evaluate_recommender
    from trl_dynamicpo.hub import load_recommender

    folder, _ = finished_run
    out = folder / "out"
    assert summary(out) == dict.fromkeys(STAGES, "ran")
    for stage_dir in ("data", "sft", "preference", "evaluate", "final"):
        done = json.loads((out / stage_dir / "DONE.json").read_text())
        assert done["stage"] in STAGES and done["id"]
    final = out / "final"
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "README.md",
        "eval_results.json",
    ):
        assert (final / name).is_file(), name
    assert not (final / "ref").exists()  # the trainer's frozen reference adapter is not published

    # SFT trained on the answer only, tokenized like the preference trainer reads the chosen answer.
    sft_state = json.loads((out / "sft" / "trainer_state.json").read_text())
    assert sft_state["global_step"] == 2

    # The preference stage started from the SFT adapter and its reference is that adapter (not the raw base): before
    # the first update the policy equals the reference, so every reward of step 1 is exactly 0.
    assert json.loads((out / "preference" / "DONE.json").read_text())["outputs"]["started_from"] == str(out / "sft")
    pref_logs = json.loads((out / "preference" / "trainer_state.json").read_text())["log_history"]
    assert (
        pref_logs[0]["step"] == 1 and pref_logs[0]["rewards/chosen"] == 0.0 and pref_logs[0]["rewards/margins"] == 0.0
    )
    base = AutoModelForCausalLM.from_pretrained(tiny_world[2])
    tokenizer = AutoTokenizer.from_pretrained(tiny_world[2])
    test = load_from_disk(str(out / "data" / "dataset"))["test"]
    row = test[0]
    base_scores = _answer_logps(base, tokenizer, row["prompt"], row["candidates"])
    sft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_world[2]), out / "sft")
    sft_scores = _answer_logps(sft, tokenizer, row["prompt"], row["candidates"])
    assert (sft_scores - base_scores).abs().max() > 1e-3  # SFT moved the model, so a zero reward needs the SFT ref

    # The published folder loads back and gives the trained adapter's log-probs.
    trained = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_world[2]), out / "preference")
    expected = _answer_logps(trained, tokenizer, row["prompt"], row["candidates"])
    model, loaded_tokenizer = load_recommender(final)
    got = _answer_logps(model, loaded_tokenizer, row["prompt"], row["candidates"])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (expected - sft_scores).abs().max() > 1e-4  # preference optimization changed the adapter

    # The template travels with the adapter: `Recommender` writes the test row's prompt exactly, and ranks as scored.
    from trl_dynamicpo.recommend import Recommender

    assert {"recommender.json", "item_titles.json"} <= {p.name for p in final.iterdir()}
    recommender = Recommender.from_pretrained(final)
    assert recommender.prompts([row["history"]], [row["candidates"]]) == [row["prompt"]]
    ranked = recommender.recommend(row["history"], row["candidates"], k=len(row["candidates"]))
    order = sorted(range(len(row["candidates"])), key=lambda i: -float(expected[i]))
    assert [item for item, _ in ranked] == [row["candidates"][i] for i in order]
    card = (final / "README.md").read_text()
    assert f'Recommender.from_pretrained("{final}")' in card and row["candidates"][0] in card

    # eval_results.json of the published folder are the metrics of that model on the test rows.
    published = json.loads((final / "eval_results.json").read_text())
    again = evaluate_recommender(
        model, loaded_tokenizer, test, protocols=["ranking"], max_samples=4, show_progress=False
    )
    for key in ("ranking/hr@1", "ranking/mrr", "ranking/ndcg@10"):
        assert published[key] == pytest.approx(again[key], abs=1e-9)
    card = (final / "README.md").read_text()
    assert "model-index" in card and "HR@1" in card and "dynamicpo" in card
    evaluation = json.loads((out / "evaluate" / "eval_results.json").read_text())
    assert set(evaluation) == {"sft", "final"}
    assert published["ranking/hr@1"] == evaluation["final"]["ranking/hr@1"]


def test_trunk_cache_run_trains_the_top_layer_and_scores_like_the_full_model(tiny_world, tmp_path):
    """`trunk_cache.enabled` + `model.trainable_layers`: SFT and DynamicPO read the cached trunk; the published adapter
    adapts the top layer only and the ranking metrics of the run are the full model's."""
    import torch
    from datasets import load_from_disk
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_dynamicpo.evaluation import evaluate_recommender

    root, _, model_dir = tiny_world
    shutil.copytree(root / "raw", tmp_path / "raw")
    path = tiny_recipe(
        tmp_path,
        model_dir,
        model={"trainable_layers": 1},
        trunk_cache={"enabled": True},
        stages=["data", "sft", "preference", "evaluate"],
    )
    assert main([str(path)]) == 0
    out = tmp_path / "out"
    assert (out / "trunk_cache" / "train" / "trunk_cache.json").is_file()
    assert (out / "trunk_cache" / "test" / "trunk_cache.json").is_file()
    sft_logs = json.loads((out / "sft" / "trainer_state.json").read_text())["log_history"]
    assert "sft/nll" in sft_logs[0]  # SFT ran through DynamicPOTrainer on the cache
    config = json.loads((out / "preference" / "adapter_config.json").read_text())
    assert config["layers_to_transform"] == [1]
    trained = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), out / "preference")
    names = [n for n, _ in trained.named_parameters() if "lora_" in n]
    assert names and all(".layers.1." in n for n in names)
    test = load_from_disk(str(out / "data" / "dataset"))["test"]
    full = evaluate_recommender(
        trained,
        AutoTokenizer.from_pretrained(model_dir),
        test,
        protocols=["ranking"],
        max_samples=4,
        show_progress=False,
    )
    recorded = json.loads((out / "evaluate" / "eval_results.json").read_text())["final"]
    for key in ("ranking/hr@1", "ranking/mrr", "ranking/ndcg@10"):
        assert recorded[key] == pytest.approx(full[key], abs=1e-6), key
    assert torch.is_grad_enabled()


def test_item_tokens_run_trains_the_projector_and_publishes_it_with_the_table(tiny_world, tmp_path):
    """`model.item_tokens` on a teacher build, with the trunk cache: SFT creates the projector, preference
    optimization trains it further, the evaluation injects it, and `final/` holds the projector, the teacher's table
    and a card naming them; the loaded model scores the test rows as the run recorded."""
    import numpy as np
    from datasets import load_from_disk
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from trl_dynamicpo.evaluation import evaluate_recommender
    from trl_dynamicpo.hub import load_recommender
    from trl_dynamicpo.item_tokens import ItemEmbeddingTable, ItemTokens, get_item_tokens

    root, _, model_dir = tiny_world
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<item>"]})  # a reserved token, as SmolLM2 has
    make_tiny_model(tokenizer).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    shutil.copytree(root / "raw", tmp_path / "raw")
    teacher = {"teacher": "sasrec", "teacher_args": {"hidden_size": 8, "max_len": 4, "max_epochs": 2}}
    path = tiny_recipe(
        tmp_path,
        tmp_path / "model",
        model={"trainable_layers": 1, "item_tokens": True, "item_features": "item+state"},
        data={"build_options": {**BUILD_OPTIONS, **teacher}},
        trunk_cache={"enabled": True},
        evaluation={"models": ["sft", "final"]},
    )
    assert main([str(path)]) == 0
    out = tmp_path / "out"
    final = out / "final"
    assert {"item_tokens.json", "item_tokens.safetensors", "item_embeddings.parquet"} <= {
        p.name for p in final.iterdir()
    }
    # The projector's output layer starts at zero (a no-op); SFT and preference optimization moved it, each further.
    sft_weights, final_weights = (load_file(str(out / s / "item_tokens.safetensors")) for s in ("sft", "preference"))
    output = max(k for k in final_weights if k.endswith("weight"))
    assert sft_weights[output].abs().sum() > 0 and not np.allclose(sft_weights[output], final_weights[output])
    card = (final / "README.md").read_text()
    assert "item_embeddings.parquet" in card and "'item+state'" in card
    model, loaded_tokenizer = load_recommender(final, base_model=str(tmp_path / "model"))
    assert get_item_tokens(model).config["features"] == "item+state"
    test = load_from_disk(str(out / "data" / "dataset"))["test"]
    tokens = ItemTokens.for_model(model, ItemEmbeddingTable.from_folder(final))
    full = evaluate_recommender(
        model, loaded_tokenizer, test, protocols=["ranking"], max_samples=4, show_progress=False, item_tokens=tokens
    )
    recorded = json.loads((out / "evaluate" / "eval_results.json").read_text())["final"]
    for key in ("ranking/hr@1", "ranking/mrr", "ranking/ndcg@10"):
        assert recorded[key] == pytest.approx(full[key], abs=1e-6), key
    plain = evaluate_recommender(model, loaded_tokenizer, test, protocols=["ranking"], max_samples=4)
    assert plain["ranking/mrr"] != pytest.approx(full["ranking/mrr"], abs=1e-9)  # the vectors change the scores


def test_item_tokens_need_a_teacher_build(tiny_world, tmp_path):
    root, _, model_dir = tiny_world
    shutil.copytree(root / "raw", tmp_path / "raw")
    path = tiny_recipe(tmp_path, model_dir, model={"item_tokens": True}, stages=["data"])
    with pytest.raises(FileNotFoundError, match="teacher"):
        main([str(path)])


def test_trunk_cache_needs_trainable_layers(tmp_path):
    path = tiny_recipe(tmp_path, tmp_path, trunk_cache={"enabled": True})
    with pytest.raises(RecipeError, match="model.trainable_layers"):
        load_recipe(path)


def test_rerun_reuses_finished_stages_and_reruns_stale_ones(finished_run, tmp_path, capsys):
    folder, _ = finished_run
    copy = tmp_path / "run"
    path = copy_run(folder, copy)
    before = done_ids(copy / "out")

    assert main([str(path)]) == 0
    assert summary(copy / "out") == dict.fromkeys(STAGES, "reused")
    assert done_ids(copy / "out") == before
    assert "HR@1 (ranking, 4 test prompts, 95% CI): SFT" in capsys.readouterr().out  # the comparison is printed again

    # A changed evaluation setting makes evaluate (and publish, which reads its results) stale; training is reused.
    assert main([str(path), "--evaluation.max_samples", "3"]) == 0
    status = summary(copy / "out")
    assert status == {"data": "reused", "sft": "reused", "preference": "reused", "evaluate": "ran", "publish": "ran"}
    after = done_ids(copy / "out")
    assert after["preference"] == before["preference"] and after["evaluate"] != before["evaluate"]

    # --overwrite re-runs the selected stages only.
    assert main([str(path), "--evaluation.max_samples", "3", "--stages", "publish", "--overwrite"]) == 0
    status = summary(copy / "out")
    assert status["publish"] == "ran" and status["evaluate"] == "skipped"
    assert done_ids(copy / "out")["evaluate"] == after["evaluate"]


def test_stage_selection_and_missing_inputs(tiny_world, tmp_path, capsys):
    root, _, model_dir = tiny_world
    shutil.copytree(root / "raw", tmp_path / "raw")
    path = tiny_recipe(tmp_path, model_dir)
    # A stage whose input no stage produces fails before any work.
    assert main([str(path), "--stages", "evaluate"]) == 2
    assert "needs the output of 'data', 'sft', 'preference'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

    assert main([str(path), "--stages", "data", "sft"]) == 0
    assert summary(tmp_path / "out") == {
        "data": "ran",
        "sft": "ran",
        "preference": "skipped",
        "evaluate": "skipped",
        "publish": "skipped",
    }
    assert not (tmp_path / "out" / "preference").exists()
    # Evaluating the SFT adapter alone needs no preference stage.
    assert (
        main([str(path), "--stages", "evaluate", "--evaluation.models", "sft", "--evaluation.protocols", "ranking"])
        == 0
    )
    results = json.loads((tmp_path / "out" / "evaluate" / "eval_results.json").read_text())
    assert list(results) == ["sft"] and "ranking/hr@1" in results["sft"] and "generation/hr@1" not in results["sft"]


def test_interrupted_training_resumes_from_last_checkpoint(finished_run, tmp_path, capsys):
    folder, _ = finished_run
    copy = tmp_path / "run"
    path = copy_run(folder, copy)
    out = copy / "out"
    # Simulate a kill after checkpoint-1: no DONE.json, no final adapter, no checkpoint-2.
    pref = out / "preference"
    for name in ("DONE.json", "adapter_model.safetensors", "trainer_state.json"):
        (pref / name).unlink()
    shutil.rmtree(pref / "checkpoint-2")
    # Mark the checkpoint's log so that a resumed run (which carries it over) can be told from a restart.
    state_path = pref / "checkpoint-1" / "trainer_state.json"
    state = json.loads(state_path.read_text())
    state["log_history"][0]["resume_marker"] = 1
    state_path.write_text(json.dumps(state))

    assert main([str(path), "--stages", "preference"]) == 0
    assert f"resuming from {pref / 'checkpoint-1'}" in capsys.readouterr().out
    assert summary(out)["preference"] == "ran"
    final_state = json.loads((pref / "trainer_state.json").read_text())
    assert final_state["global_step"] == 2
    assert final_state["log_history"][0].get("resume_marker") == 1
    assert [log["step"] for log in final_state["log_history"] if "loss" in log] == [1, 2]


def test_failed_push_keeps_everything_and_tells_how_to_retry(finished_run, tmp_path, hub_server, capsys):
    folder, _ = finished_run
    copy = tmp_path / "run"
    path = copy_run(folder, copy, publish={"push_to_hub": True, "hub_model_id": "tester/tiny-dynamicpo"})
    out = copy / "out"

    hub_server.inject_fault("POST", r"^/api/models/tester/tiny-dynamicpo/commit/", status=500, times=None)
    try:
        assert main([str(path)]) == 1
    finally:
        hub_server.clear_faults()
    err = capsys.readouterr().err
    assert "tester/tiny-dynamicpo" in err and "--stages publish" in err
    assert summary(out)["publish"] == "failed"
    assert not (out / "final" / "DONE.json").exists()
    for name in ("adapter_model.safetensors", "README.md", "eval_results.json"):
        assert (out / "final" / name).is_file()
    assert (out / "preference" / "DONE.json").is_file()

    assert main([str(path), "--stages", "publish"]) == 0
    files = hub_server.files("tester/tiny-dynamicpo")
    assert files["adapter_model.safetensors"] == (out / "final" / "adapter_model.safetensors").read_bytes()
    assert "eval_results.json" in files and "README.md" in files
    assert json.loads((out / "final" / "DONE.json").read_text())["outputs"]["hub_url"].endswith(
        "tester/tiny-dynamicpo"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_log_tokens_summed_over_both(tiny_world, tmp_path):
    """`accelerate launch` with 2 CPU processes: the data is sharded and `num_tokens` counts both processes' tokens."""
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from trl_dynamicpo.data import tokenize_prompt_answers
    from trl_dynamicpo.packing import pack_answers

    root, _, model_dir = tiny_world
    shutil.copytree(root / "raw", tmp_path / "raw")
    path = tiny_recipe(
        tmp_path,
        model_dir,
        stages=["data", "sft", "preference"],
        data={"max_train_rows": 8},
        preference={"num_negatives": None},  # every negative: the token count does not depend on sampling
    )
    # `--cpu` makes accelerate 1.15 start a single process; torchrun's launcher starts two, and run.py (no GPU) puts
    # them in a gloo process group.
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_cpu_threads_per_process", "1", "--main_process_port", str(_free_port()), str(RUN_PY), str(path),
    ]  # fmt: skip
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]

    out = tmp_path / "out"
    train = load_from_disk(str(out / "data" / "dataset"))["train"]
    assert len(train) == 8
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pref_tokens = sft_tokens = 0
    for row in train:
        prompt_ids, answer_ids = tokenize_prompt_answers(tokenizer, row["prompt"], [row["chosen"], *row["rejected"]])
        batch = pack_answers([prompt_ids], [answer_ids], pad_token_id=tokenizer.pad_token_id)
        pref_tokens += int((batch["segment_ids"] >= 0).sum())  # what the packed forward reads, padding excluded
        sft_tokens += len(prompt_ids) + len(answer_ids[0])
    for stage, expected in (("preference", pref_tokens), ("sft", sft_tokens)):
        logs = json.loads((out / stage / "trainer_state.json").read_text())["log_history"]
        steps = [log for log in logs if "num_tokens" in log]
        # 8 rows = 2 steps x 2 rows x 2 processes: one epoch, every row once, counted on whichever process read it.
        assert steps[-1]["step"] == 2 and steps[-1]["epoch"] == pytest.approx(1.0), stage
        assert steps[-1]["num_tokens"] == expected, stage


def test_comparison_line_puts_the_baselines_and_intervals_next_to_the_models():
    from trl_dynamicpo.evaluation import format_comparison_table as comparison_table

    sft = {"ranking/hr@1": 0.1, "ranking/hr@1_ci": [0.05, 0.15], "ranking/num_samples": 300}
    sft.update({"baseline_popularity/hr@1": 0.3, "baseline_popularity/hr@1_ci": [0.25, 0.35]})
    sft.update({"baseline_random/hr@1": 0.1})  # no interval: printed bare
    final = {"ranking/hr@1": 0.2, "ranking/hr@1_ci": [0.15, 0.25]}
    line = comparison_table({"sft": sft, "final": final}, {"sft": "SFT", "final": "DynamicPO"}).splitlines()[-1]
    assert line == (
        "HR@1 (ranking, 300 test prompts, 95% CI): SFT 0.1000 [0.050, 0.150] | DynamicPO 0.2000 [0.150, 0.250] | "
        "popularity 0.3000 [0.250, 0.350] | random 0.1000"
    )
