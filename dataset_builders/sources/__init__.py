"""Raw-format parsers, one module per format. Importing this package registers every source in `SOURCES`."""

from . import (  # noqa: F401  (imported for registration)
    goodbooks_10k,
    goodreads_ucsd,
    lastfm_hetrec,
    movielens_1m,
    movielens_100k,
    movielens_latest,
    sdpo_json,
)
from .base import SOURCES, InteractionData, PresplitData, PresplitRecord, Source, get_source, register_source


__all__ = [
    "SOURCES",
    "InteractionData",
    "PresplitData",
    "PresplitRecord",
    "Source",
    "get_source",
    "register_source",
]
