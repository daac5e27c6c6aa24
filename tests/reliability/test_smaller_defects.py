"""Smaller reliability defects (issue 29, defect 8).

- After a resume, `train_loss` in `DONE.json` (and the run table) is the mean over every step, not only the steps run
  after the resume: it equals the uninterrupted run's.
- A flat `u.data` next to the archive's `ml-100k/u.data`: the flat one is read (always), a warning names both, and
  `build_info.json` records which path was read.
- A duplicate YAML key and a null section (`sft: null`) are refused, naming them, instead of keeping the last value
  or silently running the library defaults.
- A user's file in `final/` stops the run before `evaluate` re-runs (not after, which left `final/` older than
  `evaluate/`).
"""

import json
import logging
import shutil

import pytest

from dataset_builders import BuildConfig, run_build
from recipes.recipe_config import RecipeError, load_recipe
from recipes.run import main

from ..dataset_builders.fixtures import movie_titles, synthetic_ratings, write_ml100k
from ..test_recipes import MINIMAL, done_ids, summary, tiny_recipe, tiny_world, write_yaml  # noqa: F401


def test_train_loss_after_a_resume_covers_all_steps(tiny_world, tmp_path):  # noqa: F811
    root, _, model_dir = tiny_world
    path = tiny_recipe(
        tmp_path,
        model_dir,
        raw_name=str(root / "raw"),
        stages=["data", "sft", "preference"],
        sft={"max_steps": 1},
        preference={"max_steps": 4, "save_steps": 2},
    )
    assert main([str(path)]) == 0
    pref = tmp_path / "out" / "preference"
    uninterrupted = json.loads((pref / "DONE.json").read_text())["metrics"]["train_loss"]
    logged = [
        log["loss"] for log in json.loads((pref / "trainer_state.json").read_text())["log_history"] if "loss" in log
    ]
    assert len(logged) == 4 and uninterrupted == pytest.approx(sum(logged) / 4, abs=1e-3)
    # A kill after checkpoint-2: no DONE.json, no final adapter, no later checkpoint.
    for name in ("DONE.json", "adapter_model.safetensors", "trainer_state.json"):
        (pref / name).unlink()
    shutil.rmtree(pref / "checkpoint-4")

    assert main([str(path), "--stages", "preference"]) == 0

    resumed = json.loads((pref / "DONE.json").read_text())["metrics"]
    assert resumed["global_step"] == 4
    assert resumed["train_loss"] == pytest.approx(uninterrupted, abs=1e-3)
    # Not the mean of the two steps run after the resume (what the Trainer reports).
    assert abs(sum(logged[2:]) / 2 - uninterrupted) > 1e-3


def test_flat_u_data_next_to_the_archive_folder_is_chosen_and_recorded(tmp_path, caplog):
    raw = write_ml100k(tmp_path / "raw", synthetic_ratings(seed=0), movie_titles())
    write_ml100k(raw / "ml-100k", synthetic_ratings(seed=1), movie_titles())  # another u.data, as extracted

    with caplog.at_level(logging.WARNING, logger="dataset_builders.download"):
        run_build("movielens-100k", tmp_path / "out", BuildConfig(raw_dir=str(raw), progress=False, verbose=False))

    files = json.loads((tmp_path / "out" / "build_info.json").read_text())["source"]["files"]
    assert sorted(f["path"] for f in files) == ["u.data", "u.item"]
    assert f"reading {raw / 'u.data'}, not {raw / 'ml-100k' / 'u.data'}" in caplog.text


def test_duplicate_yaml_key_and_null_section_are_refused(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(
        "model:\n  model_name_or_path: some/model\ndata:\n  dataset_id_or_path: some/dataset\n"
        "sft:\n  max_steps: 2\n  learning_rate: 1e-4\n  max_steps: 15\n"
    )
    with pytest.raises(RecipeError, match=r"found the key 'max_steps' twice \(first on line 6\)"):
        load_recipe(path)

    with pytest.raises(RecipeError, match=r"the section 'sft' is empty \(null\)"):
        load_recipe(write_yaml(tmp_path / "null.yaml", {**MINIMAL, "sft": None}))
    assert load_recipe(write_yaml(tmp_path / "empty.yaml", {**MINIMAL, "sft": {}})).sft.max_steps == -1  # explicit


def test_user_file_in_final_stops_the_run_before_evaluate_reruns(tiny_world, tmp_path, capsys):  # noqa: F811
    root, _, model_dir = tiny_world
    path = tiny_recipe(
        tmp_path, model_dir, raw_name=str(root / "raw"), sft={"max_steps": 1}, preference={"max_steps": 1}
    )
    assert main([str(path)]) == 0
    out = tmp_path / "out"
    (out / "final" / "NOTES.md").write_text("mine")
    ids = done_ids(out)
    capsys.readouterr()

    # A new evaluation setting: evaluate must re-run, and publish after it (its upstream changes).
    assert main([str(path), "--evaluation.max_samples", "3"]) == 2

    assert f"{out / 'final'} holds 1 file(s) that this recipe did not write: NOTES.md" in capsys.readouterr().err
    assert done_ids(out) == ids  # nothing re-ran: evaluate/ and final/ stay from the same run
    assert (out / "final" / "NOTES.md").read_text() == "mine"
