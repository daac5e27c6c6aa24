"""The recipe never deletes (or overwrites) a file it did not write.

Re-running a stage (`--overwrite`, or changed inputs such as a new publish setting) removes only the files that stage
wrote, listed in its `DONE.json`, and prints them. When the folder also holds files of the user's, the run refuses
before changing anything, with an error naming them (the behaviour documented in `recipes/run.py`).

The runs use the tiny world of `tests/test_recipes.py` (a random 2-layer Llama, MovieLens-format raw files).
"""

import json
import shutil

import pytest

from recipes.run import main

from ..test_recipes import copy_run, done_ids, summary, tiny_recipe, tiny_world  # noqa: F401 (tiny_world: fixture)
from ..testing_utils import file_tree


@pytest.fixture(scope="module")
def finished_run(tiny_world):  # noqa: F811
    """A finished run of all five stages (one training step each), copied by the tests."""
    root, _, model_dir = tiny_world
    folder = root / "full"
    folder.mkdir()
    shutil.copytree(root / "raw", folder / "raw")
    path = tiny_recipe(folder, model_dir, sft={"max_steps": 1}, preference={"max_steps": 1})
    assert main([str(path)]) == 0
    return folder


def test_overwrite_keeps_user_files_in_stage_folders_and_final(finished_run, tmp_path, capsys):
    path = copy_run(finished_run, tmp_path / "run")
    out = tmp_path / "run" / "out"
    (out / "sft" / "my_notes.txt").write_text("what I tried")
    (out / "final" / "extra").mkdir()
    (out / "final" / "extra" / "my_plot.png").write_bytes(b"\x89PNG user data")
    before = file_tree(out)
    capsys.readouterr()

    exit_code = main([str(path), "--overwrite"])

    assert (out / "sft" / "my_notes.txt").is_file() and (out / "final" / "extra" / "my_plot.png").is_file()
    assert exit_code == 2
    err = capsys.readouterr().err
    assert f"{out / 'sft'} holds 1 file(s) that this recipe did not write: my_notes.txt" in err
    assert f"{out / 'final'} holds 1 file(s) that this recipe did not write: extra/" in err
    assert "move them out of" in err and err.count("did not write") == 2  # the other folders hold the run's files only
    assert file_tree(out) == before  # refused before any work: nothing removed, nothing written

    # Without the user's files in the way, --overwrite re-runs the stage and removes only what the stage wrote.
    shutil.move(out / "final" / "extra", tmp_path / "extra")
    published = json.loads((out / "final" / "DONE.json").read_text())["files"]
    assert main([str(path), "--overwrite", "--stages", "publish"]) == 0
    printed = capsys.readouterr().out
    assert f"removing the {len(published)} file(s) this recipe wrote in {out / 'final'}: " in printed
    assert "adapter_model.safetensors" in printed and "README.md" in printed
    assert (out / "sft" / "my_notes.txt").read_text() == "what I tried"  # sft was not selected: untouched
    assert summary(out)["publish"] == "ran" and (out / "final" / "adapter_model.safetensors").is_file()


def test_publish_rerun_refuses_to_delete_a_user_file_in_final(finished_run, tmp_path, capsys):
    path = copy_run(finished_run, tmp_path / "run")
    out = tmp_path / "run" / "out"
    (out / "final" / "NOTES.md").write_text("my own notes next to the published adapter")
    before = file_tree(out / "final")
    ids = done_ids(out)
    capsys.readouterr()

    # A new publish setting makes the finished publish stage stale; the stages before it are reused.
    exit_code = main([str(path), "--publish.model_name", "renamed"])

    assert (out / "final" / "NOTES.md").is_file()
    assert exit_code == 2
    err = capsys.readouterr().err
    assert f"{out / 'final'} holds 1 file(s) that this recipe did not write: NOTES.md" in err
    assert file_tree(out / "final") == before
    # Refused before any work (the publish stage would re-run, so its folder is checked first): nothing re-ran and
    # the run summary is still the finished run's.
    assert done_ids(out) == ids and set(summary(out).values()) == {"ran"}


def test_a_stage_folder_with_user_files_is_refused_before_any_work(tiny_world, tmp_path, capsys):  # noqa: F811
    root, _, model_dir = tiny_world
    shutil.copytree(root / "raw", tmp_path / "raw")
    path = tiny_recipe(tmp_path, model_dir)
    (tmp_path / "out" / "data").mkdir(parents=True)
    (tmp_path / "out" / "data" / "my_dataset.csv").write_text("user,item\n1,2\n")

    assert main([str(path)]) == 2

    assert f"{tmp_path / 'out' / 'data'} holds 1 file(s) that this recipe did not write: my_dataset.csv" in (
        capsys.readouterr().err
    )
    assert file_tree(tmp_path / "out") == {"data/my_dataset.csv": b"user,item\n1,2\n"}


def test_a_stage_finished_without_a_file_list_is_not_deleted(finished_run, tmp_path, capsys):
    """`DONE.json` of an older recipes/run.py lists no files: the run cannot tell its files from the user's."""
    path = copy_run(finished_run, tmp_path / "run")
    out = tmp_path / "run" / "out"
    done = json.loads((out / "sft" / "DONE.json").read_text())
    del done["files"]
    (out / "sft" / "DONE.json").write_text(json.dumps(done))
    before = file_tree(out / "sft")
    capsys.readouterr()

    assert main([str(path), "--overwrite", "--stages", "sft"]) == 2

    err = capsys.readouterr().err
    assert f"{out / 'sft' / 'DONE.json'} was written by an older recipes/run.py" in err and "delete the folder" in err
    assert file_tree(out / "sft") == before
