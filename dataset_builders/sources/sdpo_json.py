"""Already-processed S-DPO / LLaRA / DynamicPO JSON files (`sdpo-json`).

One file per split in `--raw-dir`: `train.json`, `valid.json` (or `val.json` / `validation.json`) and `test.json`
(`.jsonl` too, and the S-DPO names `<name>-train.json`, `<name>-val.json`, `<name>-test.json`). A file is a JSON list
of objects, or JSON lines, each with:

- `historyList`: the history titles, oldest first, as a list or as one `"a::b::c"` string;
- `itemList`: the candidate titles (20 in the papers), in prompt order;
- `trueSelection`: the target title, one of `itemList`;
- optionally `user_id` and `timestamp` (otherwise `"<split>-<index>"` and a running index are used).

Splits and candidates are kept as they are; only the prompts are rendered from this project's templates.
"""

from __future__ import annotations

import json
import re
import unicodedata

from ..download import RawFile, Requirement
from ..errors import RawDataError
from ..readers import decode_text, read_raw_bytes
from .base import PresplitData, PresplitRecord, Source, register_source


_SPLIT_FILES = {
    "train": ("train", "*-train", "*_train"),
    "validation": ("valid", "val", "validation", "*-val", "*-valid", "*-validation", "*_val", "*_valid"),
    "test": ("test", "*-test", "*_test"),
}
_SPACE = re.compile(r"\s*")


def _records_with_lines(path) -> list[tuple[int, object]]:
    """(line, record) pairs of a JSON list or JSON-lines file; syntax errors name the line."""
    text = decode_text(read_raw_bytes(path), path, "utf-8")
    start = _SPACE.match(text).end()
    out: list[tuple[int, object]] = []
    if text[start] != "[":  # JSON lines
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    out.append((number, json.loads(line)))
                except json.JSONDecodeError as error:
                    raise RawDataError(path, number, f"invalid JSON ({error.msg}; truncated line?)") from None
        return out
    decoder = json.JSONDecoder()
    position, line, counted = start + 1, 1 + text.count("\n", 0, start), start
    while True:
        position = _SPACE.match(text, position).end()
        if position >= len(text):
            raise RawDataError(path, text.count("\n") + 1, "unexpected end of file (truncated JSON list?)")
        if text[position] == "]" and not out:
            break
        line += text.count("\n", counted, position)
        counted = position
        try:
            record, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise RawDataError(path, error.lineno, f"invalid JSON ({error.msg})") from None
        out.append((line, record))
        position = _SPACE.match(text, position).end()
        if position < len(text) and text[position] == ",":
            position += 1
        elif position < len(text) and text[position] == "]":
            break
        else:
            lineno = text.count("\n", 0, position) + 1
            raise RawDataError(path, lineno, "expected ',' or ']' after a record (truncated JSON list?)")
    return out


def _clean(value, path, line, what) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RawDataError(path, line, f"{what} must be a non-empty string, found {value!r}")
    # NFC, as every builder normalizes titles: a title's NFD and NFC forms are one title (a repeat in itemList is
    # found here, at build time, not by the trainer after SFT).
    return unicodedata.normalize("NFC", " ".join(value.split()))


def _parse_record(record, path, line) -> PresplitRecord:
    if not isinstance(record, dict):
        raise RawDataError(path, line, "expected a JSON object")
    for key in ("historyList", "itemList", "trueSelection"):
        if key not in record:
            raise RawDataError(path, line, f"missing key {key!r}")
    history = record["historyList"]
    if isinstance(history, str):
        history = [part for part in history.split("::") if part.strip()]
    if not isinstance(history, list):
        raise RawDataError(path, line, "historyList must be a list of titles or an 'a::b::c' string")
    history = [_clean(title, path, line, "a history title") for title in history]
    candidates = record["itemList"]
    if not isinstance(candidates, list) or len(candidates) < 2:
        raise RawDataError(path, line, "itemList must be a list of at least two titles")
    candidates = [_clean(title, path, line, "a candidate title") for title in candidates]
    if len(set(candidates)) != len(candidates):
        raise RawDataError(path, line, "itemList repeats a title")
    target = _clean(record["trueSelection"], path, line, "trueSelection")
    if target not in candidates:
        raise RawDataError(path, line, f"trueSelection {target!r} is not in itemList")
    user = record.get("user_id")
    timestamp = record.get("timestamp")
    if timestamp is not None and (not isinstance(timestamp, int) or isinstance(timestamp, bool)):
        raise RawDataError(path, line, f"timestamp must be an integer, found {timestamp!r}")
    return PresplitRecord(history, candidates, target, None if user is None else str(user), timestamp)


@register_source
class SDPOJson(Source):
    name = "sdpo-json"
    pretty_name = "S-DPO / LLaRA JSON import"
    description = "Import processed S-DPO/LLaRA/DynamicPO JSON files (train/valid/test.json in --raw-dir)."
    domain = "items"
    homepage = "https://github.com/chenyuxin1999/S-DPO"
    license = {"license": "unknown"}
    terms = "The terms of the underlying raw dataset apply; check them before publishing."
    citation = (
        "Yuxin Chen et al. 2024. On Softmax Direct Preference Optimization for Recommendation. NeurIPS 2024. "
        "arXiv:2406.09215. (Cite the raw dataset too.)"
    )
    timestamp_meaning = "the record's timestamp if given, else a running index (train, then validation, then test)"

    def requirements(self, config):
        return [
            # Exclusive: `test.json` next to `lastfm-test.json` (or two `*-test.json`) are two datasets, none preferred.
            Requirement(
                tuple(RawFile(f"{stem}.{ext}", None) for ext in ("json", "jsonl") for stem in stems),
                key=split,
                exclusive=True,
            )
            for split, stems in _SPLIT_FILES.items()
        ]

    def parse(self, files, config):
        splits, names = {}, {}
        for split in _SPLIT_FILES:
            path = files[split]
            records = _records_with_lines(path)
            if not records:
                raise RawDataError(path, 1, "file holds no records")
            splits[split] = [_parse_record(record, path, line) for line, record in records]
            names[split] = path.name
        return PresplitData(splits=splits, files=names)
