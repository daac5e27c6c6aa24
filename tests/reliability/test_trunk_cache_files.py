"""The trunk cache is validated when it is opened and never deletes a file it did not write.

- A truncated or zeroed `states.bin` is found on open (size against the index, checksum recorded when the build
  completed), named in the error; `TrunkCache.build` moves the damaged files aside (`damaged-<folder>-<time>/`, not
  deleted) with a message naming them and builds the cache again, to the same states.
- A stale cache (the model changed) is rebuilt by the recipe removing only the cache's own files: a user's
  `notes.txt` in `trunk_cache/train/` stays; a truncated cache no longer blocks reruns.
"""

import shutil

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from recipes.run import main
from trl_dynamicpo.trunk_cache import STATES_FILE, TrunkCache, TrunkCacheDamagedError

from ..test_recipes import summary, tiny_recipe, tiny_world  # noqa: F401 (tiny_world: fixture)
from ..testing_utils import make_tiny_model, make_tokenizer


ROWS = [
    {"prompt": "the user watched heat fargo answer:", "candidates": ["jaws", "up cars", "coco"]},
    {"prompt": "the user watched dune answer:", "candidates": ["heat", "star wars", "rocky"]},
]


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 64)


def _zero(path):
    path.write_bytes(bytes(path.stat().st_size))


@pytest.mark.parametrize("damage, problem", [(_truncate, "bytes, its build wrote"), (_zero, "checksum mismatch")])
def test_damaged_cache_is_refused_on_open_then_set_aside_and_rebuilt(tmp_path, capsys, damage, problem):
    tokenizer = make_tokenizer()
    model = make_tiny_model(tokenizer, num_hidden_layers=3)
    folder = tmp_path / "train"
    kwargs = {"num_trainable_layers": 1, "show_progress": False}
    built = np.array(TrunkCache.build(model, tokenizer, ROWS, folder, **kwargs).states)
    (folder / "notes.txt").write_text("mine")
    damage(folder / STATES_FILE)

    with pytest.raises(TrunkCacheDamagedError) as excinfo:
        TrunkCache(folder)
    assert str(folder / STATES_FILE) in str(excinfo.value) and problem in str(excinfo.value)

    capsys.readouterr()
    rebuilt = TrunkCache.build(model, tokenizer, ROWS, folder, **kwargs)
    np.testing.assert_array_equal(np.array(rebuilt.states), built)
    (aside,) = tmp_path.glob("damaged-train-*")
    assert (aside / STATES_FILE).is_file() and (aside / "trunk_cache.json").is_file()
    printed = capsys.readouterr().out
    assert str(folder / STATES_FILE) in printed and f"moved to {aside} (not deleted)" in printed
    assert (folder / "notes.txt").read_text() == "mine"


def test_recipe_rebuilds_a_stale_or_truncated_cache_keeping_user_files(tiny_world, tmp_path, capsys):  # noqa: F811
    root, _, model_dir = tiny_world
    shutil.copytree(root / "raw", tmp_path / "raw")
    # Another base model (other weights, same tokenizer): the cache of the first one is stale for it.
    other = tmp_path / "other-model"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = AutoModelForCausalLM.from_pretrained(model_dir).config
    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(config).save_pretrained(other)
    tokenizer.save_pretrained(other)
    path = tiny_recipe(
        tmp_path,
        model_dir,
        model={"trainable_layers": 1},
        trunk_cache={"enabled": True},
        stages=["data", "sft"],
        sft={"max_steps": 1},
    )
    assert main([str(path)]) == 0
    cache = tmp_path / "out" / "trunk_cache" / "train"
    (cache / "notes.txt").write_text("what I tried")
    capsys.readouterr()

    assert main([str(path), "--model.model_name_or_path", str(other)]) == 0

    assert "is stale: rebuilding it" in capsys.readouterr().out
    assert (cache / "notes.txt").read_text() == "what I tried"
    assert TrunkCache(cache).fingerprint != ""  # rebuilt, valid

    _truncate(cache / STATES_FILE)
    assert main([str(path), "--model.model_name_or_path", str(other), "--overwrite"]) == 0
    printed = capsys.readouterr().out
    assert f"{cache / STATES_FILE} has" in printed and "(not deleted); building it again" in printed
    assert summary(tmp_path / "out")["sft"] == "ran" and (cache / "notes.txt").is_file()
