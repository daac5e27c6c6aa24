"""MovieLens latest-small (`ml-latest-small.zip`, 2018-09-26 release): `ratings.csv`
(`userId,movieId,rating,timestamp`, header, no quotes) and `movies.csv` (`movieId,title,genres`, titles quoted when
they contain commas), both UTF-8.
"""

from __future__ import annotations

from ..download import RawFile, RemoteFile, Requirement
from ..readers import read_quoted_csv, require_values
from .base import InteractionData, Source, register_source
from .movielens_common import (
    MOVIELENS_CITATION,
    MOVIELENS_LICENSE,
    MOVIELENS_TERMS,
    normalize_movielens_title,
    read_movielens_ratings,
)


ARCHIVE = RemoteFile("https://files.grouplens.org/datasets/movielens/ml-latest-small.zip")
RATINGS = RawFile(
    "ratings.csv",
    ARCHIVE,
    "ml-latest-small/ratings.csv",
    "aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646",
)
MOVIES = RawFile(
    "movies.csv",
    ARCHIVE,
    "ml-latest-small/movies.csv",
    "5a5f32dd9bb3797b8e728a1b98958789d2b13f294a69fdfbc5727f8a9611aa07",
)


@register_source
class MovieLensLatestSmall(Source):
    name = "movielens-latest-small"
    pretty_name = "MovieLens latest-small"
    description = "MovieLens latest-small: 100,836 ratings by 610 users on 9,742 movies (1996-2018), unix seconds."
    domain = "movies"
    homepage = "https://grouplens.org/datasets/movielens/latest/"
    license = {
        **MOVIELENS_LICENSE,
        "license_link": "https://files.grouplens.org/datasets/movielens/ml-latest-small-README.html",
    }
    terms = MOVIELENS_TERMS.replace(
        "you may not redistribute the data without separate permission",
        "redistribution is allowed only under the same license conditions",
    )
    citation = MOVIELENS_CITATION

    def requirements(self, config):
        return [Requirement((RATINGS,)), Requirement((MOVIES,))]

    def parse(self, files, config):
        ratings_path, movies_path = files["ratings.csv"], files["movies.csv"]
        ratings = read_movielens_ratings(
            ratings_path, sep=",", encoding="utf-8", header=["userId", "movieId", "rating", "timestamp"]
        )
        movies = read_quoted_csv(movies_path, encoding=config.raw_encoding or "utf-8", required=["movieId", "title"])
        movies = movies.rename(columns={"movieId": "item"})
        require_values(movies, "item", movies_path)
        movies["title"] = movies["title"].map(normalize_movielens_title)
        return InteractionData(ratings, movies, interactions_file=ratings_path, items_file=movies_path)
