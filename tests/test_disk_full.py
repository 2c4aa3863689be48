"""A disk that fills while a checkpoint is written (issue 23 item 4): ``train`` ends with one ``error:`` line
naming the output folder, the free space and what a checkpoint needs, exit 1; the cut-off checkpoint is
removed and nothing looks finished. Real parts: a small tmpfs holding --output_dir, a real training run."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from qa_train.fsutil import MARKER
from tests.test_local_checkpoint import local_cmd
from tests.test_sync_train import Proc

pytestmark = pytest.mark.slow


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.fixture
def small_disk(tmp_path):
    """Mount a tmpfs of a given size (root, or a mount namespace allowing it); skipped where mounts are not
    allowed."""
    mounts: list[Path] = []

    def make(size_bytes: int) -> Path:
        where = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
        where.mkdir()
        p = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if p.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
        mounts.append(where)
        return where

    yield make
    for m in mounts:
        subprocess.run(["umount", "-l", str(m)], capture_output=True)


def test_full_disk_is_one_line_and_leaves_nothing_finished(small_disk, tiny_llama, records_file, tmp_path):
    env = {"PYTHONUNBUFFERED": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    probe = tmp_path / "probe"  # how big one checkpoint of this model is
    p = Proc(local_cmd(tiny_llama, records_file, probe, "--max_steps", "2"), env)
    assert p.wait() == 0, p.output[-3000:]
    ckpt = dir_bytes(probe / "checkpoint-2")

    disk = small_disk(int(ckpt * 1.6))  # the first checkpoint fits, the second does not
    out = disk / "out"
    run = Proc(local_cmd(tiny_llama, records_file, out, "--max_steps", "6"), env)
    assert run.wait() == 1, run.output[-3000:]
    errors = [ln for ln in run.lines if ln.startswith("error:")]
    assert len(errors) == 1, run.output[-3000:]
    line = errors[0]
    assert f"no space left on the disk of --output_dir {out}:" in line
    assert " free, a checkpoint needs ~" in line and "(the size of checkpoint-2)" in line
    assert "removed the half-written checkpoint-4" in line
    assert "Traceback" not in run.output and "SafetensorError" not in run.output
    assert (out / "checkpoint-2" / MARKER).is_file()
    assert not (out / "checkpoint-4").exists()
    assert not (out / "train_summary.json").exists() and not (out / MARKER).exists()
    assert not list(out.glob(".final.tmp-*"))
