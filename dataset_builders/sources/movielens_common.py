"""What the three MovieLens formats share: title normalization, terms of use, citation.

MovieLens titles put a leading article at the end ("Usual Suspects, The (1995)"), also inside the alternative title
in parentheses ("City of Lost Children, The (Cité des enfants perdus, La) (1995)"). [`normalize_movielens_title`]
moves it back to the front of the main title and of every parenthesized alternative title, for English articles and
the common French, Italian, Spanish, German, Dutch and Scandinavian ones.
"""

from __future__ import annotations

import re

from ..readers import parse_floats, parse_integers, read_delimited, require_values


# Articles that MovieLens moves to the end. Ambiguous short words ("O", "Da", "As") are left out on purpose: e.g.
# "Hip Hop Witch, Da (2000)" is not an article inversion.
_ARTICLES_BY_LANGUAGE = {
    "English": ("The", "A", "An"),
    "French": ("Le", "La", "Les", "L'", "Un", "Une"),
    "Italian": ("Il", "Lo", "I", "Gli", "Una"),
    "Spanish": ("El", "Los", "Las"),
    "German": ("Der", "Die", "Das", "Ein", "Eine"),
    "Dutch / Scandinavian": ("De", "Het", "Det", "Den", "En"),
}
ARTICLES = tuple(article for group in _ARTICLES_BY_LANGUAGE.values() for article in group)

_TRAILING_ARTICLE = re.compile(
    r"^(?P<body>.+?),\s+(?P<article>" + "|".join(re.escape(a) for a in sorted(ARTICLES, key=len, reverse=True)) + r")$"
)
_TRAILING_GROUP = re.compile(r"\s*\((?P<inner>[^()]*)\)\s*$")


def _front_article(text: str) -> str:
    match = _TRAILING_ARTICLE.match(text.strip())
    if match is None:
        return text.strip()
    article, body = match.group("article"), match.group("body")
    return f"{article}{body}" if article.endswith("'") else f"{article} {body}"


def normalize_movielens_title(title: str) -> str:
    """Move trailing articles to the front: "Usual Suspects, The (1995)" -> "The Usual Suspects (1995)".

    Example:
    ```python
    >>> normalize_movielens_title("City of Lost Children, The (Cité des enfants perdus, La) (1995)")
    'The City of Lost Children (La Cité des enfants perdus) (1995)'
    >>> normalize_movielens_title("Macbeth (a.k.a. Tragedy of Macbeth, The) (1971)")
    'Macbeth (a.k.a. The Tragedy of Macbeth) (1971)'
    >>> normalize_movielens_title("Enfer, L' (1994)")
    "L'Enfer (1994)"
    >>> normalize_movielens_title("Sex, Lies, and Videotape (1989)")
    'Sex, Lies, and Videotape (1989)'
    ```
    """
    groups = []
    main = title
    while (match := _TRAILING_GROUP.search(main)) is not None and match.start() > 0:
        inner = match.group("inner")
        prefix = "a.k.a. " if inner.startswith("a.k.a. ") else ""  # "(a.k.a. Gates of Hell, The)"
        groups.append(prefix + _front_article(inner[len(prefix) :]))
        main = main[: match.start()]
    parts = [_front_article(main)] + [f"({inner})" for inner in reversed(groups)]
    return " ".join(parts)


MOVIELENS_LICENSE = {
    "license": "other",
    "license_name": "movielens-research-terms",
    "license_link": "https://files.grouplens.org/datasets/movielens/ml-100k-README.txt",
}

MOVIELENS_TERMS = (
    "MovieLens data (GroupLens Research, University of Minnesota) may be used for research purposes only; you must "
    "not imply endorsement by the University of Minnesota or GroupLens, you must cite the paper below, you may not "
    "redistribute the data without separate permission, and commercial use requires permission. Build the dataset "
    "yourself from the official archive rather than publishing it."
)

# How to read an item file that was re-encoded to UTF-8 (the official files are Latin-1).
UTF8_TITLES_HINT = "pass raw_encoding='utf-8' (--raw-encoding utf-8) to read it as UTF-8, or use the official file"

MOVIELENS_CITATION = (
    "F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens Datasets: History and Context. ACM Transactions on "
    "Interactive Intelligent Systems (TiiS) 5, 4, Article 19. https://doi.org/10.1145/2827872"
)


def read_movielens_ratings(path, *, sep: str, encoding: str = "latin-1", header: list[str] | None = None):
    """The `user, item, rating, timestamp` table every MovieLens release has, each value checked (file and line)."""
    ratings = read_delimited(
        path, sep=sep, columns=["user", "item", "rating", "timestamp"], encoding=encoding, header=header
    )
    for column in ("user", "item"):
        require_values(ratings, column, path)
    ratings["timestamp"] = parse_integers(ratings, "timestamp", path)
    ratings["rating"] = parse_floats(ratings, "rating", path)
    return ratings
