"""MovieLens 100K (`ml-100k.zip`): `u.data` (tab-separated `user item rating timestamp`, no header) and `u.item`
(`|`-separated, Latin-1: id, title, release date, video date, IMDb URL, 19 genre flags).

Item 267 is titled "unknown" in the official file: it counts as an item without a title (dropped with its
interactions, reported in the statistics).
"""

from __future__ import annotations

from ..download import RawFile, RemoteFile, Requirement
from ..readers import read_delimited, require_values
from .base import InteractionData, Source, register_source
from .movielens_common import (
    MOVIELENS_CITATION,
    MOVIELENS_LICENSE,
    MOVIELENS_TERMS,
    UTF8_TITLES_HINT,
    normalize_movielens_title,
    read_movielens_ratings,
)


ARCHIVE = RemoteFile("https://files.grouplens.org/datasets/movielens/ml-100k.zip")
# SHA-256 of the official files (identical in two independent byte-for-byte copies of the release).
U_DATA = RawFile(
    "u.data", ARCHIVE, "ml-100k/u.data", "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"
)
U_ITEM = RawFile(
    "u.item", ARCHIVE, "ml-100k/u.item", "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701"
)

_ITEM_COLUMNS = ["item", "title", "release_date", "video_release_date", "imdb_url"] + [f"genre_{i}" for i in range(19)]


@register_source
class MovieLens100K(Source):
    name = "movielens-100k"
    pretty_name = "MovieLens 100K"
    description = "MovieLens 100K: 100,000 ratings by 943 users on 1,682 movies (1997-98), unix-second timestamps."
    domain = "movies"
    homepage = "https://grouplens.org/datasets/movielens/100k/"
    license = MOVIELENS_LICENSE
    terms = MOVIELENS_TERMS
    citation = MOVIELENS_CITATION

    def requirements(self, config):
        return [Requirement((U_DATA,)), Requirement((U_ITEM,))]

    def parse(self, files, config):
        ratings_path, items_path = files["u.data"], files["u.item"]
        ratings = read_movielens_ratings(ratings_path, sep="\t")
        items = read_delimited(
            items_path,
            sep="|",
            columns=_ITEM_COLUMNS,
            encoding=config.raw_encoding or "latin-1",
            usecols=["item", "title"],
            # A UTF-8 copy decodes as Latin-1 without error, into "Les MisÃ©rables": refuse it unless chosen.
            detect_utf8=config.raw_encoding is None,
            utf8_hint=UTF8_TITLES_HINT,
        )
        require_values(items, "item", items_path)
        items["title"] = items["title"].map(normalize_movielens_title)
        return InteractionData(
            interactions=ratings,
            items=items,
            interactions_file=ratings_path,
            items_file=items_path,
            missing_titles=frozenset({"unknown"}),
        )
