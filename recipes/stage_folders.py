"""The output folder of one recipe stage, and what a run knows about it (the bookkeeping of `recipes/run.py`).

Two files tell a stage's state: `inputs.json`, written when the stage starts (its recipe fingerprint, the ids of the
upstream stages it read), and `DONE.json`, written last and atomically when it finished, which also lists every file
the stage wrote. From them a run decides to reuse a stage, resume it or re-run it from scratch, and tells the files it
wrote from files of the user's, which it never deletes or overwrites.
"""

import contextlib
import dataclasses
import time
import uuid
from pathlib import Path

from trl_dynamicpo.checkpoints import CHECKPOINT_MARKER
from trl_dynamicpo.io_utils import describe_files, files_under, read_json, write_json


class ForeignFilesError(RuntimeError):
    """A stage folder the run must (re)write holds files the recipe did not write."""


def remove_files(folder: Path, files: list[str]) -> None:
    """Remove `files` (relative to `folder`), then the sub-folders that removing them left empty; `folder` stays."""
    emptied = set()
    for name in files:
        path = folder / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        emptied.update(parent for parent in path.parents if folder in parent.parents)
    for path in sorted(emptied, key=lambda p: len(p.parts), reverse=True):  # the deepest first
        with contextlib.suppress(OSError):  # not empty: it still holds something that is not in `files`
            path.rmdir()


@dataclasses.dataclass
class StageRecord:
    """What a stage did, for the run table and `run_summary.json`."""

    stage: str
    status: str  # ran | reused | skipped | failed
    seconds: float = 0.0
    metrics: dict = dataclasses.field(default_factory=dict)
    outputs: dict = dataclasses.field(default_factory=dict)
    note: str = ""


class StageFolder:
    """The folder `path` of the stage `stage`; `inputs_path` is where it records its start (default
    `path/inputs.json`)."""

    def __init__(self, stage: str, path: Path, inputs_path: Path | None = None):
        self.stage, self.path, self.inputs_path = stage, path, inputs_path or path / "inputs.json"

    @property
    def done(self) -> dict | None:
        """The `DONE.json` of a finished stage, else None."""
        return read_json(self.path / "DONE.json")

    @property
    def started(self) -> dict | None:
        """The `inputs.json` the stage wrote when it last started, else None."""
        return read_json(self.inputs_path)

    def own_files(self) -> set[str]:
        """The files of the folder that the recipe wrote."""
        present, done = set(files_under(self.path)), self.done
        if done is not None:
            if not isinstance(done.get("files"), list):
                raise ForeignFilesError(
                    f"{self.path / 'DONE.json'} was written by an older recipes/run.py that did not list the files "
                    f"the '{self.stage}' stage wrote, so this run cannot tell them from files of yours and will not "
                    f"delete anything there: move the files you want to keep out of {self.path}, delete the folder, "
                    "then run the same command again."
                )
            # What later stages add inside the sub-folders this stage made is the run's too (`datasets` cache files).
            listed = set(done["files"])
            made = {name.split("/")[0] for name in listed if "/" in name}
            return {name for name in present if name in listed or name.split("/")[0] in made}
        # Unfinished: it started in a folder without files of the user's (checked then), so all of it is the run's.
        return present if self.inputs_path.is_file() else set()

    def foreign_files(self) -> list[str]:
        own = self.own_files()
        return [name for name in files_under(self.path) if name not in own]

    def foreign_files_error(self, foreign: list[str]) -> ForeignFilesError:
        """The error naming the files of `foreign` (from [`foreign_files`]) and what to do with them."""
        return ForeignFilesError(
            f"{self.path} holds {len(foreign)} file(s) that this recipe did not write: {describe_files(foreign)}. "
            f"The '{self.stage}' stage writes that folder and the recipe never deletes or overwrites files of "
            f"yours: move them out of {self.path} (or choose another output_dir), then run the same command again."
        )

    def reusable(self, inputs: dict, overwrite: bool) -> bool:
        done = self.done
        return done is not None and not overwrite and done.get("inputs") == inputs

    def start(self, inputs: dict, overwrite: bool) -> None:
        """On the main process, before the stage runs: remove what an earlier run of it wrote when it must start from
        scratch (finished, `overwrite`, or started with other inputs), then record `inputs`. An unfinished stage
        with the same inputs keeps its files: its training resumes from them."""
        started = self.started
        stale = started is not None and {key: started.get(key) for key in inputs} != inputs
        if started is not None and self.done is None and not overwrite and not stale:
            return
        own = files_under(self.path)  # all the run's: a foreign file stops the run before this is called
        if own:
            why = "--overwrite" if overwrite else "its inputs changed since it ran"
            print(
                f"    re-running from scratch ({why}): removing the {len(own)} file(s) this recipe wrote in "
                f"{self.path}: {describe_files(own)}"
            )
            remove_files(self.path, own)
        # Checkpoints of a stage started from here on are complete only with their marker (`find_resume_checkpoint`).
        write_json(self.inputs_path, {**inputs, "checkpoint_marker": CHECKPOINT_MARKER})

    def requires_checkpoint_marker(self) -> bool:
        return (self.started or {}).get("checkpoint_marker") == CHECKPOINT_MARKER

    def finish(self, inputs: dict, seconds: float, metrics: dict, outputs: dict) -> None:
        """Write `DONE.json`: last, atomically, listing every file the stage wrote."""
        write_json(
            self.path / "DONE.json",
            {
                "stage": self.stage,
                "id": uuid.uuid4().hex,
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "seconds": round(seconds, 2),
                "inputs": inputs,
                "metrics": metrics,
                "outputs": outputs,
                "files": sorted({*files_under(self.path), "DONE.json"}),
            },
        )
