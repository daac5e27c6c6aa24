"""Tiny raw data with a learnable next-item rule, and the helpers that build teacher inputs from it, shared by the
teacher tests (`test_teacher_sasrec.py`, `test_teacher_cross_fitting.py`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fixtures import write_ml100k

from dataset_builders import BuildConfig
from dataset_builders.download import resolve_raw_files
from dataset_builders.pipeline import build_rows, prepare_interactions, sample_candidates, teacher_data
from dataset_builders.sources import get_source
from dataset_builders.teachers import TeacherData


SPLITS = ("train", "validation", "test")
#: A few seconds of training: for tests of plumbing, not of quality.
TINY = {"hidden_size": 16, "max_len": 12, "max_epochs": 3, "patience": 3, "batch_size": 16}
#: Enough training to learn the rule of `rule_ratings` (validation and test HR@1 >= 0.9).
RULE = {"hidden_size": 32, "max_len": 12, "max_epochs": 40, "patience": 40, "learning_rate": 0.01, "dropout": 0.1}


def rule_ratings(n_users=40, n_items=30, per_user=15, seed=0):
    """Every user watches consecutive items: after item i comes item i + 1 (mod n_items), from a random start; the
    users' k-th interactions share a time step, so the time split cuts every user's sequence near its end."""
    rng = np.random.default_rng(seed)
    ratings = []
    for user in range(1, n_users + 1):
        start = int(rng.integers(0, n_items))
        for k in range(per_user):
            ratings.append((user, (start + k) % n_items + 1, 4, 1_000_000 + 1000 * k + user))
    return ratings


def write_rule_raw(folder: Path) -> Path:
    """MovieLens-100K raw files of `rule_ratings()` (30 titled movies) in `folder`."""
    return write_ml100k(folder, rule_ratings(), {i: f"Movie {i} ({1950 + i})" for i in range(1, 31)})


def config(raw, **overrides) -> BuildConfig:
    """A quiet build of `raw` with 10 candidates per row; `overrides` replace any field."""
    values = {"raw_dir": str(raw), "progress": False, "verbose": False, "num_candidates": 10}
    values.update(overrides)
    return BuildConfig(**values)


def make_teacher_data(raw, **overrides) -> TeacherData:
    """The `TeacherData` a build hands its teacher (same steps as `run_build`)."""
    cfg = config(raw, **overrides)
    source = get_source("movielens-100k")
    files = resolve_raw_files(
        source.cache_name(cfg), source.requirements(cfg), raw_dir=cfg.raw_dir, offline=True, progress=False
    )
    dropped = {}
    interactions, catalog = prepare_interactions(source.parse(files, cfg), cfg, dropped)
    rows, extra = build_rows(interactions, cfg, dropped)
    sample_candidates(rows, extra["position"], len(catalog), cfg, None, 1)
    return teacher_data(rows, extra["position"], len(catalog), cfg.seed)
