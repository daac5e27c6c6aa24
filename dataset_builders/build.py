"""Command line: build a multi-negative preference dataset from raw data.

```bash
python dataset_builders/build.py movielens-100k --output data/ml100k [--raw-dir DIR] [--push-to-hub user/ml100k-dynamicpo]
python dataset_builders/build.py movielens-100k --output data/ml100k --teacher sasrec   # + SASRec teacher columns
python dataset_builders/build.py --help          # lists the datasets and every option
```

Every field of [`BuildConfig`] is an option (`--field-name`); booleans have a `--no-` form.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields
from pathlib import Path


if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset_builders.config import BuildConfig  # noqa: E402
from dataset_builders.errors import (  # noqa: E402
    AmbiguousRawFilesError,
    MissingRawFilesError,
    OutputFolderError,
    RawDataError,
)
from dataset_builders.sources import SOURCES  # noqa: E402


def _templates_value(text: str) -> int | str:
    return int(text) if text.strip().isdigit() else text


def _add_field(parser: argparse.ArgumentParser, f) -> None:
    flag = "--" + f.name.replace("_", "-")
    kwargs = {"help": f.metadata.get("help", ""), "dest": f.name}
    default = f.default if f.default is not MISSING else None
    annotation = str(f.type)
    if annotation == "bool":
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, **kwargs)
        return
    if annotation.startswith("tuple["):
        kwargs.update(nargs=3, type=float, metavar=("TRAIN", "VALID", "TEST"))
    elif f.name == "templates":
        kwargs.update(type=_templates_value, metavar="N|FILE.json")
    elif f.name == "teacher_args":
        kwargs.update(type=str, metavar="JSON")
    elif annotation.startswith("int"):
        kwargs["type"] = int
    elif annotation.startswith("float"):
        kwargs["type"] = float
    else:
        kwargs["type"] = str
    if f.metadata.get("choices"):
        kwargs["choices"] = f.metadata["choices"]
    kwargs["help"] += f" (default: {default})" if default is not None else ""
    parser.add_argument(flag, default=default, **kwargs)


def make_parser() -> argparse.ArgumentParser:
    """The argument parser (dataset positional, `--output`, and one option per [`BuildConfig`] field)."""
    width = max(len(name) for name in SOURCES)
    datasets = "\n".join(f"  {name:<{width}}  {source.description}" for name, source in sorted(SOURCES.items()))
    parser = argparse.ArgumentParser(
        prog="python dataset_builders/build.py",
        description="Turn raw recommendation data into a multi-negative preference dataset (Parquet DatasetDict, "
        "items table, dataset card, build_info.json).",
        epilog=f"datasets:\n{datasets}\n\nRaw files are read from --raw-dir, or downloaded from the official source "
        "into the cache.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "dataset", choices=sorted(SOURCES), metavar="DATASET", help="one of: " + ", ".join(sorted(SOURCES))
    )
    parser.add_argument("--output", "-o", required=True, help="output folder")
    for f in fields(BuildConfig):
        _add_field(parser, f)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    values = vars(args)
    name, output = values.pop("dataset"), values.pop("output")
    from dataset_builders.pipeline import run_build

    try:
        config = BuildConfig(**values)
        run_build(name, output, config)
    # Input and output problems are reported as one message (file, line, what to do), not a traceback.
    except (RawDataError, MissingRawFilesError, AmbiguousRawFilesError, OutputFolderError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
