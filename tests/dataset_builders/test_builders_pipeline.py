"""The shared pipeline against naive reference implementations written here (sequences, splits, k-core, item table,
sampling contract), and its options (templates, seeds, popularity sampling)."""

import hashlib
import json
import math
from collections import Counter, defaultdict

import numpy as np
import pytest
from fixtures import file_hashes, movie_titles, synthetic_ratings, write_ml100k

from dataset_builders import BuildConfig, run_build
from dataset_builders.pipeline import Catalog, item_table
from dataset_builders.templates import DOMAIN_TEMPLATES, PromptTemplate


def fixture_ratings():
    """12 users x 14 ratings over 40 movies, shuffled, with tied timestamps and two repeated ratings."""
    ratings = synthetic_ratings(n_users=12, n_items=40, per_user=14, seed=5)
    firsts = {}
    for user, item, _, stamp in ratings:
        if user in (1, 2) and (user not in firsts or stamp < firsts[user][1]):
            firsts[user] = (item, stamp)
    ratings += [(user, item, 3, 9_999_999) for user, (item, _) in firsts.items()]  # re-rated at the very end
    return ratings


def fixture_titles():
    titles = movie_titles(40)
    titles[7] = ""  # an item without a title
    return titles


@pytest.fixture
def raw(tmp_path):
    return write_ml100k(tmp_path / "raw", fixture_ratings(), fixture_titles())


def build(raw, out, **kwargs):
    kwargs.setdefault("num_candidates", 10)
    return run_build("movielens-100k", out, BuildConfig(raw_dir=str(raw), progress=False, verbose=False, **kwargs))


def naive_rows(ratings, untitled, min_history=3, max_history=10, split="time", split_ratios=(0.8, 0.1, 0.1), k_core=0):
    """Straightforward reference: first interaction per (user, item), per-user chronological windows, split."""
    events = [(str(u), str(i), ts, line) for line, (u, i, _r, ts) in enumerate(ratings, start=1) if i not in untitled]
    first = {}
    for event in sorted(events, key=lambda e: (e[2], e[3])):
        first.setdefault((event[0], event[1]), event)
    kept = list(first.values())
    while k_core:
        users, items = Counter(e[0] for e in kept), Counter(e[1] for e in kept)
        smaller = [e for e in kept if users[e[0]] >= k_core and items[e[1]] >= k_core]
        if len(smaller) == len(kept):
            break
        kept = smaller
    by_user = defaultdict(list)
    for event in kept:
        by_user[event[0]].append(event)
    rows = []
    for user, seq in by_user.items():
        seq.sort(key=lambda e: (e[2], e[3]))
        for p in range(min_history, len(seq)):
            rows.append(
                {
                    "user_id": user,
                    "target_id": seq[p][1],
                    "history": [e[1] for e in seq[max(0, p - max_history) : p]],
                    "timestamp": seq[p][2],
                    "key": (seq[p][2], seq[p][3]),
                    "from_end": len(seq) - 1 - p,
                    "position": p,
                }
            )
    rows.sort(key=lambda r: r["key"])
    if split == "time":
        n = len(rows)
        a = math.floor(n * split_ratios[0] + 1e-9)
        b = math.floor(n * (split_ratios[0] + split_ratios[1]) + 1e-9)
        return {"train": rows[:a], "validation": rows[a:b], "test": rows[b:]}, kept
    splits = {
        "train": [r for r in rows if r["from_end"] > 1],
        "validation": [r for r in rows if r["from_end"] == 1],
        "test": [r for r in rows if r["from_end"] == 0],
    }
    return splits, kept


def built_rows(result):
    lookup = dict(zip(result.items["title"], result.items["item_id"]))
    out = {}
    for split in ("train", "validation", "test"):
        frame = result.dataset[split].to_pandas()
        out[split] = [
            {
                "user_id": r.user_id,
                "target_id": r.target_id,
                "history": [lookup[t] for t in r.history],
                "timestamp": r.timestamp,
            }
            for r in frame.itertuples()
        ]
    return out


def strip(rows):
    return {
        s: [{k: r[k] for k in ("user_id", "target_id", "history", "timestamp")} for r in v] for s, v in rows.items()
    }


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"min_history": 2, "max_history": 4},
        {"split": "leave-last-out"},
        {"k_core": 5, "split_ratios": (0.6, 0.2, 0.2), "num_candidates": 4},
    ],
)
def test_rows_match_naive_reference(raw, tmp_path, params):
    result = build(raw, tmp_path / "out", **params)
    expected, _ = naive_rows(
        fixture_ratings(), untitled={7}, **{k: v for k, v in params.items() if k != "num_candidates"}
    )
    assert built_rows(result) == strip(expected)
    assert result.info["dropped"]["duplicate_interactions"] == 2
    assert result.info["dropped"]["items_without_title"] == 1


def test_train_count_and_groups_match_naive_reference(raw, tmp_path):
    for split in ("time", "leave-last-out"):
        result = build(raw, tmp_path / split, split=split)
        splits, kept = naive_rows(fixture_ratings(), untitled={7}, split=split)
        if split == "time":
            last = max(r["key"] for r in splits["train"])
            train = [e for e in kept if (e[2], e[3]) <= last]
        else:
            held = defaultdict(lambda: math.inf)  # user -> position of the first held-out target
            for r in splits["validation"] + splits["test"]:
                held[r["user_id"]] = min(held[r["user_id"]], r["position"])
            by_user = defaultdict(list)
            for event in kept:
                by_user[event[0]].append(event)
            train = []
            for user, seq in by_user.items():
                seq.sort(key=lambda e: (e[2], e[3]))
                train += seq[: held[user]] if held[user] != math.inf else seq
        counts = Counter(e[1] for e in train)
        items = result.items.to_pandas()
        assert dict(zip(items["item_id"], items["train_count"])) == {i: counts.get(i, 0) for i in items["item_id"]}


def test_item_table_groups_hand_computed():
    # counts 50, 30, 10, 5, 5, 0 (total 100); ids chosen so that the tie 5/5 is ordered numerically (9 before 10)
    catalog = Catalog(ids=np.array(["3", "1", "2", "10", "9", "4"], dtype=object), titles=list("abcdef"))
    table = item_table(catalog, np.array([50, 30, 10, 5, 5, 0]), head_share=0.2, tail_share=0.2)
    assert table["item_id"].tolist() == ["3", "1", "2", "9", "10", "4"]
    assert table["popularity_rank"].tolist() == [1, 2, 3, 4, 5, 6]
    # head: the first item reaches 20%; tail: 0 + 5 + 5 + 10 = 20 <= 20%; "1" (30) is mid
    assert table["popularity_group"].tolist() == ["head", "mid", "tail", "tail", "tail", "tail"]
    wider = item_table(catalog, np.array([50, 30, 10, 5, 5, 0]), head_share=0.6, tail_share=0.05)
    # head: "3" (0 before) and "1" (50 before < 60); tail: "4" (0) and "10" (5 + 0 = 5 <= 5% of 100)
    assert wider["popularity_group"].tolist() == ["head", "head", "mid", "mid", "tail", "tail"]


def test_titles_are_disambiguated(raw, tmp_path):
    result = build(raw, tmp_path / "out")
    titles = dict(zip(result.items["item_id"], result.items["title"]))
    assert titles["4"] == "Movie 4 (1954)" and titles["5"] == "Movie 4 (1954) [id 5]"
    assert titles["1"] == "The Usual Suspects (1995)"
    assert titles["2"] == "La Cité des enfants perdus (1995)"
    assert titles["3"] == "Sex, Lies, and Videotape (1989)"
    assert "7" not in titles


def reference_candidates(user, position, history, target, n_items, k, seed):
    """The documented sampling rule, one draw at a time; returns the candidates and the number of batches used."""
    key = int.from_bytes(hashlib.blake2b(user.encode(), digest_size=8).digest(), "little")
    rng = np.random.default_rng((seed, key, position))
    u = rng.random(2 * k + 10)
    slot, excluded, negatives, batches = int(u[0] * (k + 1)), set(history) | {target}, [], 1
    while True:
        for x in (u[2:] * n_items).astype(int).tolist():
            if x not in excluded and len(negatives) < k:
                excluded.add(x)
                negatives.append(x)
        if len(negatives) == k:
            break
        u, batches = rng.random(2 * k + 10), batches + 1
    negatives.insert(slot, target)
    return negatives, batches


@pytest.mark.parametrize("n_items,num_candidates", [(40, 10), (14, 4)])
def test_sampling_follows_the_documented_contract(tmp_path, n_items, num_candidates):
    """Recompute every row's candidates from (seed, blake2b(user), position) exactly as documented."""
    ratings = synthetic_ratings(n_users=12, n_items=n_items, per_user=min(14, n_items - 1), seed=5)
    raw = write_ml100k(tmp_path / "raw", ratings, {i: f"Movie {i}" for i in range(1, n_items + 1)})
    result = build(raw, tmp_path / "out", seed=7, num_candidates=num_candidates)
    splits, kept = naive_rows(ratings, untitled=set())
    used = {e[1] for e in kept}
    catalog = [str(i) for i in range(1, n_items + 1) if str(i) in used]  # item-file order
    index = {item: n for n, item in enumerate(catalog)}
    lookup = dict(zip(result.items["item_id"], result.items["title"]))
    batches = Counter()
    for split, rows in splits.items():
        for naive, row in zip(rows, result.dataset[split].to_pandas().itertuples()):
            history = [index[i] for i in naive["history"]]
            expected, used_batches = reference_candidates(
                naive["user_id"],
                naive["position"],
                history,
                index[naive["target_id"]],
                len(catalog),
                num_candidates - 1,
                seed=7,
            )
            batches[used_batches > 1] += 1
            assert list(row.candidates) == [lookup[catalog[n]] for n in expected]
    if n_items == 14:
        assert batches[True] > 0  # small catalogs exercise the row-by-row continuation


def test_seeds_and_template_rotation(raw, tmp_path):
    base = build(raw, tmp_path / "a", seed=1)
    same = build(raw, tmp_path / "b", seed=1)
    other = build(raw, tmp_path / "c", seed=2)
    rotated = build(raw, tmp_path / "d", seed=1, templates=3)
    assert file_hashes(base.output_dir) == file_hashes(same.output_dir)
    a, c, d = (r.dataset["train"].to_pandas() for r in (base, other, rotated))
    assert (
        a["target"].tolist() == c["target"].tolist()
        and a["history"].map(list).tolist() == c["history"].map(list).tolist()
    )
    assert sum(list(x) != list(y) for x, y in zip(a["candidates"], c["candidates"])) > 0.9 * len(a)
    # the template draw comes after the candidates: rotating templates leaves the candidates unchanged
    assert a["candidates"].map(list).tolist() == d["candidates"].map(list).tolist()
    templates = [PromptTemplate(t) for t in DOMAIN_TEMPLATES["movies"][:3]]
    used = Counter()
    for row in d.itertuples():
        renders = [t.render(list(row.history), list(row.candidates)) for t in templates]
        assert row.prompt in renders
        used[renders.index(row.prompt)] += 1
    assert len(used) == 3
    assert a["prompt"].map(lambda p: p.startswith("This user has watched these movies recently:\n")).all()


def test_custom_templates_file(raw, tmp_path):
    path = tmp_path / "templates.json"
    path.write_text(json.dumps(["Seen {{braces}}:\n{history}\nPick one of {num_candidates}:\n{candidates}\nAnswer:"]))
    result = build(raw, tmp_path / "out", templates=str(path))
    row = result.dataset["test"][0]
    expected = "Seen {{braces}}:\n" + "\n".join(row["history"]) + "\nPick one of 10:\n"
    assert row["prompt"] == expected + "\n".join(row["candidates"]) + "\nAnswer:"
    path.write_text(json.dumps(["{history} {candidates} Answer: "]))
    with pytest.raises(ValueError, match="must end with 'Answer:'"):
        build(raw, tmp_path / "out", templates=str(path))


def test_popularity_sampling(tmp_path):
    rng = np.random.default_rng(3)
    weights = 1 / np.arange(1, 41)
    ratings = []
    for user in range(1, 81):
        items = rng.choice(np.arange(1, 41), size=12, replace=False, p=weights / weights.sum())
        ratings += [(user, int(i), 4, 1_000_000 + 100 * t + user) for t, i in enumerate(items)]
    raw = write_ml100k(tmp_path / "raw", ratings, {i: f"Movie {i}" for i in range(1, 41)})
    rates = {}
    for mode in ("uniform", "popularity"):
        result = build(raw, tmp_path / mode, negative_sampling=mode, num_candidates=5)
        items = result.items.to_pandas().set_index("title")
        picked, eligible = Counter(), Counter()  # per item: times drawn as a negative / times it could be drawn
        for split in ("train", "validation", "test"):
            for row in result.dataset[split].to_pandas().itertuples():
                picked.update(row.rejected)
                blocked = set(row.history) | {row.target}
                eligible.update(t for t in items.index if t not in blocked)
        rate = np.array([picked[t] / eligible[t] for t in items.index])
        rates[mode] = (rate, np.corrcoef(rate, items["train_count"].to_numpy() + 1.0)[0, 1])
    uniform, popularity = rates["uniform"], rates["popularity"]
    assert uniform[0].max() / uniform[0].min() < 2  # flat up to noise and pool-size effects
    assert popularity[1] > 0.95 and popularity[0].max() / popularity[0].min() > 10


def test_config_validation():
    with pytest.raises(ValueError, match="split_ratios"):
        BuildConfig(split_ratios=(0.8, 0.1, 0.2))
    with pytest.raises(ValueError, match="min_history"):
        BuildConfig(min_history=11)
    with pytest.raises(ValueError, match="negative_sampling"):
        BuildConfig(negative_sampling="hard")


def test_too_few_items_for_negatives(tmp_path):
    ratings = [(1, i, 4, 1000 + i) for i in range(1, 9)]
    raw = write_ml100k(tmp_path / "raw", ratings, {i: f"M{i}" for i in range(1, 9)})
    with pytest.raises(ValueError, match="lower num_candidates"):
        build(raw, tmp_path / "out", num_candidates=20)
    result = build(raw, tmp_path / "out2", num_candidates=4, max_history=3, split_ratios=(0.6, 0.2, 0.2))
    assert result.info["statistics"]["rows"] == {"train": 3, "validation": 1, "test": 1}
    assert all(len(c) == 4 for c in result.dataset["train"]["candidates"])
