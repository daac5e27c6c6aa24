"""A dataset output folder holds exactly one build, and reading it gives exactly that build (issue 13, defect 6).

Faults injected: a stale Parquet shard, an old `save_to_disk` dataset and a user's own README in the output folder;
a write that fails half-way through a rebuild; an output path that is a file. The builder must refuse a folder holding
files it did not write (unless `overwrite=True`), replace its own previous build as a whole only once the new one is
complete, and readers must take the files the build lists, never a glob.
"""

import hashlib
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from datasets import Dataset, DatasetDict

from dataset_builders import SOURCES, BuildConfig, load_dataset_folder, run_build

from ..dataset_builders.fixtures import REPO, movie_titles, synthetic_ratings, write_ml100k


SPLITS = ("train", "validation", "test")
# The build of the fixture below (12 users x 14 ratings, min_history 3): 132 rows, cut 8:1:1 by time.
ROWS = {"train": 105, "validation": 13, "test": 14}


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return write_ml100k(
        tmp_path_factory.mktemp("raw") / "ml-100k", synthetic_ratings(n_users=12, per_user=14, seed=5), movie_titles()
    )


def _config(raw, **kwargs):
    return BuildConfig(raw_dir=str(raw), progress=False, verbose=False, num_candidates=10, **kwargs)


def _snapshot(folder):
    """Every file under `folder` (relative path -> SHA-256)."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


BUILD_FILES = [
    "README.md",
    "build_info.json",
    "data/test-00000-of-00001.parquet",
    "data/train-00000-of-00001.parquet",
    "data/validation-00000-of-00001.parquet",
    "items/items-00000-of-00001.parquet",
]


def test_stale_shard_in_output_folder_is_not_read(raw, tmp_path):
    """A `train-00001-of-00002.parquet` left beside the build doubled the train split (the card's glob took it)."""
    from datasets import load_dataset

    out = tmp_path / "out"
    result = run_build("movielens-100k", out, _config(raw))
    assert result.info["statistics"]["rows"] == ROWS
    shutil.copy(out / "data" / "train-00000-of-00001.parquet", out / "data" / "train-00001-of-00002.parquet")

    loaded = load_dataset_folder(out)
    assert {split: loaded[split].num_rows for split in SPLITS} == ROWS
    assert loaded["train"].to_list() == result.dataset["train"].to_list()
    # `datasets.load_dataset` follows the card's `configs: data_files`: the exact files, not `data/train-*.parquet`.
    hub_style = load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert {split: hub_style[split].num_rows for split in SPLITS} == ROWS

    # Building into that folder again: the stray shard is not the builder's, so the folder is refused...
    with pytest.raises(ValueError) as info:
        run_build("movielens-100k", out, _config(raw))
    message = str(info.value)
    assert str(out) in message and "data/train-00001-of-00002.parquet" in message and "--overwrite" in message
    assert (out / "data" / "train-00001-of-00002.parquet").is_file()
    # ... unless overwrite=True, which replaces the whole folder: the stray shard is gone.
    run_build("movielens-100k", out, _config(raw, overwrite=True))
    assert _snapshot(out).keys() == set(BUILD_FILES)


def test_old_save_to_disk_folder_does_not_shadow_the_build(raw, tmp_path):
    """An old `save_to_disk` dataset (`dataset_dict.json`) in the output folder was read instead of the new build."""
    out = tmp_path / "out"
    DatasetDict(
        {"train": Dataset.from_dict({"prompt": ["old"], "chosen": ["old"], "rejected": [["x"]]})}
    ).save_to_disk(str(out))
    before = _snapshot(out)
    with pytest.raises(ValueError) as info:
        run_build("movielens-100k", out, _config(raw))
    message = str(info.value)
    assert str(out) in message and "dataset_dict.json" in message and "save_to_disk" in message
    assert _snapshot(out) == before  # nothing written or deleted

    result = run_build("movielens-100k", out, _config(raw, overwrite=True))
    assert not (out / "dataset_dict.json").exists()
    loaded = load_dataset_folder(out)
    assert {split: loaded[split].num_rows for split in SPLITS} == ROWS
    assert loaded["train"]["chosen"] == result.dataset["train"]["chosen"]

    # Even a `dataset_dict.json` dropped into a finished build later does not take priority over the build's files.
    Dataset.from_dict({"chosen": ["old"]}).save_to_disk(str(tmp_path / "elsewhere"))
    (out / "dataset_dict.json").write_text('{"splits": ["train"]}')
    shutil.copytree(tmp_path / "elsewhere", out / "train")
    assert load_dataset_folder(out)["train"]["chosen"] == result.dataset["train"]["chosen"]


def test_failed_rebuild_leaves_previous_build_intact(raw, tmp_path, monkeypatch):
    """A rebuild that fails after writing one Parquet file left old and new files mixed in the folder."""
    parent = tmp_path / "builds"
    out = parent / "out"
    run_build("movielens-100k", out, _config(raw, seed=0))
    before = _snapshot(out)
    assert sorted(before) == BUILD_FILES

    real_write = pq.write_table
    calls = []

    def write_then_fail(table, where, *args, **kwargs):
        calls.append(str(where))
        if len(calls) == 2:
            raise OSError(28, "No space left on device (injected)")
        return real_write(table, where, *args, **kwargs)

    monkeypatch.setattr(pq, "write_table", write_then_fail)
    with pytest.raises(OSError, match="No space left on device"):
        run_build("movielens-100k", out, _config(raw, seed=1))  # another seed: other candidates, other bytes
    assert len(calls) == 2  # the first file of the rebuild was written before the fault
    assert _snapshot(out) == before  # every file of the previous build, byte for byte, and nothing else
    assert sorted(path.name for path in parent.iterdir()) == ["out"]  # no half-written folder left beside it

    monkeypatch.setattr(pq, "write_table", real_write)
    (parent / ".out.building-999999999-0000").mkdir()  # left by a killed build (no such pid): removed by the next
    # Where the atomic exchange (Linux renameat2) is unavailable, two renames do the swap.
    monkeypatch.setattr("dataset_builders.output._exchange", lambda first, second: False)
    run_build("movielens-100k", out, _config(raw, seed=1))
    after = _snapshot(out)
    assert (
        sorted(after) == BUILD_FILES
        and after["data/train-00000-of-00001.parquet"] != before["data/train-00000-of-00001.parquet"]
    )
    assert sorted(path.name for path in parent.iterdir()) == ["out"]  # the previous build was removed after the swap


def test_users_own_readme_is_not_overwritten(raw, tmp_path):
    """A folder holding the user's own README.md was silently overwritten by the dataset card."""
    out = tmp_path / "my-project"
    out.mkdir()
    (out / "README.md").write_text("# My project\n\nNotes I wrote myself.\n")
    (out / "notes.txt").write_text("keep me\n")
    with pytest.raises(ValueError) as info:
        run_build("movielens-100k", out, _config(raw))
    message = str(info.value)
    assert str(out) in message and "README.md" in message and "notes.txt" in message
    assert "--overwrite" in message and "overwrite=True" in message and "another --output" in message
    assert (out / "README.md").read_text() == "# My project\n\nNotes I wrote myself.\n"
    assert sorted(path.name for path in out.iterdir()) == ["README.md", "notes.txt"]
    # The raw data is never inside what a build replaces, not even with overwrite=True.
    with pytest.raises(ValueError, match="holds the raw files"):
        run_build("movielens-100k", raw.parent, _config(raw, overwrite=True))
    assert (raw / "u.data").is_file()

    # The builder's own previous build is replaced without asking; a card the user edited is theirs again.
    built = tmp_path / "built"
    run_build("movielens-100k", built, _config(raw))
    run_build("movielens-100k", built, _config(raw, seed=3))
    (built / "README.md").write_text((built / "README.md").read_text() + "\nMy remarks.\n")
    with pytest.raises(ValueError, match=r"README\.md \(changed since the build\)"):
        run_build("movielens-100k", built, _config(raw))
    assert (built / "README.md").read_text().endswith("\nMy remarks.\n")


def test_output_path_that_is_a_file_fails_before_any_work(raw, tmp_path, monkeypatch):
    """`--output some_file` failed with NotADirectoryError only after parsing the raw data."""
    target = tmp_path / "results.parquet"
    target.write_bytes(b"not a folder")

    def parse(*args):
        raise AssertionError("the raw files were parsed before the output path was checked")

    monkeypatch.setattr(SOURCES["movielens-100k"], "parse", parse)
    for out in (target, target / "dataset"):
        with pytest.raises(ValueError) as info:  # raised before any raw file is read (parse above is never called)
            run_build("movielens-100k", out, _config(raw))
        assert f"{target} is a file" in str(info.value) and str(out) in str(info.value)
    assert target.read_bytes() == b"not a folder"

    cli = subprocess.run(
        [sys.executable, str(REPO / "dataset_builders" / "build.py"), "movielens-100k", "--output", str(target)]
        + ["--raw-dir", str(raw), "--no-progress"],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 1
    assert f"The output path {target} is a file" in cli.stderr and "Traceback" not in cli.stderr
