"""Outputs that are never half-written, never overwrite an input, and say when they are finished.

Every command inside the container (train, merge, convert-hotpot, eval, make-tiny-model, make-smoke-data, the
tokenization cache) writes through here, so there is one implementation of each rule:

* a file is written to a temporary name in the same folder, fsynced, then ``os.replace``-d into place — a reader
  sees the old file or the new one, never a truncated one;
* a folder is written into a hidden sibling ``.<name>.tmp-<pid>`` and renamed into place; a previous folder is
  removed only after the new one is there;
* a model folder gets :data:`MARKER` last, when everything else in it is complete. Consumers (merge, eval)
  refuse a local folder without it: a save cut off by a kill or a full disk looks like a model but is not one;
* an output path that is, contains or lies inside one of the command's inputs is refused up front.

Bad input a user typed is a :class:`UsageError`: one ``error:`` line and exit 2 (the dispatcher in
``qa_train/__main__.py`` and each command's ``main`` map it), raised before anything is written.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

#: Completion marker written last into every finished model folder (train's output_dir and its Trainer
#: checkpoints, merge's save_folder, make-tiny-model's output): ``{"producer", "time", ...}``.
MARKER = "qa_train_complete.json"


class UsageError(ValueError):
    """Bad input a user can type (flag, number, path, data file): one ``error:`` line, exit 2, nothing written."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are a :class:`UsageError` (one line) instead of a usage block and exit."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise UsageError(message.removeprefix("argument "))


def check_number(flag: str, value: Any, ok: bool, rule: str) -> None:
    """``UsageError("--flag must be <rule> (got value)")`` unless ``ok``: ranges are checked where flags are parsed."""
    if not ok:
        raise UsageError(f"{flag} must be {rule} (got {value})")


def one_line(exc: BaseException | str) -> str:
    """A message folded onto one line (library errors often span several)."""
    return " ".join(str(exc).split())


# --------------------------------------------------------------------------------------------------- files


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable; not every filesystem lets a directory be opened, so this is best effort."""
    with suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, for writers that look at it, e.g. ``np.savez``);
    when the block ends without error it is fsynced and renamed onto ``path``, else removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.monotonic_ns()}{path.suffix}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_lines(path: str | Path, chunks: Iterable[str]) -> None:
    """Write text chunks (UTF-8) atomically without building the whole text in memory."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.writelines(chunks)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_lines(path, [text])


def atomic_write_json(path: str | Path, payload: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(payload, indent=indent, ensure_ascii=False, default=str) + "\n")


# ------------------------------------------------------------------------------------------------- folders


def _swap_in(new: Path, dest: Path) -> None:
    """Rename ``new`` onto ``dest``; an existing ``dest`` folder is moved aside first and deleted last."""
    old = None
    if dest.is_dir() and not dest.is_symlink():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        dest.rename(old)
    try:
        os.replace(new, dest)
    except BaseException:
        if old is not None:
            old.rename(dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def publish_dir(dest: str | Path) -> Iterator[Path]:
    """Yield ``.<name>.tmp-<pid>`` beside ``dest`` to write into; renamed onto ``dest`` when the block succeeds
    (replacing a previous folder only then), removed when it fails."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        _swap_in(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(dest.parent)


def move_into(src: str | Path, dest: str | Path) -> None:
    """Move every entry of the finished folder ``src`` into ``dest`` (replacing same-named ones), then remove
    ``src``. For outputs that must land in a folder that also holds other things (train's checkpoints)."""
    src, dest = Path(src), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for entry in sorted(src.iterdir()):
        target = dest / entry.name
        if entry.is_dir() and not entry.is_symlink():
            _swap_in(entry, target)
        else:
            os.replace(entry, target)
    src.rmdir()
    _fsync_dir(dest)


# -------------------------------------------------------------------------------------------------- marker


def write_marker(folder: str | Path, producer: str, **details: Any) -> Path:
    """Declare ``folder`` complete; call it after everything else in the folder is written."""
    path = Path(folder) / MARKER
    payload = {"producer": producer, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **details}
    atomic_write_json(path, payload)
    return path


def read_marker(folder: str | Path) -> dict[str, Any] | None:
    """The marker's content, or None when the folder has none (or an unreadable one)."""
    try:
        data = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def remove_marker(folder: str | Path) -> None:
    """Before a folder's content is rewritten: until the new marker, it must not look finished."""
    (Path(folder) / MARKER).unlink(missing_ok=True)


def require_marker(folder: str | Path, flag: str, producers: str) -> dict[str, Any]:
    """UsageError naming ``flag``, the folder and the marker unless ``folder`` carries a readable marker."""
    marker = read_marker(folder)
    if marker is None:
        raise UsageError(
            f"{flag} {folder}: no {MARKER}, so it is not a finished save (cut off, still being written, or not "
            f"written by {producers}); re-run that step or point {flag} at a finished folder"
        )
    return marker


# ------------------------------------------------------------------------------------------ inputs/outputs


def _resolved(path: str | Path) -> Path:
    return Path(os.path.expanduser(str(path))).resolve()


def _is_within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_output(
    output: str | Path,
    flag: str,
    inputs: dict[str, str | Path | None],
    kind: str = "folder",
    replaced: bool = True,
) -> Path:
    """Refuse an output that would overwrite or delete an input, or replace something of the wrong kind.

    ``inputs`` maps each input flag to its path (hub ids and missing paths are harmless: nothing to lose).
    ``kind`` is ``folder`` (an existing file is refused) or ``file`` (an existing folder is refused).
    ``replaced``: the output folder is replaced as a whole (:func:`publish_dir`), so it must not contain an input.
    Returns the output path as given.
    """
    out = _resolved(output)
    for in_flag, value in inputs.items():
        if value is None:
            continue
        src = _resolved(value)
        if not src.exists():
            continue
        same = out.exists() and os.path.samefile(out, src)
        if same or out == src:
            raise UsageError(f"{flag} {output} is the input {in_flag} {value}; it would be overwritten")
        if _is_within(out, src) and src.is_dir():
            raise UsageError(f"{flag} {output} is inside the input {in_flag} {value}; write it elsewhere")
        if kind == "folder" and replaced and _is_within(src, out):
            raise UsageError(
                f"{flag} {output} contains the input {in_flag} {value}; replacing it would delete that input"
            )
    if kind == "folder" and out.exists() and not out.is_dir():
        raise UsageError(f"{flag} {output} is an existing file, not a folder; refusing to replace it")
    if kind == "file" and out.is_dir():
        raise UsageError(f"{flag} {output} is a directory; expected a file path")
    return Path(output)


def check_replaceable(folder: str | Path, flag: str) -> None:
    """A folder about to be replaced must be empty or a finished qa_train output (it carries the marker):
    anything else is someone's data, and publishing over it would delete it."""
    path = Path(folder)
    if path.is_dir() and any(path.iterdir()) and read_marker(path) is None:
        raise UsageError(
            f"{flag} {folder} exists and is not a finished qa_train output (no {MARKER}); refusing to replace "
            "it — remove it or choose another folder"
        )
