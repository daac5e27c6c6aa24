"""MovieLens 1M (`ml-1m.zip`): `ratings.dat` (`UserID::MovieID::Rating::Timestamp`) and `movies.dat`
(`MovieID::Title::Genres`, Latin-1). No SHA-256 of these files is known here (no verified copy was available), so
they are not checked; the archive's SHA-256 is recorded on first download.
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


ARCHIVE = RemoteFile("https://files.grouplens.org/datasets/movielens/ml-1m.zip")
RATINGS = RawFile("ratings.dat", ARCHIVE, "ml-1m/ratings.dat")
MOVIES = RawFile("movies.dat", ARCHIVE, "ml-1m/movies.dat")


@register_source
class MovieLens1M(Source):
    name = "movielens-1m"
    pretty_name = "MovieLens 1M"
    description = "MovieLens 1M: 1,000,209 ratings by 6,040 users on 3,706 movies (2000-03), unix-second timestamps."
    domain = "movies"
    homepage = "https://grouplens.org/datasets/movielens/1m/"
    license = {**MOVIELENS_LICENSE, "license_link": "https://files.grouplens.org/datasets/movielens/ml-1m-README.txt"}
    terms = MOVIELENS_TERMS
    citation = MOVIELENS_CITATION

    def requirements(self, config):
        return [Requirement((RATINGS,)), Requirement((MOVIES,))]

    def parse(self, files, config):
        ratings_path, movies_path = files["ratings.dat"], files["movies.dat"]
        ratings = read_movielens_ratings(ratings_path, sep="::")
        movies = read_delimited(
            movies_path,
            sep="::",
            columns=["item", "title", "genres"],
            encoding=config.raw_encoding or "latin-1",
            usecols=["item", "title"],
            detect_utf8=config.raw_encoding is None,  # a UTF-8 copy would decode into mojibake titles
            utf8_hint=UTF8_TITLES_HINT,
        )
        require_values(movies, "item", movies_path)
        movies["title"] = movies["title"].map(normalize_movielens_title)
        return InteractionData(ratings, movies, interactions_file=ratings_path, items_file=movies_path)
