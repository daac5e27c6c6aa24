"""The output folder of a build: what belongs to a previous build, and the atomic replacement of the folder.

A build never writes into the output folder itself. It writes a complete new folder next to it (a hidden sibling
`.<name>.building-<pid>-<random>`, on the same file system so that a rename can move it) and then swaps that folder
into place. Until the swap the previous content is untouched, so a build that fails or is killed half-way leaves the
old dataset intact and never a mix of old and new files; the previous content is deleted only once the new folder is
in place. On Linux the swap is one `renameat2(RENAME_EXCHANGE)` call (there is no moment without a complete folder);
elsewhere it is two renames, undone if the second one fails.

A folder may be replaced without asking only if everything in it was written by an earlier build: `build_info.json`
lists every file of the build with its SHA-256 (`output.files`), and a file that is not listed, or that was changed
since, is the user's (a README of their own, a `save_to_disk` dataset, a stale Parquet shard). Such a folder is refused
unless `overwrite=True` (`--overwrite`). Folders written before the list existed are recognized by the fixed names
they used.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import sys
from pathlib import Path

from .config import SPLITS
from .errors import OutputFolderError


BUILD_INFO = "build_info.json"
# A teacher build's item-embedding table (item_id, title, embedding), outside LAYOUT: it is no `datasets` config.
ITEM_EMBEDDINGS_FILE = "item_embeddings.parquet"
BUILDER = "dataset_builders"
# The files a build writes, per config and split (relative paths). `load_dataset_folder` and the card read exactly
# these, never a glob, so that a stray file in the folder cannot be read as data.
LAYOUT = {
    "default": {split: [f"data/{split}-00000-of-00001.parquet"] for split in SPLITS},
    "items": {"train": ["items/items-00000-of-00001.parquet"]},
}
# Text that the cards of earlier builds (before `output.files` existed) contain, to tell them from a user's README.
_LEGACY_CARD_SIGNATURE = "Built by `dataset_builders` of"
_STAGING = ".building-"
_CHUNK = 1 << 20
# The card's loading snippet names the folder (or the Hub repo), which `build_info.json` must not depend on: the same
# build in two folders gives byte-identical files. The card is hashed with the names in that snippet blanked out.
_LOADING_SNIPPET_NAME = re.compile(rb'load_dataset\("[^"\n]*"')


def _sha256(folder: Path, name: str) -> str:
    """SHA-256 of `folder / name`; the card (`README.md`) without the names in its loading snippet."""
    digest = hashlib.sha256()
    if name == "README.md":
        digest.update(_LOADING_SNIPPET_NAME.sub(b'load_dataset(""', (folder / name).read_bytes()))
        return digest.hexdigest()
    with open(folder / name, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_hashes(folder: Path, paths: list[str]) -> dict[str, str]:
    """SHA-256 of each relative path in `folder` (the `output.files` record of `build_info.json`).

    `README.md` is hashed with the dataset names of its loading snippet blanked, so that the record does not depend on
    the folder's name (a rebuild elsewhere gives the same `build_info.json`, and a moved folder is still recognized).

    Args:
        folder (`Path`): the build folder.
        paths (`list[str]`): paths relative to `folder`.
    """
    return {path: _sha256(folder, path) for path in paths}


def _read_own_build_info(folder: Path) -> dict | None:
    """`build_info.json` of `folder` if it was written by this builder, else `None`."""
    path = folder / BUILD_INFO
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(info, dict):
        return None
    output = info.get("output")
    if isinstance(output, dict) and output.get("builder") == BUILDER and isinstance(output.get("files"), dict):
        return info
    if "dataset" in info and "prompt_list_format" in info and "output" not in info:  # an earlier build
        return info
    return None


def foreign_files(folder: Path) -> list[str]:
    """Files in `folder` that no build of this builder wrote (relative paths, sorted), with why.

    A file is ours when `build_info.json` lists it with the SHA-256 it still has; for folders built before that list
    existed, when it has one of the fixed names those builds wrote (and, for `README.md`, the builder's text).

    Args:
        folder (`Path`): an existing folder.

    Returns:
        `list[str]`: e.g. `["README.md (changed since the build)", "data/train-00001-of-00002.parquet"]`; empty when
        the folder is empty or holds a previous build only.
    """
    files = sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file() or path.is_symlink())
    if not files:
        return []
    info = _read_own_build_info(folder)
    if info is None:
        return files
    if "output" in info:
        listed = info["output"]["files"]
        foreign = []
        for name in files:
            if name == BUILD_INFO:
                continue
            if name not in listed:
                foreign.append(name)
            elif _sha256(folder, name) != listed[name]:
                foreign.append(f"{name} (changed since the build)")
        return foreign
    legacy = {BUILD_INFO, *(path for config in LAYOUT.values() for paths in config.values() for path in paths)}
    foreign = [name for name in files if name not in legacy and name != "README.md"]
    if "README.md" in files:
        try:
            card = (folder / "README.md").read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            card = ""
        if _LEGACY_CARD_SIGNATURE not in card:
            foreign.insert(0, "README.md")
    return sorted(foreign)


def check_output_dir(output_dir: Path, overwrite: bool, raw_dir: str | Path | None = None) -> None:
    """Refuse an output path that cannot hold a build, before any work is done.

    Args:
        output_dir (`Path`): the output folder (need not exist).
        overwrite (`bool`): allow replacing a folder that holds files no build wrote (they are deleted).
        raw_dir (`str` or `Path`, *optional*): the raw-data folder, which the output must not hold (replacing the
            output would delete the raw files, even with `overwrite`).

    Raises:
        OutputFolderError: the path (or one of its parents) is a file, the folder holds the raw-data folder, or it
            holds foreign files and `overwrite` is false. The message names the folder and the files and says how to
            proceed.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputFolderError(
            str(output_dir),
            f"The output path {output_dir} is a file, not a folder. Pass a folder path as --output (output_dir); "
            "it is created if it does not exist.",
        )
    parent = output_dir.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise OutputFolderError(
            str(output_dir),
            f"The output folder {output_dir} cannot be created: {parent} is a file. Pass another --output path.",
        )
    if raw_dir is not None:
        raw, target = Path(os.path.realpath(raw_dir)), Path(os.path.realpath(output_dir))
        if raw == target or target in raw.parents:
            raise OutputFolderError(
                str(output_dir),
                f"The output folder {output_dir} holds the raw files (--raw-dir {raw_dir}); the build replaces the "
                "whole output folder, which would delete them. Pass another --output folder.",
            )
    if not output_dir.is_dir() or overwrite:
        return
    foreign = foreign_files(output_dir)
    if not foreign:
        return
    shown = foreign if len(foreign) <= 20 else [*foreign[:20], f"... and {len(foreign) - 20} more"]
    kind = ""
    if "dataset_dict.json" in foreign or "dataset_info.json" in foreign:
        kind = " It holds a `save_to_disk` dataset."
    elif (output_dir / BUILD_INFO).is_file() and _read_own_build_info(output_dir) is not None:
        kind = " It holds a previous build plus files that build did not write."
    lines = [
        f"The output folder {output_dir} is not empty and is not a previous build of this dataset builder.{kind} "
        "Files the builder did not write:"
    ]
    lines += [f"  - {name}" for name in shown]
    lines.append(
        "Nothing was read or written. Choose another --output folder, move these files out of it, or pass --overwrite "
        "(overwrite=True in Python) to replace the whole folder, deleting these files."
    )
    raise OutputFolderError(str(output_dir), "\n".join(lines), foreign)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_staging_dir(output_dir: Path) -> Path:
    """Create the hidden sibling folder a build writes into; remove those left by builds that were killed.

    Args:
        output_dir (`Path`): the output folder (need not exist).

    Returns:
        `Path`: the new, empty staging folder (`<parent>/.<name>.building-<pid>-<random>`).
    """
    target = Path(os.path.realpath(output_dir))
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}{_STAGING}"
    for leftover in target.parent.glob(f"{prefix}*"):
        pid = leftover.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)  # a build killed before its swap: never read by anyone
    staging = target.parent / f"{prefix}{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    return staging


def _exchange(first: Path, second: Path) -> bool:
    """Atomically swap two paths with Linux `renameat2(RENAME_EXCHANGE)`; `False` where that is unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # no glibc 2.28+
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):  # file system without exchange
        return False
    raise OSError(code, os.strerror(code), str(second))


def replace_folder(staging: Path, output_dir: Path) -> None:
    """Put the complete folder `staging` at `output_dir`, then delete what was there before.

    Args:
        staging (`Path`): the finished build (a sibling of `output_dir`, from [`make_staging_dir`]).
        output_dir (`Path`): the output folder; its previous content is kept until the new one is in place.
    """
    target = Path(os.path.realpath(output_dir))
    if not target.exists():
        os.rename(staging, target)
        return
    if _exchange(staging, target):
        old = staging  # now holds the previous content
    else:
        old = target.parent / f".{target.name}.replaced-{os.getpid()}-{secrets.token_hex(4)}"
        os.rename(target, old)
        try:
            os.rename(staging, target)
        except BaseException:
            os.rename(old, target)
            raise
    shutil.rmtree(old, ignore_errors=True)
