"""goodbooks-10k (Zając 2017): `ratings.csv` (`user_id,book_id,rating`, about 6M rows) and `books.csv` (`book_id`,
`title`, ...; quoted CSV). The ratings have no timestamps; upstream states they are sorted by time, so the row order is
the time: `timestamp` is the 0-based row index in `ratings.csv`.

Files are downloaded from the dataset's official GitHub repository, pinned to commit 6dd165b (`books.csv` has a known
SHA-256; `ratings.csv`'s is not known here and is not checked).
"""

from __future__ import annotations

import numpy as np

from ..download import RawFile, RemoteFile, Requirement
from ..readers import parse_floats, read_delimited, read_quoted_csv, require_values
from .base import InteractionData, Source, register_source


_BASE = "https://raw.githubusercontent.com/zygmuntz/goodbooks-10k/6dd165b555a7b47b2dd36743a425776e641ff50c/"
RATINGS = RawFile(
    "ratings.csv",
    RemoteFile(_BASE + "ratings.csv", mirrors=("https://github.com/zygmuntz/goodbooks-10k/raw/master/ratings.csv",)),
)
BOOKS = RawFile(
    "books.csv",
    RemoteFile(_BASE + "books.csv", mirrors=("https://github.com/zygmuntz/goodbooks-10k/raw/master/books.csv",)),
    sha256="4d21d0e0433128657c752e3a3d0405ac0ec11675d6c70c64cb0abf4ab1acb76a",
)


@register_source
class Goodbooks10K(Source):
    name = "goodbooks-10k"
    pretty_name = "goodbooks-10k"
    description = "goodbooks-10k: ~6M ratings of 10,000 books by 53,424 users; row order as time (no timestamps)."
    domain = "books"
    homepage = "https://github.com/zygmuntz/goodbooks-10k"
    license = {"license": "cc-by-sa-4.0"}
    terms = "goodbooks-10k is released under CC BY-SA 4.0: derived datasets must credit it and use the same license."
    citation = (
        "Zygmunt Zając. 2017. goodbooks-10k: a new dataset for book recommendations. FastML. "
        "https://github.com/zygmuntz/goodbooks-10k"
    )
    timestamp_meaning = "0-based row index in ratings.csv (the file is sorted by time; it has no timestamps)"

    def requirements(self, config):
        return [Requirement((RATINGS,)), Requirement((BOOKS,))]

    def parse(self, files, config):
        ratings_path, books_path = files["ratings.csv"], files["books.csv"]
        ratings = read_delimited(
            ratings_path,
            sep=",",
            columns=["user", "item", "rating"],
            encoding="utf-8",
            header=["user_id", "book_id", "rating"],
        )
        for column in ("user", "item"):
            require_values(ratings, column, ratings_path)
        ratings["rating"] = parse_floats(ratings, "rating", ratings_path)
        ratings["timestamp"] = np.arange(len(ratings), dtype=np.int64)
        books = read_quoted_csv(books_path, encoding=config.raw_encoding or "utf-8", required=["book_id", "title"])
        books = books.rename(columns={"book_id": "item"})
        require_values(books, "item", books_path)
        return InteractionData(ratings, books, interactions_file=ratings_path, items_file=books_path)
