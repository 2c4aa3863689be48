"""A half-written local checkpoint (a disk that filled while ``trainer_state.json`` was written: 0 bytes, no
completion marker) is skipped with a warning; resume falls back to the newest complete local or remote one
(issue 23 item 3). Real training runs of ``python -m qa_train train``; SeaweedFS for the remote case."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from qa_train.fsutil import MARKER
from tests.test_sync_train import Proc, step_losses, train_cmd

pytestmark = pytest.mark.slow


def local_cmd(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "qa_train", "train", "--model_name_or_path", str(model), "--train_path", str(data),
        "--output_dir", str(out), "--max_steps", "4", "--save_steps", "2", "--logging_steps", "1",
        "--per_device_train_batch_size", "2", "--packing", "False", "--model_max_length", "256",
        "--report_to", "none", "--use_cpu", "True", "--seed", "42", "--disable_tqdm", "True", *extra,
    ]  # fmt: skip


def cut_mid_save(ckpt: Path) -> None:
    """What a full disk leaves: trainer_state.json truncated to 0 bytes, the marker never written."""
    (ckpt / "trainer_state.json").write_bytes(b"")
    (ckpt / MARKER).unlink()


def test_incomplete_local_checkpoint_falls_back_to_older_local(tiny_llama, records_file, tmp_path):
    out = tmp_path / "out"
    env = {"PYTHONUNBUFFERED": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    first = Proc(local_cmd(tiny_llama, records_file, out), env)
    assert first.wait() == 0, first.output[-3000:]
    assert (out / "checkpoint-4" / MARKER).is_file(), "every finished checkpoint carries the marker"
    cut_mid_save(out / "checkpoint-4")

    second = Proc(local_cmd(tiny_llama, records_file, out, "--resume", "auto", "--max_steps", "6"), env)
    assert second.wait() == 0, second.output[-3000:]
    assert "Skipping incomplete local checkpoint" in second.output
    assert "checkpoint-4 (no qa_train_complete.json; trainer_state.json is 0 bytes)" in second.output
    assert "JSONDecodeError" not in second.output
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed_from"] == str(out / "checkpoint-2")
    assert summary["global_step"] == 6
    # steps 3..6 trained again from checkpoint-2; checkpoint-4 was re-saved whole (marker last)
    assert sorted(step_losses(out / "checkpoint-6" / "trainer_state.json")) == [1, 2, 3, 4, 5, 6]
    assert (out / "checkpoint-4" / MARKER).is_file()


def test_incomplete_local_checkpoint_falls_back_to_remote_copy(s3, tiny_llama, records_file, tmp_path):
    out = tmp_path / "out"
    env = {**s3.env, "PYTHONUNBUFFERED": "1"}
    first = Proc(train_cmd(tiny_llama, records_file, out, s3.uri("runs"), "half", "--max_steps", "4"), env)
    assert first.wait() == 0, first.output[-3000:]
    assert "runs/half/checkpoint-4/_manifest.json" in s3.keys("runs/half/")
    cut_mid_save(out / "checkpoint-4")

    second = Proc(train_cmd(tiny_llama, records_file, out, s3.uri("runs"), "half", "--max_steps", "6"), env)
    assert second.wait() == 0, second.output[-3000:]
    assert "Skipping incomplete local checkpoint" in second.output
    uri = f"{s3.uri('runs/half')}/checkpoint-4"
    assert f"Resuming from checkpoint-4 ({uri})" in second.output
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed_from"] == uri and summary["global_step"] == 6
    losses = step_losses(out / "checkpoint-6" / "trainer_state.json")
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
