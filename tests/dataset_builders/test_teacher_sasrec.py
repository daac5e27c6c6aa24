"""The SASRec teacher (`dataset_builders.teachers`) and `--teacher sasrec` builds: determinism, learning a learnable
rule, column alignment, no target leakage, errors, and the teacher row of `baseline_metrics`.

Everything runs on tiny synthetic MovieLens-format data in seconds; the full ml-100k build (the full teacher and 3
fold teachers) is marked slow.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from fixtures import (
    ML100K,
    REPO,
    file_hashes,
    movie_titles,
    sdpo_records,
    shared,
    synthetic_ratings,
    write_ml100k,
    write_sdpo,
)
from teacher_fixtures import RULE, SPLITS, TINY, config, make_teacher_data, write_rule_raw

from dataset_builders import BuildConfig, run_build
from dataset_builders.teachers import TeacherResult, get_teacher, run_teacher
from dataset_builders.teachers import sasrec as sasrec_module
from dataset_builders.teachers.sasrec import SASRecConfig, fit_and_score, train_sequences


@pytest.fixture(scope="module")
def rule_raw(tmp_path_factory):
    return write_rule_raw(tmp_path_factory.mktemp("rule") / "raw")


@pytest.fixture(scope="module")
def rule_build(rule_raw, tmp_path_factory):
    """The full teacher alone (no cross-fitting, which test_teacher_cross_fitting.py covers): every row's scores come
    from the model whose states and item vectors are written."""
    out = tmp_path_factory.mktemp("rule-build") / "out"
    return run_build("movielens-100k", out, config(rule_raw, teacher="sasrec", teacher_args=RULE, teacher_folds=1))


# --------------------------------------------------------------------------------------------------------------------
# Training


def test_two_trainings_with_one_seed_give_identical_scores(rule_raw):
    data = make_teacher_data(rule_raw)
    first = fit_and_score(data, SASRecConfig(**TINY, seed=3), progress=False)
    again = fit_and_score(data, SASRecConfig(**TINY, seed=3), progress=False)
    other = fit_and_score(data, SASRecConfig(**TINY, seed=4), progress=False)
    assert np.array_equal(first.candidate_scores, again.candidate_scores)
    assert np.array_equal(first.embeddings, again.embeddings)
    assert first.info["validation_curve"] == again.info["validation_curve"]
    assert not np.array_equal(first.candidate_scores, other.candidate_scores)
    # the global torch settings are restored
    assert not torch.are_deterministic_algorithms_enabled()


def test_teacher_learns_a_deterministic_next_item_rule(rule_build):
    metrics = rule_build.info["teacher"]["metrics"]
    print("rule teacher metrics:", json.dumps(metrics))
    assert metrics["test"]["rows"] == rule_build.dataset["test"].num_rows
    assert metrics["validation"]["hr@1"] >= 0.9 and metrics["test"]["hr@1"] >= 0.9  # random: 1 / 10
    assert metrics["test"]["ndcg@10"] >= 0.95


def test_metrics_come_from_the_written_candidate_scores(rule_build):
    from trl_dynamicpo.evaluation import baseline_metrics

    items = rule_build.items
    for split in ("validation", "test"):
        results = baseline_metrics(rule_build.dataset[split], items, seed=0)
        teacher = rule_build.info["teacher"]["metrics"][split]
        assert results["baseline_sasrec/hr@1"] == pytest.approx(teacher["hr@1"], abs=1e-6)
        assert results["baseline_sasrec/hr@5"] == pytest.approx(teacher["hr@5"], abs=1e-6)
        assert results["baseline_sasrec/ndcg@10"] == pytest.approx(teacher["ndcg@10"], abs=1e-6)
        assert results["baseline_sasrec/hr@1"] > results["baseline_random/hr@1"] + 0.5
        assert {"baseline_popularity/hr@1", "baseline_random/hr@1"} <= set(results)


# --------------------------------------------------------------------------------------------------------------------
# Columns, build info, card


def test_columns_are_aligned_with_candidates_and_rejected(rule_build):
    info = rule_build.info
    assert info["columns"][-3:] == ["candidate_scores", "rejected_scores", "embedding"]
    hidden = info["teacher"]["hyperparameters"]["hidden_size"]
    for split in SPLITS:
        frame = rule_build.dataset[split].to_pandas()
        for row in frame.itertuples():
            candidates, scores = list(row.candidates), np.asarray(row.candidate_scores)
            assert len(scores) == len(candidates) == 10 and np.isfinite(scores).all()
            assert ((scores > 0) & (scores < 1)).all()  # sigmoid probabilities
            expected = [scores[candidates.index(title)] for title in row.rejected]
            assert list(row.rejected_scores) == expected
            assert len(row.embedding) == hidden and np.isfinite(row.embedding).all()
    features = rule_build.dataset["train"].features
    assert features["candidate_scores"].feature.dtype == "float64"
    assert features["embedding"].feature.dtype == "float32"


def test_build_info_and_card_describe_the_teacher(rule_build):
    teacher = rule_build.info["teacher"]
    assert teacher["name"] == "sasrec" and teacher["hyperparameters"]["seed"] == 42  # the build's seed
    assert teacher["hyperparameters"]["hidden_size"] == 32 and teacher["train_seconds"] > 0
    assert set(teacher["metrics"]) == {"validation", "test", "train_in_sample"}
    assert 1 <= teacher["best_epoch"] <= teacher["epochs_run"] <= 40
    assert rule_build.info["parameters"]["teacher"] == "sasrec"
    on_disk = json.loads((rule_build.output_dir / "build_info.json").read_text())
    assert on_disk["teacher"] == json.loads(json.dumps(teacher))
    card = (rule_build.output_dir / "README.md").read_text()
    assert "## Teacher: sasrec" in card and "train split only" in card
    test = teacher["metrics"]["test"]
    assert f"| test | {test['rows']:,} | {test['hr@1']:.4f} |" in card
    assert "floats in all)" in card  # the example row's embedding is shortened
    # The card holds no wall time, so that it is deterministic (compared byte for byte across builds in
    # test_build_with_a_teacher_is_deterministic); the value itself may appear by chance among the embedding's digits.
    assert "train_seconds" not in card and "train seconds" not in card.lower()
    assert "test HR@1" in rule_build.summary


def test_item_embedding_table_reproduces_the_candidate_scores(rule_build):
    """item_embeddings.parquet holds the vectors the scores use: sigmoid(state . item vector) of every candidate equals
    the written `candidate_scores`, and ItemEmbeddingTable (hybrid item tokens) reads it by title."""
    import pyarrow.parquet as pq

    from trl_dynamicpo.item_tokens import ItemEmbeddingTable

    folder = rule_build.output_dir
    table = pq.read_table(folder / "item_embeddings.parquet").to_pandas()
    items = rule_build.items.to_pandas()
    assert sorted(table["item_id"]) == sorted(items["item_id"]) and sorted(table["title"]) == sorted(items["title"])
    hidden = rule_build.info["teacher"]["hyperparameters"]["hidden_size"]
    assert rule_build.info["teacher"]["item_embeddings"] == {
        "file": "item_embeddings.parquet",
        "rows": len(items),
        "dim": hidden,
    }
    assert "item_embeddings.parquet" in rule_build.info["output"]["files"]  # hashed: the folder stays our own
    assert "`item_embeddings.parquet`" in (folder / "README.md").read_text()
    lookup = ItemEmbeddingTable.from_folder(folder)
    for split in SPLITS:
        for row in rule_build.dataset[split].select(range(5)):
            vectors = lookup.lookup(row["candidates"]).astype(np.float64)
            logits = vectors @ np.asarray(row["embedding"], dtype=np.float64)
            np.testing.assert_allclose(1 / (1 + np.exp(-logits)), row["candidate_scores"], rtol=1e-4, atol=1e-6)


def test_loaded_folder_round_trip(rule_build, tmp_path):
    from datasets import load_dataset

    loaded = load_dataset(str(rule_build.output_dir), cache_dir=str(tmp_path / "cache"))
    for split in SPLITS:
        assert loaded[split].to_list() == rule_build.dataset[split].to_list()


def test_build_with_a_teacher_is_deterministic(rule_raw, tmp_path):
    args = {**TINY, "max_epochs": 2}
    first = run_build("movielens-100k", tmp_path / "a", config(rule_raw, teacher="sasrec", teacher_args=args))
    again = run_build("movielens-100k", tmp_path / "b", config(rule_raw, teacher="sasrec", teacher_args=args))
    assert file_hashes(first.output_dir) == file_hashes(again.output_dir)
    cards = [(r.output_dir / "README.md").read_text().replace(str(r.output_dir), "OUT") for r in (first, again)]
    assert cards[0] == cards[1]  # the card differs only in the loading snippet's folder name
    infos = [json.loads((r.output_dir / "build_info.json").read_text()) for r in (first, again)]
    for info in infos:
        # wall times: the only fields that differ
        info["teacher"].pop("train_seconds")
        info["teacher"]["cross_fitting"].pop("seconds")
    assert infos[0] == infos[1]
    plain = run_build("movielens-100k", tmp_path / "c", config(rule_raw))
    assert "teacher" not in plain.info and "teacher" not in plain.info["parameters"]
    assert plain.dataset["train"].column_names[-1] == "timestamp"


# --------------------------------------------------------------------------------------------------------------------
# Leakage


def test_training_sequences_hold_only_train_rows(tmp_path):
    raw = write_ml100k(tmp_path / "raw", synthetic_ratings(n_users=10, per_user=12, seed=2), movie_titles())
    data = make_teacher_data(raw)
    sequences = train_sequences(data)
    held_out = {(int(data.user[r]), int(data.target[r])) for r in np.flatnonzero(data.split > 0)}
    train_pairs = {(int(data.user[r]), int(data.target[r])) for r in np.flatnonzero(data.split == 0)}
    # rebuild each sequence's owner from its train rows: every item of every sequence is a train interaction
    owners = {}
    for r in np.flatnonzero(data.split == 0):
        history = data.hist_items[data.hist_offsets[r] : data.hist_offsets[r + 1]]
        for item in (*history.tolist(), int(data.target[r])):
            owners.setdefault(item, set()).add(int(data.user[r]))
    for sequence in sequences:
        users = set.intersection(*(owners[int(i)] for i in sequence))
        assert users, "a training sequence mixes users or holds a non-train item"
        assert not any((u, int(i)) in held_out for u in users for i in sequence)
    assert sum(len(s) - 1 for s in sequences) >= len(train_pairs)  # every train target is a label


def test_rows_are_scored_from_their_history_only(rule_raw, monkeypatch):
    """The model input of every scored row is exactly its history (never its target), and the score does not depend on
    the target: changing a row's recorded target leaves its scores unchanged."""
    data = make_teacher_data(rule_raw)
    seen = []
    original = sasrec_module.SASRec.last_states

    def recording(self, tokens, lengths):
        if not self.training:
            seen.extend(t[:n].tolist() for t, n in zip(tokens, lengths.tolist()))
        return original(self, tokens, lengths)

    monkeypatch.setattr(sasrec_module.SASRec, "last_states", recording)
    result = fit_and_score(data, SASRecConfig(**TINY, seed=0), progress=False)
    scored = seen[-len(data) :]  # the final pass scores every row once, in row order
    for r in range(len(data)):
        history = (data.hist_items[data.hist_offsets[r] : data.hist_offsets[r + 1]] + 1).tolist()
        assert scored[r] == history
        assert int(data.target[r]) + 1 not in scored[r]
    # train rows' scores are not trivially confident: the target is not always the top candidate
    ranks = []
    for r in np.flatnonzero(data.split == 0):
        lo, hi = data.cand_offsets[r], data.cand_offsets[r + 1]
        scores, items = result.candidate_scores[lo:hi], data.cand_items[lo:hi]
        ranks.append(int((scores > scores[items == data.target[r]][0]).sum()) + 1)
    assert np.mean(np.asarray(ranks) == 1) < 1.0


def test_train_row_scores_match_a_history_only_forward(rule_raw):
    data = make_teacher_data(rule_raw)
    cfg = SASRecConfig(**TINY, seed=1)
    model, _ = sasrec_module.train(data, cfg, progress=False)
    logits, offsets, states = sasrec_module.score_rows(model, data, np.arange(len(data)), cfg)
    model.eval()
    r = int(np.flatnonzero(data.split == 0)[5])
    history = torch.tensor([(data.hist_items[data.hist_offsets[r] : data.hist_offsets[r + 1]] + 1).tolist()])
    with torch.no_grad():
        state = model.states(history)[0, -1]
        with_target = model.states(torch.cat([history, torch.tensor([[int(data.target[r]) + 1]])], dim=1))[0, -1]
    candidates = torch.from_numpy(data.cand_items[data.cand_offsets[r] : data.cand_offsets[r + 1]] + 1)
    expected = (model.item_embedding(candidates) @ state).detach().numpy()
    assert np.allclose(logits[offsets[r] : offsets[r + 1]], expected, atol=1e-5)
    assert np.allclose(states[r], state.numpy(), atol=1e-6)
    assert not np.allclose(states[r], with_target.numpy(), atol=1e-3)  # the target as input would change it


# --------------------------------------------------------------------------------------------------------------------
# Errors


def test_unknown_teacher_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown teacher 'gru4rec'; known teachers: sasrec"):
        BuildConfig(teacher="gru4rec")
    with pytest.raises(ValueError, match="unknown teacher"):
        get_teacher("caser")


def test_bad_teacher_args():
    with pytest.raises(ValueError, match=r"unknown hyperparameters \['hiden_size'\].*known: .*hidden_size"):
        BuildConfig(teacher="sasrec", teacher_args={"hiden_size": 8})
    with pytest.raises(ValueError, match="JSON object"):
        BuildConfig(teacher="sasrec", teacher_args="{max_epochs: 3}")
    with pytest.raises(ValueError, match="multiple of num_heads"):
        BuildConfig(teacher="sasrec", teacher_args={"hidden_size": 10, "num_heads": 3})
    with pytest.raises(ValueError, match="without a teacher"):
        BuildConfig(teacher_args={"max_epochs": 3})
    assert BuildConfig(teacher="sasrec", teacher_args='{"max_epochs": 3}').teacher_args == {"max_epochs": 3}


def test_teacher_on_an_import_without_item_ids(tmp_path):
    splits = {s: sdpo_records(4, seed=i) for i, s in enumerate(SPLITS)}
    raw = write_sdpo(tmp_path / "raw", splits)
    cfg = BuildConfig(raw_dir=str(raw), progress=False, verbose=False, teacher="sasrec")
    with pytest.raises(ValueError, match="needs item ids.*sdpo-json imports titles only"):
        run_build("sdpo-json", tmp_path / "out", cfg)
    assert not (tmp_path / "out").exists()


def test_non_finite_teacher_scores_are_refused(rule_raw, monkeypatch):
    data = make_teacher_data(rule_raw)

    def diverged(data, config, progress=True):
        scores = np.full(len(data.cand_items), 0.5)
        scores[data.cand_offsets[7] + 2] = np.nan
        return TeacherResult(scores, np.zeros((len(data), 4), np.float32), {})

    monkeypatch.setattr(sasrec_module, "fit_and_score", diverged)
    with pytest.raises(ValueError, match=r"non-finite candidate_scores \(1 values; first in row 7 .*learning_rate"):
        run_teacher("sasrec", data, TINY, progress=False)


def test_baseline_metrics_checks_candidate_scores():
    from trl_dynamicpo.evaluation import baseline_metrics, baseline_scores

    rows = [
        {"candidates": ["A", "B", "C"], "target": "A", "candidate_scores": [0.9, 0.2, 0.1]},
        {"candidates": ["C", "B", "A"], "target": "B", "candidate_scores": [0.3, 0.1, 0.2]},
    ]
    results = baseline_metrics(rows, seed=0, ks=(1, 2))
    assert results["baseline_sasrec/hr@1"] == 0.5 and results["baseline_sasrec/hr@2"] == 0.5
    assert results["baseline_sasrec/mrr"] == pytest.approx((1 + 1 / 3) / 2)
    assert "baseline_random/hr@1" in results
    assert "baseline_teacher/hr@1" in baseline_metrics(rows, teacher_name="teacher")
    # without the column nothing changes
    plain = [{k: v for k, v in row.items() if k != "candidate_scores"} for row in rows]
    assert not any(k.startswith("baseline_sasrec") for k in baseline_metrics(plain))
    assert set(baseline_scores([r["candidates"] for r in rows])) == {"random"}
    bad = [dict(rows[0]), dict(rows[1], candidate_scores=[0.3, float("nan"), 0.2])]
    with pytest.raises(ValueError, match=r"Row 1: `candidate_scores\[1\]` is nan; .* must be finite"):
        baseline_metrics(bad)
    with pytest.raises(ValueError, match="Row 0: `candidate_scores` has 2 values for 3 candidates"):
        baseline_metrics([dict(rows[0], candidate_scores=[0.1, 0.2]), rows[1]])
    with pytest.raises(ValueError, match="Row 1 has no `candidate_scores`"):
        baseline_metrics([rows[0], plain[1]])


# --------------------------------------------------------------------------------------------------------------------
# Command line


def test_cli_teacher_options(rule_raw, tmp_path):
    script = REPO / "dataset_builders" / "build.py"
    args = json.dumps({**TINY, "max_epochs": 2})
    run = subprocess.run(
        [sys.executable, str(script), "movielens-100k", "--output", str(tmp_path / "out"), "--raw-dir", str(rule_raw)]
        + ["--num-candidates", "10", "--no-progress", "--teacher", "sasrec", "--teacher-args", args],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "teacher" in run.stdout and "test HR@1" in run.stdout
    info = json.loads((tmp_path / "out" / "build_info.json").read_text())
    assert info["teacher"]["hyperparameters"]["max_epochs"] == 2
    bad = subprocess.run(
        [sys.executable, str(script), "movielens-100k", "--output", str(tmp_path / "x"), "--teacher", "gru4rec"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "invalid choice: 'gru4rec'" in bad.stderr and "sasrec" in bad.stderr
    bad_args = subprocess.run(
        [sys.executable, str(script), "movielens-100k", "--output", str(tmp_path / "x"), "--raw-dir", str(rule_raw)]
        + ["--teacher", "sasrec", "--teacher-args", '{"epochs": 3}'],
        capture_output=True,
        text=True,
    )
    assert bad_args.returncode == 1 and "unknown hyperparameters ['epochs']" in bad_args.stderr
    assert "Traceback" not in bad_args.stderr


# --------------------------------------------------------------------------------------------------------------------
# Real data (slow: about 2 minutes of training for the full teacher on 2 idle cores, 1.9 times that for 3 fold teachers)


@pytest.mark.slow
def test_ml100k_teacher_beats_popularity(tmp_path):
    from trl_dynamicpo.evaluation import baseline_metrics

    result = run_build(
        "movielens-100k",
        tmp_path / "out",
        BuildConfig(raw_dir=str(shared(ML100K)), teacher="sasrec", progress=False, verbose=False),
    )
    metrics = result.info["teacher"]["metrics"]
    baselines = baseline_metrics(result.dataset["test"], result.items, seed=0)
    print("ml-100k teacher:", json.dumps(metrics), "popularity test HR@1", baselines["baseline_popularity/hr@1"])
    assert baselines["baseline_sasrec/hr@1"] == pytest.approx(metrics["test"]["hr@1"], abs=1e-6)
    assert metrics["test"]["hr@1"] > baselines["baseline_popularity/hr@1"] + 0.1  # popularity: 0.207
    assert metrics["train_in_sample"]["hr@1"] < 0.9
    # cross-fitted (the default 3 folds): the train rows' scores are as out-of-sample as the validation rows'
    assert abs(metrics["train_cross_fitted"]["hr@1"] - metrics["validation"]["hr@1"]) < 0.03


# --------------------------------------------------------------------------------------------------------------------
# NAPO on a built dataset: the teacher's columns drive its margin and its in-batch sharing


def test_napo_margin_moves_with_the_teachers_confidence_on_built_rows(rule_build, tmp_path):
    from datasets import Dataset

    from dataset_builders import load_dataset_folder
    from tests.testing_utils import make_tiny_model, make_tokenizer, tiny_config
    from trl_dynamicpo import DynamicPOTrainer

    train = load_dataset_folder(rule_build.output_dir)["train"]
    columns = ["prompt", "chosen", "rejected", "rejected_scores", "embedding"]
    # The two rows whose negatives the teacher finds least and most likely: their batches' means differ most.
    means = np.array([np.mean(scores) for scores in train["rejected_scores"]])
    low, high = int(np.argmin(means)), int(np.argmax(means))
    rows = Dataset.from_list([{c: train[i][c] for c in columns} for i in (low, high, low, high)])
    words = {w for r in rows for text in (r["prompt"], r["chosen"], *r["rejected"]) for w in text.split()}
    tokenizer = make_tokenizer(extra_words=sorted(words))
    trainer = DynamicPOTrainer(
        make_tiny_model(tokenizer),
        args=tiny_config(tmp_path, loss_type=["napo"], in_batch_negatives=False, napo_alpha=0.5, napo_gamma0=2.0),
        train_dataset=rows,
        processing_class=tokenizer,
    )
    assert not trainer._needs_reference(trainer.data_collator([trainer.train_dataset[0]]))  # the teacher replaces it
    trainer.model.train()
    for index in (0, 1):  # the low-confidence row, then the high-confidence one
        trainer.compute_loss(trainer.model, trainer.data_collator([trainer.train_dataset[index]]))
    metrics = trainer._metrics["train"]
    assert metrics["napo/batch_mean"] == pytest.approx([means[low], means[high]])
    running = 0.9 * means[low] + 0.1 * means[high]
    assert metrics["napo/gamma"][0] == pytest.approx(2.0)  # M = M_b on the first batch
    assert metrics["napo/gamma"][1] == pytest.approx(2.0 * (1 - 0.5 * (means[high] - running)))
    assert metrics["napo/gamma"][1] < metrics["napo/gamma"][0]  # a more confident teacher: a smaller margin

    # In-batch sharing by the similarity of the teacher's sequence states runs on the built `embedding` column.
    similar = DynamicPOTrainer(
        make_tiny_model(tokenizer),
        args=tiny_config(
            tmp_path, loss_type=["napo"], in_batch_negatives=True, in_batch_selection="similarity", max_steps=1
        ),
        train_dataset=rows,
        processing_class=tokenizer,
    )
    similar.train()
    assert similar.state.global_step == 1 and similar.state.log_history[0]["in_batch/shared_negatives"] > 0
