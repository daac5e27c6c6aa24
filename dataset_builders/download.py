"""Locating raw files: a local folder (`--raw-dir`), the download cache, or a download from the official source.

Checksums. The raw files the builders read are checked against the SHA-256 values that are known for them (taken
from the official releases as redistributed byte for byte; see each source module). The download archives themselves
(e.g. GroupLens' `ml-100k.zip`) have no published SHA-256 (GroupLens publishes MD5 sums only), so the SHA-256 of an
archive is recorded in `<cache>/checksums.json` on its first download and every later download of the same archive is
checked against that record (trust on first use). Build info records, for every file used, its SHA-256 and whether it
matched a known value.

Cache layout (`~/.cache/trl_dynamicpo/raw/<dataset>` unless `--cache-dir` is given; `$XDG_CACHE_HOME` is honoured):

```
<cache>/<dataset>/downloads/ml-100k.zip   # the downloaded archive, kept so files can be re-extracted
<cache>/<dataset>/u.data                  # extracted raw files, read by the parser
<cache>/<dataset>/checksums.json          # SHA-256 of the archives, recorded on first download
```
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from .errors import AmbiguousRawFilesError, MissingRawFilesError, RawDataError, RawDownloadError


logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """A file published at a URL: an archive (`.zip`) or a raw file itself (e.g. `.json.gz`).

    Args:
        url (`str`): official download URL.
        sha256 (`str`, *optional*): SHA-256 of the download when it is known.
        mirrors (`tuple[str, ...]`): other URLs tried in order when `url` fails.
    """

    url: str
    sha256: str | None = None
    mirrors: tuple[str, ...] = ()

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def is_zip(self) -> bool:
        return self.filename.endswith(".zip")


@dataclass(frozen=True)
class RawFile:
    """One raw file a parser reads.

    Args:
        name (`str`): the file name the parser expects (e.g. `"u.data"`); may be a glob pattern (`"*-train.json"`).
        remote ([`RemoteFile`], *optional*): where it is published (`None`: no download, local files only).
        member (`str`, *optional*): its path inside the archive `remote` (e.g. `"ml-100k/u.data"`); `None` when the
            download is the file itself.
        sha256 (`str`, *optional*): SHA-256 of the file when known.
    """

    name: str
    remote: RemoteFile | None
    member: str | None = None
    sha256: str | None = None

    def origin(self) -> str:
        if self.remote is None:
            return "local file (no official download)"
        return self.remote.url + (f" (member {self.member})" if self.member else "")


@dataclass(frozen=True)
class Requirement:
    """A needed input: one of `alternatives`, the first one found being used (they are in order of preference).

    The parser finds the file under `key` if given, else under the name of the alternative that was found. A glob
    alternative that matches several files is an error (the builder does not guess); with `exclusive`, so is finding
    more than one alternative (the names are equally good spellings of one input, none preferred).
    """

    alternatives: tuple[RawFile, ...]
    key: str | None = None  # name under which the parser finds the file (default: the found alternative's name)
    exclusive: bool = False

    @property
    def downloadable(self) -> bool:
        return any(alt.remote is not None for alt in self.alternatives)

    def describe(self) -> str:
        names = " or ".join(alt.name for alt in self.alternatives)
        urls = sorted({alt.remote.url for alt in self.alternatives if alt.remote is not None})
        return f"{names} (from {', '.join(urls)})" if urls else f"{names} (no official download: provide it locally)"


@dataclass
class ResolvedFiles:
    """The raw files found: `paths[name]` and one provenance record per file (for build_info.json)."""

    paths: dict[str, Path] = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)

    def __contains__(self, name: str) -> bool:
        return name in self.paths

    def __getitem__(self, name: str) -> Path:
        return self.paths[name]


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/trl_dynamicpo/raw` (default `~/.cache/trl_dynamicpo/raw`)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "trl_dynamicpo" / "raw"


def offline_mode(explicit: bool) -> bool:
    """Offline if asked, or if `HF_DATASETS_OFFLINE` / `HF_HUB_OFFLINE` is set to a true value."""
    flags = (os.environ.get(name, "").strip().lower() for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))
    return explicit or any(flag in {"1", "true", "yes", "on"} for flag in flags)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _candidates(folder: Path, raw: RawFile) -> list[Path]:
    if any(char in raw.name for char in "*?["):
        return sorted(folder.glob(raw.name))
    paths = [folder / raw.name]
    if raw.member and raw.member != raw.name:
        paths.append(folder / raw.member)  # an archive extracted as is, e.g. <dir>/ml-100k/u.data
    return paths


def _ambiguous(folder: Path, requirement: Requirement, hits: list[Path]) -> AmbiguousRawFilesError:
    names = ", ".join(alt.name for alt in requirement.alternatives)
    what = f"the {requirement.key!r} input ({names})" if requirement.key else f"one input ({names})"
    return AmbiguousRawFilesError(what, [str(path) for path in hits], str(folder))


def _search(folder: Path, requirements: list[Requirement]) -> tuple[dict[str, tuple[RawFile, Path]], list]:
    """The file found for each requirement, and the requirements without one.

    Raises:
        AmbiguousRawFilesError: a glob matches several files, or an `exclusive` requirement finds several.
    """
    found, missing = {}, []
    for requirement in requirements:
        matches: list[tuple[RawFile, Path]] = []
        for alternative in requirement.alternatives:
            hits = [path for path in _candidates(folder, alternative) if path.is_file()]
            if any(char in alternative.name for char in "*?[") and len(hits) > 1:
                raise _ambiguous(folder, requirement, hits)
            if len(hits) > 1 and len({sha256_of(path) for path in hits}) > 1:
                # A flat `u.data` next to the archive's `ml-100k/u.data`: the flat file (the first candidate, always)
                # is read, said here and recorded as `path` in build_info.json.
                logger.warning(
                    "%s holds two different %s files: reading %s, not %s (build_info.json records the path read)",
                    folder,
                    alternative.name,
                    hits[0],
                    ", ".join(map(str, hits[1:])),
                )
            matches += [(alternative, hits[0])] if hits else []
            if hits and not requirement.exclusive:
                break  # alternatives are in order of preference: the first one found is meant
        if len({path.resolve() for _, path in matches}) > 1:
            raise _ambiguous(folder, requirement, [path for _, path in matches])
        if matches:
            alternative, hit = matches[0]
            found[requirement.key or alternative.name] = (alternative, hit)
        else:
            missing.append(requirement)
    return found, missing


def download(url: str, destination: Path, progress: bool = True, mirrors: tuple[str, ...] = ()) -> Path:
    """Download `url` (or the first working mirror) to `destination` with a progress bar, atomically.

    Args:
        url (`str`): the URL (`https://`, or `file://` for local mirrors).
        destination (`Path`): where to store the file; a `.part` file is used until the download completes.
        progress (`bool`): show a tqdm bar.
        mirrors (`tuple[str, ...]`): URLs tried in order if `url` fails.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    errors = []
    for candidate in (url, *mirrors):
        request = urllib.request.Request(candidate, headers={"User-Agent": "trl_dynamicpo-dataset-builders"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response, open(partial, "wb") as handle:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    desc=f"download {destination.name}",
                    disable=not progress,
                    leave=False,
                ) as bar:
                    for chunk in iter(lambda: response.read(_CHUNK), b""):
                        handle.write(chunk)
                        bar.update(len(chunk))
            partial.replace(destination)
            return destination
        except (urllib.error.URLError, OSError) as error:
            errors.append(f"{candidate}: {error}")
            partial.unlink(missing_ok=True)
    raise ConnectionError("download failed:\n  " + "\n  ".join(errors))


def _load_checksums(cache: Path) -> dict:
    path = cache / "checksums.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _check_archive(cache: Path, remote: RemoteFile, path: Path) -> None:
    """Verify a downloaded archive: against `remote.sha256`, else against the checksum recorded on first download."""
    actual = sha256_of(path)
    recorded = _load_checksums(cache)
    expected = remote.sha256 or recorded.get(remote.filename)
    if expected and actual != expected:
        path.unlink()
        raise RawDataError(path, None, f"SHA-256 mismatch: expected {expected}, downloaded file has {actual}")
    if not expected:
        recorded[remote.filename] = actual
        (cache / "checksums.json").write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")
        logger.info("recorded SHA-256 %s of %s in %s", actual, remote.filename, cache / "checksums.json")


def _fetch(cache: Path, requirement: Requirement, progress: bool, downloaded: dict[str, Path]) -> tuple[RawFile, Path]:
    """Download (once per archive) and extract the preferred available alternative of `requirement`."""
    for alternative in requirement.alternatives:
        remote = alternative.remote
        if remote is None:
            continue
        if remote.url not in downloaded:
            target = cache / "downloads" / remote.filename if remote.is_zip else cache / alternative.name
            if not target.is_file():
                download(remote.url, target, progress=progress, mirrors=remote.mirrors)
                _check_archive(cache, remote, target)
            downloaded[remote.url] = target
        archive = downloaded[remote.url]
        if alternative.member is None:
            return alternative, archive
        with zipfile.ZipFile(archive) as bundle:
            if alternative.member not in bundle.namelist():
                continue  # e.g. an older archive without the preferred file: try the next alternative
            destination = cache / alternative.name
            with bundle.open(alternative.member) as source, open(destination, "wb") as sink:
                shutil.copyfileobj(source, sink, _CHUNK)
            return alternative, destination
    first = next(alt.remote.url for alt in requirement.alternatives if alt.remote is not None)
    raise RawDataError(downloaded[first], None, "the download lacks " + requirement.describe())


def _raw_dir_hint(missing: list[Requirement]) -> str:
    """What to do about files missing from `--raw-dir`: download what has a download, provide the rest yourself."""
    hints = []
    if any(requirement.downloadable for requirement in missing):
        hints.append("Download and extract the archive(s) above into that folder, or omit --raw-dir to download them.")
    if not all(requirement.downloadable for requirement in missing):
        hints.append(
            "Files marked 'no official download' cannot be downloaded: copy them into that folder under one of the "
            "names listed, or pass --raw-dir the folder that holds them."
        )
    return " ".join(hints)


def resolve_raw_files(
    dataset: str,
    requirements: list[Requirement],
    *,
    raw_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    offline: bool = False,
    verify_checksums: bool = True,
    progress: bool = True,
) -> ResolvedFiles:
    """Find every required raw file, downloading into the cache when allowed.

    With `raw_dir`, only that folder is searched (never the network). Otherwise the cache
    (`cache_dir/<dataset>`) is searched, and missing files are downloaded unless offline.

    Args:
        dataset (`str`): dataset name (the cache sub-folder).
        requirements (`list[Requirement]`): what the parser needs.
        raw_dir (`str` or `Path`, *optional*): folder with the raw files (as extracted from the official archive,
            either flat or with the archive's own sub-folder).
        cache_dir (`str` or `Path`, *optional*): cache root (default [`default_cache_dir`]).
        offline (`bool`): never download (also implied by `HF_DATASETS_OFFLINE=1` / `HF_HUB_OFFLINE=1`).
        verify_checksums (`bool`): compare files with known SHA-256 values (mismatch: error for downloaded files,
            warning for files in `raw_dir`, which may legitimately be another release).
        progress (`bool`): progress bars for downloads.

    Returns:
        [`ResolvedFiles`]

    Raises:
        MissingRawFilesError: some files are missing and cannot be downloaded; lists all of them.
    """
    fetched: set[str] = set()
    if raw_dir is not None:
        folder = Path(raw_dir).expanduser()
        found, missing = _search(folder, requirements)
        origin = "raw_dir"
        if missing:
            raise MissingRawFilesError(dataset, [r.describe() for r in missing], [str(folder)], _raw_dir_hint(missing))
    else:
        folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        folder = folder / dataset
        found, missing = _search(folder, requirements)
        origin = "cache"
        local_only = [requirement for requirement in missing if not requirement.downloadable]
        if local_only:
            hint = "These files have no official download: pass --raw-dir DIR with the folder that holds them."
            raise MissingRawFilesError(dataset, [r.describe() for r in local_only], [str(folder)], hint)
        if missing and offline_mode(offline):
            hint = (
                "Offline mode (offline=True or HF_DATASETS_OFFLINE/HF_HUB_OFFLINE set): download the archive(s) above "
                "yourself and pass --raw-dir DIR (in a recipe: data.raw_dir)."
            )
            raise MissingRawFilesError(dataset, [r.describe() for r in missing], [str(folder)], hint)
        downloaded: dict[str, Path] = {}
        for requirement in missing:
            folder.mkdir(parents=True, exist_ok=True)
            try:
                alternative, path = _fetch(folder, requirement, progress, downloaded)
            except ConnectionError as err:  # offline or unreachable: say what to fetch by hand, and where it goes
                failures = str(err).split("\n  ")[1:] or [str(err)]
                raise RawDownloadError(dataset, [r.describe() for r in missing], [str(folder)], failures) from None
            found[requirement.key or alternative.name] = (alternative, path)
            fetched.add(requirement.key or alternative.name)
    resolved = ResolvedFiles()
    for name, (raw, path) in found.items():
        record = {
            "name": path.name,
            # The file read, relative to the folder searched (`u.data` or `ml-100k/u.data`): which one, when both exist.
            "path": path.relative_to(folder).as_posix() if path.is_relative_to(folder) else str(path),
            "origin": "download" if name in fetched else origin,
            "source": raw.origin(),
            "sha256": None,
            "sha256_status": "unchecked",
        }
        if verify_checksums and raw.sha256:
            actual = sha256_of(path)
            record["sha256"] = actual
            if actual == raw.sha256:
                record["sha256_status"] = "matches known value"
            elif record["origin"] == "raw_dir":
                record["sha256_status"] = f"differs from known value {raw.sha256}"
                logger.warning("%s differs from the known official file (SHA-256 %s)", path, raw.sha256)
            else:
                raise RawDataError(path, None, f"SHA-256 mismatch: expected {raw.sha256}, found {actual}")
        elif not raw.sha256:
            record["sha256_status"] = "no known value"
        resolved.paths[name] = path
        resolved.records.append(record)
    return resolved
