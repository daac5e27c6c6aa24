"""Reporting: results as strict JSON ([`save_results`], [`jsonable`]) and as a markdown table."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


# Column order of `format_results_table`; metrics not listed here are appended in alphabetical order.
_TABLE_COLUMNS = (
    "hr@1",
    "valid_ratio",
    "hr@1_valid",
    "hr@5",
    "hr@10",
    "ndcg@5",
    "ndcg@10",
    "mrr",
    "arp",
    "head_share",
    "tail_share",
    "tail_hr@1",
    "coverage",
    "runtime_s",
)
_TABLE_ROWS = ("generation", "ranking", "baseline_popularity", "baseline_random")


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


_jsonable = jsonable  # the name `recipes/run.py` and `benchmarks/quality.py` import


def save_results(results: Mapping[str, Any], path: str | Path) -> Path:
    """Write results as strict JSON (NaN becomes `null`, NumPy scalars become Python numbers).

    Args:
        results (`Mapping[str, Any]`): E.g. the output of [`evaluate_recommender`].
        path (`str | Path`): Output file; parent folders are created.

    Returns:
        `Path`: The written file.

    Example:

    ```python
    >>> import tempfile, os
    >>> save_results({"ranking/hr@1": 0.25, "generation/tail_hr@1": float("nan")},
    ...              os.path.join(tempfile.mkdtemp(), "r.json")).read_text()
    '{\\n  "ranking/hr@1": 0.25,\\n  "generation/tail_hr@1": null\\n}'
    ```
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(results), indent=2, allow_nan=False))
    return path


def _format_value(name: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(value)
    if name in ("arp", "runtime_s"):
        return f"{float(value):.1f}"
    return f"{float(value):.4f}"


def format_results_table(results: Mapping[str, Any]) -> str:
    """Markdown table of flat results: one row per protocol / baseline, one column per metric.

    Keys `<row>/<metric>` become cells; rows appear in the order generation, ranking, baseline_popularity,
    baseline_random (then any other prefix); a metric a row lacks shows `-`, a NaN shows `n/a`. Keys without a `/`
    (`num_samples`, `match_mode`, ...) go to a line under the table.

    Args:
        results (`Mapping[str, Any]`): E.g. the output of [`evaluate_recommender`].

    Returns:
        `str`: The markdown text.

    Example:

    ```python
    >>> print(format_results_table({"ranking/hr@1": 0.5, "baseline_random/hr@1": 0.05, "num_samples": 20}))
    | protocol | hr@1 |
    |---|---|
    | ranking | 0.5000 |
    | baseline_random | 0.0500 |
    <BLANKLINE>
    num_samples: 20
    ```
    """
    table: dict[str, dict[str, Any]] = {}
    extra: dict[str, Any] = {}
    for key, value in results.items():
        if "/" in key:
            row, metric = key.split("/", 1)
            table.setdefault(row, {})[metric] = value
        else:
            extra[key] = value
    rows = [r for r in _TABLE_ROWS if r in table] + sorted(r for r in table if r not in _TABLE_ROWS)
    metrics = {m for cells in table.values() for m in cells}
    columns = [c for c in _TABLE_COLUMNS if c in metrics] + sorted(metrics - set(_TABLE_COLUMNS))
    lines = ["| protocol | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row in rows:
        cells = [_format_value(c, table[row][c]) if c in table[row] else "-" for c in columns]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    if extra:
        lines += ["", ", ".join(f"{k}: {_format_value(k, v)}" for k, v in extra.items())]
    return "\n".join(lines)
