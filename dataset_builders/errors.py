"""Errors raised by the dataset builders.

Every problem with raw input is reported with the file and the (1-based) line where it was found, so that a user can
open the file and see it; missing inputs are reported all at once, with where each file comes from.
"""

from __future__ import annotations

from pathlib import Path


class RawDataError(ValueError):
    """A raw file is malformed: empty, truncated line, undecodable bytes, unknown id, bad value.

    Args:
        path (`str` or `Path`):
            The file that holds the problem.
        line (`int` or `None`):
            1-based line number of the problem (`None` when the problem concerns the file as a whole).
        message (`str`):
            What is wrong.

    Example:
    ```python
    >>> str(RawDataError("u.data", 7, "expected 4 fields, found 3"))
    'u.data, line 7: expected 4 fields, found 3'
    ```
    """

    def __init__(self, path: str | Path, line: int | None, message: str):
        self.path = str(path)
        self.line = line
        self.reason = message
        where = self.path if line is None else f"{self.path}, line {line}"
        super().__init__(f"{where}: {message}")

    def __reduce__(self):  # keep the exception picklable (multiprocessing, pytest-xdist)
        return (type(self), (self.path, self.line, self.reason))


class MissingRawFilesError(FileNotFoundError):
    """Raw files needed by a dataset are missing and cannot (or may not) be downloaded.

    One error lists every missing file, where it comes from, and where the builder looked.

    Args:
        dataset (`str`):
            Name of the dataset being built.
        missing (`list[str]`):
            One human-readable line per missing requirement (file name(s) and download URL).
        searched (`list[str]`):
            The folders that were searched.
        hint (`str`, *optional*):
            What the user can do about it.
    """

    def __init__(self, dataset: str, missing: list[str], searched: list[str], hint: str = ""):
        self.dataset = dataset
        self.missing = list(missing)
        self.searched = list(searched)
        self.hint = hint
        lines = [f"Raw files needed for {dataset!r} are missing:"]
        lines += [f"  - {entry}" for entry in self.missing]
        lines.append("Searched: " + ", ".join(self.searched))
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))

    def __reduce__(self):
        return (type(self), (self.dataset, self.missing, self.searched, self.hint))


class RawDownloadError(MissingRawFilesError, ConnectionError):
    """Raw files are missing and downloading them failed (offline, unreachable server): the message says what to
    download, from where, and where to put it (`--raw-dir`, in a recipe `data.raw_dir`). A `ConnectionError` too.

    Args:
        dataset (`str`): Name of the dataset being built.
        missing (`list[str]`): One line per missing requirement (file name(s) and download URL).
        searched (`list[str]`): The folders that were searched.
        failures (`list[str]`): One line per failed download (URL: error).
    """

    def __init__(self, dataset: str, missing: list[str], searched: list[str], failures: list[str]):
        self.failures = list(failures)
        hint = (
            "The download failed:\n  "
            + "\n  ".join(self.failures)
            + "\nDownload the file(s) above on a machine that can reach them, extract them into a folder, and pass "
            "that folder as --raw-dir DIR (in a recipe: data.raw_dir, e.g. --data.raw_dir DIR); or run again when "
            "the server is reachable."
        )
        super().__init__(dataset, missing, searched, hint)

    def __reduce__(self):
        return (type(self), (self.dataset, self.missing, self.searched, self.failures))


class AmbiguousRawFilesError(ValueError):
    """Several raw files match one needed input, and the builder cannot tell which one the user means.

    Picking one (e.g. the alphabetically first) would silently build from the wrong data, so every match is listed.

    Args:
        what (`str`):
            The input that is ambiguous, e.g. `"the 'test' split (test.json, *-test.json, ...)"`.
        paths (`list[str]`):
            Every file that matches it.
        folder (`str`):
            The folder that was searched.
    """

    def __init__(self, what: str, paths: list[str], folder: str):
        self.what = what
        self.paths = list(paths)
        self.folder = str(folder)
        lines = [f"{len(self.paths)} files in {self.folder} match {what}:"]
        lines += [f"  - {path}" for path in self.paths]
        lines.append(
            "The builder does not guess which one to use. Keep only the file you want in that folder (move the "
            "others elsewhere), or pass --raw-dir (raw_dir=) a folder that holds only the files of one dataset."
        )
        super().__init__("\n".join(lines))

    def __reduce__(self):
        return (type(self), (self.what, self.paths, self.folder))


class OutputFolderError(ValueError):
    """The output folder cannot be used: it is a file, or it holds files that a previous build did not write.

    Raised before any raw file is read, so that nothing is parsed, written or deleted.

    Args:
        folder (`str`):
            The output folder.
        message (`str`):
            What is wrong and how to proceed.
        foreign (`list[str]`, *optional*):
            Files in the folder (relative paths) that this builder did not write.
    """

    def __init__(self, folder: str, message: str, foreign: list[str] | None = None):
        self.folder = str(folder)
        self.reason = message
        self.foreign = list(foreign or [])
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (self.folder, self.reason, self.foreign))
