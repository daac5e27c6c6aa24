"""The study ETA of `benchmarks/quality.py` (`_Eta`), on hand-set timings."""

import pytest

from .testing_utils import import_benchmark


@pytest.fixture(scope="module")
def quality():
    return import_benchmark("quality")


def _eta(quality):
    eta = quality._Eta(None)  # no cache: prompt 380 tokens, answer 12 tokens
    eta.prompt, eta.answer = 100.0, 10.0
    return eta


def test_before_any_preference_cell_sft_seconds_per_token_predict_training(quality):
    eta = _eta(quality)
    eta.trained("sft", 110.0)  # 110 tokens per row -> 1 s per token
    eta.evaluated({"ranking_seconds": 30.0})
    # dynamicpo@15: 100 + 16 x 10 = 260 tokens -> 260 s of training, 30 s of ranking (generation never measured).
    assert eta.remaining(["dynamicpo@15"]) == pytest.approx(290.0)


def test_measured_preference_cells_replace_the_sft_estimate(quality):
    eta = _eta(quality)
    eta.trained("sft", 110.0)
    eta.trained("dmpo@3", 70.0)  # 100 + 4 x 10 = 140 tokens -> 0.5 s per token
    eta.evaluated({"ranking_seconds": 30.0, "generation_seconds": 50.0})
    eta.evaluated({"ranking_seconds": 10.0})
    # dmpo@15: 260 x 0.5 = 130 s, ranking mean 20 s, generation 50 s at K = 15; dmpo@1: 120 x 0.5 + 20 = 80 s.
    assert eta.remaining(["dmpo@15", "dmpo@1"]) == pytest.approx(200.0 + 80.0)
    assert eta.remaining([]) == 0.0


def test_rates_are_per_step_and_cached_training_counts_evaluation_only(quality):
    steps = {"sft": 2, "dmpo@3": 4, "dmpo@15": 8, "dynamicpo@15": 8}
    eta = quality._Eta(None, steps=steps.__getitem__)
    eta.prompt, eta.answer = 100.0, 10.0
    eta.trained("dmpo@3", 280.0, 4)  # 140 tokens x 4 steps -> 0.5 s per token and step
    eta.evaluated({"ranking_seconds": 20.0})
    # dmpo@15 untrained: 260 x 8 x 0.5 = 1040 s + 20 s ranking; dynamicpo@15 copied: its ranking only.
    assert eta.remaining(["dmpo@15", "dynamicpo@15"], untrained=["dmpo@15"]) == pytest.approx(1060.0 + 20.0)
    # A cached cell without its step count uses the planned steps.
    eta.trained("sft", 220.0)  # 110 tokens x 2 planned steps -> 1 s per token and step
    assert eta.sft_per_token == [pytest.approx(1.0)]


def test_yaml_ints_in_float_fields_fingerprint_like_the_command_line(quality):
    from_yaml = quality.QualityArguments(epochs=2, sft_epochs=1, beta=1, learning_rate=1e-3)
    from_cli = quality.QualityArguments(epochs=2.0, sft_epochs=1.0, beta=1.0, learning_rate=1e-3)
    assert type(from_yaml.epochs) is float and type(from_yaml.sft_epochs) is float
    assert quality.fingerprint(vars(from_yaml)) == quality.fingerprint(vars(from_cli))
    assert type(quality.QualityArguments(train_rows=64).train_rows) is int  # int fields stay ints
