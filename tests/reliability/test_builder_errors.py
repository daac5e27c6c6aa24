"""Builders say what is wrong with their input and describe what they did (issue 13, defect 8).

Faults injected: two files for one split, a missing file that has no download, an import of processed S-DPO files
(no users, no sampling), a MovieLens `u.item` re-encoded as UTF-8 and files saved as UTF-16.
"""

import json

import pytest

from dataset_builders import BuildConfig, MissingRawFilesError, RawDataError, run_build

from ..dataset_builders.fixtures import ML100K, sdpo_records, shared, synthetic_ratings, write_ml100k, write_sdpo


SPLITS = ("train", "validation", "test")


def _config(raw, **kwargs):
    return BuildConfig(raw_dir=str(raw), progress=False, verbose=False, **kwargs)


def _sdpo_splits(sizes=(12, 4, 5), with_users=False):
    splits = {split: sdpo_records(n, seed=i) for i, (split, n) in enumerate(zip(SPLITS, sizes))}
    if with_users:  # three users, each with rows in every split
        for records in splits.values():
            for i, record in enumerate(records):
                record["user_id"] = f"user-{i % 3}"
    return splits


def test_two_files_for_one_split_are_listed_not_guessed(tmp_path):
    """`aaa-test.json` next to `lastfm-test.json`: the alphabetically first one was used without a word."""
    raw = write_sdpo(
        tmp_path / "raw",
        _sdpo_splits(),
        names={"train": "lastfm-train", "validation": "lastfm-val", "test": "lastfm-test"},
    )
    (raw / "aaa-test.json").write_text(json.dumps(sdpo_records(2, seed=9)))
    with pytest.raises(ValueError) as info:
        run_build("sdpo-json", tmp_path / "out", _config(raw))
    message = str(info.value)
    assert f"2 files in {raw} match the 'test' input" in message
    assert str(raw / "aaa-test.json") in message and str(raw / "lastfm-test.json") in message
    assert "Keep only the file you want" in message
    assert not (tmp_path / "out").exists()

    # `test.json` beside `lastfm-test.json` is just as ambiguous (two datasets in one folder), as is .json vs .jsonl.
    (raw / "aaa-test.json").unlink()
    (raw / "test.json").write_text(json.dumps(sdpo_records(2, seed=9)))
    with pytest.raises(ValueError, match=r"2 files in .* match the 'test' input") as info:
        run_build("sdpo-json", tmp_path / "out", _config(raw))
    assert str(raw / "test.json") in str(info.value) and str(raw / "lastfm-test.json") in str(info.value)

    (raw / "test.json").unlink()  # one file per split again: builds
    result = run_build("sdpo-json", tmp_path / "out", _config(raw))
    assert result.info["notes"]["input_files"]["test"] == "lastfm-test.json"
    assert result.dataset["test"].num_rows == 5


def test_missing_sdpo_file_gives_advice_that_applies(tmp_path):
    """The error for a missing `sdpo-json` file said to download an archive; there is nothing to download."""
    raw = write_sdpo(tmp_path / "raw", {k: v for k, v in _sdpo_splits().items() if k != "test"})
    with pytest.raises(MissingRawFilesError) as info:
        run_build("sdpo-json", tmp_path / "out", _config(raw))
    message = str(info.value)
    assert info.value.missing == [
        "test.json or *-test.json or *_test.json or test.jsonl or *-test.jsonl or *_test.jsonl "
        "(no official download: provide it locally)"
    ]
    assert str(raw) in message
    assert "cannot be downloaded: copy them into that folder" in message
    assert "archive" not in message and "download them" not in message


def test_import_card_and_build_info_describe_an_import(tmp_path):
    """An sdpo-json import counted one user per row, and its card and build_info described sampling and a split."""
    raw = write_sdpo(tmp_path / "raw", _sdpo_splits())
    result = run_build("sdpo-json", tmp_path / "out", _config(raw))
    info = json.loads((result.output_dir / "build_info.json").read_text())
    stats = info["statistics"]
    assert stats["rows"] == {"train": 12, "validation": 4, "test": 5}
    assert stats["users"] is None and stats["users_per_split"] == {split: None for split in SPLITS}
    assert stats["candidates_per_row"] == [20, 20]
    # Only what shapes an import: the prompt templates and the item groups (one template: the seed does nothing).
    assert sorted(info["parameters"]) == ["domain", "head_share", "tail_share", "templates"]
    assert info["kind"] == "import"
    assert "rows imported as given" in info["notes"]["presplit"]

    card = (result.output_dir / "README.md").read_text()
    for phrase in (
        "the item the user really consumed next",  # next-item sequences built from interactions
        "negatives drawn without replacement",  # candidate sampling
        "blake2b",  # the per-user RNG
        "Split by time",
        "with the time split",
        "| `num_candidates` |",
        "| `split` |",
    ):
        assert phrase not in card, phrase
    assert "Recommendation prompts imported as given from already-processed files" in card
    assert "19 other candidates as negatives" in card
    assert "- users: unknown (the records have no `user_id`)" in card
    assert "| train | 12 | – |" in card
    assert "`train_count` is the number of training rows whose target is the item." in card
    assert "users" in result.summary and "unknown" in result.summary

    # Records that name their users: those are counted (3 users), and a rotated template records its seed.
    raw = write_sdpo(tmp_path / "raw-users", _sdpo_splits(with_users=True))
    result = run_build("sdpo-json", tmp_path / "out-users", _config(raw, templates=2, seed=7))
    assert result.info["statistics"]["users"] == 3
    assert result.info["statistics"]["users_per_split"] == {"train": 3, "validation": 3, "test": 3}
    assert result.info["parameters"]["seed"] == 7 and len(result.info["parameters"]["templates"]) == 2
    assert "| `seed` | `7` | picks each row's template" in (result.output_dir / "README.md").read_text()


def _ratings_with_item(item_id):
    """The synthetic ratings with item 1 renamed `item_id`, so that this real u.item entry is kept."""
    return [(u, item_id if i == 1 else i, r, t) for u, i, r, t in synthetic_ratings()]


def test_utf8_u_item_is_refused_not_garbled(tmp_path):
    """A u.item re-encoded as UTF-8 built "Les MisÃ©rables (1995)" after only a checksum warning."""
    raw = tmp_path / "raw"
    write_ml100k(raw, _ratings_with_item(543), {})
    latin1 = shared(ML100K / "u.item").read_bytes()
    (raw / "u.item").write_bytes(latin1.decode("latin-1").encode("utf-8"))
    with pytest.raises(RawDataError) as info:
        run_build("movielens-100k", tmp_path / "out", _config(raw, num_candidates=10))
    message = str(info.value)
    assert message.startswith(
        f"{raw / 'u.item'}, line 543: the file is UTF-8 encoded, but the official file is latin-1"
    )
    assert "Misérables" in message and "MisÃ©rables" in message
    assert "--raw-encoding utf-8" in message

    result = run_build("movielens-100k", tmp_path / "out", _config(raw, num_candidates=10, raw_encoding="utf-8"))
    titles = dict(zip(result.items["item_id"], result.items["title"]))
    assert titles["543"] == "Les Misérables (1995)"
    assert not any("Ã" in title for title in titles.values())
    # The official Latin-1 file itself is not mistaken for UTF-8.
    (raw / "u.item").write_bytes(latin1)
    result = run_build("movielens-100k", tmp_path / "out", _config(raw, num_candidates=10))
    assert dict(zip(result.items["item_id"], result.items["title"]))["543"] == "Les Misérables (1995)"


@pytest.mark.parametrize(
    "codec,what", [("utf-16", "the file is UTF-16 encoded"), ("utf-16-le", "the file looks UTF-16 encoded")]
)
def test_utf16_file_names_file_and_encoding(tmp_path, codec, what):
    """A UTF-16 u.data was reported as a field-count problem."""
    raw = write_ml100k(tmp_path / "raw", synthetic_ratings(), {i: f"Movie {i}" for i in range(1, 41)})
    (raw / "u.data").write_bytes((raw / "u.data").read_text(encoding="latin-1").encode(codec))
    with pytest.raises(RawDataError) as info:
        run_build("movielens-100k", tmp_path / "out", _config(raw, num_candidates=10))
    message = str(info.value)
    assert message.startswith(f"{raw / 'u.data'}: {what}") and "latin-1 text" in message
    assert "iconv -f UTF-16 -t ISO-8859-1 FILE" in message and "fields" not in message
