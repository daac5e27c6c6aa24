"""The command line: `--help` and real runs in a subprocess (script path, as a user types it)."""

import json
import subprocess
import sys

from fixtures import REPO, movie_titles, synthetic_ratings, write_ml100k

from dataset_builders import SOURCES


SCRIPT = REPO / "dataset_builders" / "build.py"


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_help_lists_datasets_and_options():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for name in SOURCES:
        assert name in result.stdout
    for option in (
        "--output",
        "--raw-dir",
        "--cache-dir",
        "--push-to-hub",
        "--negative-sampling",
        "--split",
        "--split-ratios",
        "--k-core",
        "--max-history",
        "--min-history",
        "--num-candidates",
        "--templates",
        "--head-share",
        "--genre",
        "--seed",
        "--no-progress",
    ):
        assert option in result.stdout, option
    assert "leave-last-out" in result.stdout and "popularity" in result.stdout


def test_cli_build_on_fixture(tmp_path):
    raw = write_ml100k(tmp_path / "raw", synthetic_ratings(), movie_titles())
    result = run_cli(
        "movielens-100k",
        "--output",
        tmp_path / "out",
        "--raw-dir",
        raw,
        "--num-candidates",
        "8",
        "--split",
        "leave-last-out",
        "--no-progress",
        "--seed",
        "3",
    )
    assert result.returncode == 0, result.stderr
    assert "Built movielens-100k" in result.stdout and "seconds taken" in result.stdout
    info = json.loads((tmp_path / "out" / "build_info.json").read_text())
    assert info["parameters"]["split"] == "leave-last-out" and info["parameters"]["seed"] == 3
    assert info["statistics"]["rows"]["test"] == 6  # one test row per user
    assert sorted(p.name for p in (tmp_path / "out" / "data").iterdir()) == [
        "test-00000-of-00001.parquet",
        "train-00000-of-00001.parquet",
        "validation-00000-of-00001.parquet",
    ]


def test_cli_reports_missing_files(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_cli("movielens-1m", "--output", tmp_path / "out", "--raw-dir", tmp_path / "empty")
    assert result.returncode == 1
    assert "ratings.dat" in result.stderr and "movies.dat" in result.stderr
    assert "https://files.grouplens.org/datasets/movielens/ml-1m.zip" in result.stderr
    assert "Traceback" not in result.stderr
