"""UCSD Book Graph, Goodreads genre subsets (Wan & McAuley 2018): `goodreads_interactions_<genre>.json.gz` (JSON lines
with `user_id`, `book_id`, `is_read`, `rating`, `date_added` like "Tue Oct 17 19:39:09 -0700 2017") and
`goodreads_books_<genre>.json.gz` (JSON lines with `book_id`, `title`, ...). Interactions are ordered by `date_added`
(converted to unix seconds, UTC); shelf additions without a date are dropped and counted. All interactions (read or
only shelved) are kept; use `min_rating=1` to keep rated books only (rating 0 = not rated).
"""

from __future__ import annotations

import pandas as pd

from ..download import RawFile, RemoteFile, Requirement
from ..readers import raise_at_first, read_json_lines, require_values
from .base import InteractionData, Source, register_source


_BASE = "https://datarepo.eng.ucsd.edu/mcauley_group/gdrive/goodreads/byGenre/"
_MIRROR = "https://mcauleylab.ucsd.edu/public_datasets/gdrive/goodreads/byGenre/"
_DATE_FORMAT = "%a %b %d %H:%M:%S %z %Y"


def _remote(filename: str) -> RemoteFile:
    return RemoteFile(_BASE + filename, mirrors=(_MIRROR + filename,))


def _date_problem(record: dict) -> str | None:
    value = record.get("date_added")
    if value and pd.isna(pd.to_datetime(value, format=_DATE_FORMAT, errors="coerce")):
        return f"invalid date_added {value!r}"
    return None


@register_source
class GoodreadsUCSD(Source):
    name = "goodreads-ucsd"
    pretty_name = "Goodreads (UCSD Book Graph)"
    description = "Goodreads UCSD Book Graph genre subset (--genre, default poetry); ordered by date_added."
    domain = "books"
    homepage = "https://mengtingwan.github.io/data/goodreads.html"
    license = {
        "license": "other",
        "license_name": "ucsd-book-graph-academic-use",
        "license_link": "https://mengtingwan.github.io/data/goodreads.html",
    }
    terms = (
        "The UCSD Book Graph was collected for academic use only: please do not redistribute it or use it for "
        "commercial purposes."
    )
    citation = (
        "Mengting Wan and Julian McAuley. 2018. Item Recommendation on Monotonic Behavior Chains. RecSys 2018. "
        "Mengting Wan, Rishabh Misra, Ndapa Nakashole and Julian McAuley. 2019. Fine-Grained Spoiler Detection from "
        "Large-Scale Review Corpora. ACL 2019."
    )
    timestamp_meaning = "unix seconds of date_added (UTC)"

    def requirements(self, config):
        interactions = f"goodreads_interactions_{config.genre}.json.gz"
        books = f"goodreads_books_{config.genre}.json.gz"
        return [
            Requirement((RawFile(interactions, _remote(interactions)),), key="interactions"),
            Requirement((RawFile(books, _remote(books)),), key="books"),
        ]

    def parse(self, files, config):
        path = files["interactions"]
        fields = {"user_id": "string", "book_id": "string", "date_added": "string", "rating": "int"}
        events = read_json_lines(path, fields=fields, check=_date_problem)
        events = events.rename(columns={"user_id": "user", "book_id": "item"})
        for column in ("user", "item"):
            require_values(events, column, path)
        undated = events["date_added"].str.strip() == ""
        events = events[~undated].reset_index(drop=True)
        dates = pd.to_datetime(events["date_added"], format=_DATE_FORMAT, errors="coerce", utc=True)
        raise_at_first(path, events, dates.isna(), lambda row: f"invalid date_added {row['date_added']!r}")
        events["timestamp"] = ((dates - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy("int64")
        events["rating"] = events["rating"].astype("float64")
        books_path = files["books"]
        books = read_json_lines(books_path, fields={"book_id": "string", "title": "string"})
        books = books.rename(columns={"book_id": "item"})
        require_values(books, "item", books_path)
        return InteractionData(
            interactions=events[["user", "item", "timestamp", "rating", "line"]],
            items=books,
            interactions_file=path,
            items_file=books_path,
            notes={"goodreads_genre": config.genre},
            counts={"interactions_without_date": int(undated.sum())},
        )
