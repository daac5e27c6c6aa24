"""What a source parser returns, the `Source` interface, and the registry of sources.

A source only knows its raw format: which files it needs (with official URLs and checksums) and how to turn them into
interactions and item titles. Everything else (filtering, sequences, split, candidates, prompts, output) is the shared
pipeline in `dataset_builders.pipeline`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd


if TYPE_CHECKING:  # pragma: no cover
    from ..config import BuildConfig
    from ..download import Requirement, ResolvedFiles


@dataclass
class InteractionData:
    """Parsed raw interactions and item titles.

    Args:
        interactions (`pd.DataFrame`): columns `user` (str), `item` (str), `timestamp` (int64; unix seconds, or an
            order index where the source has no time), `line` (int64, line in `interactions_file`), and optionally
            `rating` (float64). Rows are in file order; that order breaks timestamp ties.
        items (`pd.DataFrame`): columns `item` (str), `title` (str, as published or normalized by the source),
            `line` (int64), in file order. Every item id must be unique.
        interactions_file (`str` or `Path`): the interaction file (named in error messages).
        items_file (`str` or `Path`): the item file.
        missing_titles (`frozenset[str]`): title values that mean "no title" for this source (e.g. `"unknown"`).
        notes (`dict`): facts to report (e.g. which LastFM file gave the timestamps).
        counts (`dict[str, int]`): rows the parser dropped, by reason (reported in build info).
    """

    interactions: pd.DataFrame
    items: pd.DataFrame
    interactions_file: str | Path
    items_file: str | Path
    missing_titles: frozenset[str] = frozenset()
    notes: dict = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class PresplitRecord:
    """One row of an already-processed dataset (S-DPO / LLaRA JSON)."""

    history: list[str]
    candidates: list[str]
    target: str
    user_id: str | None = None
    timestamp: int | None = None


@dataclass
class PresplitData:
    """Rows already split and with candidates (the pipeline keeps them and only renders prompts and writes).

    Args:
        splits (`dict[str, list[PresplitRecord]]`): keys among `train`, `validation`, `test`.
        files (`dict[str, str]`): split -> file name it came from.
        notes (`dict`): facts to report.
    """

    splits: dict[str, list[PresplitRecord]]
    files: dict[str, str]
    notes: dict = field(default_factory=dict)


class Source:
    """A raw data source. Subclasses set the class attributes and implement `requirements` and `parse`.

    Class attributes:
        name: CLI name (`movielens-100k`).
        pretty_name: human name for the card.
        description: one line for `--help`.
        domain: prompt domain (`movies`, `music`, `books`, `items`).
        homepage: official page.
        license: YAML license fields of the card (`license`, and for `other`: `license_name`, `license_link`).
        terms: one paragraph on the terms of use, copied into the card.
        citation: how to cite the data.
        timestamp_meaning: what the `timestamp` column holds.
    """

    name: str = ""
    pretty_name: str = ""
    description: str = ""
    domain: str = "items"
    homepage: str = ""
    license: dict = {"license": "unknown"}
    terms: str = ""
    citation: str = ""
    timestamp_meaning: str = "unix seconds"

    def requirements(self, config: BuildConfig) -> list[Requirement]:
        raise NotImplementedError

    def parse(self, files: ResolvedFiles, config: BuildConfig) -> InteractionData | PresplitData:
        raise NotImplementedError

    def cache_name(self, config: BuildConfig) -> str:
        """Sub-folder of the download cache."""
        return self.name


SOURCES: dict[str, Source] = {}


def register_source(cls: type[Source]) -> type[Source]:
    """Class decorator adding an instance of `cls` to [`SOURCES`] under `cls.name`."""
    if cls.name in SOURCES:
        raise ValueError(f"duplicate source name {cls.name!r}")
    SOURCES[cls.name] = cls()
    return cls


def get_source(name: str) -> Source:
    """The registered source called `name` (error lists the available ones)."""
    try:
        return SOURCES[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(sorted(SOURCES))}") from None
