"""Real MovieLens builds: ml-100k (counts, candidates, leakage, split order, determinism, titles) and ml-latest-small."""

import re
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from fixtures import ML100K, ML_LATEST, file_hashes, shared

from dataset_builders import BuildConfig, run_build
from dataset_builders.templates import DOMAIN_TEMPLATES


# Exact figures of the default build of the official ml-100k files (943 users, 1,682 movies, 100,000 ratings):
# item 267 is titled "unknown" (dropped with its 9 ratings); every user has >= 20 ratings, so 943 * 3 targets lack a
# 3-item history; 97,162 rows split 8:1:1 on the target timestamps.
ML100K_ROWS = {"train": 77_729, "validation": 9_716, "test": 9_717}


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory):
    out = tmp_path_factory.mktemp("ml100k")
    result = run_build("movielens-100k", out, BuildConfig(raw_dir=str(shared(ML100K)), progress=False, verbose=False))
    frames = {split: result.dataset[split].to_pandas() for split in ML100K_ROWS}
    return result, frames


@pytest.fixture(scope="module")
def raw_ml100k():
    ratings = pd.read_csv(shared(ML100K) / "u.data", sep="\t", names=["user", "item", "rating", "ts"], dtype=str)
    ratings["ts"] = ratings["ts"].astype(int)
    ratings["line"] = np.arange(1, len(ratings) + 1)
    return ratings


def test_ml100k_row_counts(ml100k):
    result, frames = ml100k
    rows = {split: len(frame) for split, frame in frames.items()}
    stats = result.info["statistics"]
    print("ml-100k rows:", rows, "users:", stats["users"], "items:", stats["items"])
    assert rows == ML100K_ROWS
    assert stats["users"] == 943
    assert stats["items"] == 1_681
    assert stats["interactions_kept"] == 99_991
    assert result.info["dropped"]["items_without_title"] == 1
    assert result.info["dropped"]["interactions_without_title"] == 9
    assert result.info["dropped"]["targets_with_short_history"] == 943 * 3
    assert [f["sha256_status"] for f in result.info["source"]["files"]] == ["matches known value"] * 2


def test_ml100k_candidates(ml100k):
    _, frames = ml100k
    template = DOMAIN_TEMPLATES["movies"][0]
    for frame in frames.values():
        for row in frame.itertuples():
            candidates, rejected, history = list(row.candidates), list(row.rejected), list(row.history)
            assert len(candidates) == 20 and len(set(candidates)) == 20
            assert row.chosen == row.target and row.target in candidates
            assert row.chosen not in rejected
            assert rejected == [c for c in candidates if c != row.target]  # rejected in prompt order
            assert not set(candidates) & set(history)  # negatives come from outside the history
            assert 3 <= len(history) <= 10
            expected = (
                template.replace("{history}", "\n".join(history))
                .replace("{candidates}", "\n".join(candidates))
                .replace("{num_candidates}", "20")
            )
            assert row.prompt == expected
            assert row.prompt.endswith("Answer:")


def test_ml100k_no_leakage(ml100k, raw_ml100k):
    result, frames = ml100k
    items = result.items.to_pandas()
    title_to_id = dict(zip(items["title"], items["item_id"]))
    assert len(title_to_id) == len(items)  # one title = one item
    stamp = {(u, i): t for u, i, t in zip(raw_ml100k["user"], raw_ml100k["item"], raw_ml100k["ts"])}
    for split, frame in frames.items():
        exploded = frame[["user_id", "history", "timestamp", "target"]].explode("history")
        history_ts = [stamp[(u, title_to_id[h])] for u, h in zip(exploded["user_id"], exploded["history"])]
        assert (np.asarray(history_ts) <= exploded["timestamp"].to_numpy()).all(), split
        assert (exploded["history"] != exploded["target"]).all(), split
        target_ts = [stamp[(u, i)] for u, i in zip(frame["user_id"], frame["target_id"])]
        assert target_ts == frame["timestamp"].tolist()
        assert [title_to_id[t] for t in frame["target"]] == frame["target_id"].tolist()


def test_ml100k_split_is_ordered_by_time(ml100k):
    _, frames = ml100k
    train, valid, test = (frames[s]["timestamp"] for s in ("train", "validation", "test"))
    assert train.max() <= valid.min() <= valid.max() <= test.min()
    for frame in frames.values():
        assert frame["timestamp"].is_monotonic_increasing


def test_ml100k_item_table_matches_naive_counts(ml100k, raw_ml100k):
    result, frames = ml100k
    items = result.items.to_pandas()
    kept = raw_ml100k[raw_ml100k["item"] != "267"]
    key = {(u, i): (t, line) for u, i, t, line in zip(kept["user"], kept["item"], kept["ts"], kept["line"])}
    last_train = max(key[(u, i)] for u, i in zip(frames["train"]["user_id"], frames["train"]["target_id"]))
    naive = Counter(i for (u, i), k in key.items() if k <= last_train)
    assert dict(zip(items["item_id"], items["train_count"])) == {i: naive.get(i, 0) for i in items["item_id"]}
    # rank: by count descending, ties by numeric item id
    expected_order = sorted(items["item_id"], key=lambda i: (-naive.get(i, 0), int(i)))
    assert items.sort_values("popularity_rank")["item_id"].tolist() == expected_order
    assert items["popularity_rank"].tolist() == list(range(1, len(items) + 1))
    # head: most popular items until 20% of training interactions are covered
    total, covered, expected_groups = sum(naive.values()), 0, []
    for item in expected_order:
        expected_groups.append("head" if covered < 0.2 * total else None)
        covered += naive.get(item, 0)
    below = 0
    for position in range(len(expected_order) - 1, -1, -1):
        below += naive.get(expected_order[position], 0)
        if expected_groups[position] is None:
            expected_groups[position] = "tail" if below <= 0.2 * total else "mid"
    assert items["popularity_group"].tolist() == expected_groups


def test_ml100k_titles(ml100k):
    result, _ = ml100k
    titles = dict(zip(result.items["item_id"], result.items["title"]))
    assert titles["12"] == "The Usual Suspects (1995)"
    assert titles["1"] == "Toy Story (1995)"
    assert titles["246"] == "Chasing Amy (1997)" and titles["268"] == "Chasing Amy (1997) [id 268]"
    assert not any(re.search(r", (The|A|An) \(\d{4}\)$", t) for t in titles.values())
    assert "267" not in titles  # "unknown"
    assert result.info["dropped"]["titles_disambiguated"] == 18


def test_ml100k_determinism(ml100k, tmp_path):
    result, _ = ml100k
    again = run_build(
        "movielens-100k", tmp_path / "again", BuildConfig(raw_dir=str(ML100K), progress=False, verbose=False)
    )
    first = file_hashes(result.output_dir)
    assert len(first) == 4
    assert file_hashes(again.output_dir) == first
    assert (again.output_dir / "build_info.json").read_bytes() == (result.output_dir / "build_info.json").read_bytes()


def test_ml_latest_small_build(tmp_path):
    raw = shared(ML_LATEST)
    result = run_build(
        "movielens-latest-small", tmp_path, BuildConfig(raw_dir=str(raw), progress=False, verbose=False)
    )
    rows = {split: result.dataset[split].num_rows for split in result.dataset}
    print("ml-latest-small rows:", rows)
    assert rows == {"train": 79_204, "validation": 9_901, "test": 9_901}
    assert result.info["statistics"]["items"] == 9_724  # movies with at least one rating
    titles = set(result.items["title"])
    assert "The American President (1995)" in titles
    assert "The City of Lost Children (La Cité des enfants perdus) (1995)" in titles  # UTF-8 kept
    first = result.dataset["test"][0]
    assert len(first["candidates"]) == 20 and first["target"] in first["candidates"]
