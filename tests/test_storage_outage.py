"""Uploads outlast a storage outage (issue 23 item 2), against a real SeaweedFS of this module's own: frozen
with SIGSTOP for ~20 s, killed and restarted on the same ports. Every checkpoint ends committed; what failed is
sent again when storage answers, at the end, and by the next launch; the controller keeps an instance whose
report says uploads are pending. The retry policy's parts (``qa_train.storage``) are checked on their own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from launch.backends.base import InstanceState, InstanceStatus
from launch.jobs.recovery import Action, Observation, RecoveryPolicy
from qa_train.contract import FailureReason, RunReport, RunState, StageResult
from qa_train.storage import RetryPolicy, S3Location, is_transient, make_client, retry_seconds, retrying
from qa_train.sync.callback import BackgroundUploader
from qa_train.sync.remote import list_run
from qa_train.sync.worker import PENDING_DIR, flush_pending
from tests.fixtures_s3 import S3Bucket, SeaweedFS, start_seaweedfs
from tests.test_sync_storage import fake_checkpoint
from tests.test_sync_train import Proc, train_cmd


class Outage:
    """Freezes (SIGSTOP) or kills and restarts one SeaweedFS on the same ports and data folder."""

    def __init__(self, server: SeaweedFS) -> None:
        self.server = server

    def freeze(self) -> None:
        assert self.server.proc is not None
        os.killpg(self.server.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.server.proc is not None
        os.killpg(self.server.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        assert self.server.proc is not None
        os.killpg(self.server.proc.pid, signal.SIGKILL)
        self.server.proc.wait()

    def restart(self, timeout: float = 60) -> None:
        """The same command line (ports, data folder): what an operator's restart of the store does."""
        assert self.server.proc is not None
        log = open(self.server.root / "weed.log", "ab")  # noqa: SIM115 - the server process keeps it
        self.server.proc = subprocess.Popen(
            self.server.proc.args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        client, deadline = self.server.client(), time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                client.list_buckets()
                return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.5)
        raise RuntimeError("SeaweedFS did not come back")


@pytest.fixture(scope="module")
def seaweedfs(tmp_path_factory) -> Iterator[SeaweedFS]:
    """This module's own server (the ``s3`` fixture uses it here): freezing the session's one would stall
    every other test's fixture."""
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs-outage"))
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            os.killpg(server.proc.pid, signal.SIGCONT)
        server.stop()


@pytest.fixture
def store(s3: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> tuple[SeaweedFS, str]:
    monkeypatch.delenv("QA_S3_RETRY_S", raising=False)  # the default bound unless a test sets one
    return s3.server, s3.bucket


def committed_steps(server: SeaweedFS, run: S3Location) -> list[int]:
    return [f.step for f in list_run(server.client(), run) if f.committed and f.step is not None]


# ---------------------------------------------------------------------------------------------- the policy


def test_retry_policy_is_one_place_and_bounded(monkeypatch):
    monkeypatch.delenv("QA_S3_RETRY_S", raising=False)
    assert retry_seconds() == 600 and RetryPolicy.uploads().total_s == 600
    assert RetryPolicy.short().total_s == 0 and RetryPolicy.short().attempts == 3
    monkeypatch.setenv("QA_S3_RETRY_S", "90")
    assert RetryPolicy.uploads().total_s == 90
    monkeypatch.setenv("QA_S3_RETRY_S", "ten minutes")
    with pytest.raises(ValueError, match="QA_S3_RETRY_S='ten minutes': expected a number of seconds"):
        RetryPolicy.uploads()
    client = make_client("http://127.0.0.1:9", policy=RetryPolicy.short())
    assert client.meta.config.retries["mode"] == "standard"  # botocore counts the first try too: 3 + 1
    assert client.meta.config.retries["total_max_attempts"] == 4
    assert client.meta.config.read_timeout == 20


def test_retrying_waits_out_a_transient_error_and_no_longer(monkeypatch):
    from botocore.exceptions import ClientError, EndpointConnectionError

    down = EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
    calls, slept = [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise down
        return "ok"

    assert retrying(flaky, RetryPolicy(total_s=60), "x", sleep=slept.append) == "ok"
    assert len(calls) == 3 and len(slept) == 2
    denied = ClientError(
        {"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "Put"
    )
    assert is_transient(down) and not is_transient(denied)
    calls.clear()
    with pytest.raises(ClientError):  # never retried: waiting does not fix a refusal
        retrying(lambda: calls.append(1) or (_ for _ in ()).throw(denied), RetryPolicy(total_s=60), "x")
    assert len(calls) == 1
    start = time.monotonic()
    with pytest.raises(EndpointConnectionError):  # the bound holds
        retrying(lambda: (_ for _ in ()).throw(down), RetryPolicy(total_s=1.5), "x")
    assert 1.0 < time.monotonic() - start < 4


# ---------------------------------------------------------------------------------------- the controller


def _report(**kw) -> RunReport:
    return RunReport(run_name="r", **kw)


def test_controller_keeps_an_instance_whose_uploads_are_pending_until_the_bound():
    policy, now = RecoveryPolicy(max_restarts=3), 1_000_000.0
    ended = InstanceStatus(InstanceState.EXITED, exit_code=3)
    pending = _report(state=RunState.FAILED, stages=[StageResult("train", exit_code=3)],
                      uploads_pending=["checkpoint-4"], uploads_until=now + 300)  # fmt: skip
    held = policy.decide(Observation(ended, pending, now=now))
    assert held.action == Action.POLL
    assert "uploads pending (checkpoint-4)" in held.reason and "300s more; instance kept" in held.reason
    # the bound passed: a storage failure is retried as storage (relaunch, resume), not a training error
    after = policy.decide(Observation(ended, pending, now=now + 301))
    assert after.action == Action.RELAUNCH and after.cause == FailureReason.STORAGE_ERROR
    assert not after.blocklist and "storage failure, retried" in after.reason
    storage = _report(state=RunState.FAILED, stages=[StageResult("train", exit_code=3)])
    assert policy.decide(Observation(ended, storage, now=now)).action == Action.RELAUNCH
    training = _report(state=RunState.FAILED, stages=[StageResult("train", exit_code=1)])
    assert policy.decide(Observation(ended, training, now=now)).action == Action.FAIL
    still_running = _report(uploads_pending=["checkpoint-2"], uploads_until=now + 60)
    gone = InstanceStatus(InstanceState.GONE)
    assert policy.decide(Observation(gone, still_running, now=now)).action == Action.POLL
    assert policy.decide(Observation(gone, still_running, now=now + 61)).action == Action.RELAUNCH
    assert RunReport.from_json(pending.to_json()).uploads_pending == ["checkpoint-4"]


# --------------------------------------------------------------------------------------- real outages


@pytest.mark.slow
def test_uploads_outlast_sigstop_and_a_restart_of_the_store(store, tmp_path, capfd):
    server, bucket = store
    run = S3Location(bucket, "runs/outage")
    outage = Outage(server)
    uploader = BackgroundUploader(run, max_attempts=2)
    try:
        uploader.submit("checkpoint-1", fake_checkpoint(tmp_path / PENDING_DIR, 1))
        assert uploader.wait(timeout=60)
        outage.freeze()  # SIGSTOP: connections hang, nothing answers
        try:
            uploader.submit("checkpoint-2", fake_checkpoint(tmp_path / PENDING_DIR, 2))
            time.sleep(20)
            assert "checkpoint-2" not in uploader.committed
        finally:
            outage.thaw()
        assert uploader.wait(timeout=180)
        outage.kill()  # connection refused until it is back on the same ports
        uploader.submit("checkpoint-3", fake_checkpoint(tmp_path / PENDING_DIR, 3))
        time.sleep(8)
        outage.restart()
        assert uploader.wait(timeout=180)
    finally:
        uploader.close()
    assert uploader.failures == [] and uploader.committed == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert committed_steps(server, run) == [1, 2, 3]
    assert not any((tmp_path / PENDING_DIR).iterdir()), "a committed checkpoint's snapshot is dropped"
    err = capfd.readouterr().err
    assert "upload of checkpoint-3: storage unavailable" in err and "retrying for up to" in err
    assert "upload of checkpoint-3: storage answers again" in err


@pytest.mark.slow
def test_failed_upload_is_resent_when_storage_answers_again_and_by_a_rerun(
    store, tmp_path, monkeypatch, caplog
):
    server, bucket = store
    run = S3Location(bucket, "runs/resend")
    outage = Outage(server)
    monkeypatch.setenv("QA_S3_RETRY_S", "2")  # an outage longer than the bound: the upload fails
    uploader = BackgroundUploader(run, max_attempts=1)
    try:
        outage.kill()
        try:
            uploader.submit("checkpoint-1", fake_checkpoint(tmp_path / PENDING_DIR, 1))
            assert uploader.wait(timeout=60)
            assert [f.name for f in uploader.failures] == ["checkpoint-1"]
            assert (tmp_path / PENDING_DIR / "checkpoint-1" / "trainer_state.json").is_file(), (
                "local copy kept"
            )
        finally:
            outage.restart()
        uploader.submit("checkpoint-2", fake_checkpoint(tmp_path / PENDING_DIR, 2))
        deadline = time.monotonic() + 60  # the success of checkpoint-2 sends checkpoint-1 again
        while "checkpoint-1" not in uploader.committed and time.monotonic() < deadline:
            time.sleep(0.2)
        assert uploader.settle(total_s=60) == []
    finally:
        uploader.close()
    assert uploader.resent == ["checkpoint-1"] and sorted(uploader.committed) == [
        "checkpoint-1",
        "checkpoint-2",
    ]
    assert committed_steps(server, run) == [1, 2]

    # a rerun on the same disk: what an earlier launch left pending is sent first, and it says so
    out = tmp_path / "out"
    fake_checkpoint(out / PENDING_DIR, 3)
    fake_checkpoint(out / PENDING_DIR, 2)  # committed already (above): dropped without an upload
    (out / PENDING_DIR / ".checkpoint-4.partial").mkdir()  # a snapshot cut mid-copy: never sent
    rerun = BackgroundUploader(run)
    try:
        with caplog.at_level("WARNING", logger="qa_train.sync"):
            assert rerun.resend_pending(out) == ["checkpoint-2", "checkpoint-3"]
        assert rerun.settle(total_s=60) == []
    finally:
        rerun.close()
    assert f"Found 2 checkpoint(s) not uploaded by an earlier launch in {out / PENDING_DIR}" in caplog.text
    assert committed_steps(server, run) == [1, 2, 3]
    assert sorted(p.name for p in (out / PENDING_DIR).iterdir()) == [".checkpoint-4.partial"]


@pytest.mark.slow
def test_end_of_run_flush_retries_up_to_the_bound(store, tmp_path, monkeypatch):
    server, bucket = store
    run = S3Location(bucket, "runs/flush")
    outage = Outage(server)
    out = tmp_path / "model"
    fake_checkpoint(out / PENDING_DIR, 2)
    fake_checkpoint(out / PENDING_DIR, 4)
    outage.kill()
    try:  # storage stays down past the bound: the names come back, the local copies stay
        assert flush_pending(out, run, total_s=2) == ["checkpoint-2", "checkpoint-4"]
        assert (out / PENDING_DIR / "checkpoint-4" / "trainer_state.json").is_file()
        done: list[list[str]] = []
        t = threading.Thread(target=lambda: done.append(flush_pending(out, run, total_s=120)))
        t.start()  # storage comes back within the bound: everything is committed
        time.sleep(6)
    finally:
        outage.restart()
    t.join(timeout=150)
    assert done == [[]]
    assert committed_steps(server, run) == [2, 4]
    assert not any((out / PENDING_DIR).iterdir())


@pytest.mark.slow
def test_training_through_a_frozen_then_restarted_store_commits_every_checkpoint(
    store, tiny_llama, records_file, tmp_path
):
    """What the user sees: exit 0, every checkpoint and final/ committed, a warning while storage was away
    and a line when it answered again; nothing left pending on the disk."""
    server, bucket = store
    outage = Outage(server)
    env = {**os.environ, **server.env(), "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "out"
    cmd = train_cmd(tiny_llama, records_file, out, f"s3://{bucket}/runs", "frozen", "--save_total_limit", "10",
                    "--max_steps", "8", "--s3_max_attempts", "2")  # fmt: skip
    proc = Proc(cmd, env)
    assert proc.wait_for("Syncing checkpoints to"), proc.output[-3000:]
    outage.freeze()
    try:
        time.sleep(20)
    finally:
        outage.thaw()
    proc.wait_for("Committed s3://")  # storage answered again; now it is killed and restarted
    outage.kill()
    time.sleep(8)
    outage.restart()
    rc = proc.wait(timeout=600)
    assert rc == 0, proc.output[-4000:]
    run = S3Location(bucket, "runs/frozen")
    assert committed_steps(server, run) == [2, 4, 6, 8]
    assert "final" in {f.name for f in list_run(server.client(), run) if f.committed}
    record = server.client().get_object(Bucket=bucket, Key="runs/frozen/inputs.json")["Body"].read()
    assert json.loads(record)["inputs"] == json.loads((out / "inputs.json").read_text())["inputs"]
    assert "storage unavailable" in proc.output and "storage answers again" in proc.output
    assert "Traceback" not in proc.output
    assert not (out / PENDING_DIR).exists() or not any((out / PENDING_DIR).iterdir())
    assert json.loads((out / "train_summary.json").read_text())["global_step"] == 8


@pytest.mark.slow
def test_run_reports_uploads_pending_while_it_retries_then_relaunches_as_storage(
    store, tmp_path, monkeypatch
):
    """The container's end: train failed on storage (exit 3) leaving a checkpoint only on disk; ``run`` keeps
    retrying it, its report says "uploads pending" until when (the controller keeps the instance), the
    checkpoint lands once storage is back, and the final report is read as a storage failure to relaunch."""
    import sys

    from qa_train.entrypoint.reporter import Reporter
    from qa_train.entrypoint.runner import run_stages
    from qa_train.entrypoint.stages import Stage, Step
    from qa_train.spec import parse_job

    server, bucket = store
    outage = Outage(server)
    monkeypatch.setenv("QA_S3_RETRY_S", "120")
    job = parse_job({"run_name": "ends", "model": {"name_or_path": "org/model"},
                     "data": {"train_path": "/nowhere/t.json"}, "stages": ["train"],
                     "sync": {"target": f"s3://{bucket}/runs"}, "output_root": str(tmp_path / "out")})  # fmt: skip
    fake_checkpoint(Path(job.train_output_dir()) / PENDING_DIR, 2)
    local_report = Path(job.run_dir()) / "report.json"
    seen: list[RunReport] = []

    def watch_then_restart() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not seen:
            if (
                local_report.is_file()
                and (r := RunReport.from_json(local_report.read_text())).uploads_pending
            ):
                seen.append(r)
            time.sleep(0.1)
        time.sleep(3)
        outage.restart()

    outage.kill()
    watcher = threading.Thread(target=watch_then_restart)
    try:
        reporter = Reporter(job, Path(job.run_dir()))
        watcher.start()
        started = time.time()
        code = run_stages(
            [Stage("train", [Step([sys.executable, "-c", "raise SystemExit(3)"])])], None, reporter
        )
    finally:
        watcher.join(timeout=150)
        if server.proc is not None and server.proc.poll() is not None:
            outage.restart()
    assert code == 3
    assert seen and seen[0].uploads_pending == ["checkpoint-2"]
    assert started + 110 < (seen[0].uploads_until or 0) < time.time() + 125
    run = S3Location(bucket, "runs/ends")
    assert committed_steps(server, run) == [2]
    final = RunReport.from_json(
        server.client().get_object(Bucket=bucket, Key="runs/ends/report.json")["Body"].read()
    )
    assert final.state == RunState.FAILED and final.uploads_pending == [] and final.last_committed_step == 2
    d = RecoveryPolicy().decide(
        Observation(InstanceStatus(InstanceState.EXITED, exit_code=3), final, now=time.time())
    )
    assert d.action == Action.RELAUNCH and d.cause == FailureReason.STORAGE_ERROR
