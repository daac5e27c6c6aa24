"""Writers of small raw files in the exact official formats, and the location of the shared real raw data.

The real raw files live in `shared/data` beside the repository (`/work/shared/data` when the repository is
`/work/main`); tests that need them skip with a clear reason when that folder is absent. Formats that have no offline
copy (LastFM tag files, UCSD Book Graph, MovieLens 1M, S-DPO JSON) are written here, field for field as published.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest


REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
ML100K = SHARED_DATA / "movielens" / "ml-100k"
ML_LATEST = SHARED_DATA / "movielens" / "ml-latest-small"
LASTFM = SHARED_DATA / "lastfm" / "hetrec2011-lastfm-2k"
GOODBOOKS = SHARED_DATA / "goodreads" / "goodbooks-10k"


def shared(path: Path) -> Path:
    """`path` inside the shared raw data, or skip the test (CI clones the repository with `shared/` beside it)."""
    if not path.exists():
        pytest.skip(f"shared raw data not found at {path} (expected beside the repository, see shared/data/README.md)")
    return path


def file_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every Parquet file under `folder`, by relative path."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*.parquet"))
    }


def synthetic_ratings(n_users: int = 6, n_items: int = 40, per_user: int = 9, seed: int = 0) -> list[tuple]:
    """(user, item, rating, timestamp) tuples: distinct items per user, timestamps spread and partly tied."""
    rng = np.random.default_rng(seed)
    out = []
    for user in range(1, n_users + 1):
        items = rng.choice(np.arange(1, n_items + 1), size=per_user, replace=False)
        stamps = np.sort(rng.integers(1_000_000, 1_000_000 + 50 * per_user, size=per_user)) // 10 * 10
        for item, stamp in zip(items, stamps):
            out.append((user, int(item), int(rng.integers(1, 6)), int(stamp)))
    order = rng.permutation(len(out))  # the raw file is not sorted
    return [out[i] for i in order]


def write_ml100k(folder: Path, ratings: list[tuple], titles: dict[int, str]) -> Path:
    """`u.data` (tab, no header) and `u.item` (`|`, Latin-1, 24 fields) as in `ml-100k.zip`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ratings), encoding="latin-1")
    lines = [
        f"{item}|{title}|01-Jan-1995||http://us.imdb.com/M/title-exact?x|" + "|".join("0" * 19) + "\n"
        for item, title in titles.items()
    ]
    (folder / "u.item").write_bytes("".join(lines).encode("latin-1"))
    return folder


def movie_titles(n_items: int = 40) -> dict[int, str]:
    titles = {i: f"Movie {i} ({1950 + i})" for i in range(1, n_items + 1)}
    titles[1] = "Usual Suspects, The (1995)"
    titles[2] = "Cité des enfants perdus, La (1995)"
    titles[3] = "Sex, Lies, and Videotape (1989)"
    titles[5] = "Movie 4 (1954)"  # same title as item 4: must be disambiguated
    return titles


def write_ml1m(folder: Path, ratings: list[tuple], titles: dict[int, str]) -> Path:
    """`ratings.dat` and `movies.dat` (`::`-separated, Latin-1) as in `ml-1m.zip`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in ratings), "latin-1")
    body = "".join(f"{item}::{title}::Drama|Comedy\n" for item, title in titles.items())
    (folder / "movies.dat").write_bytes(body.encode("latin-1"))
    return folder


def lastfm_artist_ids(limit: int = 40) -> list[int]:
    """The first `limit` artist ids of the real `artists.dat` (ids have gaps)."""
    lines = shared(LASTFM / "artists.dat").read_text(encoding="utf-8").splitlines()[1 : limit + 1]
    return [int(line.split("\t")[0]) for line in lines]


def lastfm_events(artist_ids: list[int], n_users: int = 5, per_user: int = 8, seed: int = 1) -> list[tuple]:
    """(user, artist, tag, unix seconds at midnight UTC) events; the first artist of each user is tagged twice."""
    rng = np.random.default_rng(seed)
    events = []
    for user in range(2, 2 + n_users):
        artists = rng.choice(artist_ids, size=per_user, replace=False)
        days = np.sort(rng.choice(np.arange(0, 400), size=per_user, replace=False))
        for artist, day in zip(artists, days):
            stamp = 1_230_768_000 + int(day) * 86_400  # 2009-01-01 + day
            events.append((user, int(artist), int(rng.integers(1, 500)), stamp))
        events.append((user, int(artists[0]), 7, 1_230_768_000 + int(days[-1]) * 86_400 + 86_400))  # repeat, later
    order = rng.permutation(len(events))
    return [events[i] for i in order]


def write_lastfm_tagged(folder: Path, events: list[tuple], variant: str, crlf: bool = False) -> Path:
    """`user_taggedartists-timestamps.dat` (ms) or `user_taggedartists.dat` (day/month/year), tab, with header."""
    folder.mkdir(parents=True, exist_ok=True)
    end = "\r\n" if crlf else "\n"
    if variant == "timestamps":
        name, lines = "user_taggedartists-timestamps.dat", ["userID\tartistID\ttagID\ttimestamp"]
        lines += [f"{u}\t{a}\t{t}\t{s * 1000}" for u, a, t, s in events]
    else:
        name, lines = "user_taggedartists.dat", ["userID\tartistID\ttagID\tday\tmonth\tyear"]
        for u, a, t, s in events:
            date = datetime.fromtimestamp(s, tz=UTC)
            lines.append(f"{u}\t{a}\t{t}\t{date.day}\t{date.month}\t{date.year}")
    (folder / name).write_text(end.join(lines) + end, encoding="utf-8", newline="")
    return folder / name


def goodreads_date(stamp: int, offset_hours: int = -7) -> str:
    """A `date_added` string as in the UCSD Book Graph, e.g. "Tue Oct 17 19:39:09 -0700 2017"."""
    tz = timezone(timedelta(hours=offset_hours))
    return datetime.fromtimestamp(stamp, tz=tz).strftime("%a %b %d %H:%M:%S %z %Y")


def write_ucsd(folder: Path, genre: str, interactions: list[dict], books: list[dict]) -> Path:
    """`goodreads_interactions_<genre>.json.gz` and `goodreads_books_<genre>.json.gz` (gzipped JSON lines)."""
    folder.mkdir(parents=True, exist_ok=True)
    for kind, records in (("interactions", interactions), ("books", books)):
        text = "".join(json.dumps(record) + "\n" for record in records)
        (folder / f"goodreads_{kind}_{genre}.json.gz").write_bytes(gzip.compress(text.encode("utf-8"), mtime=0))
    return folder


def ucsd_records(n_users: int = 5, n_books: int = 40, per_user: int = 8, seed: int = 2) -> tuple[list, list]:
    """Interaction and book records in the UCSD format (extra fields included, as in the real files)."""
    rng = np.random.default_rng(seed)
    books = [
        {"book_id": str(1000 + b), "title": f"Poems {b}", "isbn": "", "popular_shelves": [{"count": "3", "name": "x"}]}
        for b in range(n_books)
    ]
    interactions = []
    for u in range(n_users):
        chosen = rng.choice(n_books, size=per_user, replace=False)
        stamps = np.sort(rng.integers(1_400_000_000, 1_500_000_000, size=per_user))
        for book, stamp in zip(chosen, stamps):
            interactions.append(
                {
                    "user_id": f"user{u:032x}",
                    "book_id": str(1000 + int(book)),
                    "review_id": f"r{u}-{book}",
                    "is_read": bool(rng.integers(0, 2)),
                    "rating": int(rng.integers(0, 6)),
                    "date_added": goodreads_date(int(stamp), offset_hours=int(rng.choice([-7, 0, 2]))),
                    "date_updated": "",
                    "read_at": "",
                    "started_at": "",
                }
            )
    order = rng.permutation(len(interactions))
    return [interactions[i] for i in order], books


def sdpo_records(n: int, seed: int, history_as_string: bool = False) -> list[dict]:
    """Records in the S-DPO JSON format: historyList, itemList (20 titles), trueSelection."""
    rng = np.random.default_rng(seed)
    names = [f"Band {i}" for i in range(60)] + ["Sex, Lies & Videotape", 'Lisa "Left Eye" Lopes']
    out = []
    for _ in range(n):
        picks = [names[i] for i in rng.choice(len(names), size=25, replace=False)]
        history, candidates = picks[:5], picks[5:]
        record = {
            "historyList": "::".join(history) if history_as_string else history,
            "itemList": candidates,
            "trueSelection": candidates[int(rng.integers(0, 20))],
        }
        out.append(record)
    return out


def write_sdpo(folder: Path, splits: dict[str, list[dict]], jsonl: bool = False, names: dict | None = None) -> Path:
    """One JSON list (or JSON-lines) file per split."""
    folder.mkdir(parents=True, exist_ok=True)
    names = names or {"train": "train", "validation": "valid", "test": "test"}
    for split, records in splits.items():
        path = folder / f"{names[split]}.{'jsonl' if jsonl else 'json'}"
        if jsonl:
            path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        else:
            path.write_text(json.dumps(records, indent=4), encoding="utf-8")
    return folder
