"""The preference data a training run reads: built from raw data with a builder, or a built dataset (a local folder
or a Hub dataset id), with its item table. Used by `recipes/run.py` and the quality study.

Example:

```python
from dataset_builders.prepare import load_preference_data

data, items = load_preference_data(dataset_name="movielens-100k", output_dir="data/ml100k", raw_dir="ml-100k")
print(data["train"][0]["prompt"])
```
"""

from __future__ import annotations

import logging
import os

from .config import BuildConfig
from .folder import load_dataset_folder
from .pipeline import run_build


logger = logging.getLogger(__name__)

__all__ = ["existing_raw_dir", "load_preference_data"]


def existing_raw_dir(raw_dir: str | os.PathLike | None, dataset_name: str, offline: bool = False):
    """`raw_dir` when it is a folder; None (the builder downloads the raw data from its official source) when it is
    None or missing, with a warning for a missing one; `FileNotFoundError` for a missing one with `offline`."""
    if raw_dir is None or os.path.isdir(raw_dir):
        return raw_dir
    if offline:
        raise FileNotFoundError(f"The raw folder {raw_dir} does not exist (and `offline` is set).")
    logger.warning("%s does not exist: the raw data of %s will be downloaded from its official source", raw_dir,
                   dataset_name)  # fmt: skip
    return None


def load_preference_data(
    *,
    dataset_name: str | None = None,
    output_dir: str | os.PathLike | None = None,
    raw_dir: str | os.PathLike | None = None,
    dataset_id_or_path: str | None = None,
    config: str | None = None,
    items_config: str | None = "items",
    **build_options,
):
    """`(DatasetDict, item table or None)` of a preference dataset: built from raw data (`dataset_name`, into
    `output_dir`) or a built one (`dataset_id_or_path`: a local folder, read by [`load_dataset_folder`], or a Hub
    dataset id, read by `datasets.load_dataset`).

    Args:
        dataset_name (`str`, *optional*): a builder (`dataset_builders.SOURCES`); its raw files are read from `raw_dir`
            and downloaded from the official source when `raw_dir` is None or missing (unless `offline=True`).
        output_dir (`str` or `os.PathLike`, *optional*): where the build is written (required with `dataset_name`).
        raw_dir (`str` or `os.PathLike`, *optional*): the raw files.
        dataset_id_or_path (`str`, *optional*): a built dataset instead.
        config (`str`, *optional*): config of `dataset_id_or_path` (default: its default config).
        items_config (`str`, *optional*, defaults to `"items"`): config of the item table (popularity metrics); None
            or a dataset without it gives None.
        **build_options: fields of [`BuildConfig`] (with `dataset_name`).

    Example:

    ```python
    data, items = load_preference_data(dataset_name="movielens-100k", output_dir="data/ml100k", raw_dir="ml-100k")
    data, items = load_preference_data(dataset_id_or_path="my-user/ml100k-dynamicpo")
    ```
    """
    if (dataset_name is None) == (dataset_id_or_path is None):
        raise ValueError("Pass exactly one of `dataset_name` (build from raw data) and `dataset_id_or_path`.")
    if dataset_name is not None:
        if output_dir is None:
            raise ValueError("`output_dir` is required to build a dataset from raw data.")
        raw_dir = existing_raw_dir(raw_dir, dataset_name, offline=build_options.get("offline", False))
        built = run_build(dataset_name, output_dir, BuildConfig(raw_dir=raw_dir, **build_options))
        return built.dataset, built.items if items_config else None
    source = dataset_id_or_path
    if os.path.isdir(source):
        data = load_dataset_folder(source, config)
        if data is None:
            raise FileNotFoundError(f"{source} holds no dataset (config {config or 'default'!r}).")
        items = load_dataset_folder(source, items_config) if items_config else None
        return data, None if items is None else next(iter(items.values()))
    import contextlib

    import datasets

    items = None
    if items_config:
        with contextlib.suppress(ValueError, FileNotFoundError):  # no item table: popularity metrics are skipped
            items = datasets.load_dataset(source, items_config, split="train")
    return datasets.load_dataset(source, config), items
