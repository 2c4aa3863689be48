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


@pytest.mark.slow
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


@pytest.mark.parametrize(("job", "disk_gb", "warned"), [("mistral-qa-full", 200, True), ("mistral-qa-full", 400, False),
                                                         ("mistral-qa-lora", 150, False), ("smoke", 10, False)])  # fmt: skip
def test_submit_warns_when_disk_gb_cannot_hold_two_checkpoints(
    job, disk_gb, warned, tmp_path, capsys, monkeypatch
):
    """Preflight (launcher, nothing rented): full Mistral-7B checkpoints are ~100 GB each with ZeRO's fp32
    states, so 200 GB cannot hold two plus the base model; 400 GB can; a LoRA checkpoint is small."""
    import yaml

    from launch.submit import main
    from tests.conftest import REPO

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("QA_RUNS_ROOT", str(tmp_path / "runs"))
    doc = yaml.safe_load((REPO / "jobs" / f"{job}.yaml").read_text())
    doc["disk_gb"] = disk_gb
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(doc))
    gpu = "cpu" if job == "smoke" else "a100"
    assert main(["submit", str(spec), "--gpu", gpu, "--dry_run"]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("warning: disk_gb")]
    assert len(lines) == (1 if warned else 0), err
    if warned:
        assert f"disk_gb {disk_gb} may be too small: a checkpoint of this model is ~" in lines[0]
