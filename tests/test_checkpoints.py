"""Tests of `trl_dynamicpo.checkpoints` (resume from the last complete checkpoint) and `trl_dynamicpo.io_utils`."""

import json
import math
from types import SimpleNamespace

import numpy as np

from trl_dynamicpo.checkpoints import (
    CHECKPOINT_MARKER,
    CompleteCheckpointCallback,
    checkpoint_problem,
    find_resume_checkpoint,
    set_aside,
)
from trl_dynamicpo.io_utils import describe_files, files_under, read_json, write_json


def _checkpoint(root, step, files=("model.safetensors", "trainer_state.json"), marker=True):
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    for name in files:
        (folder / name).write_text("{}")
    if marker:
        state = SimpleNamespace(global_step=step, is_world_process_zero=True)
        CompleteCheckpointCallback().on_save(SimpleNamespace(output_dir=str(root)), state, None)
    return folder


def test_marker_lists_every_file_written_before_it(tmp_path):
    folder = _checkpoint(tmp_path, 3, files=("a.bin", "trainer_state.json"))
    marker = json.loads((folder / CHECKPOINT_MARKER).read_text())
    assert marker == {"global_step": 3, "files": ["a.bin", "trainer_state.json"]}
    assert checkpoint_problem(folder) is None
    (folder / "a.bin").unlink()
    assert checkpoint_problem(folder) == "it lacks a.bin"


def test_newest_complete_checkpoint_wins_and_cut_ones_are_reported_newest_first(tmp_path):
    _checkpoint(tmp_path, 2)
    _checkpoint(tmp_path, 10, marker=False)  # cut after its files, before the marker
    (tmp_path / "checkpoint-12").mkdir()  # cut at once: empty
    (tmp_path / "checkpoint-x").mkdir()  # not a checkpoint name
    last, cut = find_resume_checkpoint(tmp_path)
    assert last == str(tmp_path / "checkpoint-2")
    assert [(path.name, problem) for path, problem in cut] == [
        ("checkpoint-12", "it is empty"),
        ("checkpoint-10", f"it has no {CHECKPOINT_MARKER}, which is written once the checkpoint is saved"),
    ]
    # Without the marker requirement (checkpoints of a run without the callback), a readable trainer_state.json is
    # enough: numeric order, not name order (10 > 2).
    assert find_resume_checkpoint(tmp_path, require_marker=False)[0] == str(tmp_path / "checkpoint-10")
    assert find_resume_checkpoint(tmp_path / "missing") == (None, [])


def test_set_aside_renames_and_never_overwrites(tmp_path):
    first = set_aside(_checkpoint(tmp_path, 4, marker=False))
    second = set_aside(_checkpoint(tmp_path, 4, marker=False))
    assert first != second and first.is_dir() and second.is_dir()
    assert first.name.startswith("incomplete-checkpoint-4-") and not (tmp_path / "checkpoint-4").exists()
    assert find_resume_checkpoint(tmp_path) == (None, [])  # set-aside folders are not checkpoints any more


def test_write_json_is_strict_and_leaves_no_temporary_file(tmp_path):
    path = write_json(tmp_path / "sub" / "r.json", {"hr": np.float32(0.5), "nan": math.nan, 1: (np.int64(2),)})
    assert read_json(path) == {"hr": 0.5, "nan": None, "1": [2]}
    assert files_under(tmp_path) == ["sub/r.json"]
    path.write_text('{"cut": ')
    assert read_json(path) is None and read_json(tmp_path / "missing.json") is None


def test_describe_files_groups_by_top_level_entry():
    files = ["DONE.json", "checkpoint-1/a", "checkpoint-1/b", "x/y", *(f"f{i}" for i in range(9))]
    assert describe_files(files, limit=4) == "DONE.json, checkpoint-1/ (2 files), x/y, f0, and 8 more"
