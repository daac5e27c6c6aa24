"""One run per run folder, with real processes.

A `recipes/run.py` job holds `<output_dir>/.run.lock` while it runs: a second job on the same folder exits with code 2
at once, naming the first one's PID, and changes nothing. After the first job is killed (`SIGKILL`: no cleanup runs)
the same second command runs to the end: a lock left by a killed process does not block.
"""

import json
import os
import signal
import subprocess
import sys
import time

from recipes.run import main
from recipes.run_lock import LOCK_FILE, RunLock, RunLockedError

from ..test_recipes import REPO, RUN_PY, summary, tiny_recipe, tiny_world  # noqa: F401 (tiny_world: fixture)
from ..testing_utils import file_tree


def _env():
    return {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def test_second_run_on_the_folder_is_refused_and_a_killed_holder_does_not_block(tiny_world, tmp_path):  # noqa: F811
    import shutil

    root, _, model_dir = tiny_world
    shutil.copytree(root / "raw", tmp_path / "raw")
    # A long SFT stage (it is killed long before it ends), nothing else.
    path = tiny_recipe(tmp_path, model_dir, stages=["data", "sft"], sft={"max_steps": 100000, "save_steps": 100000})
    out = tmp_path / "out"
    first = subprocess.Popen(
        [sys.executable, str(RUN_PY), str(path)],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "sft" / "inputs.json").is_file():  # the first job is training
            assert first.poll() is None, first.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the first run did not start its sft stage"
            time.sleep(0.2)
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == first.pid
        # The stage records (the first job itself keeps writing its dataset caches and checkpoints).
        before = {name: data for name, data in file_tree(out).items() if name.endswith(("DONE.json", "inputs.json"))}

        second = subprocess.run(
            [sys.executable, str(RUN_PY), str(path), "--sft.max_steps", "1"],
            cwd=REPO,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )

        assert second.returncode == 2, second.stderr[-3000:]
        assert f"another run (PID {first.pid}" in second.stderr and str(out) in second.stderr
        assert "Traceback" not in second.stderr
        assert first.poll() is None  # the first job goes on
        after = {name: data for name, data in file_tree(out).items() if name.endswith(("DONE.json", "inputs.json"))}
        assert after == before
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
        first.stdout.close()

    assert (out / LOCK_FILE).is_file()  # a kill leaves the file; the kernel released its lock
    third = subprocess.run(
        [sys.executable, str(RUN_PY), str(path), "--sft.max_steps", "1"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert third.returncode == 0, third.stderr[-3000:]
    assert summary(out)["sft"] == "ran" and not (out / LOCK_FILE).exists()


def test_lock_in_process_refuses_a_second_holder_and_an_output_dir_that_is_a_file(tiny_world, tmp_path, capsys):  # noqa: F811
    root, _, model_dir = tiny_world
    with RunLock(tmp_path / "run", command="first --preference.hub_token hf_" + "x" * 34):
        assert "hf_" not in (tmp_path / "run" / LOCK_FILE).read_text()
        try:
            RunLock(tmp_path / "run").acquire()
        except RunLockedError as err:
            assert f"another run (PID {os.getpid()}" in str(err)
        else:
            raise AssertionError("a second lock on the same folder was granted")
    assert not (tmp_path / "run" / LOCK_FILE).exists()

    # output_dir is a file: a clear error (exit 2) naming it, no traceback.
    (tmp_path / "taken").write_text("a file of mine")
    path = tiny_recipe(tmp_path, model_dir, output_dir=str(tmp_path / "taken"))
    assert main([str(path)]) == 2
    assert f"{tmp_path / 'taken'} is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "taken").read_text() == "a file of mine"
