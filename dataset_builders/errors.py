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
