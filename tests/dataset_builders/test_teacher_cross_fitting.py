"""Cross-fitted teacher scores (`teacher_folds`, `dataset_builders.teachers.cross_fit`): the train rows' scores come
from fold teachers that never saw the scored users, while everything the full teacher writes (validation and test
rows, every `embedding`, `item_embeddings.parquet`) is identical to a build without cross-fitting.

Tiny synthetic MovieLens-format data; a few seconds per build.
"""

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from fixtures import REPO, file_hashes, movie_titles, synthetic_ratings, write_ml100k
from teacher_fixtures import TINY, config, make_teacher_data, write_rule_raw

from dataset_builders import BuildConfig, run_build
from dataset_builders.teachers import HELD_OUT, fold_seed, run_teacher, user_folds
from dataset_builders.teachers import sasrec as sasrec_module


TEACHER_ONLY = ("candidate_scores", "rejected_scores")


@pytest.fixture(scope="module")
def rule_raw(tmp_path_factory):
    return write_rule_raw(tmp_path_factory.mktemp("rule") / "raw")


@pytest.fixture(scope="module")
def builds(rule_raw, tmp_path_factory):
    """The same build without cross-fitting (folds=1) and with 3 folds."""
    root = tmp_path_factory.mktemp("xfit")
    return {
        folds: run_build(
            "movielens-100k",
            root / str(folds),
            config(rule_raw, teacher="sasrec", teacher_args=TINY, teacher_folds=folds),
        )
        for folds in (1, 3)
    }


def record_fold_teachers(monkeypatch) -> list[dict]:
    """Patch the SASRec teacher to record, per training (the full teacher first, then one per fold), the rows it was
    given, the sequences it trained on and the scores it returned."""
    calls = []
    fit_and_score, train_sequences = sasrec_module.fit_and_score, sasrec_module.train_sequences

    def recording_sequences(data):
        sequences = train_sequences(data)
        calls[-1]["sequences"] = sequences
        return sequences

    def recording_fit(data, config, progress=True):
        calls.append({"split": data.split.copy(), "seed": config.seed})
        result = fit_and_score(data, config, progress)
        calls[-1]["scores"] = result.candidate_scores
        return result

    monkeypatch.setattr(sasrec_module, "fit_and_score", recording_fit)
    monkeypatch.setattr(sasrec_module, "train_sequences", recording_sequences)
    return calls


# --------------------------------------------------------------------------------------------------------------------
# No leak: a fold teacher never saw the users it scores


def test_fold_teachers_never_see_the_users_they_score(tmp_path, monkeypatch):
    # Random items per user: a training sequence's items identify the users it can come from.
    raw = write_ml100k(tmp_path / "raw", synthetic_ratings(n_users=12, per_user=14, seed=5), movie_titles())
    data = make_teacher_data(raw, num_candidates=8)
    calls = record_fold_teachers(monkeypatch)
    result = run_teacher("sasrec", data, TINY, progress=False, folds=3)
    assert len(calls) == 4 and not (calls[0]["split"] == HELD_OUT).any()  # the full teacher, then 3 folds
    assert np.array_equal(calls[0]["split"], data.split)

    train = np.flatnonzero(data.split == 0)
    user_items = {}  # the items of each user's train rows (histories and targets)
    for r in train:
        history = data.hist_items[data.hist_offsets[r] : data.hist_offsets[r + 1]].tolist()
        user_items.setdefault(int(data.user[r]), set()).update([*history, int(data.target[r])])
    row_of_candidate = np.repeat(np.arange(len(data)), np.diff(data.cand_offsets))
    scored_by = np.full(len(data), -1)
    records = result.info["cross_fitting"]["fold_teachers"]
    for fold, (call, record) in enumerate(zip(calls[1:], records)):
        held = call["split"] == HELD_OUT
        held_users = set(data.user[held].tolist())
        # every row of a held-out user is held out: no train row to learn from, no validation row to early-stop on
        assert held_users and np.isin(data.user, list(held_users)).sum() == held.sum()
        learned_from = set(data.user[(call["split"] == 0) | (call["split"] == 1)].tolist())
        assert not held_users & learned_from
        # what it trained on: no sequence that only a held-out user's train rows could have made
        assert call["sequences"]
        for sequence in call["sequences"]:
            owners = {u for u, items in user_items.items() if set(sequence.tolist()) <= items}
            assert owners - held_users, f"fold {fold} trained on a sequence of held-out users {owners}"
        assert record["train_sequences"] == len(call["sequences"])
        assert record["train_transitions"] == sum(len(s) - 1 for s in call["sequences"])
        assert record["held_out_users"] == len(held_users) and record["seed"] == call["seed"]
        # the fold's train rows carry this fold teacher's scores
        rows = np.flatnonzero(held & (data.split == 0))
        assert record["scored_train_rows"] == len(rows) and (scored_by[rows] == -1).all()
        scored_by[rows] = fold
        mask = np.isin(row_of_candidate, rows)
        assert np.array_equal(result.candidate_scores[mask], call["scores"][mask])
    assert (scored_by[train] >= 0).all()  # every train row is scored out-of-fold exactly once
    # validation and test rows keep the full teacher's scores
    outside = np.isin(row_of_candidate, train, invert=True)
    assert np.array_equal(result.candidate_scores[outside], calls[0]["scores"][outside])
    assert not np.array_equal(result.candidate_scores[~outside], calls[0]["scores"][~outside])


def test_user_folds_are_balanced_and_keep_a_user_together(rule_raw):
    data = make_teacher_data(rule_raw)
    folds = user_folds(data, 3, seed=42)
    users = np.unique(data.user)
    per_user = [np.unique(folds[data.user == u]) for u in users]
    assert all(len(f) == 1 for f in per_user)
    sizes = np.bincount([int(f[0]) for f in per_user], minlength=3)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == len(users)  # 40 users: 14, 13, 13
    assert np.array_equal(folds, user_folds(data, 3, seed=42))
    assert not np.array_equal(folds, user_folds(data, 3, seed=43))


# --------------------------------------------------------------------------------------------------------------------
# The full teacher's outputs do not depend on the folds


def test_full_teacher_outputs_are_identical_to_a_build_without_folds(builds):
    plain, crossed = builds[1], builds[3]
    hashes = [file_hashes(b.output_dir) for b in (plain, crossed)]
    for path in (
        "data/validation-00000-of-00001.parquet",
        "data/test-00000-of-00001.parquet",
        "item_embeddings.parquet",
    ):
        assert hashes[0][path] == hashes[1][path], path  # byte for byte
    assert hashes[0]["data/train-00000-of-00001.parquet"] != hashes[1]["data/train-00000-of-00001.parquet"]
    train = [b.dataset["train"].to_pandas() for b in (plain, crossed)]
    for column in train[0].columns:  # only the scores change; `embedding` (float32, compared exactly) does not
        values = [[np.asarray(v).tolist() for v in frame[column]] for frame in train]
        assert (values[0] == values[1]) != (column in TEACHER_ONLY), column
    teachers = [b.info["teacher"] for b in (plain, crossed)]
    for key in ("best_epoch", "epochs_run", "validation_curve", "train_sequences", "hyperparameters"):
        assert teachers[0][key] == teachers[1][key], key
    for split in ("validation", "test", "train_in_sample"):
        assert teachers[0]["metrics"][split] == teachers[1]["metrics"][split]
    assert "train_cross_fitted" not in teachers[0]["metrics"] and "cross_fitting" not in teachers[0]


def test_run_teacher_full_outputs_do_not_depend_on_folds(rule_raw):
    data = make_teacher_data(rule_raw)
    plain = run_teacher("sasrec", data, TINY, progress=False, folds=1)
    crossed = run_teacher("sasrec", data, TINY, progress=False, folds=2)
    outside = np.repeat(data.split != 0, np.diff(data.cand_offsets))
    assert np.array_equal(plain.candidate_scores[outside], crossed.candidate_scores[outside])
    assert np.array_equal(plain.embeddings, crossed.embeddings)
    assert np.array_equal(plain.item_embeddings, crossed.item_embeddings)
    assert not np.array_equal(plain.candidate_scores[~outside], crossed.candidate_scores[~outside])


# --------------------------------------------------------------------------------------------------------------------
# Determinism


def test_cross_fitted_builds_are_deterministic(rule_raw, builds, tmp_path):
    again = run_build(
        "movielens-100k", tmp_path / "again", config(rule_raw, teacher="sasrec", teacher_args=TINY, teacher_folds=3)
    )
    first = builds[3]
    assert file_hashes(first.output_dir) == file_hashes(again.output_dir)
    # the card holds no wall time (only the loading snippet's folder differs)
    cards = [(r.output_dir / "README.md").read_text().replace(str(r.output_dir), "OUT") for r in (first, again)]
    assert cards[0] == cards[1]
    infos = [json.loads((r.output_dir / "build_info.json").read_text()) for r in (first, again)]
    for info in infos:
        info["teacher"].pop("train_seconds")  # wall times
        info["teacher"]["cross_fitting"].pop("seconds")
        info.pop("output")  # the file hashes: compared above
    assert infos[0] == infos[1]
    seeds = [f["seed"] for f in first.info["teacher"]["cross_fitting"]["fold_teachers"]]
    assert seeds == [fold_seed(42, fold) for fold in range(3)]  # derived from the teacher's seed, the build's here
    assert len({42, *seeds}) == 4
    other = run_build(
        "movielens-100k",
        tmp_path / "other",
        config(rule_raw, teacher="sasrec", teacher_args=TINY, teacher_folds=3, seed=7),
    )
    assert other.info["teacher"]["cross_fitting"]["fold_teachers"][0]["seed"] == fold_seed(7, 0) != seeds[0]


# --------------------------------------------------------------------------------------------------------------------
# Build info, card, summary


def test_build_info_card_and_summary_report_the_cross_fitted_scores(builds):
    from trl_dynamicpo.evaluation import baseline_metrics

    result = builds[3]
    teacher = result.info["teacher"]
    assert result.info["parameters"]["teacher_folds"] == 3
    folds = teacher["cross_fitting"]
    assert folds["folds"] == 3 and len(folds["fold_teachers"]) == 3 and "out-of-fold" in folds["note"]
    assert sum(f["scored_train_rows"] for f in folds["fold_teachers"]) == result.dataset["train"].num_rows
    assert set(teacher["metrics"]) == {"validation", "test", "train_in_sample", "train_cross_fitted"}
    # the recorded train metrics are those of the written (cross-fitted) scores
    written = baseline_metrics(result.dataset["train"], result.items, seed=0)
    assert written["baseline_sasrec/hr@1"] == pytest.approx(teacher["metrics"]["train_cross_fitted"]["hr@1"], abs=1e-6)
    in_sample = builds[1].info["teacher"]["metrics"]["train_in_sample"]
    assert teacher["metrics"]["train_in_sample"] == in_sample
    card = (result.output_dir / "README.md").read_text()
    crossed = teacher["metrics"]["train_cross_fitted"]
    assert f"| train (cross-fitted) | {crossed['rows']:,} | {crossed['hr@1']:.4f} |" in card
    assert f"| train (in-sample) | {in_sample['rows']:,} | {in_sample['hr@1']:.4f} |" in card
    assert "**out-of-fold** (cross-fitting over 3 folds" in card and "**full teacher**" in card
    assert f"train (cross-fitted) {crossed['hr@1']:.4f}, train in-sample {in_sample['hr@1']:.4f}" in result.summary
    assert "+ 3 folds" in result.summary
    plain_card = (builds[1].output_dir / "README.md").read_text()
    assert "cross-fitted" not in plain_card and "in-sample (optimistic)" in plain_card
    assert builds[1].info["parameters"]["teacher_folds"] == 1


def test_builds_without_a_teacher_do_not_record_folds(rule_raw, tmp_path):
    plain = run_build("movielens-100k", tmp_path / "out", config(rule_raw))
    assert "teacher_folds" not in plain.info["parameters"]


# --------------------------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("value", [0, -2, 2.5, "3", True, None])
def test_bad_teacher_folds_are_refused(value):
    with pytest.raises(
        ValueError, match=r"teacher_folds must be an integer >= 2 \(cross-fitting folds\) or 1 \(off\)"
    ):
        BuildConfig(teacher="sasrec", teacher_folds=value)


def test_more_folds_than_users_is_refused(rule_raw, tmp_path):
    cfg = config(rule_raw, teacher="sasrec", teacher_args=TINY, teacher_folds=41)  # 40 users
    with pytest.raises(
        ValueError, match=r"teacher_folds=41 needs at least 41 users with train rows; this build has 40"
    ):
        run_build("movielens-100k", tmp_path / "out", cfg)
    assert not (tmp_path / "out").exists()


def test_cli_teacher_folds(rule_raw, tmp_path):
    script = REPO / "dataset_builders" / "build.py"
    base = [sys.executable, str(script), "movielens-100k", "--raw-dir", str(rule_raw), "--num-candidates", "10"]
    base += ["--no-progress", "--teacher", "sasrec", "--teacher-args", json.dumps({**TINY, "max_epochs": 1})]
    run = subprocess.run(
        [*base, "--output", str(tmp_path / "out"), "--teacher-folds", "2"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "train (cross-fitted)" in run.stdout
    info = json.loads((tmp_path / "out" / "build_info.json").read_text())
    assert info["parameters"]["teacher_folds"] == 2 and info["teacher"]["cross_fitting"]["folds"] == 2
    bad = subprocess.run(
        [*base, "--output", str(tmp_path / "x"), "--teacher-folds", "0"], capture_output=True, text=True
    )
    assert bad.returncode == 1 and "teacher_folds must be an integer >= 2" in bad.stderr and "got 0" in bad.stderr
    assert "Traceback" not in bad.stderr
    help_text = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True).stdout
    assert "--teacher-folds" in help_text and "Cross-fitting folds" in help_text


# --------------------------------------------------------------------------------------------------------------------
# NAPO reads the cross-fitted scores


def test_napo_reads_the_cross_fitted_rejected_scores(builds, tmp_path):
    from datasets import Dataset

    from dataset_builders import load_dataset_folder
    from tests.testing_utils import make_tiny_model, make_tokenizer, tiny_config
    from trl_dynamicpo import DynamicPOTrainer

    train = load_dataset_folder(builds[3].output_dir)["train"]
    in_sample = builds[1].dataset["train"]["rejected_scores"]
    # rejected_scores stay aligned with the (cross-fitted) candidate_scores
    for row in train.select(range(20)):
        expected = [row["candidate_scores"][row["candidates"].index(title)] for title in row["rejected"]]
        assert row["rejected_scores"] == expected
    index = next(i for i, scores in enumerate(train["rejected_scores"]) if scores != in_sample[i])
    columns = ["prompt", "chosen", "rejected", "rejected_scores", "embedding"]
    rows = Dataset.from_list([{c: train[index][c] for c in columns}])
    words = {w for r in rows for text in (r["prompt"], r["chosen"], *r["rejected"]) for w in text.split()}
    tokenizer = make_tokenizer(extra_words=sorted(words))
    trainer = DynamicPOTrainer(
        make_tiny_model(tokenizer),
        args=tiny_config(tmp_path, loss_type=["napo"], in_batch_negatives=False),
        train_dataset=rows,
        processing_class=tokenizer,
    )
    trainer.model.train()
    trainer.compute_loss(trainer.model, trainer.data_collator([trainer.train_dataset[0]]))
    batch_mean = trainer._metrics["train"]["napo/batch_mean"][0]
    assert batch_mean == pytest.approx(np.mean(train[index]["rejected_scores"]))
    assert batch_mean != pytest.approx(np.mean(in_sample[index]))


def test_fold_data_marks_only_the_fold_users(rule_raw):
    """`HELD_OUT` rows are invisible to the SASRec trainer: no training sequence and no early-stopping row."""
    data = make_teacher_data(rule_raw)
    held = user_folds(data, 3, seed=0) == 0
    fold = replace(data, split=np.where(held, HELD_OUT, data.split).astype(data.split.dtype))
    users = set(data.user[held].tolist())
    trained = len(sasrec_module.train_sequences(fold))
    assert trained == len(sasrec_module.train_sequences(data)) - len(users)  # one train run per user here
    assert not users & set(fold.user[fold.split == 1].tolist())
