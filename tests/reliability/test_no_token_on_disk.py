"""A Hub token given to a run is never written to disk and never uploaded.

A recipe run with `--sft.hub_token` / `--preference.hub_token` and a push to the loopback Hub of `tests/conftest.py`
(one training step per stage, a checkpoint each): every byte the run wrote (run summary, stage records, trainer
folders and checkpoints with their `training_args.bin`, card), everything it printed and every file the Hub received
is searched for the token. `push_adapter_folder` also leaves out a `training_args.bin` below the folder's top level.
"""

import itertools
import shutil

import torch

from recipes.run import main
from trl_dynamicpo import DynamicPOConfig
from trl_dynamicpo.hub import push_adapter_folder
from trl_dynamicpo.redaction import redact, redact_text

from ..test_recipes import summary, tiny_recipe, tiny_world  # noqa: F401 (tiny_world: fixture)


SECRET = "hf_SECRETtokenThatMustNeverLeave0123456789"
_repo_counter = itertools.count()


def files_holding(folder, secret: str) -> list[str]:
    return [str(p) for p in sorted(folder.rglob("*")) if p.is_file() and secret.encode() in p.read_bytes()]


def test_redaction_keeps_special_tokens_and_hides_secrets():
    values = {"hub_token": SECRET, "token": "x" * 12, "pad_token": "<pad>", "eos_token": "</s>", "beta": 0.1}
    assert redact(values) == {
        "hub_token": "<redacted>",
        "token": "<redacted>",
        "pad_token": "<pad>",
        "eos_token": "</s>",
        "beta": 0.1,
    }
    assert redact_text(f"run.py r.yaml --preference.hub_token {SECRET} --stages sft") == (
        "run.py r.yaml --preference.hub_token <redacted> --stages sft"
    )
    assert (
        redact_text("--sft.hub_token=abc123 --sft.pad_token <pad>")
        == "--sft.hub_token=<redacted> --sft.pad_token <pad>"
    )


def test_recipe_with_a_hub_token_writes_and_uploads_no_token(tiny_world, tmp_path, hub_server, capsys):  # noqa: F811
    root, _, model_dir = tiny_world
    shutil.copytree(root / "raw", tmp_path / "raw")
    repo_id = f"tester/no-token-{next(_repo_counter)}"
    path = tiny_recipe(
        tmp_path,
        model_dir,
        sft={"max_steps": 1},
        preference={"max_steps": 1},
        publish={"push_to_hub": True, "hub_model_id": repo_id},
    )
    argv = [str(path), "--sft.hub_token", SECRET, "--preference.hub_token", SECRET]

    assert main(argv) == 0

    out = tmp_path / "out"
    assert summary(out)["publish"] == "ran"
    # The trainers did write their config, and a checkpoint each: without the token.
    assert (out / "preference" / "training_args.bin").is_file()
    assert (out / "sft" / "checkpoint-1" / "training_args.bin").is_file()
    assert files_holding(tmp_path, SECRET) == []
    printed = capsys.readouterr()
    assert SECRET not in printed.out and SECRET not in printed.err
    uploaded = hub_server.files(repo_id)
    assert "adapter_model.safetensors" in uploaded
    assert [name for name, data in uploaded.items() if SECRET.encode() in data] == []
    # The summary says a token was set, not what it is.
    assert '"hub_token": "<redacted>"' in (out / "run_summary.json").read_text()


def test_push_adapter_folder_leaves_out_a_nested_training_args_bin(tiny_world, tmp_path, hub_server):  # noqa: F811
    root, _, model_dir = tiny_world
    folder = tmp_path / "adapter"
    (folder / "last").mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    args = DynamicPOConfig(str(tmp_path / "run"), hub_token=SECRET, report_to=[])
    torch.save(args, folder / "last" / "training_args.bin")
    torch.save(args, folder / "training_args.bin")
    repo_id = f"tester/no-token-{next(_repo_counter)}"

    push_adapter_folder(folder, repo_id)

    uploaded = hub_server.files(repo_id)
    assert "adapter_model.safetensors" in uploaded
    assert not [name for name in uploaded if name.endswith("training_args.bin")]
    assert [name for name, data in uploaded.items() if SECRET.encode() in data] == []
