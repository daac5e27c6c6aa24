"""An interrupted recipe resumes: a checkpoint cut while it was being saved is set aside, not resumed from.

A kill (Ctrl-C, `kill -9`) while the Trainer writes `checkpoint-N` leaves an empty or half-written folder. The rerun
must resume from the last complete checkpoint, move the cut one aside (renamed, never deleted) and say so, and finish.
One test builds the state such a kill leaves from a finished run (deterministic); the other really SIGKILLs a recipe
subprocess in the middle of a checkpoint save and runs the same command again.

The runs use the tiny world of `tests/test_recipes.py` (a random 2-layer Llama, MovieLens-format raw files).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recipes.run import main

from ..test_recipes import copy_run, summary, tiny_recipe, tiny_world  # noqa: F401 (tiny_world is a fixture)
from ..testing_utils import file_tree


REPO = Path(__file__).resolve().parents[2]
RUN_PY = REPO / "recipes" / "run.py"


@pytest.fixture(scope="module")
def trained_run(tiny_world):  # noqa: F811
    """A finished data + preference run (3 steps, a checkpoint at every step), copied by the tests."""
    root, _, model_dir = tiny_world
    folder = root / "resume"
    folder.mkdir()
    shutil.copytree(root / "raw", folder / "raw")
    path = tiny_recipe(folder, model_dir, stages=["data", "preference"], preference={"max_steps": 3})
    assert main([str(path)]) == 0
    return folder


@pytest.mark.parametrize("cut", ["empty", "weights-only"])
def test_checkpoint_cut_during_its_save_is_set_aside_and_the_rerun_resumes(trained_run, tmp_path, capsys, cut):
    path = copy_run(trained_run, tmp_path / "run")
    pref = tmp_path / "run" / "out" / "preference"
    # The state a kill during the save of checkpoint-3 leaves: no DONE.json, no final adapter, and a checkpoint-3
    # that is empty (killed right after its mkdir) or holds the weights only (killed before the optimizer/state).
    for name in ("DONE.json", "adapter_model.safetensors", "trainer_state.json"):
        (pref / name).unlink()
    checkpoint = pref / "checkpoint-3"
    kept = {"empty": [], "weights-only": ["adapter_model.safetensors", "adapter_config.json"]}[cut]
    for entry in checkpoint.iterdir():
        if entry.name not in kept:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    cut_files = file_tree(checkpoint)
    # Mark checkpoint-2's log, so that a run resumed from it can be told from one that restarted or used checkpoint-3.
    state_path = pref / "checkpoint-2" / "trainer_state.json"
    state = json.loads(state_path.read_text())
    state["log_history"][0]["resume_marker"] = 2
    state_path.write_text(json.dumps(state))
    capsys.readouterr()

    assert main([str(path), "--stages", "preference"]) == 0

    out = capsys.readouterr().out
    aside = [p for p in pref.iterdir() if p.name.startswith("incomplete-checkpoint-3-")]
    assert len(aside) == 1, sorted(p.name for p in pref.iterdir())
    assert str(checkpoint) in out and f"as {aside[0]}" in out  # the message names the cut folder and where it went
    assert file_tree(aside[0]) == cut_files  # set aside as it was, nothing deleted
    assert f"resuming from {pref / 'checkpoint-2'}" in out
    assert summary(tmp_path / "run" / "out")["preference"] == "ran"
    final_state = json.loads((pref / "trainer_state.json").read_text())
    assert final_state["global_step"] == 3
    assert final_state["log_history"][0].get("resume_marker") == 2
    assert [log["step"] for log in final_state["log_history"] if "loss" in log] == [1, 2, 3]
    assert (pref / "checkpoint-3" / "recipe_checkpoint.json").is_file()  # the step was saved again, completely

    # The finished stage is reused; the set-aside folder stays.
    assert main([str(path), "--stages", "preference"]) == 0
    assert summary(tmp_path / "run" / "out")["preference"] == "reused" and aside[0].is_dir()


def _newest_checkpoint(folder: Path) -> Path | None:
    try:
        names = [entry.name for entry in os.scandir(folder) if entry.name.startswith("checkpoint-")]
    except FileNotFoundError:
        return None
    steps = [int(name.split("-")[1]) for name in names if name.split("-")[1].isdigit()]
    return folder / f"checkpoint-{max(steps)}" if steps else None


def _kill_during_a_save(process: subprocess.Popen, folder: Path, timeout: float) -> Path | None:
    """SIGKILL `process` while it writes a checkpoint in `folder`; returns that checkpoint (None: never caught one).

    A checkpoint without `trainer_state.json` (which the Trainer writes after the weights, optimizer and RNG states)
    is being saved. The process is stopped (SIGSTOP) first and the folder looked at again, so that the kill is known
    to land before the save finished; if the save finished in between, the process goes on to its next save.
    """
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        checkpoint = _newest_checkpoint(folder)
        if checkpoint is not None and not (checkpoint / "trainer_state.json").exists():
            process.send_signal(signal.SIGSTOP)
            if not (checkpoint / "trainer_state.json").exists():
                process.kill()
                process.wait()
                return checkpoint
            process.send_signal(signal.SIGCONT)
        time.sleep(0.0005)
    return None


def test_recipe_killed_during_a_checkpoint_save_resumes_when_run_again(tiny_world, tmp_path):  # noqa: F811
    root, _, model_dir = tiny_world
    shutil.copytree(root / "raw", tmp_path / "raw")
    path = tiny_recipe(tmp_path, model_dir, stages=["data", "preference"], preference={"max_steps": 6})
    pref = tmp_path / "out" / "preference"
    command = [sys.executable, str(RUN_PY), str(path)]
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}

    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        cut = _kill_during_a_save(process, pref, timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
        stderr = process.communicate()[1].decode(errors="replace")
    assert cut is not None, (
        f"the run ended (exit {process.returncode}) before a save could be caught:\n{stderr[-3000:]}"
    )
    assert process.returncode == -signal.SIGKILL and not (pref / "DONE.json").exists()
    cut_files = file_tree(cut)

    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    assert rerun.returncode == 0, rerun.stderr[-4000:]
    aside = [p for p in pref.iterdir() if p.name.startswith(f"incomplete-{cut.name}-")]
    assert len(aside) == 1 and f"{cut} is incomplete" in rerun.stdout and str(aside[0]) in rerun.stdout
    assert file_tree(aside[0]) == cut_files
    assert json.loads((pref / "trainer_state.json").read_text())["global_step"] == 6
    assert json.loads((pref / "DONE.json").read_text())["stage"] == "preference"
