"""The container/launcher contract against a real S3 server (SeaweedFS): report round trip, absent objects,
committed folders, spec by URI, and ``upload_dir`` for ``submit.py upload-data``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qa_train.contract import RunLayout, RunReport, RunState, StageResult, hub_file_url, input_kind
from qa_train.storage import RunStore, split_s3_uri, upload_dir


def _commit(s3, run: str, folder: str, files: dict[str, bytes]) -> None:
    """A committed folder as the sync package writes it: the files, then _manifest.json listing them."""
    from qa_train.sync.manifest import FileEntry, Manifest

    client = s3.client()
    entries = []
    for name, data in files.items():
        client.put_object(Bucket=s3.bucket, Key=f"{run}/{folder}/{name}", Body=data)
        entries.append(FileEntry(path=name, size=len(data), sha256="0" * 64))
    manifest = Manifest(files=entries)
    client.put_object(
        Bucket=s3.bucket, Key=f"{run}/{folder}/_manifest.json", Body=manifest.to_json().encode()
    )


def test_report_round_trip_and_missing_objects(s3):
    store = RunStore(RunLayout.of(s3.uri("runs"), "r1"))
    assert store.read_report() is None and store.get_text("spec.json") is None  # 404 → None, not an error
    report = RunReport(run_name="r1", instance_id="i-1", backend="vast", launch=2)
    report.stages.append(StageResult("train", exit_code=0, seconds=1.5, started_at=1.0))
    report.stages.append(StageResult("merge", exit_code=0, seconds=0.0, skipped=True))
    store.write_report(report)
    assert "runs/r1/report.json" in s3.keys()
    back = store.read_report()
    assert back is not None and back == report and back.state is RunState.RUNNING and not back.final
    report.state = RunState.FAILED
    report.stages.append(StageResult("eval", exit_code=3, seconds=2.0))
    store.write_report(report)
    back = store.read_report()
    assert back.final and back.failed_stage().name == "eval" and back.stages[1].skipped


def test_report_from_a_newer_writer_still_parses():
    doc = json.loads(RunReport(run_name="r").to_json())
    doc["future_field"] = 1
    doc["stages"] = [{"name": "train", "exit_code": 0, "seconds": 1.0, "started_at": 0.0, "gpu_hours": 2}]
    back = RunReport.from_json(json.dumps(doc))
    assert back.stages[0].name == "train" and back.stages[0].exit_code == 0


def test_write_local_is_atomic_and_leaves_no_temp(tmp_path):
    path = tmp_path / "run" / "report.json"
    RunReport(run_name="r", launch=3).write_local(path)
    assert RunReport.from_json(path.read_text()).launch == 3
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]


def test_committed_step_and_folders(s3):
    store = RunStore(RunLayout.of(s3.uri("runs"), "r2"))
    assert store.committed_step() is None and store.committed() == set()
    _commit(s3, "runs/r2", "checkpoint-2", {"a.bin": b"x" * 10})
    _commit(s3, "runs/r2", "checkpoint-4", {"a.bin": b"y" * 10})
    s3.client().put_object(Bucket=s3.bucket, Key="runs/r2/checkpoint-6/a.bin", Body=b"no manifest yet")
    _commit(s3, "runs/r2", "final", {"adapter.bin": b"z"})
    assert store.committed_step() == 4  # checkpoint-6 is not committed
    assert store.committed() == {"checkpoint-2", "checkpoint-4", "final"}
    names = [f.name for f in store.folders()]
    assert names[:3] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]


def test_for_object_reads_a_spec_by_uri(s3):
    s3.client().put_object(Bucket=s3.bucket, Key="runs/r3/spec.json", Body=b'{"a": 1}')
    store, name = RunStore.for_object(s3.uri("runs/r3/spec.json"))
    assert name == "spec.json" and json.loads(store.get_text(name)) == {"a": 1}
    with pytest.raises(ValueError, match="s3://bucket/key"):
        RunStore.for_object("s3://only-a-bucket")


def test_refused_credentials_raise_not_none(s3):
    from botocore.exceptions import ClientError

    store = RunStore(
        RunLayout.of(s3.uri("runs"), "r"),
        credentials={"AWS_ACCESS_KEY_ID": "wrong", "AWS_SECRET_ACCESS_KEY": "wrong-secret"},
        attempts=1,
    )
    with pytest.raises(ClientError):
        store.get_text("report.json")


def test_upload_dir_uploads_then_skips_unchanged(s3, tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "train.json").write_text("[1, 2, 3]")
    (data / "sub" / "hotpot.json").write_text("[]")
    first = upload_dir(data, s3.uri("data"), progress=False)
    assert sorted(f.uri for f in first) == [s3.uri("data/sub/hotpot.json"), s3.uri("data/train.json")]
    assert not any(f.skipped for f in first)
    assert s3.keys("data/") == {"data/sub/hotpot.json": 2, "data/train.json": 9}
    (data / "train.json").write_text("[1, 2, 4]")  # same size, new content
    second = {Path(f.uri).name: f.skipped for f in upload_dir(data, s3.uri("data"), progress=False)}
    assert second == {"hotpot.json": True, "train.json": False}
    body = s3.client().get_object(Bucket=s3.bucket, Key="data/train.json")["Body"].read()
    assert body == b"[1, 2, 4]"
    single = upload_dir(data / "train.json", s3.uri("one/"), progress=False)
    assert [f.uri for f in single] == [s3.uri("one/train.json")] and single[0].skipped is False


def test_input_uri_forms(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert [input_kind(u) for u in ("s3://b/k", "https://x/y", "hf://datasets/o/n/f", "/data/x", "org/model")] == [
        "s3", "http", "hf", "local", "local"]  # fmt: skip
    with pytest.raises(ValueError, match="unsupported URI scheme"):
        input_kind("ftp://host/file")
    assert hub_file_url("hf://datasets/org/name/dir/train.json") == (
        "https://huggingface.co/datasets/org/name/resolve/main/dir/train.json"
    )
    assert hub_file_url("hf://datasets/org/name@v1/train.json", {"HF_ENDPOINT": "http://127.0.0.1:9/"}) == (
        "http://127.0.0.1:9/datasets/org/name/resolve/v1/train.json"
    )
    for bad in ("hf://models/org/name/x", "hf://datasets/org/name", "hf://datasets/org//x"):
        with pytest.raises(ValueError, match="hf://datasets"):
            hub_file_url(bad)
    assert split_s3_uri("s3://b/a/b.json") == ("b", "a/b.json")


def test_submit_upload_data_prints_the_uris_for_a_job_spec(s3, tmp_path):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    data = tmp_path / "d"
    data.mkdir()
    (data / "train.json").write_text("[]")
    (data / "hotpot_dev.json").write_text("[]")
    cmd = [sys.executable, "launch/submit.py", "upload-data", str(data), s3.uri("user-data")]
    p = subprocess.run(cmd, capture_output=True, text=True, env=s3.env, cwd=repo, timeout=120)
    assert p.returncode == 0, p.stderr
    assert f"uploaded  {s3.uri('user-data/train.json')} (2 bytes)" in p.stdout
    assert f"  train_path: {s3.uri('user-data/train.json')}" in p.stdout
    assert f"  hotpot_qa_dev_path: {s3.uri('user-data/hotpot_dev.json')}" in p.stdout
    p = subprocess.run(cmd, capture_output=True, text=True, env=s3.env, cwd=repo, timeout=120)
    assert p.stdout.count("unchanged ") == 2
    p = subprocess.run([*cmd[:3], str(tmp_path / "absent"), s3.uri("x")], capture_output=True, text=True,
                       env=s3.env, cwd=repo, timeout=120)  # fmt: skip
    assert p.returncode == 2 and p.stderr.strip() == f"error: {tmp_path / 'absent'}: no such file or folder"
    bad_env = {**s3.env, "AWS_SECRET_ACCESS_KEY": "refused-secret-value-42"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=bad_env, cwd=repo, timeout=120)
    assert p.returncode == 1 and p.stderr.startswith(f"error: upload to {s3.uri('user-data')} failed")
    assert "refused-secret-value-42" not in p.stderr + p.stdout


def test_half_a_credential_pair_is_named():
    store = RunStore(RunLayout("s3://b/r"), credentials={"AWS_SECRET_ACCESS_KEY": "only-the-secret"})
    with pytest.raises(ValueError, match="AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not"):
        store.get_text("report.json")
