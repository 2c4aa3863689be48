"""A full disk during training is one ``error:`` line, not a 40-line traceback.

Why: a disk that fills while a checkpoint or the final model is written surfaces as whatever the writer
raises — ``SafetensorError … No space left on device``, torch's ``PytorchStreamWriter failed writing file``,
an ``OSError`` with ENOSPC — buried in a traceback. ``train`` turns each into one line naming the output
folder, the free space and the space one checkpoint needs (estimated from the last complete one), exit 1.
The half-written checkpoint never got its completion marker (so resume already skips it); it is removed here
to give the space back, and nothing that looks finished is left.
"""

from __future__ import annotations

import errno
import logging
import re
import shutil
from pathlib import Path

from qa_train.contract import ExitCode

logger = logging.getLogger("qa_train.disk_full")
EXIT_DISK_FULL = ExitCode.FAILED
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_SIGNS = ("No space left on device", "StorageFull", "ENOSPC", "Disk quota exceeded")
LOW_FREE_BYTES = (
    64 * 1024 * 1024
)  # a failure with less than this free (or than a checkpoint needs): disk full


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def free_bytes(folder: Path) -> int | None:
    """Free space of the filesystem holding ``folder`` (its nearest existing parent)."""
    p = Path(folder).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def is_disk_full(exc: BaseException, folder: Path, needed: int = 0) -> bool:
    """ENOSPC/EDQUOT anywhere in the exception chain, its words in a library's message, or any failure while
    the disk holding ``folder`` has less free than one checkpoint needs (``needed``; at least 64 MB): torch's
    writer reports a full disk as ``basic_ios::clear: iostream error`` or ``unexpected pos``, no errno."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(s in str(e) for s in _SIGNS):
            return True
    free = free_bytes(folder)
    return free is not None and free < max(needed, LOW_FREE_BYTES)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _human(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    found = []
    if output_dir.is_dir():
        for child in output_dir.iterdir():
            m = _CHECKPOINT.match(child.name)
            if m and child.is_dir():
                found.append((int(m.group(1)), child))
    return sorted(found)


def clean_and_describe(output_dir: Path, estimate_bytes: int = 0, remove: bool = True) -> str:
    """Remove the half-written checkpoints (no completion marker) and the final save's temporary folder, then
    say in one line where the disk filled, what is free and what one checkpoint needs."""
    from qa_train.fsutil import read_marker

    output_dir = Path(output_dir)
    removed = []
    found = checkpoints(output_dir)
    complete = [(step, c) for step, c in found if read_marker(c) is not None]
    last_complete = complete[-1] if complete else None
    if remove:
        for step, ckpt in found:  # only the ones newer than the last complete: the save that was cut off
            if read_marker(ckpt) is None and (last_complete is None or step > last_complete[0]):
                shutil.rmtree(ckpt, ignore_errors=True)
                removed.append(ckpt.name)
        for tmp in output_dir.glob(".final.tmp-*") if output_dir.is_dir() else []:
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp.name)
    needed = _dir_bytes(last_complete[1]) if last_complete else estimate_bytes
    basis = f"the size of {last_complete[1].name}" if last_complete else "estimated from the model"
    line = (
        f"no space left on the disk of --output_dir {output_dir}: {_human(free_bytes(output_dir))} free, a "
        f"checkpoint needs ~{_human(needed) if needed else '?'} ({basis}); free space or use a larger disk "
        "(save_total_limit bounds how many checkpoints are kept)"
    )
    if removed:
        line += f"; removed the half-written {', '.join(removed)}"
    return line


def _output_dir(argv: list[str]) -> Path | None:
    for i, arg in enumerate(argv):
        if arg == "--output_dir" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--output_dir="):
            return Path(arg.split("=", 1)[1])
    return None


def disk_full_line(exc: BaseException, argv: list[str]) -> str | None:
    """THE line for ``train``'s ``error:`` when ``exc`` is a full disk under ``--output_dir``, else None.
    World rank 0 (``RANK``) removes the cut-off save; every rank names the problem."""
    import os

    output_dir = _output_dir(argv)
    if output_dir is None:
        return None
    complete = [c for _, c in checkpoints(output_dir) if (c / "qa_train_complete.json").is_file()]
    if not is_disk_full(exc, output_dir, _dir_bytes(complete[-1]) if complete else 0):
        return None
    return clean_and_describe(output_dir, remove=int(os.environ.get("RANK", "0") or 0) == 0)
