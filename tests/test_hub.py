"""Hub round trips against the loopback Hub of `tests/conftest.py`, with the real Hugging Face clients.

Datasets go up with `push_dataset_folder` (`DatasetDict.push_to_hub` + the builder's card) and come back with
`load_dataset`; adapters go up with `push_adapter_folder` or peft's own `push_to_hub` and come back with
`PeftModel.from_pretrained` / `load_recommender` (from the Hub, a local folder, or the cache when offline). Failures
are injected in the server (HTTP 500, dropped connections) to check the error, the untouched local folder and the
retry.
"""

import contextlib
import fnmatch
import hashlib
import io
import itertools
import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from datasets import Dataset, DatasetDict, load_dataset
from huggingface_hub import DatasetCard, HfApi, ModelCard
from huggingface_hub import constants as hf_constants
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from dataset_builders.folder import push_dataset_folder
from trl_dynamicpo.hub import HubPushError, build_model_card, load_recommender, push_adapter_folder

from .hub_server import HubServer
from .testing_utils import make_tiny_model, make_tokenizer


_repo_counter = itertools.count()
PROMPT = "the user has listened to star wars toy story heat recently predict the next movie answer:"


def unique_repo(name: str) -> str:
    """A fresh repo id per call: tests never see each other's repos."""
    return f"tester/{name}-{next(_repo_counter)}"


def snapshot(folder) -> dict[str, str]:
    """sha256 of every file under `folder`, to check a push left it byte-identical."""
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def hub(hub_server):
    """The loopback Hub, without faults left over from another test."""
    hub_server.clear_faults()
    yield hub_server
    hub_server.clear_faults()
    hub_server.set_offline(False)


# ---------------------------------------------------------------------------------------------------------------------
# The loopback Hub itself
# ---------------------------------------------------------------------------------------------------------------------
def test_loopback_hub_errors_match_the_hub(hub, tmp_path):
    """The answers the clients rely on: error codes that map to the right exceptions, 409, 412, ranges, reset."""
    from huggingface_hub import CommitOperationAdd, get_session, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    api, repo_id = HfApi(), unique_repo("protocol")
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info(repo_id)
    api.create_repo(repo_id)
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.create_repo(repo_id)
    assert excinfo.value.response.status_code == 409
    first = api.repo_info(repo_id).sha  # a new repo already has a commit (.gitattributes)
    api.upload_file(path_or_fileobj=b"0123456789", path_in_repo="digits.txt", repo_id=repo_id)

    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "missing.txt", cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, "digits.txt", revision="no-such-branch", cache_dir=tmp_path)
    with pytest.raises(HfHubHTTPError) as excinfo:  # stale parent commit
        api.create_commit(repo_id, [CommitOperationAdd("x.txt", b"x")], commit_message="late", parent_commit=first)
    assert excinfo.value.response.status_code == 412

    response = get_session().get(f"{hub.url}/{repo_id}/resolve/main/digits.txt", headers={"Range": "bytes=2-5"})
    assert response.status_code == 206 and response.content == b"2345"
    assert response.headers["X-Repo-Commit"] == api.repo_info(repo_id).sha != first

    # reset() forgets every repo; on a server of its own, not to pull repos from under other tests of the session.
    other = HubServer().start()
    try:
        other_api = HfApi(endpoint=other.url)
        other_api.create_repo(repo_id)
        other.reset()
        with pytest.raises(RepositoryNotFoundError):
            other_api.repo_info(repo_id)
    finally:
        other.stop()


# ---------------------------------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------------------------------
def preference_rows(split: str, n: int) -> dict[str, list]:
    titles = ["Heat (1995)", "Fargo (1996)", "Alien (1979)", "Jaws (1975)", "Rocky (1976)", "Up (2009)"]
    rows = {key: [] for key in ["prompt", "chosen", "rejected", "candidates", "history", "target", "user_id"]}
    rows.update(target_id=[], timestamp=[])
    for i in range(n):
        candidates = titles[i % 3 :] + titles[: i % 3]
        target = candidates[i % len(candidates)]
        history = [f"{split} item {i}", "Titanic (1997)"]
        rows["prompt"].append(f"History: {', '.join(history)}. Candidates: {', '.join(candidates)}. Answer:")
        rows["chosen"].append(target)
        rows["rejected"].append([c for c in candidates if c != target])
        rows["candidates"].append(candidates)
        rows["history"].append(history)
        rows["target"].append(target)
        rows["user_id"].append(f"u{i}")
        rows["target_id"].append(str(titles.index(target)))
        rows["timestamp"].append(1_000_000 + i)
    return rows


DATASET_CARD = """---
license: mit
pretty_name: Tiny LastFM preferences
task_categories:
- text-generation
tags:
- recommendation
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*.parquet
  - split: validation
    path: data/validation-*.parquet
  - split: test
    path: data/test-*.parquet
- config_name: items
  data_files: items/*.parquet
---

# Tiny LastFM preferences

Built by `dataset_builders` for the tests: one row per user and target item, 6 candidates per prompt.
"""


@pytest.fixture
def dataset_folder(tmp_path):
    """A folder laid out like the output of `dataset_builders`, and the data it holds."""
    folder = tmp_path / "lastfm"
    splits = DatasetDict(
        {s: Dataset.from_dict(preference_rows(s, n)) for s, n in [("train", 5), ("validation", 3), ("test", 4)]}
    )
    for split, dataset in splits.items():
        dataset.to_parquet(folder / "data" / f"{split}-00000-of-00001.parquet")
    items = Dataset.from_dict(
        {
            "item_id": ["0", "1", "2"],
            "title": ["Heat (1995)", "Fargo (1996)", "Alien (1979)"],
            "train_count": [4, 2, 1],
            "popularity_rank": [1, 2, 3],
            "popularity_group": ["head", "mid", "tail"],
        }
    )
    items.to_parquet(folder / "items" / "items-00000-of-00001.parquet")
    (folder / "README.md").write_text(DATASET_CARD)
    (folder / "build_info.json").write_text(json.dumps({"source": "lastfm", "seed": 0, "num_candidates": 6}))
    return folder, splits, items


def assert_dataset_on_hub(repo_id, folder, splits, items):
    loaded = load_dataset(repo_id)
    assert sorted(loaded) == ["test", "train", "validation"]
    for split, dataset in splits.items():
        assert loaded[split].features == dataset.features
        assert loaded[split].to_list() == dataset.to_list()
    loaded_items = load_dataset(repo_id, "items")
    assert list(loaded_items) == ["train"]
    assert loaded_items["train"].to_list() == items.to_list()

    card = DatasetCard.load(repo_id)
    # The builder's card is the final card: its metadata and body survive push_to_hub ...
    assert card.data.license == "mit"
    assert card.data.pretty_name == "Tiny LastFM preferences"
    assert "Built by `dataset_builders` for the tests" in card.text
    # ... and its configs point at the pushed shards, with the features push_to_hub recorded.
    configs = {c["config_name"]: c for c in card.data.configs}
    assert configs["default"]["data_files"] == [
        {"split": "train", "path": "data/train-*"},
        {"split": "validation", "path": "data/validation-*"},
        {"split": "test", "path": "data/test-*"},
    ]
    assert configs["items"]["data_files"] == [{"split": "train", "path": "items/train-*"}]
    infos = {info["config_name"]: info for info in card.data.dataset_info}
    assert {s["name"]: s["num_examples"] for s in infos["default"]["splits"]} == {
        "train": 5,
        "validation": 3,
        "test": 4,
    }
    assert [s["num_examples"] for s in infos["items"]["splits"]] == [3]

    files = HfApi().list_repo_files(repo_id, repo_type="dataset")
    parquet = [f for f in files if f.endswith(".parquet")]
    patterns = [entry["path"] for config in configs.values() for entry in config["data_files"]]
    assert all(any(fnmatch.fnmatch(f, p) for p in patterns) for f in parquet)  # no orphan shard
    assert all(any(fnmatch.fnmatch(f, p) for f in parquet) for p in patterns)  # no empty config
    downloaded = HfApi().hf_hub_download(repo_id, "build_info.json", repo_type="dataset")
    assert Path(downloaded).read_bytes() == (folder / "build_info.json").read_bytes()


def test_push_dataset_folder_round_trip(hub, dataset_folder):
    folder, splits, items = dataset_folder
    before = snapshot(folder)
    repo_id = unique_repo("lastfm")

    url = push_dataset_folder(folder, repo_id)

    assert url.endswith(f"/datasets/{repo_id}")
    assert snapshot(folder) == before
    assert_dataset_on_hub(repo_id, folder, splits, items)
    # Pushing the same folder again changes nothing on the Hub (no new commit).
    commits = hub.commit_count(repo_id, "dataset")
    push_dataset_folder(folder, repo_id)
    assert hub.commit_count(repo_id, "dataset") == commits


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param({"status": 500, "skip": 1}, id="500-on-items-config-commit"),
        pytest.param({"drop": True, "skip": 2}, id="dropped-connection-on-card-commit"),
    ],
)
def test_push_dataset_folder_fails_midway_then_retry_finishes(hub, dataset_folder, fault):
    folder, splits, items = dataset_folder
    before = snapshot(folder)
    repo_id = unique_repo("lastfm-fault")
    hub.inject_fault("POST", rf"^/api/datasets/{repo_id}/commit/", **fault)

    with pytest.raises(HubPushError) as excinfo:
        push_dataset_folder(folder, repo_id)

    message = str(excinfo.value)
    assert repo_id in message and f"push_dataset_folder('{folder}', '{repo_id}')" in message
    assert ("'items' config" if fault.get("status") else "dataset card") in message
    assert snapshot(folder) == before

    hub.clear_faults()
    push_dataset_folder(folder, repo_id)
    assert snapshot(folder) == before
    assert_dataset_on_hub(repo_id, folder, splits, items)


# ---------------------------------------------------------------------------------------------------------------------
# Adapters
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A tiny random Llama and its tokenizer saved in a folder, so that adapter configs point at a loadable base."""
    folder = tmp_path_factory.mktemp("tiny-base")
    tokenizer = make_tokenizer()
    make_tiny_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, tokenizer


def make_adapter(base_path, seed=0):
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return get_peft_model(base, config).eval()


def logits_of(model, tokenizer, text=PROMPT):
    inputs = tokenizer(text, return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture(scope="module")
def adapter_folder(tmp_path_factory, tiny_base):
    """A saved adapter folder as the trainer writes it, and the logits the adapter gives on `PROMPT`."""
    base_path, tokenizer = tiny_base
    folder = tmp_path_factory.mktemp("adapter")
    model = make_adapter(base_path)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    eval_results = {"generation/hr@1": 0.25, "generation/valid_ratio": 1.0}
    (folder / "eval_results.json").write_text(json.dumps(eval_results))
    build_model_card(
        model_name="tiny-recommender",
        base_model=str(base_path),
        loss_type="dynamicpo",
        hyperparameters={"beta": 1.0, "num_negatives": 3},
        eval_results=eval_results,
    ).save(folder / "README.md")
    return folder, logits_of(model, tokenizer)


def assert_ready_recommender(model, tokenizer, expected_logits):
    assert isinstance(model, PeftModel) and not model.training
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    assert torch.equal(logits_of(model, tokenizer), expected_logits)
    # Batched greedy generation works as is (left padding, pad token, no token_type_ids).
    inputs = tokenizer([PROMPT, "hello world answer:"], return_tensors="pt", padding=True)
    output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert output.shape == (2, inputs["input_ids"].shape[1] + 3)


def test_peft_push_to_hub_round_trip(hub, tiny_base):
    base_path, tokenizer = tiny_base
    model = make_adapter(base_path, seed=1)
    expected = logits_of(model, tokenizer)
    repo_id = unique_repo("peft-native")

    model.push_to_hub(repo_id)

    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(hub.files(repo_id))
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), repo_id).eval()
    assert torch.equal(logits_of(reloaded, tokenizer), expected)


def test_push_adapter_folder_and_load_recommender(hub, adapter_folder):
    folder, expected = adapter_folder
    before = snapshot(folder)
    repo_id = unique_repo("adapter")

    url = push_adapter_folder(folder, repo_id)

    assert url.endswith(repo_id) and snapshot(folder) == before
    assert hub.files(repo_id)["adapter_model.safetensors"] == (folder / "adapter_model.safetensors").read_bytes()
    assert {"README.md", "eval_results.json", "tokenizer.json", "tokenizer_config.json"} <= set(hub.files(repo_id))
    assert_ready_recommender(*load_recommender(repo_id), expected)
    # The same from the local folder, without the Hub.
    assert_ready_recommender(*load_recommender(folder), expected)
    # The stock peft loader agrees.
    base = AutoModelForCausalLM.from_pretrained(
        json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    )
    assert torch.equal(logits_of(PeftModel.from_pretrained(base, repo_id).eval(), make_tokenizer()), expected)


def test_push_adapter_folder_uploads_no_token(hub, adapter_folder, tmp_path):
    # The trainer saves its config (with `hub_token`, when set) as training_args.bin next to the adapter.
    from trl_dynamicpo import DynamicPOConfig

    folder = tmp_path / "adapter"
    shutil.copytree(adapter_folder[0], folder)
    secret = "hf_tokenThatMustNotLeave1234567890"
    torch.save(DynamicPOConfig(str(tmp_path / "run"), hub_token=secret, report_to=[]), folder / "training_args.bin")
    assert secret.encode() in (folder / "training_args.bin").read_bytes()
    repo_id = unique_repo("no-token")

    push_adapter_folder(folder, repo_id)

    files = hub.files(repo_id)
    assert "adapter_model.safetensors" in files and "training_args.bin" not in files
    assert not [name for name, data in files.items() if secret.encode() in data]


def test_load_recommender_hub_base_offline_and_base_tokenizer(hub, tiny_base, tmp_path, monkeypatch):
    """Base model on the Hub, adapter without tokenizer files, then the same load offline from the cache."""
    base_path, _ = tiny_base
    base_repo = unique_repo("tiny-base")
    api = HfApi()
    api.create_repo(base_repo)
    # The base's tokenizer has no pad token: load_recommender must still return one.
    tokenizer = make_tokenizer()
    tokenizer.pad_token = None
    AutoModelForCausalLM.from_pretrained(base_path).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    api.upload_folder(repo_id=base_repo, folder_path=tmp_path / "base")

    model = make_adapter(tmp_path / "base", seed=2)
    model.peft_config["default"].base_model_name_or_path = base_repo
    model.save_pretrained(tmp_path / "adapter")  # no tokenizer files
    expected = logits_of(model, make_tokenizer())
    repo_id = unique_repo("adapter-hub-base")
    push_adapter_folder(tmp_path / "adapter", repo_id)

    loaded, loaded_tokenizer = load_recommender(repo_id)
    assert loaded_tokenizer.name_or_path == base_repo
    assert loaded_tokenizer.pad_token == loaded_tokenizer.eos_token == "</s>"
    assert_ready_recommender(loaded, loaded_tokenizer, expected)

    # Offline after one download: nothing reaches the server (it drops every connection anyway).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    hub.set_offline()
    requests_before = len(hub.requests)
    assert_ready_recommender(*load_recommender(repo_id), expected)
    assert len(hub.requests) == requests_before


def test_load_recommender_explicit_base_model(hub, adapter_folder, tiny_base, tmp_path):
    """`base_model=` wins over the adapter config, e.g. when the config names a folder of another machine."""
    folder, expected = adapter_folder
    base_path, _ = tiny_base
    moved = tmp_path / "adapter"
    moved.mkdir()
    for path in folder.iterdir():
        (moved / path.name).write_bytes(path.read_bytes())
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "/nonexistent/machine/base"
    (moved / "adapter_config.json").write_text(json.dumps(config))

    with pytest.raises(ValueError, match="base_model="):
        load_recommender(moved)
    assert_ready_recommender(*load_recommender(moved, base_model=str(base_path)), expected)

    # dtype, device and model kwargs reach the base model.
    model, _ = load_recommender(
        moved, base_model=str(base_path), dtype=torch.bfloat16, device="cpu", attn_implementation="sdpa"
    )
    assert model.get_base_model().model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.get_base_model().config._attn_implementation == "sdpa"


@pytest.mark.parametrize(
    "fault",
    [pytest.param({"status": 500}, id="500-on-commit"), pytest.param({"drop": True}, id="dropped-connection")],
)
def test_push_adapter_folder_fails_midway_then_retry_finishes(hub, adapter_folder, fault):
    folder, expected = adapter_folder
    before = snapshot(folder)
    repo_id = unique_repo("adapter-fault")
    hub.inject_fault("POST", rf"^/api/models/{repo_id}/commit/", **fault)

    with pytest.raises(HubPushError) as excinfo:
        push_adapter_folder(folder, repo_id)

    message = str(excinfo.value)
    assert repo_id in message and f"push_adapter_folder('{folder}', '{repo_id}')" in message
    assert snapshot(folder) == before
    assert "adapter_model.safetensors" not in hub.files(repo_id)  # the commit never happened

    hub.clear_faults()
    requests_before = len(hub.requests)
    push_adapter_folder(folder, repo_id)
    # The weights reached the LFS store before the failed commit: the retry does not upload them again.
    assert not [r for r in hub.requests[requests_before:] if r["method"] == "PUT"]
    assert snapshot(folder) == before
    assert_ready_recommender(*load_recommender(repo_id), expected)


def test_transient_upload_error_is_retried_by_the_client(hub, adapter_folder):
    folder, expected = adapter_folder
    repo_id = unique_repo("adapter-transient")
    fault = hub.inject_fault("PUT", r"^/lfs-objects/", status=503, times=1)

    push_adapter_folder(folder, repo_id)

    assert fault.hits == 1
    assert hub.files(repo_id)["adapter_model.safetensors"] == (folder / "adapter_model.safetensors").read_bytes()


def test_token_never_leaks(hub, adapter_folder, dataset_folder, caplog, capsys):
    token = "hf_LEAKCHECK_do_not_print_7c1e5a"
    folder, _ = adapter_folder
    data_folder = dataset_folder[0]
    caplog.set_level(logging.DEBUG)
    errors = []
    for kind, push, source in [
        ("models", push_adapter_folder, folder),
        ("datasets", push_dataset_folder, data_folder),
    ]:
        repo_id = unique_repo("leak")
        hub.inject_fault("POST", rf"^/api/{kind}/{repo_id}/commit/", status=500, times=None)
        with pytest.raises(HubPushError) as excinfo:
            push(source, repo_id, token=token)
        errors += [excinfo.value, excinfo.value.__cause__]
        hub.clear_faults()
        push(source, repo_id, token=token)

    # The token was used (the server saw it) ...
    assert any(r["authorization"] == f"Bearer {token}" for r in hub.requests)
    # ... but is nowhere in errors, logs, output or cards.
    captured = capsys.readouterr()
    for text in [*map(str, errors), *map(repr, errors), caplog.text, captured.out, captured.err]:
        assert token not in text
    card = build_model_card(
        model_name="m", base_model=None, loss_type="sdpo", hyperparameters={"hub_token": token, "beta": 1.0}
    )
    assert token not in str(card) and "hub_token" not in str(card)


# ---------------------------------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------------------------------
def front_matter(card: ModelCard) -> dict:
    match = re.match(r"^---\n(.*?)\n---\n", str(card), re.DOTALL)
    assert match, "the card has no YAML front matter"
    return yaml.safe_load(match.group(1))


def test_model_card_contents():
    card = build_model_card(
        model_name="lastfm-dynamicpo",
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        loss_type="dynamicpo",
        hyperparameters={
            "beta": 1.0,
            "num_negatives": 15,
            "learning_rate": 1e-5,
            "gamma": None,
            "output_dir": "/home/me/out",
        },
        dataset_name="tester/lastfm-sdpo",
        hub_model_id="tester/lastfm-dynamicpo",
        eval_results={
            "generation/hr@1": 0.4213,
            "generation/valid_ratio": 0.97,
            "ranking/ndcg@10": 0.61,
            "epoch": 3.0,
        },
        tags=["lastfm"],
        license="apache-2.0",
    )
    text = str(card)
    meta = front_matter(card)

    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["datasets"] == ["tester/lastfm-sdpo"]
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-generation"
    assert meta["license"] == "apache-2.0"
    assert set(meta["tags"]) == {"trl", "trl-dynamicpo", "recommendation", "lora", "dynamicpo", "lastfm"}
    [entry] = meta["model-index"]
    assert entry["name"] == "lastfm-dynamicpo"
    [result] = entry["results"]
    assert result["dataset"] == {"name": "tester/lastfm-sdpo", "type": "tester/lastfm-sdpo", "split": "test"}
    metrics = {m["name"]: (m["type"], m["value"]) for m in result["metrics"]}
    assert metrics == {
        "HR@1 (generation)": ("hr@1", 0.4213),
        "ValidRatio (generation)": ("valid_ratio", 0.97),
        "NDCG@10 (ranking)": ("ndcg@10", 0.61),
    }
    # ModelCard parses its own output back.
    parsed = ModelCard(text).data
    assert [r.metric_value for r in parsed.eval_results] == [0.4213, 0.97, 0.61]

    assert "None" not in text and "/home/me" not in text
    assert "| beta | 1 |" in text and "| num_negatives | 15 |" in text and "| learning_rate | 1e-05 |" in text
    assert "| HR@1 (generation) | 0.4213 |" in text and "| ValidRatio (generation) | 0.9700 |" in text
    assert "https://huggingface.co/datasets/tester/lastfm-sdpo" in text
    assert 'load_recommender("tester/lastfm-dynamicpo", base_model="HuggingFaceTB/SmolLM2-135M-Instruct")' in text
    for citation in [
        "2605.00327",
        "DASFAA",
        "2406.09215",
        "On Softmax Direct Preference Optimization",
        "TRL: Transformer Reinforcement Learning",
    ]:
        assert citation in text
    assert "2508.09653" not in text  # NAPO is cited only for the NAPO loss


def test_model_card_without_optional_fields_and_napo(tmp_path):
    local_base = tmp_path / "my-base"
    local_base.mkdir()
    for base_model in [None, str(local_base)]:
        card = build_model_card(
            model_name="run-7",
            base_model=base_model,
            loss_type="napo",
            hyperparameters={"beta": 0.5, "gamma0": 1.0, "alpha": 0.3},
            dataset_name=str(tmp_path / "data" / "lastfm"),
        )
        text = str(card)
        meta = front_matter(card)
        assert "base_model" not in meta and "datasets" not in meta and "model-index" not in meta
        assert "None" not in text and str(tmp_path) not in text
        assert "napo" in meta["tags"] and "2508.09653" in text and "2605.00327" in text
        assert "No evaluation results" in text and "base_model=" in text  # the snippet says to pass the base


def test_model_card_lists_the_teacher_baseline():
    results = {"ranking/hr@1": 0.1, "baseline_popularity/hr@1": 0.2, "baseline_sasrec/hr@1": 0.42}
    card = build_model_card(model_name="m", base_model=None, loss_type="dynamicpo", hyperparameters={},
                            eval_results=results)  # fmt: skip
    text = str(card)
    assert "| HR@1 (baseline_sasrec) | 0.4200 |" in text and "| HR@1 (baseline_popularity) | 0.2000 |" in text
    names = [
        r["name"] for entry in front_matter(card)["model-index"] for res in entry["results"] for r in res["metrics"]
    ]
    assert "HR@1 (baseline_sasrec)" in names


def test_model_card_mppo():
    card = build_model_card(model_name="run-9", base_model="org/base", loss_type="mppo", hyperparameters={"beta": 1.0})
    text, meta = str(card), front_matter(card)
    assert "mppo" in meta["tags"] and "MPPO" in text and "raw sequence probabilities" in text


def test_model_card_combined_losses_full_model():
    card = build_model_card(
        model_name="run-8",
        base_model="org/base",
        loss_type="sdpo+napo",
        hyperparameters={},
        library_name="transformers",
        hub_model_id="tester/run-8",
    )
    text, meta = str(card), front_matter(card)
    assert {"sdpo", "napo"} <= set(meta["tags"]) and "lora" not in meta["tags"]
    assert meta["library_name"] == "transformers" and "2508.09653" in text
    assert "a fine-tuned version of [org/base]" in text and "LoRA" not in text
    assert 'AutoModelForCausalLM.from_pretrained("tester/run-8")' in text and "load_recommender" not in text


def test_model_card_usage_snippet_runs(hub, adapter_folder):
    """The usage snippet of the card, executed as a user would, against the pushed adapter."""
    folder, _ = adapter_folder
    repo_id = unique_repo("snippet")
    push_adapter_folder(folder, repo_id)
    card = build_model_card(
        model_name="tiny-recommender", base_model=None, loss_type="sdpo", hyperparameters={}, hub_model_id=repo_id
    )
    [snippet] = re.findall(r"```python\n(.*?)```", str(card), re.DOTALL)
    assert repo_id in snippet

    namespace, output = {}, io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(snippet, "model_card_snippet", "exec"), namespace)
    assert isinstance(namespace["model"], PeftModel)
    prompt_length = namespace["inputs"]["input_ids"].shape[1]
    assert namespace["output"].shape[1] > prompt_length  # it generated an answer ...
    answer = namespace["tokenizer"].decode(namespace["output"][0, prompt_length:], skip_special_tokens=True)
    assert output.getvalue() == answer + "\n"  # ... and printed it
