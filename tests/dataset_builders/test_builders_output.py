"""The built folder: Parquet layout, `load_dataset` round trip (default and `items` configs), dataset card, build info,
summary, and the push to the Hub (through `dataset_builders.folder.push_dataset_folder`)."""

import json

import pytest
from fixtures import movie_titles, synthetic_ratings, write_ml100k

from dataset_builders import BuildConfig, build_dataset, run_build


SPLITS = ["train", "validation", "test"]
COLUMNS = ["prompt", "chosen", "rejected", "candidates", "history", "target", "user_id", "target_id", "timestamp"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("output")
    raw = write_ml100k(root / "raw", synthetic_ratings(n_users=12, per_user=14, seed=5), movie_titles())
    config = BuildConfig(raw_dir=str(raw), progress=False, verbose=False, num_candidates=10)
    return run_build("movielens-100k", root / "out", config)


def test_folder_layout(built):
    out = built.output_dir
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "build_info.json",
        "data/test-00000-of-00001.parquet",
        "data/train-00000-of-00001.parquet",
        "data/validation-00000-of-00001.parquet",
        "items/items-00000-of-00001.parquet",
    ]


def test_load_dataset_round_trip(built, tmp_path):
    from datasets import load_dataset

    loaded = load_dataset(str(built.output_dir), cache_dir=str(tmp_path / "cache"))
    assert sorted(loaded) == sorted(SPLITS)
    for split in SPLITS:
        assert loaded[split].column_names == COLUMNS
        assert loaded[split].to_list() == built.dataset[split].to_list()
        assert loaded[split].features == built.dataset[split].features
    assert loaded["train"].features["rejected"].feature.dtype == "string"
    assert loaded["train"].features["timestamp"].dtype == "int64"
    items = load_dataset(str(built.output_dir), "items", cache_dir=str(tmp_path / "cache"))
    assert list(items) == ["train"]
    assert items["train"].column_names == ["item_id", "title", "train_count", "popularity_rank", "popularity_group"]
    assert items["train"].to_list() == built.items.to_list()
    assert set(items["train"]["popularity_group"]) <= {"head", "mid", "tail"}


def test_dataset_card(built):
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(built.output_dir / "README.md")
    assert card.data.license == "other"
    assert card.data.license_name == "movielens-research-terms"
    assert card.data.license_link.startswith("https://files.grouplens.org/")
    assert card.data.task_categories == ["text-generation"]
    assert card.data.tags == ["recommendation", "preference", "dynamicpo"]
    assert card.data.pretty_name.startswith("MovieLens 100K")
    configs = {c["config_name"]: c for c in card.data.configs}
    # Exact files, not globs: a stale shard left in the folder must not be read (tests/reliability).
    assert configs["default"]["data_files"] == [
        {"split": s, "path": f"data/{s}-00000-of-00001.parquet"} for s in SPLITS
    ]
    assert configs["items"]["data_files"] == [{"split": "train", "path": "items/items-00000-of-00001.parquet"}]
    text = card.text
    assert "F. Maxwell Harper and Joseph A. Konstan. 2015." in text  # citation
    assert f'load_dataset("{built.output_dir}", "items")' in text
    rows = built.info["statistics"]["rows"]
    assert f"| train | {rows['train']:,} |" in text
    assert "**head**" in text and "**tail**" in text  # group definitions
    assert built.dataset["train"][0]["prompt"].split("\n")[0] in text  # example row


def test_build_info(built):
    info = json.loads((built.output_dir / "build_info.json").read_text())
    assert info == json.loads(json.dumps(built.info))
    assert info["parameters"]["num_candidates"] == 10 and info["parameters"]["split"] == "time"
    assert "genre" not in info["parameters"] and "raw_dir" not in info["parameters"]
    assert info["statistics"]["rows"] == {s: built.dataset[s].num_rows for s in SPLITS}
    assert info["dropped"]["titles_disambiguated"] == 1  # items 4 and 5 share a title
    # fixture files are not the official ones: recorded, not fatal
    assert {f["name"]: f["sha256_status"].split(" ")[0] for f in info["source"]["files"]} == {
        "u.data": "differs",
        "u.item": "differs",
    }


def test_summary_and_api(built, tmp_path, capsys):
    for word in ("users", "items", "interactions kept", "train", "validation", "test", "seconds taken"):
        assert word in built.summary
    raw = built.output_dir.parent / "raw"
    dataset = build_dataset("movielens-100k", tmp_path / "again", raw_dir=str(raw), num_candidates=10, progress=False)
    assert "Built movielens-100k" in capsys.readouterr().out  # verbose by default
    assert {s: dataset[s].to_list() for s in SPLITS} == {s: built.dataset[s].to_list() for s in SPLITS}


def test_push_to_hub_pushes_the_written_folder(built, tmp_path, monkeypatch):
    import dataset_builders.folder

    calls = []
    fake = lambda folder, repo_id, token=None, private=False: calls.append((folder, repo_id, token, private))  # noqa: E731
    monkeypatch.setattr(dataset_builders.folder, "push_dataset_folder", fake)
    raw = built.output_dir.parent / "raw"
    config = BuildConfig(
        raw_dir=str(raw), progress=False, verbose=False, num_candidates=10, push_to_hub="me/ml", private=True
    )
    run_build("movielens-100k", tmp_path / "pushed", config)
    assert calls == [(str(tmp_path / "pushed"), "me/ml", None, True)]

    def fail(*args, **kwargs):
        raise ConnectionError("the Hub is unreachable")

    monkeypatch.setattr(dataset_builders.folder, "push_dataset_folder", fail)
    with pytest.raises(ConnectionError, match="unreachable"):
        run_build("movielens-100k", tmp_path / "pushed2", config)
    assert (tmp_path / "pushed2" / "README.md").exists()  # the folder is written (and kept) before the push


def test_push_to_loopback_hub(built, tmp_path, hub_server):
    pytest.importorskip("trl_dynamicpo.hub")
    from datasets import load_dataset

    raw = built.output_dir.parent / "raw"
    repo_id = "builder-tests/tiny-ml100k"
    config = BuildConfig(raw_dir=str(raw), progress=False, verbose=False, num_candidates=10, push_to_hub=repo_id)
    result = run_build("movielens-100k", tmp_path / "out", config)
    files = hub_server.files(repo_id, "dataset")
    assert "README.md" in files and "build_info.json" in files
    loaded = load_dataset(repo_id, cache_dir=str(tmp_path / "cache"))
    assert {s: loaded[s].to_list() for s in SPLITS} == {s: result.dataset[s].to_list() for s in SPLITS}
    assert load_dataset(repo_id, "items", cache_dir=str(tmp_path / "cache"))["train"].num_rows == result.items.num_rows
