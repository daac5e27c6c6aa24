"""Resume training from the last *complete* checkpoint, whatever cut the run.

A `kill -9` (or a Ctrl-C) while the Trainer writes `checkpoint-N/` leaves a folder that `trainer.train(
resume_from_checkpoint=...)` cannot read, and every rerun fails on it. [`CompleteCheckpointCallback`] writes a marker
(`recipe_checkpoint.json`, the name the recipes have always used, with the checkpoint's file list) *after* the Trainer
has saved everything else, so a checkpoint without it, or missing a listed file, was cut. [`find_resume_checkpoint`]
returns the newest complete checkpoint of an output folder and the cut ones, which [`set_aside`] renames (never
deletes).

Works with any `transformers.Trainer`, including [`DynamicPOTrainer`] and TRL's trainers.

Example:

```python
from trl_dynamicpo.checkpoints import CompleteCheckpointCallback, find_resume_checkpoint, set_aside

trainer.add_callback(CompleteCheckpointCallback())
last, cut = find_resume_checkpoint(trainer.args.output_dir)
for folder, problem in cut:
    print(f"{folder} is incomplete ({problem}): set aside as {set_aside(folder)}")
trainer.train(resume_from_checkpoint=last)
```
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from transformers import TrainerCallback

from .io_utils import describe_files, files_under, read_json, write_json
from .redaction import save_training_args


# Written into `checkpoint-N/` once the Trainer has saved everything there: a checkpoint without it was cut by a kill.
CHECKPOINT_MARKER = "recipe_checkpoint.json"
# Not `checkpoint-...`: the Trainer's `save_total_limit` rotation deletes every `checkpoint-*` folder it counts.
INCOMPLETE_PREFIX = "incomplete-"
_CHECKPOINT_DIR = re.compile(r"checkpoint-(\d+)")


class CompleteCheckpointCallback(TrainerCallback):
    """Writes [`CHECKPOINT_MARKER`] (the step and the file list) into each checkpoint, in `on_save`, which runs after
    the Trainer (and a trainer's own `_save_checkpoint` additions) wrote the whole checkpoint. The checkpoint's
    `training_args.bin` is first rewritten without the Hub token the Trainer pickled into it in plain text."""

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            if (folder / "training_args.bin").is_file():
                save_training_args(args, folder / "training_args.bin")
            files = [name for name in files_under(folder) if name != CHECKPOINT_MARKER]
            write_json(folder / CHECKPOINT_MARKER, {"global_step": state.global_step, "files": files})


def checkpoint_problem(folder: str | os.PathLike, require_marker: bool = True) -> str | None:
    """Why the checkpoint `folder` cannot be resumed from, or None when it is complete.

    Args:
        folder (`str` or `os.PathLike`): a `checkpoint-N` folder.
        require_marker (`bool`, *optional*, defaults to `True`): whether a checkpoint without the marker is cut. False
            for checkpoints written without [`CompleteCheckpointCallback`]: then one whose `trainer_state.json` reads
            is complete.
    """
    folder = Path(folder)
    if not any(folder.iterdir()):
        return "it is empty"
    marker = read_json(folder / CHECKPOINT_MARKER)
    if marker is not None:
        missing = [name for name in marker.get("files", []) if not (folder / name).exists()]
        return f"it lacks {describe_files(missing, limit=3)}" if missing else None
    if require_marker:
        return f"it has no {CHECKPOINT_MARKER}, which is written once the checkpoint is saved"
    return "its trainer_state.json is missing or cut" if read_json(folder / "trainer_state.json") is None else None


def find_resume_checkpoint(
    output_dir: str | os.PathLike, require_marker: bool = True
) -> tuple[str | None, list[tuple[Path, str]]]:
    """The newest complete `checkpoint-N` of `output_dir` (None: train from the start), and the newer checkpoints a
    kill cut while they were saved, each with the reason ([`checkpoint_problem`]). Nothing is changed on disk."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None, []
    steps = {int(m.group(1)): path for path in folder.iterdir() if (m := _CHECKPOINT_DIR.fullmatch(path.name))}
    cut = []
    for _, path in sorted(steps.items(), reverse=True):  # the newest first
        if path.is_dir():
            problem = checkpoint_problem(path, require_marker)
            if problem is None:
                return str(path), cut
            cut.append((path, problem))
    return None, cut


def train_loss_over_all_steps(
    log_history: list[dict], resumed_step: int, session_loss: float, global_step: int
) -> float:
    """The mean training loss over every step of a run resumed at `resumed_step`: `Trainer.train` reports the mean
    over the steps it ran itself (`session_loss`, steps `resumed_step + 1..global_step`), so the steps before the
    resume are taken from the logged losses the checkpoint carried (each the mean of its logging interval).

    Args:
        log_history (`list[dict]`): `trainer.state.log_history` after training (it starts with the checkpoint's).
        resumed_step (`int`): the step of the checkpoint the run resumed from.
        session_loss (`float`): the `train_loss` that `trainer.train` returned.
        global_step (`int`): the last step.

    Returns:
        `float`: the mean over steps `1..global_step`. Steps between the last log and the checkpoint (when
        `logging_steps` does not divide `save_steps`) count at the mean of the logged steps before them.
    """
    logged = sorted(
        {log["step"]: log["loss"] for log in log_history if "loss" in log and log.get("step", 0) > 0}.items()
    )
    logged = [(step, loss) for step, loss in logged if step <= resumed_step]
    if not logged or global_step <= resumed_step:
        return session_loss
    total, previous = 0.0, 0
    for step, loss in logged:
        total += loss * (step - previous)
        previous = step
    total += total / previous * (resumed_step - previous)
    return (total + session_loss * (global_step - resumed_step)) / global_step


def aside_path(path: str | os.PathLike, prefix: str = INCOMPLETE_PREFIX) -> Path:
    """`<prefix><name>-<time>` next to `path`, with a counter when that name is taken (never an existing path)."""
    path = Path(path)
    stamp, counter = time.strftime("%Y%m%d-%H%M%S"), 1
    target = path.with_name(f"{prefix}{path.name}-{stamp}")
    while target.exists():
        counter += 1
        target = path.with_name(f"{prefix}{path.name}-{stamp}-{counter}")
    return target


def set_aside(path: str | os.PathLike) -> Path:
    """Rename `path` to `incomplete-<name>-<time>` next to it (never over an existing folder); returns the new path."""
    target = aside_path(path)
    os.replace(path, target)
    return target
