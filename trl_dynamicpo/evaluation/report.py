"""Reporting: results as strict JSON ([`save_results`], [`jsonable`]) and as a markdown table."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..io_utils import jsonable, write_json


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
_TABLE_ROWS = ("generation", "constrained_generation", "ranking", "baseline_popularity", "baseline_random")


_jsonable = jsonable  # the old evaluation module's name (code outside this package may import it)


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
    '{\\n  "ranking/hr@1": 0.25,\\n  "generation/tail_hr@1": null\\n}\\n'
    ```
    """
    return write_json(path, results)


def format_value(name: str, value: Any) -> str:
    """Table text of a metric or count: 4 decimals (1 for `arp` and `runtime_s`), integers (also integral floats,
    such as logged token counts) with thousands separators from 10,000 on, `n/a` for None and NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        return str(value)
    if isinstance(value, (int, np.integer)) or (float(value).is_integer() and abs(value) >= 10_000):
        return f"{int(value):,}" if abs(value) >= 10_000 else str(value)
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
        cells = [format_value(c, table[row][c]) if c in table[row] else "-" for c in columns]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    if extra:
        lines += ["", ", ".join(f"{k}: {format_value(k, v)}" for k, v in extra.items())]
    return "\n".join(lines)


# Rows of `format_comparison_table`, in this order, when at least one model has them.
COMPARED_METRICS = (
    "generation/hr@1",
    "generation/valid_ratio",
    "constrained_generation/hr@1",
    "ranking/hr@1",
    "ranking/hr@5",
    "ranking/ndcg@10",
    "ranking/mrr",
    "baseline_popularity/hr@1",
    "baseline_random/hr@1",
    "baseline_sasrec/hr@1",
)


def _with_interval(results: Mapping[str, Any], row: str) -> str:
    value, interval = format_value("hr@1", results[f"{row}/hr@1"]), results.get(f"{row}/hr@1_ci")
    if interval and all(isinstance(v, (int, float)) for v in interval):
        return f"{value} [{interval[0]:.3f}, {interval[1]:.3f}]"
    return value


def format_comparison_table(results: Mapping[str, Mapping[str, Any]], names: Mapping[str, str]) -> str:
    """Markdown table of the main metrics with one column per model, then one line per protocol that puts every
    model's HR@1 (with its 95% interval when there is one) next to the baselines of the same prompts.

    Args:
        results (`Mapping[str, Mapping]`): model name -> the flat results of [`evaluate_recommender`].
        names (`Mapping[str, str]`): model name -> display name, in column order.

    Example:

    ```python
    >>> sft = {"ranking/hr@1": 0.1, "ranking/num_samples": 300, "baseline_popularity/hr@1": 0.3}
    >>> print(format_comparison_table({"sft": sft}, {"sft": "SFT"}).splitlines()[-1])
    HR@1 (ranking, 300 test prompts): SFT 0.1000 | popularity 0.3000
    ```
    """
    models = [m for m in names if m in results]
    metrics = [m for m in COMPARED_METRICS if any(m in results[name] for name in models)]
    lines = ["| metric | " + " | ".join(names[m] for m in models) + " |", "|---" * (len(models) + 1) + "|"]
    lines += [f"| {k} | " + " | ".join(format_value(k, results[m].get(k)) for m in models) + " |" for k in metrics]
    for protocol in ("generation", "constrained_generation", "ranking"):
        if models and all(f"{protocol}/hr@1" in results[m] for m in models):
            first = results[models[0]]
            count = first.get(f"{protocol}/num_samples", first.get("num_samples"))
            entries = [(names[m], results[m], protocol) for m in models]
            if protocol == "ranking":  # the floors, on the same prompts
                entries += [
                    (label, first, f"baseline_{label}")
                    for label in ("popularity", "random", "sasrec")
                    if f"baseline_{label}/hr@1" in first
                ]
            ci = ", 95% CI" if any(f"{row}/hr@1_ci" in res for _, res, row in entries) else ""
            lines += [] if lines[-1].startswith("HR@1") else [""]
            lines.append(
                f"HR@1 ({protocol}, {count} test prompts{ci}): "
                + " | ".join(f"{name} {_with_interval(res, row)}" for name, res, row in entries)
            )
    return "\n".join(lines)
