"""Bad raw input is reported with the file and the line; missing files are reported all at once."""

import gzip

import pytest
from fixtures import (
    lastfm_events,
    movie_titles,
    sdpo_records,
    synthetic_ratings,
    ucsd_records,
    write_lastfm_tagged,
    write_ml1m,
    write_ml100k,
    write_sdpo,
    write_ucsd,
)

from dataset_builders import BuildConfig, MissingRawFilesError, RawDataError, run_build


def _build(name, raw, tmp_path, **kwargs):
    return run_build(name, tmp_path / "out", BuildConfig(raw_dir=str(raw), progress=False, verbose=False, **kwargs))


@pytest.fixture
def ml100k_raw(tmp_path):
    return write_ml100k(tmp_path / "raw", synthetic_ratings(), movie_titles())


def _replace_line(path, number, text, encoding="latin-1"):
    lines = path.read_text(encoding=encoding).splitlines(keepends=True)
    lines[number - 1] = text
    path.write_text("".join(lines), encoding=encoding)


def test_truncated_line(ml100k_raw, tmp_path):
    _replace_line(ml100k_raw / "u.data", 3, "1\t7\t4\n")
    with pytest.raises(RawDataError, match=r"u\.data, line 3: expected 4 '\\t'-separated fields, found 3") as info:
        _build("movielens-100k", ml100k_raw, tmp_path)
    assert isinstance(info.value, ValueError) and info.value.line == 3
    assert info.value.path.endswith("u.data")


def test_truncated_last_line_without_newline(ml100k_raw, tmp_path):
    data = (ml100k_raw / "u.data").read_bytes().rstrip(b"\n")
    (ml100k_raw / "u.data").write_bytes(data[: data.rindex(b"\t")])  # cut inside the last line
    lines = data.count(b"\n") + 1
    with pytest.raises(RawDataError, match=rf"u\.data, line {lines}: expected 4"):
        _build("movielens-100k", ml100k_raw, tmp_path)


def test_unknown_item_id(ml100k_raw, tmp_path):
    _replace_line(ml100k_raw / "u.data", 5, "3\t999\t4\t1000100\n")
    with pytest.raises(RawDataError, match=r"u\.data, line 5: unknown item id '999' \(not in u\.item\)"):
        _build("movielens-100k", ml100k_raw, tmp_path)
    result = _build("movielens-100k", ml100k_raw, tmp_path, on_unknown_item="drop", num_candidates=10)
    assert result.info["dropped"]["interactions_unknown_item"] == 1


@pytest.mark.parametrize("name", ["u.data", "u.item"])
def test_empty_file(ml100k_raw, tmp_path, name):
    (ml100k_raw / name).write_bytes(b"")
    with pytest.raises(RawDataError, match=rf"{name.replace('.', '[.]')}, line 1: file is empty"):
        _build("movielens-100k", ml100k_raw, tmp_path)


def test_wrong_encoding(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    ratings = synthetic_ratings()
    (raw / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r}.0,{t}\n" for u, i, r, t in ratings), "utf-8"
    )
    titles = movie_titles()
    body = "movieId,title,genres\n" + "".join(f'{i},"{t}",Drama\n' for i, t in titles.items())
    (raw / "movies.csv").write_bytes(body.encode("latin-1"))  # "Cité" (item 2, line 3) in Latin-1, file must be UTF-8
    with pytest.raises(RawDataError, match=r"movies\.csv, line 3: cannot decode byte 0xe9 as utf-8"):
        _build("movielens-latest-small", raw, tmp_path)
    (raw / "movies.csv").write_bytes(body.encode("utf-8"))
    (raw / "ratings.csv").write_bytes((raw / "ratings.csv").read_bytes()[:-10] + b"\xff\xfe\n")
    with pytest.raises(RawDataError, match=rf"ratings\.csv, line {len(ratings) + 1}: cannot decode byte 0xff"):
        _build("movielens-latest-small", raw, tmp_path)


def test_quoted_csv_truncated_and_bad_number(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    ratings = synthetic_ratings()
    rows = "".join(f"{u},{i},{r}.0,{t}\n" for u, i, r, t in ratings)
    (raw / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + rows, "utf-8")
    movies = ["movieId,title,genres"] + [f'{i},"{t}",Drama' for i, t in movie_titles().items()]
    movies[4] = '4,"Movie 4 (1954)"'
    (raw / "movies.csv").write_text("\n".join(movies) + "\n", "utf-8")
    with pytest.raises(RawDataError, match=r"movies\.csv, line 5: expected 3 comma-separated fields, found 2"):
        _build("movielens-latest-small", raw, tmp_path)
    movies[4] = '4,"Movie 4 (1954)",Drama'
    (raw / "movies.csv").write_text("\n".join(movies) + "\n", "utf-8")
    lines = (raw / "ratings.csv").read_text().splitlines()
    lines[6] = lines[6].rsplit(",", 1)[0] + ",soon"
    (raw / "ratings.csv").write_text("\n".join(lines) + "\n", "utf-8")
    with pytest.raises(RawDataError, match=r"ratings\.csv, line 7: timestamp must be an integer, found 'soon'"):
        _build("movielens-latest-small", raw, tmp_path)
    lines[0] = "user,movie,rating,timestamp"
    (raw / "ratings.csv").write_text("\n".join(lines) + "\n", "utf-8")
    with pytest.raises(RawDataError, match=r"ratings\.csv, line 1: unexpected header"):
        _build("movielens-latest-small", raw, tmp_path)


def test_double_colon_format_truncated(tmp_path):
    raw = write_ml1m(tmp_path / "raw", synthetic_ratings(), movie_titles())
    _replace_line(raw / "movies.dat", 9, "9::Movie 9 (1959)\n")
    with pytest.raises(RawDataError, match=r"movies\.dat, line 9: expected 3 '::'-separated fields, found 2"):
        _build("movielens-1m", raw, tmp_path)


def test_duplicate_item_id(ml100k_raw, tmp_path):
    _replace_line(ml100k_raw / "u.item", 6, (ml100k_raw / "u.item").read_text("latin-1").splitlines(True)[0])
    with pytest.raises(RawDataError, match=r"u\.item, line 6: item id '1' appears twice"):
        _build("movielens-100k", ml100k_raw, tmp_path)


def test_lastfm_bad_header_and_date(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "artists.dat").write_text(
        "id\tname\turl\tpictureURL\n" + "".join(f"{i}\tArtist {i}\thttp://x/{i}\t\n" for i in range(1, 41)), "utf-8"
    )
    path = write_lastfm_tagged(raw, lastfm_events(list(range(1, 41))), "dates", crlf=True)
    lines = path.read_bytes().decode("utf-8").split("\r\n")
    lines[4] = "\t".join(lines[4].split("\t")[:4] + ["13", "2009"])
    path.write_text("\r\n".join(lines), encoding="utf-8", newline="")
    with pytest.raises(RawDataError, match=r"user_taggedartists\.dat, line 5: invalid date \d+/13/2009"):
        _build("lastfm-hetrec", raw, tmp_path)
    lines[0] = "user\tartist\ttag\tday\tmonth\tyear"
    path.write_text("\r\n".join(lines), encoding="utf-8", newline="")
    with pytest.raises(RawDataError, match=r"user_taggedartists\.dat, line 1: unexpected header"):
        _build("lastfm-hetrec", raw, tmp_path)


def test_ucsd_truncated_json_and_bad_date(tmp_path):
    interactions, books = ucsd_records()
    raw = write_ucsd(tmp_path / "raw", "poetry", interactions, books)
    path = raw / "goodreads_interactions_poetry.json.gz"
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    path.write_bytes(gzip.compress(("\n".join(lines[:10]) + "\n" + lines[10][:40] + "\n").encode()))
    with pytest.raises(RawDataError, match=r"goodreads_interactions_poetry\.json\.gz, line 11: invalid JSON"):
        _build("goodreads-ucsd", raw, tmp_path)
    interactions[6]["date_added"] = "yesterday"
    write_ucsd(raw, "poetry", interactions, books)
    with pytest.raises(RawDataError, match=r"json\.gz, line 7: invalid date_added 'yesterday'"):
        _build("goodreads-ucsd", raw, tmp_path)
    interactions[6]["date_added"] = interactions[5]["date_added"]
    del interactions[8]["book_id"]
    write_ucsd(raw, "poetry", interactions, books)
    with pytest.raises(RawDataError, match=r"json\.gz, line 9: missing key 'book_id'"):
        _build("goodreads-ucsd", raw, tmp_path)


def test_sdpo_json_truncated(tmp_path):
    splits = {s: sdpo_records(3, seed=i) for i, s in enumerate(("train", "validation", "test"))}
    raw = write_sdpo(tmp_path / "raw", splits)
    text = (raw / "test.json").read_text()
    (raw / "test.json").write_text(text[: len(text) // 2])
    with pytest.raises(RawDataError, match=r"test\.json, line \d+"):
        _build("sdpo-json", raw, tmp_path)


def test_missing_files_are_listed_together(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(MissingRawFilesError) as info:
        _build("movielens-100k", tmp_path / "raw", tmp_path)
    message = str(info.value)
    assert "u.data" in message and "u.item" in message
    assert "https://files.grouplens.org/datasets/movielens/ml-100k.zip" in message
    assert str(tmp_path / "raw") in message
    with pytest.raises(MissingRawFilesError, match="user_taggedartists-timestamps.dat or user_taggedartists.dat"):
        _build("lastfm-hetrec", tmp_path / "raw", tmp_path)
    with pytest.raises(MissingRawFilesError, match="no official download"):
        _build("sdpo-json", tmp_path / "raw", tmp_path)
