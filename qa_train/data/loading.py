"""Read training records from a JSON list, JSONL, or a `datasets` dataset (saved dir or object).

Problems with the input are reported once, naming the file (and line/record), before any training starts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from qa_train.fsutil import UsageError, one_line


class DataError(UsageError):
    """Unusable input data; the message names the file and what is wrong."""


def _read_text(path: Path) -> str:
    """The file as UTF-8 text, or a DataError naming the file and the first offending byte."""
    if path.is_dir():
        raise DataError(f"{path}: is a directory; expected a JSON or JSONL file")
    if not path.is_file():
        raise DataError(f"{path}: no such file or directory")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        bad = exc.object[exc.start : exc.start + 1].hex()
        raise DataError(
            f"{path}: not UTF-8 text (byte 0x{bad} at offset {exc.start}); save it as UTF-8"
        ) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def read_json_records(path: Path) -> Any:
    """A JSON document (normally a list) or JSONL, as parsed data; every reader of record files (training,
    convert-hotpot, eval) goes through here so a syntax error always names the file and the line."""
    text = _read_text(path)
    stripped = text.lstrip()
    if not stripped:
        raise DataError(f"{path}: file is empty")
    if stripped[0] == "[":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
            ) from exc
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}: malformed JSON on line {lineno} (record {len(records)}): {exc.msg} "
                "(expected a JSON list or JSONL)"
            ) from exc
    return records


def load_records(source: str | Path | Any) -> tuple[list[dict[str, Any]], str]:
    """Return (records, name) for a JSON/JSONL file, a `datasets.save_to_disk` folder, or a Dataset object."""
    if not isinstance(source, (str, Path)):
        if hasattr(source, "to_list"):  # datasets.Dataset
            return list(source.to_list()), f"<{type(source).__name__}>"
        if isinstance(source, Iterable):
            return list(source), "<records>"
        raise DataError(f"unsupported data source of type {type(source).__name__}")
    path = Path(source)
    if path.is_dir():
        try:
            import datasets

            ds = datasets.load_from_disk(str(path))
        except Exception as exc:  # noqa: BLE001 - any failure means "not a dataset folder"
            raise DataError(
                f"{path}: is a directory but not a `datasets` folder saved with save_to_disk ({one_line(exc)})"
            ) from None
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise DataError(f"{path}: DatasetDict without a 'train' split (has {list(ds)})")
            ds = ds["train"]
        return list(ds.to_list()), str(path)
    records = read_json_records(path)
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    return records, str(path)
