"""Read a built dataset folder, and push it to the Hub: the folder I/O of the format `output.py` lays out.

- [`load_dataset_folder`] loads one config of a local folder as a `DatasetDict`, from exactly the files the build
  lists in `build_info.json` (other folders: a `push_to_hub` card's `configs`, `save_to_disk`, `data/*.parquet`).
- [`push_dataset_folder`] pushes a built folder to a Hub dataset repo: every config with `DatasetDict.push_to_hub`,
  then the builder's card (with the pushed `configs` and `dataset_info`) and the other files in one commit.

Example:

```python
from dataset_builders.folder import load_dataset_folder, push_dataset_folder

splits = load_dataset_folder("data/ml100k")
push_dataset_folder("data/ml100k", "my-user/ml100k-dynamicpo")
```
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .output import BUILD_INFO, LAYOUT, _read_own_build_info


logger = logging.getLogger(__name__)

__all__ = ["load_dataset_folder", "push_dataset_folder"]


def _built_folder_files(root: Path) -> dict[str, dict[str, list[Path]]] | None:
    """The files of each config of a folder written by `dataset_builders`, from its `build_info.json`.

    The list is the builder's record of what it wrote (`output.configs`); folders built before that record existed
    used the fixed file names of `LAYOUT`.

    Args:
        root (`Path`):
            The dataset folder.

    Returns:
        `dict[str, dict[str, list[Path]]]` (config -> split -> files), or `None` for a folder not written by
        `dataset_builders`.
    """
    info = _read_own_build_info(root)
    if info is None:
        return None
    configs = (info["output"].get("configs") or {}) if "output" in info else LAYOUT
    return {
        config: {split: [root / path for path in paths] for split, paths in splits.items()}
        for config, splits in configs.items()
    }


def load_dataset_folder(folder: str | os.PathLike, config: str | None = None):
    """Load one config of a local dataset folder as a `DatasetDict`, straight from its files (`None` if absent).

    A folder written by `dataset_builders` is read from exactly the files its `build_info.json` lists for the config
    (never a glob: a stale shard or an old `save_to_disk` dataset left in the folder is not read). Other folders: one
    written by `push_to_hub` lists the Parquet files of each config in the YAML `configs` of its `README.md`; a
    `save_to_disk` folder is read with `load_from_disk`; a folder without a card is read as
    `data/<split>-*.parquet`. The files are read with pyarrow rather than `datasets.load_dataset`, whose cache
    of local folders is keyed by the folder's name and file patterns (datasets 5.2): two folders with the same name,
    e.g. two runs' `source/`, would silently share one cached copy.

    Args:
        folder (`str` or `os.PathLike`):
            The dataset folder.
        config (`str`, *optional*):
            Config name (`None` or `"default"` for the default config, e.g. `"items"` for the item table).

    Example:
    ```python
    >>> from dataset_builders.folder import load_dataset_folder
    >>> splits = load_dataset_folder("data/ml100k")  # doctest: +SKIP
    >>> items = load_dataset_folder("data/ml100k", "items")["train"]  # doctest: +SKIP
    ```
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset, DatasetDict, load_from_disk
    from huggingface_hub import DatasetCard

    root = Path(folder)
    name = config or "default"
    built = _built_folder_files(root)
    if built is not None:  # a dataset_builders folder: its own list of files wins over anything else in the folder
        if name not in built:
            return None
        for paths in built[name].values():
            for path in paths:
                if not path.is_file():
                    raise FileNotFoundError(
                        f"{path} is listed in {root / BUILD_INFO} (config {name!r}) but is missing: the folder "
                        "is incomplete; build it again."
                    )
        return DatasetDict(
            {
                split: Dataset(pa.concat_tables([pq.read_table(path) for path in paths]))
                for split, paths in built[name].items()
            }
        )
    if (root / "dataset_dict.json").is_file() and name == "default":
        return load_from_disk(str(root))
    if config and (root / config / "dataset_dict.json").is_file():
        return load_from_disk(str(root / config))
    if config and (root / config / "dataset_info.json").is_file():  # one `Dataset.save_to_disk` split, e.g. items
        return DatasetDict({"train": load_from_disk(str(root / config))})
    configs = []
    if (root / "README.md").is_file():
        configs = DatasetCard.load(root / "README.md").data.get("configs") or []
    entry = next((c for c in configs if c.get("config_name", "default") == name), None)
    if entry is None and name == "default":
        files = sorted(root.glob("data/*.parquet"))
        entry = {"data_files": [{"split": p.name.split("-")[0], "path": f"data/{p.name}"} for p in files]}
    if entry is None or not entry.get("data_files"):
        return None
    data_files = entry["data_files"]
    if isinstance(data_files, str | dict):
        data_files = [data_files]
    splits: dict[str, list] = {}
    for item in data_files:
        split, patterns = (item.get("split", "train"), item["path"]) if isinstance(item, dict) else ("train", item)
        for pattern in [patterns] if isinstance(patterns, str) else patterns:
            splits.setdefault(split, []).extend(sorted(root.glob(pattern)))
    tables = {
        split: Dataset(pa.concat_tables([pq.read_table(path) for path in paths]))
        for split, paths in splits.items()
        if paths
    }
    return DatasetDict(tables) if tables else None


def _data_dir_of(config: dict) -> str | None:
    """Top-level folder of a dataset config's `data_files` patterns, if they all share one."""
    data_files = config.get("data_files")
    if data_files is None:
        return None
    if isinstance(data_files, str | dict):
        data_files = [data_files]
    patterns = []
    for entry in data_files:
        paths = entry.get("path") if isinstance(entry, dict) else entry
        patterns.extend([paths] if isinstance(paths, str) else paths)
    tops = {pattern.split("/")[0] for pattern in patterns if "/" in pattern}
    return tops.pop() if len(tops) == 1 and all("/" in p for p in patterns) else None


def push_dataset_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
) -> str:
    """Push a dataset folder built by `dataset_builders` to a Hub dataset repo.

    The folder holds a dataset card `README.md` whose YAML `configs` list the Parquet files of each config (the
    `default` config with splits train/validation/test under `data/`, the `items` config under `items/`), plus other
    files such as `build_info.json`. Every config is loaded from the folder and pushed with
    `DatasetDict.push_to_hub` (which writes the Parquet shards and the `dataset_info` features/sizes); then the
    builder's card is uploaded as the final `README.md`: its body and metadata are kept, and its `configs` point to
    the pushed shards. The other files of the folder are uploaded alongside. The folder is only read: a push cut
    midway leaves it as it was, and calling the same function again finishes the push (files already on the Hub are
    skipped by the Hub client).

    Args:
        folder (`str` or `os.PathLike`):
            The dataset folder. It is only read.
        repo_id (`str`):
            The dataset repo (`user/name`); created if it does not exist.
        token (`str`, *optional*):
            Hub token with write access. Defaults to the logged-in token / `HF_TOKEN`. Never logged nor shown in
            errors.
        private (`bool`, *optional*, defaults to `False`):
            Whether a newly created repo is private.
        commit_message (`str`, *optional*):
            Message of the commits; the config name is appended for the data commits.

    Returns:
        `str`: URL of the dataset repo.

    Raises:
        `trl_dynamicpo.hub.HubPushError`: if the push fails midway (network error, server error). Running the same
        call again finishes the push.
        `ImportError`: when `huggingface_hub` or `trl_dynamicpo` is not installed (the folder stays as it is).

    Example:

    ```python
    >>> from datasets import load_dataset
    >>> from dataset_builders.folder import push_dataset_folder
    >>> url = push_dataset_folder("datasets/lastfm-sdpo", "my-user/lastfm-sdpo")
    >>> load_dataset("my-user/lastfm-sdpo")["train"][0]["chosen"]
    ```
    """
    try:
        from huggingface_hub import CommitOperationAdd, DatasetCard, HfApi
        from huggingface_hub.utils import validate_repo_id

        # The error every push of the project raises (one type to catch for datasets and adapters alike).
        from trl_dynamicpo.hub import HubPushError
    except ImportError as error:
        raise ImportError(
            f"push_dataset_folder needs huggingface_hub and trl_dynamicpo ({error}); the dataset folder "
            f"{folder} is intact and can be uploaded later."
        ) from error

    folder = Path(folder)
    validate_repo_id(repo_id)
    card_path = folder / "README.md"
    if not card_path.is_file():
        raise FileNotFoundError(f"{folder} has no dataset card README.md; build the dataset folder first.")
    card = DatasetCard.load(card_path)
    configs = card.data.get("configs") or [{"config_name": "default"}]
    call = f"push_dataset_folder({str(folder)!r}, {repo_id!r})"

    # Load everything before talking to the Hub: a bad folder fails fast, without touching the repo.
    loaded = []
    for config in configs:
        name = config.get("config_name", "default")
        dataset = load_dataset_folder(folder, name)
        if dataset is None:
            raise FileNotFoundError(f"{folder}: the card lists the config {name!r} but none of its files exist.")
        data_dir = _data_dir_of(config) or ("data" if name == "default" else name)
        loaded.append((config, name, data_dir, dataset))
    data_dirs = {data_dir for _, _, data_dir, _ in loaded}
    extra_files = sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and path != card_path
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        and path.relative_to(folder).parts[0] not in data_dirs
    )

    api = HfApi(token=token)
    stage = "creating the repo"
    try:
        repo_url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        for config, name, data_dir, dataset in loaded:
            stage = f"uploading the '{name}' config"
            dataset.push_to_hub(
                repo_id,
                config_name=name,
                data_dir=data_dir,
                set_default=True if config.get("default") and name != "default" else None,
                private=private,
                token=token,
                commit_message=f"{commit_message or 'Upload dataset'} ({name} config)",
            )

        stage = "uploading the dataset card"
        # push_to_hub rewrote README.md: its YAML now describes the pushed shards (configs + dataset_info), but its
        # body and the builder's metadata come from whatever card was there before. Rebuild the builder's card with
        # the pushed configs and features.
        # The card is read at a known commit and written on top of it, so a concurrent commit fails (412) instead of
        # being overwritten.
        head = api.repo_info(repo_id, repo_type="dataset").sha
        pushed_card = api.hf_hub_download(repo_id, "README.md", repo_type="dataset", revision=head)
        pushed = DatasetCard.load(pushed_card).data
        pushed_configs = {c.get("config_name", "default"): c for c in pushed.get("configs") or []}
        final_configs = []
        for config in configs:
            name = config.get("config_name", "default")
            pushed_config = pushed_configs.pop(name, None)
            final_configs.append({**config, "data_files": pushed_config["data_files"]} if pushed_config else config)
        final_configs.extend(pushed_configs.values())  # configs pushed earlier by someone else stay usable
        card.data["configs"] = final_configs
        if pushed.get("dataset_info") is not None:
            card.data["dataset_info"] = pushed.get("dataset_info")

        operations = [CommitOperationAdd("README.md", str(card).encode("utf-8"))]
        operations += [CommitOperationAdd(p.relative_to(folder).as_posix(), str(p)) for p in extra_files]
        api.create_commit(
            repo_id,
            operations=operations,
            commit_message=commit_message or "Upload dataset card",
            repo_type="dataset",
            parent_commit=head,
        )
    except Exception as err:  # any failure midway: report which step, and how to resume
        raise HubPushError.after(
            err, kind="dataset", folder=folder, repo_id=repo_id, stage=stage, call=call, token=token
        ) from err
    logger.info("Pushed dataset folder %s to %s", folder, repo_url)
    return str(repo_url)
