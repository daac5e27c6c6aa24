"""Reading local dataset folders with `dataset_builders.folder.load_dataset_folder` (moved from `tests/test_data.py`
with the function, which lived in `trl_dynamicpo.data`)."""

from datasets import Dataset, DatasetDict

from dataset_builders.folder import load_dataset_folder


def test_load_dataset_folder_does_not_mix_same_named_folders(tmp_path):
    """Two folders called `source` hold different data; each loads its own (datasets' cache would mix them)."""
    for parent, word in (("a", "jaws"), ("b", "fargo")):
        folder = tmp_path / parent / "source"
        (folder / "data").mkdir(parents=True)
        for split in ("train", "test"):
            Dataset.from_dict({"chosen": [f"{word}-{split}"]}).to_parquet(
                folder / "data" / f"{split}-00000-of-00001.parquet"
            )
        (folder / "README.md").write_text(
            "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n"
            "  - split: test\n    path: data/test-*\n---\n"
        )
    first = load_dataset_folder(tmp_path / "a" / "source")
    second = load_dataset_folder(tmp_path / "b" / "source")
    assert isinstance(first, DatasetDict) and set(first) == {"train", "test"}
    assert first["train"]["chosen"] == ["jaws-train"] and second["test"]["chosen"] == ["fargo-test"]
    assert load_dataset_folder(tmp_path / "a" / "source", "items") is None


def test_load_dataset_folder_reads_save_to_disk_folders(tmp_path):
    DatasetDict({"train": Dataset.from_dict({"chosen": ["jaws"]})}).save_to_disk(tmp_path / "run")
    Dataset.from_dict({"title": ["jaws", "up"]}).save_to_disk(tmp_path / "run" / "items")
    assert load_dataset_folder(tmp_path / "run")["train"]["chosen"] == ["jaws"]
    assert load_dataset_folder(tmp_path / "run", "items")["train"]["title"] == ["jaws", "up"]
