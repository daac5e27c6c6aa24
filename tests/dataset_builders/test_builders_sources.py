"""Every source parser end to end: goodbooks-10k (real books.csv + sample ratings), LastFM (real artists.dat + tag
files in both official variants), UCSD Book Graph, S-DPO JSON and MovieLens 1M fixtures."""

import pandas as pd
import pytest
from fixtures import (
    GOODBOOKS,
    LASTFM,
    goodreads_date,
    lastfm_artist_ids,
    lastfm_events,
    sdpo_records,
    shared,
    synthetic_ratings,
    ucsd_records,
    write_lastfm_tagged,
    write_ml1m,
    write_sdpo,
    write_ucsd,
)

from dataset_builders import BuildConfig, RawDataError, run_build


def _config(raw_dir, **kwargs):
    return BuildConfig(raw_dir=str(raw_dir), progress=False, verbose=False, **kwargs)


def _all_rows(result):
    return pd.concat([result.dataset[s].to_pandas().assign(split=s) for s in ("train", "validation", "test")])


def _check_rows(result, num_candidates=20):
    rows = _all_rows(result)
    assert len(rows) > 0
    for row in rows.itertuples():
        assert len(row.candidates) == num_candidates == len(set(row.candidates))
        assert row.target == row.chosen and row.target in row.candidates
        assert list(row.rejected) == [c for c in row.candidates if c != row.target]
        assert row.prompt.endswith("Answer:")
    return rows


def test_goodbooks_real_books_and_sample_ratings(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "books.csv").symlink_to(shared(GOODBOOKS / "books.csv"))
    (raw / "ratings.csv").symlink_to(shared(GOODBOOKS / "samples" / "ratings.csv"))
    result = run_build("goodbooks-10k", tmp_path / "out", _config(raw))
    rows = _check_rows(result)
    assert result.info["statistics"]["interactions_kept"] == 99
    books = pd.read_csv(GOODBOOKS / "books.csv", usecols=["book_id", "title"], dtype=str)
    titles = dict(zip(books["book_id"], books["title"]))
    assert all(titles[i] == t for i, t in zip(rows["target_id"], rows["target"]))  # titles from books.csv (quoted)
    # No timestamps: the row index of ratings.csv is the time, so a user's history follows the file order.
    ratings = pd.read_csv(GOODBOOKS / "samples" / "ratings.csv", dtype=str)
    for row in rows.itertuples():
        assert ratings.iloc[row.timestamp][["user_id", "book_id"]].tolist() == [row.user_id, row.target_id]
    assert result.info["source"]["files"][1]["sha256_status"] == "matches known value"  # books.csv


@pytest.mark.parametrize("variant,crlf", [("timestamps", False), ("dates", False), ("dates", True)])
def test_lastfm_tag_files(tmp_path, variant, crlf):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "artists.dat").symlink_to(shared(LASTFM / "artists.dat"))
    ids = lastfm_artist_ids(40)
    events = lastfm_events(ids)
    write_lastfm_tagged(raw, events, variant, crlf=crlf)
    result = run_build("lastfm-hetrec", tmp_path / "out", _config(raw))
    rows = _check_rows(result)
    used = "user_taggedartists-timestamps.dat" if variant == "timestamps" else "user_taggedartists.dat"
    assert result.info["notes"]["lastfm_events_file"] == used
    assert used in result.summary
    assert result.info["dropped"]["duplicate_interactions"] == 5  # each user re-tags its first artist later
    names = dict(
        line.split("\t")[:2] for line in (LASTFM / "artists.dat").read_text(encoding="utf-8").splitlines()[1:]
    )
    # The sequence of each user follows the tag timestamps (the file is shuffled), first event per artist.
    first_seen = {}
    for user, artist, _tag, stamp in sorted(events, key=lambda e: e[3]):
        first_seen.setdefault((str(user), str(artist)), stamp)
    for row in rows.itertuples():
        assert row.timestamp == first_seen[(row.user_id, row.target_id)]
        assert names[row.target_id] == row.target
        stamps = [first_seen[(row.user_id, a)] for a in _ids_of(result, row.history)]
        assert stamps == sorted(stamps) and stamps[-1] <= row.timestamp
    assert "listened to these artists" in rows["prompt"].iloc[0]


def _ids_of(result, titles):
    lookup = dict(zip(result.items["title"], result.items["item_id"]))
    return [lookup[t] for t in titles]


def test_lastfm_prefers_timestamps_file(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "artists.dat").symlink_to(shared(LASTFM / "artists.dat"))
    events = lastfm_events(lastfm_artist_ids(40))
    write_lastfm_tagged(raw, events, "timestamps")
    write_lastfm_tagged(raw, events, "dates")
    result = run_build("lastfm-hetrec", tmp_path / "out", _config(raw))
    assert result.info["notes"]["lastfm_events_file"] == "user_taggedartists-timestamps.dat"


def test_lastfm_latin1_artists_needs_raw_encoding(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    text = shared(LASTFM / "artists.dat").read_text(encoding="utf-8").splitlines()[:41]
    text[3] = text[3].replace(text[3].split("\t")[1], "Café Tacuba")
    (raw / "artists.dat").write_bytes(("\n".join(text) + "\n").encode("latin-1", errors="replace"))
    write_lastfm_tagged(raw, lastfm_events([int(line.split("\t")[0]) for line in text[1:]]), "timestamps")
    with pytest.raises(RawDataError, match=r"artists\.dat, line 4: cannot decode byte 0xe9 as utf-8"):
        run_build("lastfm-hetrec", tmp_path / "out", _config(raw))
    result = run_build("lastfm-hetrec", tmp_path / "out", _config(raw, raw_encoding="latin-1"))
    assert "Café Tacuba" in set(result.items["title"])


def test_goodreads_ucsd_fixture(tmp_path):
    interactions, books = ucsd_records()
    interactions.append({**interactions[0], "book_id": "1039", "date_added": ""})  # shelved without a date
    books[7]["title"] = ""  # a book without title
    write_ucsd(tmp_path / "raw", "poetry", interactions, books)
    result = run_build("goodreads-ucsd", tmp_path / "out", _config(tmp_path / "raw", num_candidates=10))
    rows = _check_rows(result, num_candidates=10)
    assert result.info["dropped"]["interactions_without_date"] == 1
    assert result.info["dropped"]["items_without_title"] == 1
    untitled = sum(1 for r in interactions if r["book_id"] == "1007" and r["date_added"])
    assert result.info["dropped"]["interactions_without_title"] == untitled
    assert result.info["parameters"]["genre"] == "poetry"
    # Ordered by date_added across time zones: the timestamp is the UTC instant of the string.
    stamp = {
        (r["user_id"], r["book_id"]): int(pd.Timestamp(r["date_added"]).timestamp())
        for r in interactions
        if r["date_added"]
    }
    for row in rows.itertuples():
        assert stamp[(row.user_id, row.target_id)] == row.timestamp
        stamps = [stamp[(row.user_id, b)] for b in _ids_of(result, row.history)]
        assert stamps == sorted(stamps) and stamps[-1] <= row.timestamp
    assert "read these books" in rows["prompt"].iloc[0]
    assert goodreads_date(0, 0) == "Thu Jan 01 00:00:00 +0000 1970"


def test_goodreads_ucsd_min_rating(tmp_path):
    interactions, books = ucsd_records(per_user=12)
    write_ucsd(tmp_path / "raw", "poetry", interactions, books)
    result = run_build(
        "goodreads-ucsd", tmp_path / "out", _config(tmp_path / "raw", num_candidates=5, min_rating=1, min_history=1)
    )
    rated = sum(1 for r in interactions if r["rating"] >= 1)
    assert result.info["statistics"]["interactions_kept"] == rated
    assert result.info["dropped"]["interactions_below_min_rating"] == len(interactions) - rated


@pytest.mark.parametrize("jsonl,string_history", [(False, False), (True, True)])
def test_sdpo_json_import(tmp_path, jsonl, string_history):
    splits = {
        "train": sdpo_records(12, seed=1, history_as_string=string_history),
        "validation": sdpo_records(4, seed=2, history_as_string=string_history),
        "test": sdpo_records(5, seed=3, history_as_string=string_history),
    }
    write_sdpo(tmp_path / "raw", splits, jsonl=jsonl)
    result = run_build("sdpo-json", tmp_path / "out", _config(tmp_path / "raw", domain="music"))
    for split, records in splits.items():
        frame = result.dataset[split].to_pandas()
        assert len(frame) == len(records)
        for row, record in zip(frame.itertuples(), records):
            history = record["historyList"].split("::") if string_history else record["historyList"]
            assert list(row.history) == history
            assert list(row.candidates) == record["itemList"]  # kept as given, in order
            assert row.chosen == record["trueSelection"]
            assert list(row.rejected) == [c for c in record["itemList"] if c != record["trueSelection"]]
            assert row.prompt.endswith("Answer:") and "\n".join(record["itemList"]) in row.prompt
    items = result.items.to_pandas()
    train_targets = pd.Series([r["trueSelection"] for r in splits["train"]]).value_counts()
    counts = dict(zip(items["title"], items["train_count"]))
    assert {t: counts[t] for t in train_targets.index} == train_targets.to_dict()
    assert sum(counts.values()) == len(splits["train"])


def test_sdpo_json_sdpo_file_names(tmp_path):
    splits = {s: sdpo_records(3, seed=i) for i, s in enumerate(("train", "validation", "test"))}
    names = {"train": "lastfm-train", "validation": "lastfm-val", "test": "lastfm-test"}
    write_sdpo(tmp_path / "raw", splits, names=names)
    result = run_build("sdpo-json", tmp_path / "out", _config(tmp_path / "raw"))
    assert result.info["notes"]["input_files"] == {s: f"{n}.json" for s, n in names.items()}
    assert "interacted with these items" in result.dataset["train"][0]["prompt"]  # generic domain by default
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(result.output_dir / "README.md")
    assert card.data.license == "unknown"
    assert "Imported from already-processed files (lastfm-train.json, lastfm-val.json, lastfm-test.json)" in card.text


def test_sdpo_json_bad_record_names_line(tmp_path):
    splits = {s: sdpo_records(3, seed=i) for i, s in enumerate(("train", "validation", "test"))}
    splits["validation"][1]["trueSelection"] = "Not A Candidate"
    write_sdpo(tmp_path / "raw", splits)
    lines = (tmp_path / "raw" / "valid.json").read_text().splitlines()
    second_record = [number for number, line in enumerate(lines, start=1) if line == "    {"][1]
    with pytest.raises(RawDataError, match=rf"valid\.json, line {second_record}: trueSelection 'Not A Candidate'"):
        run_build("sdpo-json", tmp_path / "out", _config(tmp_path / "raw"))


def test_movielens_1m_fixture(tmp_path):
    ratings = synthetic_ratings(n_users=5, n_items=40, per_user=9)
    used = sorted({item for _, item, _, _ in ratings})
    titles = {i: f"Movie {i} ({1950 + i})" for i in range(1, 41)}
    titles[used[0]] = "Usual Suspects, The (1995)"
    titles[used[1]] = "Cité des enfants perdus, La (1995)"
    write_ml1m(tmp_path / "raw", ratings, titles)
    result = run_build("movielens-1m", tmp_path / "out", _config(tmp_path / "raw", num_candidates=10))
    rows = _check_rows(result, num_candidates=10)
    item_titles = dict(zip(result.items["item_id"], result.items["title"]))
    assert item_titles[str(used[0])] == "The Usual Suspects (1995)"
    assert item_titles[str(used[1])] == "La Cité des enfants perdus (1995)"  # Latin-1 decoded, article moved
    assert len(rows) == 5 * (9 - 3)


def test_lastfm_offline_copy_lacks_tag_files(tmp_path):
    """The shared copy has artists.dat but neither tag file: one error names exactly what is missing."""
    from dataset_builders import MissingRawFilesError

    with pytest.raises(MissingRawFilesError) as info:
        run_build("lastfm-hetrec", tmp_path / "out", _config(shared(LASTFM / "artists.dat").parent))
    assert info.value.missing == [
        "user_taggedartists-timestamps.dat or user_taggedartists.dat "
        "(from https://files.grouplens.org/datasets/hetrec2011/hetrec2011-lastfm-2k.zip)"
    ]
