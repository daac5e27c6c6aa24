"""Data errors are found in the data stage, before any training, naming the split, the row and the field.

- a test row whose target is not among its candidates (was reported only after SFT and preference training);
- a test row with a duplicate candidate (was evaluated silently);
- an sdpo-json item list with the NFD and the NFC form of one title (built, the card said "titles are unique", and
  training refused the row later): titles are normalized to NFC by the builder, so the repeat is found at build time.
"""

import unicodedata

import pytest

from dataset_builders import BuildConfig, RawDataError, run_build
from recipes.run import main

from ..dataset_builders.fixtures import sdpo_records, write_sdpo
from ..test_recipes import summary, tiny_recipe, tiny_world  # noqa: F401 (tiny_world: fixture)


def _target_not_among_candidates(row):
    return {**row, "target": "a title that is not a candidate"}, "field `target`: the target 'a title that is not"


def _duplicate_candidate(row):
    candidates = list(row["candidates"])
    candidates[1] = candidates[0] if candidates[0] != row["target"] else candidates[2]
    return {**row, "candidates": candidates}, "field `candidates[1]`: duplicate candidate"


@pytest.mark.parametrize("corrupt", [_target_not_among_candidates, _duplicate_candidate])
def test_bad_test_row_is_refused_by_the_data_stage(tiny_world, tmp_path, monkeypatch, capsys, corrupt):  # noqa: F811
    import dataset_builders.prepare as prepare

    root, _, model_dir = tiny_world
    real = prepare.load_preference_data
    expected = {}

    def load_with_a_bad_test_row(**kwargs):
        data, items = real(**kwargs)
        rows = data["test"].to_list()
        rows[2], expected["message"] = corrupt(rows[2])
        data["test"] = data["test"].from_list(rows, features=data["test"].features)
        return data, items

    monkeypatch.setattr(prepare, "load_preference_data", load_with_a_bad_test_row)
    path = tiny_recipe(tmp_path, model_dir, raw_name=str(root / "raw"))

    assert main([str(path)]) == 2  # a message, not a traceback

    err = capsys.readouterr().err
    assert "Split 'test': Row 2, " + expected["message"] in err
    status = summary(tmp_path / "out")
    assert status == {"data": "failed"}  # the run stopped there
    assert not (tmp_path / "out" / "sft").exists()  # nothing was trained


def test_sdpo_json_nfd_and_nfc_forms_of_one_title_are_one_title(tmp_path):
    splits = {split: sdpo_records(6, seed=i) for i, split in enumerate(("train", "validation", "test"))}
    record = splits["test"][3]
    nfc = "Café Tacvba"
    record["itemList"][0], record["itemList"][1] = nfc, unicodedata.normalize("NFD", nfc)
    record["trueSelection"] = record["itemList"][2]
    raw = write_sdpo(tmp_path / "raw", splits)

    with pytest.raises(RawDataError) as excinfo:
        run_build("sdpo-json", tmp_path / "out", BuildConfig(raw_dir=str(raw), progress=False, verbose=False))

    assert str(raw / "test.json") in str(excinfo.value) and "itemList repeats a title" in str(excinfo.value)
    assert not (tmp_path / "out").exists()
