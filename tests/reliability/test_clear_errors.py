"""Errors that name the problem: the path, the file or the key, and what to do, without a traceback where the user
can fix it.

- a missing local model path in a recipe (not `HFValidationError: Repo id must be in the form...`);
- a model folder without a tokenizer (not "Couldn't instantiate the backend tokenizer");
- a truncated `adapter_model.safetensors`, in a recipe and in `load_recommender` (not `SafetensorError: incomplete
  metadata` naming no file);
- the Goodreads recipe offline says what to download and where to put it (`data.raw_dir`), exit code 2;
- on a full disk, the failed write of `run_summary.json` does not hide the stage's error and leaves no `.tmp`.
(An `output_dir` that is a file: `test_run_lock.py`.)
"""

import errno
import shutil
import urllib.error
from pathlib import Path

import pytest
from peft import LoraConfig, get_peft_model

from recipes.run import RecipeRun, main
from trl_dynamicpo.hub import load_recommender

from ..test_recipes import REPO, tiny_recipe, tiny_world  # noqa: F401 (tiny_world: fixture)
from ..testing_utils import make_tiny_model, make_tokenizer


def _truncate(path: Path, keep: int = 40) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def test_missing_model_path_and_model_without_tokenizer_are_named(tiny_world, tmp_path, capsys):  # noqa: F811
    root, _, model_dir = tiny_world
    missing = tmp_path / "models" / "no-such-model"
    path = tiny_recipe(tmp_path, missing, raw_name=str(root / "raw"))
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert f"'model.model_name_or_path': No model folder at {missing}: the path does not exist" in err
    assert "Repo id must be" not in err and not (tmp_path / "out").exists()

    bare = tmp_path / "model-without-tokenizer"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model_dir / name, bare / name)
    path = tiny_recipe(tmp_path, bare, raw_name=str(root / "raw"))
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert f"The model folder {bare} has no tokenizer files (none of tokenizer.json" in err
    assert "tokenizer.save_pretrained" in err and not (tmp_path / "out").exists()


def test_truncated_adapter_is_named_by_load_recommender(tmp_path):
    tokenizer = make_tokenizer()
    base = make_tiny_model(tokenizer)
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    model = get_peft_model(make_tiny_model(tokenizer), LoraConfig(r=2, target_modules=["q_proj"]))
    model.peft_config["default"].base_model_name_or_path = str(tmp_path / "base")
    model.save_pretrained(tmp_path / "adapter")
    weights = tmp_path / "adapter" / "adapter_model.safetensors"
    _truncate(weights)
    with pytest.raises(ValueError) as excinfo:
        load_recommender(tmp_path / "adapter")
    assert f"{weights} is damaged or incomplete" in str(excinfo.value)


def test_truncated_sft_adapter_is_named_by_the_recipe(tiny_world, tmp_path, capsys):  # noqa: F811
    root, _, model_dir = tiny_world
    path = tiny_recipe(tmp_path, model_dir, raw_name=str(root / "raw"), sft={"max_steps": 1})
    assert main([str(path), "--stages", "data", "sft"]) == 0
    weights = tmp_path / "out" / "sft" / "adapter_model.safetensors"
    _truncate(weights)
    capsys.readouterr()

    assert main([str(path), "--stages", "preference"]) == 2

    err = capsys.readouterr().err
    assert f"{weights} is damaged or incomplete" in err and "--overwrite --stages sft" in err


def test_goodreads_recipe_offline_says_what_to_download_and_where(tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    argv = [str(REPO / "recipes" / "goodreads.yaml"), "--output_dir", str(tmp_path / "out"), "--stages", "data"]

    assert main(argv) == 2  # a message, not a traceback

    err = capsys.readouterr().err
    assert "Raw files needed for 'goodreads-ucsd' are missing" in err
    assert "(from https://" in err and "Temporary failure in name resolution" in err
    assert "in a recipe: data.raw_dir" in err


def test_full_disk_keeps_the_first_error_and_leaves_no_tmp(tiny_world, tmp_path, monkeypatch, capsys):  # noqa: F811
    root, _, model_dir = tiny_world
    path = tiny_recipe(tmp_path, model_dir, raw_name=str(root / "raw"))
    full = OSError(errno.ENOSPC, "No space left on device")

    def stage_data(self):
        raise OSError(errno.ENOSPC, "No space left on device", "out/data/dataset/data-00000-of-00001.arrow")

    real_write_text = Path.write_text

    def write_text(self, text, *args, **kwargs):
        if self.name.startswith(".run_summary.json"):  # the disk fills up halfway through the summary
            real_write_text(self, text[:10], *args, **kwargs)
            raise full
        return real_write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(RecipeRun, "stage_data", stage_data)
    monkeypatch.setattr(Path, "write_text", write_text)

    with pytest.raises(OSError) as excinfo:
        main([str(path)])

    assert (
        excinfo.value.filename == "out/data/dataset/data-00000-of-00001.arrow"
    )  # the stage's error, not the summary's
    assert "could not write" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "out").rglob("*.tmp")] == []
