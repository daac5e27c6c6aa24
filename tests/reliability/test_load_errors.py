"""`load_recommender` errors name the path or the repo and say what is missing.

A missing local path, a folder without adapter files, a repo the Hub does not have (the loopback Hub of
`tests/conftest.py`) and a repo missing from the cache when offline each raise `FileNotFoundError` with the path or
repo id, before any model is loaded: not `HFValidationError: Repo id must be in the form...` or a cache message that
names nothing.
"""

import itertools
import re
import shutil

import pytest
from huggingface_hub import HfApi
from huggingface_hub import constants as hf_constants
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from trl_dynamicpo.hub import load_recommender

from ..testing_utils import make_tiny_model, make_tokenizer


_repo_counter = itertools.count()


def unique_repo(name: str) -> str:
    return f"tester/load-errors-{name}-{next(_repo_counter)}"


@pytest.fixture(scope="module")
def adapter_folder(tmp_path_factory):
    """A saved tiny LoRA adapter (with its tokenizer) and the full base model it was trained on."""
    root = tmp_path_factory.mktemp("load-errors")
    tokenizer = make_tokenizer()
    base = make_tiny_model(tokenizer)
    base.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    base = AutoModelForCausalLM.from_pretrained(root / "base")  # so that the adapter config names its base
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))
    model.save_pretrained(root / "adapter")
    tokenizer.save_pretrained(root / "adapter")
    return root


@pytest.mark.parametrize("relative", [False, True])
def test_missing_local_path_names_it(tmp_path, monkeypatch, relative):
    missing = tmp_path / "no-such-run" / "final"
    if relative:
        monkeypatch.chdir(tmp_path)
        missing = "./no-such-run/final"
    with pytest.raises(FileNotFoundError) as excinfo:
        load_recommender(missing)
    message = str(excinfo.value)
    assert f"No adapter folder at {missing}: the path does not exist" in message
    assert "Repo id must be" not in message


@pytest.mark.parametrize(
    "remove, missing",
    [
        (["adapter_model.safetensors"], "has no adapter_model.safetensors (or adapter_model.bin)"),
        (["adapter_config.json"], "has no adapter_config.json,"),
        (["adapter_model.safetensors", "adapter_config.json"], "has no adapter_config.json and no adapter_model"),
    ],
)
def test_adapter_folder_without_weights_or_config_names_what_is_missing(adapter_folder, tmp_path, remove, missing):
    folder = tmp_path / "adapter"
    shutil.copytree(adapter_folder / "adapter", folder)
    for name in remove:
        (folder / name).unlink()
    with pytest.raises(FileNotFoundError) as excinfo:
        load_recommender(folder)
    assert f"The adapter folder {folder} {missing}" in str(excinfo.value)


def test_full_model_or_run_folder_gets_a_hint(adapter_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="it holds a full model, not a LoRA adapter"):
        load_recommender(adapter_folder / "base")
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=re.escape(f"the published adapter is {run / 'final'}")):
        load_recommender(run)


def test_missing_repo_on_the_hub_names_it(hub_server):
    repo_id = unique_repo("missing")
    with pytest.raises(FileNotFoundError) as excinfo:
        load_recommender(repo_id)
    assert f"No model repo {repo_id!r} on {hub_server.url}" in str(excinfo.value)


def test_repo_without_adapter_files_or_revision_names_it(hub_server):
    repo_id = unique_repo("no-adapter")
    HfApi().create_repo(repo_id)  # a repo with a .gitattributes only
    with pytest.raises(FileNotFoundError) as excinfo:
        load_recommender(repo_id)
    assert f"The model repo {repo_id!r} has no adapter_config.json and no adapter_model.safetensors" in str(
        excinfo.value
    )
    with pytest.raises(FileNotFoundError) as excinfo:
        load_recommender(repo_id, revision="no-such-branch")
    assert f"The model repo {repo_id!r} on {hub_server.url} has no revision 'no-such-branch'" in str(excinfo.value)


def test_missing_repo_offline_names_it_and_the_cache(hub_server, monkeypatch):
    repo_id = unique_repo("never-downloaded")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    hub_server.set_offline()
    try:
        requests_before = len(hub_server.requests)
        with pytest.raises(FileNotFoundError) as excinfo:
            load_recommender(repo_id)
        assert len(hub_server.requests) == requests_before  # offline: the Hub was not asked
    finally:
        hub_server.set_offline(False)
    message = str(excinfo.value)
    assert (
        f"The model repo {repo_id!r} is not in the local Hugging Face cache ({hf_constants.HF_HUB_CACHE})" in message
    )
    assert "HF_HUB_OFFLINE=1" in message
