"""Last.fm HetRec 2011 (`hetrec2011-lastfm-2k.zip`): artists and time-stamped tag assignments.

Items come from `artists.dat` (UTF-8, tab-separated, header `id name url pictureURL`). The listening sequence of a
user is the order in which the user tagged artists, from `user_taggedartists-timestamps.dat`
(`userID artistID tagID timestamp`, timestamp in milliseconds, converted to seconds) when it is present, else from
`user_taggedartists.dat` (`userID artistID tagID day month year`, converted to midnight UTC of that day). Several tags
given to the same artist are several events; the pipeline keeps a user's first event per artist. Files with CRLF line
endings are read as well; a Latin-1 copy of `artists.dat` can be read with `raw_encoding="latin-1"`.
"""

from __future__ import annotations

import pandas as pd

from ..download import RawFile, RemoteFile, Requirement
from ..readers import parse_integers, raise_at_first, read_delimited, require_values
from .base import InteractionData, Source, register_source


ARCHIVE = RemoteFile("https://files.grouplens.org/datasets/hetrec2011/hetrec2011-lastfm-2k.zip")
ARTISTS = RawFile(
    "artists.dat", ARCHIVE, "artists.dat", "c173881362c6b28551368fecb3c0be5a6a30a6cd859e1f5775413dfe46d48648"
)
TAGGED_TIMESTAMPS = RawFile("user_taggedartists-timestamps.dat", ARCHIVE, "user_taggedartists-timestamps.dat")
TAGGED_DATES = RawFile("user_taggedartists.dat", ARCHIVE, "user_taggedartists.dat")

TIMESTAMPS_HEADER = ["userID", "artistID", "tagID", "timestamp"]
DATES_HEADER = ["userID", "artistID", "tagID", "day", "month", "year"]


def _events_from_timestamps(path) -> pd.DataFrame:
    events = read_delimited(
        path, sep="\t", columns=["user", "item", "tag", "timestamp_ms"], encoding="utf-8", header=TIMESTAMPS_HEADER
    )
    events["timestamp"] = parse_integers(events, "timestamp_ms", path) // 1000
    return events


def _events_from_dates(path) -> pd.DataFrame:
    events = read_delimited(
        path, sep="\t", columns=["user", "item", "tag", "day", "month", "year"], encoding="utf-8", header=DATES_HEADER
    )
    parts = {name: parse_integers(events, name, path) for name in ("year", "month", "day")}
    dates = pd.to_datetime(pd.DataFrame(parts), errors="coerce", utc=True)
    raise_at_first(path, events, dates.isna(), lambda row: f"invalid date {row['day']}/{row['month']}/{row['year']}")
    events["timestamp"] = ((dates - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy("int64")
    return events


@register_source
class LastFMHetRec(Source):
    name = "lastfm-hetrec"
    pretty_name = "Last.fm HetRec 2011 (lastfm-2k)"
    description = "Last.fm HetRec 2011: 1,892 users, 17,632 artists; sequences from time-stamped tag assignments."
    domain = "music"
    homepage = "https://grouplens.org/datasets/hetrec-2011/"
    license = {
        "license": "other",
        "license_name": "hetrec-2011-non-commercial",
        "license_link": "https://grouplens.org/datasets/hetrec-2011/",
    }
    terms = (
        "The HetRec 2011 Last.fm data is made available for non-commercial use; publications using it should cite "
        "the HetRec 2011 workshop. Last.fm data: http://www.last.fm"
    )
    citation = (
        "Iván Cantador, Peter Brusilovsky, and Tsvi Kuflik. 2011. 2nd Workshop on Information Heterogeneity and Fusion "
        "in Recommender Systems (HetRec 2011). In Proceedings of the 5th ACM Conference on Recommender Systems "
        "(RecSys '11). ACM."
    )
    timestamp_meaning = "unix seconds of the tag assignment (day resolution when user_taggedartists.dat is used)"

    def requirements(self, config):
        return [Requirement((ARTISTS,)), Requirement((TAGGED_TIMESTAMPS, TAGGED_DATES), key="events")]

    def parse(self, files, config):
        events_path = files["events"]
        if events_path.name.endswith("timestamps.dat"):
            events = _events_from_timestamps(events_path)
            used, resolution = "user_taggedartists-timestamps.dat", "milliseconds (truncated to seconds)"
        else:
            events = _events_from_dates(events_path)
            used, resolution = "user_taggedartists.dat", "days (midnight UTC)"
        for column in ("user", "item"):
            require_values(events, column, events_path)
        artists_path = files["artists.dat"]
        artists = read_delimited(
            artists_path,
            sep="\t",
            columns=["item", "title", "url", "pictureURL"],
            encoding=config.raw_encoding or "utf-8",
            header=["id", "name", "url", "pictureURL"],
            usecols=["item", "title"],
        )
        require_values(artists, "item", artists_path)
        return InteractionData(
            interactions=events[["user", "item", "timestamp", "line"]],
            items=artists,
            interactions_file=events_path,
            items_file=artists_path,
            notes={"lastfm_events_file": used, "lastfm_timestamp_resolution": resolution},
        )
