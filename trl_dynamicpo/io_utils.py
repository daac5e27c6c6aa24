"""Files written so that a reader never sees half of one: strict JSON ([`write_json`]), and file listings.

Every JSON file this library and its recipes write (results, stage records, checkpoint markers, trunk-cache metadata)
goes through [`write_json`]: NaN and infinities become `null` (JSON has no NaN), NumPy scalars Python numbers, Hub
tokens `<redacted>` ([`trl_dynamicpo.redaction.redact`]), and the file appears whole or not at all (temporary file,
then rename; the temporary file is removed when the write fails, e.g. on a full disk).

Example:

```python
>>> import tempfile, os
>>> from trl_dynamicpo.io_utils import read_json, write_json
>>> path = write_json(os.path.join(tempfile.mkdtemp(), "r.json"), {"hr@1": float("nan")})
>>> read_json(path)
{'hr@1': None}
```
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .redaction import redact


def jsonable(value: Any) -> Any:
    """`value` ready for strict JSON: mappings (keys as strings), lists and tuples walked, NumPy scalars as Python
    numbers, NaN and infinities as `None` (JSON has no NaN); anything else unchanged.

    Example:

    ```python
    >>> import numpy as np
    >>> jsonable({"hr@1": np.float64(0.5), "tail_hr@1": float("nan"), 1: (np.int64(3),)})
    {'hr@1': 0.5, 'tail_hr@1': None, '1': [3]}
    ```
    """
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON has no NaN
    return value


def write_json(path: str | os.PathLike, data: Any, indent: int = 2) -> Path:
    """Write `data` as strict JSON (see [`jsonable`]; other objects as their `str`; token-like fields and Hub tokens
    redacted), atomically: a temporary file in the same folder, then a rename. Parent folders are created. A write
    that fails (a full disk) removes its temporary file and leaves `path` as it was. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(redact(jsonable(data)), indent=indent, default=str, allow_nan=False) + "\n"
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_json(path: str | os.PathLike) -> Any:
    """The JSON content of `path`, or None when the file is missing or not valid JSON (e.g. cut by a kill)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def files_under(folder: str | os.PathLike) -> list[str]:
    """Sorted POSIX paths, relative to `folder`, of every file (and symbolic link) under it; [] when it is missing."""
    found = []
    for root, dirs, files in os.walk(folder):  # symbolic links to folders are listed, not followed
        base = Path(root)
        found += [
            (base / name).relative_to(folder).as_posix()
            for name in files + [d for d in dirs if (base / d).is_symlink()]
        ]
    return sorted(found)


def describe_files(files: list[str], limit: int = 8) -> str:
    """`checkpoint-1/ (9 files), DONE.json, ...`: the files grouped by their top-level entry, for a message."""
    groups: dict[str, list[str]] = {}
    for name in files:
        top, sep, _ = name.partition("/")
        groups.setdefault(top + sep, []).append(name)
    shown = [f"{key} ({len(names)} files)" if len(names) > 1 else names[0] for key, names in groups.items()]
    return ", ".join(shown[:limit]) + (f", and {len(shown) - limit} more" if len(shown) > limit else "")
