"""`python -m qa_train train --sync_to …` as a real subprocess against SeaweedFS: SIGKILL + resume, S3 outage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from qa_train.storage import S3Location
from qa_train.sync.remote import list_run
from tests.conftest import REPO
from tests.fixtures_s3 import TcpProxy

pytestmark = pytest.mark.slow


def train_cmd(model: Path, data: Path, out: Path, sync_to: str, run_name: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "qa_train", "train", "--model_name_or_path", str(model), "--train_path", str(data),
        "--output_dir", str(out), "--max_steps", "6", "--save_steps", "2", "--logging_steps", "1",
        "--per_device_train_batch_size", "2", "--packing", "False", "--model_max_length", "256",
        "--report_to", "none", "--use_cpu", "True", "--seed", "42", "--save_total_limit", "3",
        "--disable_tqdm", "True", "--sync_to", sync_to, "--run_name", run_name, *extra,
    ]  # fmt: skip


class Proc:
    """A subprocess whose merged output is collected line by line while it runs."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.p = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 300) -> bool:
        """Until ``text`` appears in the output (True) or the process ends or time runs out (False)."""
        deadline = time.monotonic() + timeout
        while text not in self.output and self.p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return text in self.output

    def wait(self, timeout: float = 300) -> int:
        rc = self.p.wait(timeout=timeout)
        self._t.join(timeout=10)
        return rc


def first_commit(proc: Proc, client: Any, bucket: str, prefix: str, timeout: float) -> list[str]:
    """The checkpoint manifests under ``prefix`` as soon as one is there (the first commit), polled while
    ``proc`` runs (one cheap listing per poll); [] when none came in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.p.poll() is None:
        listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        if found := [o["Key"] for o in listed if o["Key"].endswith("/_manifest.json")]:
            return found
        time.sleep(0.05)
    return []


def step_losses(trainer_state: Path) -> dict[int, float]:
    history = json.loads(trainer_state.read_text())["log_history"]
    return {h["step"]: h["loss"] for h in history if "loss" in h}


def test_sigkill_then_resume_from_remote_in_fresh_output_dir(s3, tiny_llama, records_file, tmp_path):
    sync_to = s3.uri("runs")
    env = {**s3.env, "PYTHONUNBUFFERED": "1"}

    ref = Proc(train_cmd(tiny_llama, records_file, tmp_path / "ref", sync_to, "ref"), env)
    assert ref.wait() == 0, ref.output[-3000:]
    ref_losses = step_losses(tmp_path / "ref" / "checkpoint-6" / "trainer_state.json")
    assert sorted(ref_losses) == [1, 2, 3, 4, 5, 6]
    ref_run = S3Location.parse(s3.uri("runs/ref"))
    assert {f.name for f in list_run(s3.client(), ref_run) if f.committed} >= {"checkpoint-6", "final"}

    run = S3Location.parse(s3.uri("runs/job"))
    victim = Proc(train_cmd(tiny_llama, records_file, tmp_path / "first", sync_to, "job"), env)
    # Training is faster than uploads here: left running, it can save all three checkpoints before the first
    # commit. So it is stopped (SIGSTOP; its upload worker is another process and goes on) once checkpoint-2 is
    # queued, and killed once a checkpoint is committed. Should the stop land between the log line and the
    # hand-over, nothing commits: the run is let go again and killed on its first commit.
    assert victim.wait_for("Queued upload of checkpoint-2"), victim.output[-3000:]
    victim.p.send_signal(signal.SIGSTOP)
    client, prefix = s3.client(), "runs/job/checkpoint-"
    committed = first_commit(victim, client, s3.bucket, prefix, 60)
    if not committed:
        victim.p.send_signal(signal.SIGCONT)
        committed = first_commit(victim, client, s3.bucket, prefix, 300)
    victim.p.send_signal(signal.SIGKILL)
    victim.wait()
    assert committed, f"no checkpoint committed before the run ended:\n{victim.output[-3000:]}"
    assert victim.p.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    # What a restart sees: the newest checkpoint committed by now (the upload may have continued a little).
    newest = max(f.step for f in list_run(s3.client(), run) if f.committed and f.step is not None)
    assert newest < 6

    fresh = tmp_path / "second"  # a new machine: empty disk
    resumed = Proc(train_cmd(tiny_llama, records_file, fresh, sync_to, "job"), env)
    assert resumed.wait() == 0, resumed.output[-3000:]
    uri = run.child(f"checkpoint-{newest}").uri
    assert f"Resuming from checkpoint-{newest} ({uri})" in resumed.output
    summary = json.loads((fresh / "train_summary.json").read_text())
    assert summary["resumed_from"] == uri
    assert summary["global_step"] == 6
    losses = step_losses(fresh / "checkpoint-6" / "trainer_state.json")
    assert losses[newest + 1] == pytest.approx(ref_losses[newest + 1], abs=1e-4)
    assert losses[6] == pytest.approx(ref_losses[6], abs=1e-4)
    remote_summary = s3.client().get_object(Bucket=s3.bucket, Key="runs/job/final/train_summary.json")
    assert json.loads(remote_summary["Body"].read())["resumed_from"] == uri


def test_s3_outage_during_training_finishes_locally_then_fails(s3, tiny_llama, records_file, tmp_path):
    host, port = s3.endpoint_url.removeprefix("http://").split(":")
    proxy = TcpProxy(host, int(port))
    # an outage longer than the upload retry bound (QA_S3_RETRY_S, seconds here: minutes by default)
    env = {**s3.env, "AWS_ENDPOINT_URL": proxy.endpoint_url, "PYTHONUNBUFFERED": "1", "QA_S3_RETRY_S": "2"}
    out = tmp_path / "out"
    cmd = train_cmd(tiny_llama, records_file, out, s3.uri("runs"), "outage", "--s3_max_attempts", "2")
    proc = Proc(cmd, env)
    proc.wait_for("Syncing checkpoints to")
    proxy.cut()  # storage checked fine at start; now it vanishes before the first checkpoint
    rc = proc.wait()
    assert rc != 0, proc.output[-3000:]
    assert "upload(s) to s3://" in proc.output and "failed" in proc.output
    for step in (2, 4, 6):
        assert f"checkpoint-{step} (local copy kept at" in proc.output
    assert json.loads((out / "train_summary.json").read_text())["global_step"] == 6
    assert (out / "checkpoint-6" / "trainer_state.json").is_file()
    assert (out / "sync-pending" / "checkpoint-2" / "trainer_state.json").is_file()
    # the run's input record, due as the data had been read, is held to go up before any checkpoint commit
    held = json.loads((out / "sync-pending" / "inputs.json").read_text())
    assert held["inputs"] == json.loads((out / "inputs.json").read_text())["inputs"]
    # no checkpoint committed (the tokenized-data cache may have committed before the cut: it is not a checkpoint)
    assert not any(k.endswith("_manifest.json") for k in s3.keys("runs/outage/checkpoint-"))


def test_wrong_credentials_fail_before_training(s3, tiny_llama, records_file, tmp_path):
    env = {**s3.env, "AWS_SECRET_ACCESS_KEY": "wrong-secret"}
    proc = Proc(
        train_cmd(tiny_llama, records_file, tmp_path / "o", s3.uri("runs"), "bad", "--s3_max_attempts", "1"),
        env,
    )
    assert proc.wait() != 0
    assert "credentials rejected" in proc.output
    assert "wrong-secret" not in proc.output, "a secret must never be logged"
    assert not (tmp_path / "o" / "checkpoint-2").exists(), "must fail before any training step"
    assert "'loss'" not in proc.output
    assert os.environ.get("AWS_SECRET_ACCESS_KEY") != "wrong-secret"
