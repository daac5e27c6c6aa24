"""Locating raw files: `--raw-dir` layouts, the cache, downloads (through a local `file://` URL, never the network),
checksum recording and verification, offline mode."""

import json
import zipfile

import pytest

from dataset_builders import BuildConfig, MissingRawFilesError, RawDataError, run_build
from dataset_builders.download import RawFile, RemoteFile, Requirement, resolve_raw_files, sha256_of


def _archive(tmp_path, files: dict[str, bytes], name="pack.zip"):
    path = tmp_path / "remote" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as bundle:
        for member, data in files.items():
            bundle.writestr(member, data)
    return path


def test_download_extract_and_record_checksum(tmp_path):
    archive = _archive(tmp_path, {"pack/a.txt": b"alpha\n", "pack/b.txt": b"beta\n"})
    remote = RemoteFile(archive.as_uri())
    known = sha256_of_bytes(b"alpha\n")
    requirements = [
        Requirement((RawFile("a.txt", remote, "pack/a.txt", known),)),
        Requirement((RawFile("c.txt", remote, "pack/c.txt"), RawFile("b.txt", remote, "pack/b.txt"))),
    ]
    cache = tmp_path / "cache"
    files = resolve_raw_files("demo", requirements, cache_dir=cache, progress=False)
    assert files["a.txt"].read_bytes() == b"alpha\n" and files["b.txt"].read_bytes() == b"beta\n"  # fallback used
    assert files["a.txt"].parent == cache / "demo"
    recorded = json.loads((cache / "demo" / "checksums.json").read_text())
    assert recorded == {"pack.zip": sha256_of(archive)}  # archive SHA-256 recorded on first download
    assert [r["sha256_status"] for r in files.records] == ["matches known value", "no known value"]
    # Cached: found again without any download, even offline.
    archive.unlink()
    again = resolve_raw_files("demo", requirements, cache_dir=cache, offline=True, progress=False)
    assert again.paths == files.paths


def sha256_of_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_download_checks_recorded_and_known_checksums(tmp_path):
    archive = _archive(tmp_path, {"a.txt": b"alpha\n"})
    cache = tmp_path / "cache"
    (cache / "demo").mkdir(parents=True)
    (cache / "demo" / "checksums.json").write_text(json.dumps({"pack.zip": "0" * 64}))
    requirement = Requirement((RawFile("a.txt", RemoteFile(archive.as_uri()), "a.txt"),))
    with pytest.raises(RawDataError, match="SHA-256 mismatch"):
        resolve_raw_files("demo", [requirement], cache_dir=cache, progress=False)
    assert not (cache / "demo" / "downloads" / "pack.zip").exists()  # a bad download is not kept
    wrong = Requirement((RawFile("a.txt", RemoteFile(archive.as_uri()), "a.txt", sha256="1" * 64),))
    (cache / "demo" / "checksums.json").unlink()
    with pytest.raises(RawDataError, match=r"a\.txt: SHA-256 mismatch: expected 1111"):
        resolve_raw_files("demo", [wrong], cache_dir=tmp_path / "cache2", progress=False)


def test_offline_and_unreachable(tmp_path, monkeypatch):
    requirement = Requirement((RawFile("a.txt", RemoteFile((tmp_path / "nowhere.zip").as_uri()), "a.txt"),))
    with pytest.raises(MissingRawFilesError, match="Offline mode"):
        resolve_raw_files("demo", [requirement], cache_dir=tmp_path / "cache", offline=True, progress=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(MissingRawFilesError, match=r"a\.txt \(from file://"):
        resolve_raw_files("demo", [requirement], cache_dir=tmp_path / "cache", progress=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    with pytest.raises(ConnectionError, match="download failed"):
        resolve_raw_files("demo", [requirement], cache_dir=tmp_path / "cache", progress=False)


def test_raw_dir_with_archive_subfolder(tmp_path):
    """An official archive extracted as is (`<dir>/ml-100k/u.data`) is found too."""
    from fixtures import movie_titles, synthetic_ratings, write_ml100k

    write_ml100k(tmp_path / "raw" / "ml-100k", synthetic_ratings(), movie_titles())
    result = run_build(
        "movielens-100k",
        tmp_path / "out",
        BuildConfig(raw_dir=str(tmp_path / "raw"), progress=False, verbose=False, num_candidates=10),
    )
    assert sum(result.info["statistics"]["rows"].values()) == 6 * (9 - 3)


def test_build_downloads_into_cache(tmp_path, monkeypatch):
    """A whole build through the download path, with the source's URL pointed at a local archive."""
    from fixtures import movie_titles, synthetic_ratings, write_ml100k

    from dataset_builders.sources import movielens_100k

    folder = write_ml100k(tmp_path / "files", synthetic_ratings(), movie_titles())
    archive = _archive(
        tmp_path, {f"ml-100k/{n}": (folder / n).read_bytes() for n in ("u.data", "u.item")}, name="ml-100k.zip"
    )
    remote = RemoteFile(archive.as_uri())
    monkeypatch.setattr(movielens_100k, "U_DATA", RawFile("u.data", remote, "ml-100k/u.data"))
    monkeypatch.setattr(movielens_100k, "U_ITEM", RawFile("u.item", remote, "ml-100k/u.item"))
    config = BuildConfig(cache_dir=str(tmp_path / "cache"), progress=False, verbose=False, num_candidates=10)
    result = run_build("movielens-100k", tmp_path / "out", config)
    assert (tmp_path / "cache" / "movielens-100k" / "u.data").read_bytes() == (folder / "u.data").read_bytes()
    assert [r["origin"] for r in result.info["source"]["files"]] == ["download", "download"]
    again = run_build("movielens-100k", tmp_path / "out2", config)
    assert [r["origin"] for r in again.info["source"]["files"]] == ["cache", "cache"]
