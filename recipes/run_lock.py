"""One run per run folder: an exclusive lock on `<output_dir>/.run.lock` for as long as a `recipes/run.py` job runs.

Two jobs writing one `output_dir` would mix their stage records and checkpoints silently (each exits 0). The lock is an
`fcntl.flock` on the lock file, which records the holder (PID, host, start time, command without tokens): a second
job refuses with a [`RunLockedError`] naming that PID. The kernel releases a `flock` when its process ends, however it
ends, so a lock left by a killed job never blocks the next one; the stale file is simply taken over.

Example:

```python
from recipes.run_lock import RunLock

with RunLock("outputs/quickstart", command="python recipes/run.py recipes/quickstart.yaml"):
    ...  # the stages
```
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from trl_dynamicpo.redaction import redact_text


LOCK_FILE = ".run.lock"


class RunLockedError(RuntimeError):
    """Another job holds the run folder's lock."""


class OutputDirError(RuntimeError):
    """`output_dir` cannot be a run folder (it is a file, or a parent of it is)."""


def prepare_output_dir(output_dir: str | os.PathLike) -> Path:
    """Create the run folder `output_dir` (and its parents), or raise [`OutputDirError`] naming the path that is a
    file where a folder must be."""
    path = Path(output_dir)
    for candidate in (path, *path.parents):
        if candidate.exists() and not candidate.is_dir():
            raise OutputDirError(
                f"output_dir {path} cannot be created: {candidate} is a file, not a folder. Choose another output_dir "
                "(e.g. --output_dir outputs/my-run) or move that file."
            )
    path.mkdir(parents=True, exist_ok=True)
    return path


class RunLock:
    """The exclusive lock of the run folder `output_dir` (a context manager; [`acquire`] / [`release`] also work).

    Args:
        output_dir (`str` or `os.PathLike`): The run folder; created when missing.
        command (`str`, *optional*): The holder's command line, recorded for the message of a refused job.
    """

    def __init__(self, output_dir: str | os.PathLike, command: str | None = None):
        self.output_dir, self.command, self.fd = Path(output_dir), command, None
        self.path = self.output_dir / LOCK_FILE

    def holder(self) -> dict:
        """What the lock file says about the job that holds it (may be a job that ended: only the flock counts)."""
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def acquire(self) -> RunLock:
        """Take the lock, or raise [`RunLockedError`] naming the holder's PID. Never waits."""
        prepare_output_dir(self.output_dir)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = self.holder()
                who = f"PID {holder['pid']}" if "pid" in holder else "another process"
                where = f" on {holder['host']}" if holder.get("host") not in (None, socket.gethostname()) else ""
                since = f", started {holder['started']}" if "started" in holder else ""
                command = f": {holder['command']}" if holder.get("command") else ""
                raise RunLockedError(
                    f"another run ({who}{where}{since}{command}) is using {self.output_dir}: two runs in one folder "
                    f"would mix their stages. Wait for it to finish (or stop it), or choose another output_dir. The "
                    f"lock is {self.path}; it is released when that process ends, even if it is killed."
                ) from None
            # The file may have been removed and recreated by a holder releasing it while we opened it: retry on
            # the file that is at the path now, so that two jobs never hold locks on two different files.
            if os.path.exists(self.path) and os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                break
            os.close(fd)
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": redact_text(self.command or ""),
        }
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(record) + "\n").encode())
        self.fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and release the lock (a no-op when not held)."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self.fd)  # closing the last descriptor releases the flock
        self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
