"""Empty inputs are refused before any work, naming the split or the key.

An empty train split (`--split-ratios 0 0.5 0.5`), `data.max_train_rows 0`, and an empty `train_dataset` given to
`DynamicPOTrainer` each stop at once with an error naming what is empty, not with an `IndexError` in SFT or a bare
`StopIteration` at the first step.
"""

import pytest
from datasets import Dataset

from dataset_builders.build import main as build_main
from recipes.run import main
from trl_dynamicpo import DynamicPOTrainer

from ..test_recipes import tiny_recipe, tiny_world  # noqa: F401 (tiny_world: fixture)
from ..testing_utils import make_tiny_model, make_tokenizer, tiny_config


def test_builder_refuses_an_empty_train_split(tiny_world, tmp_path, capsys):  # noqa: F811
    _, raw, _ = tiny_world
    argv = ["movielens-100k", "--output", str(tmp_path / "built"), "--raw-dir", str(raw), "--no-progress"]

    assert build_main([*argv, "--split-ratios", "0", "0.5", "0.5"]) == 1

    err = capsys.readouterr().err
    assert "train split would be empty" in err and "split_ratios" in err
    assert not (tmp_path / "built").exists()


@pytest.mark.parametrize(
    "override, named",
    [
        (["--data.max_train_rows", "0"], "'data.max_train_rows' must be at least 1 or null, got 0"),
        (["--data.build_options.split_ratios", "[0, 0.5, 0.5]"], "the train split would be empty"),
    ],
)
def test_recipe_refuses_an_empty_train_split_before_any_work(tiny_world, tmp_path, capsys, override, named):  # noqa: F811
    root, _, model_dir = tiny_world
    path = tiny_recipe(tmp_path, model_dir, raw_name=str(root / "raw"))

    assert main([str(path), *override]) == 2

    assert named in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_trainer_refuses_an_empty_train_dataset(tmp_path):
    tokenizer = make_tokenizer()
    empty = Dataset.from_dict({"prompt": [], "chosen": [], "rejected": []})
    with pytest.raises(ValueError, match=r"`train_dataset` is empty \(0 rows\)"):
        DynamicPOTrainer(
            make_tiny_model(tokenizer), args=tiny_config(tmp_path), train_dataset=empty, processing_class=tokenizer
        )
