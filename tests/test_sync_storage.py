"""Storage, manifests, CLI and resume selection against a real SeaweedFS S3 server."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from qa_train.storage import S3Location, make_client
from qa_train.sync import (
    StorageAccessError,
    StorageError,
    SyncArguments,
    run_name_for,
    start_sync,
    upload_directory,
)
from qa_train.sync.callback import BackgroundUploader
from qa_train.sync.cli import main as sync_main
from qa_train.sync.remote import list_run, newest_committed
from qa_train.sync.resume import find_resume_point
from qa_train.sync.transfer import push_directory


def make_folder(root: Path, sizes: dict[str, int], seed: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, (rel, size) in enumerate(sizes.items()):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size) if size > 64 else bytes([seed + i]) * size)
    return root


def fake_checkpoint(root: Path, step: int) -> Path:
    ckpt = make_folder(root / f"checkpoint-{step}", {"model.safetensors": 3000 + step, "optimizer.pt": 1000})
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (ckpt / "qa_train_complete.json").write_text("{}")  # what train's CheckpointMarker writes last
    return ckpt


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_push_ls_pull_round_trip_is_byte_identical(s3, tmp_path, capsys):
    # 20 MiB crosses the 16 MiB multipart threshold; empty and nested files too.
    src = make_folder(
        tmp_path / "ckpt",
        {
            "model.safetensors": 20 * 1024 * 1024 + 7,
            "optimizer.pt": 300_000,
            "sub/dir/rng.pth": 1500,
            "empty": 0,
        },
    )
    uri = s3.uri("runs/r1/checkpoint-4")
    assert sync_main(["push", str(src), uri, "--no_progress"]) == 0
    pushed = json.loads(capsys.readouterr().out)
    assert pushed["files"] == 4

    assert sync_main(["ls", s3.uri("runs/r1"), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [(f["name"], f["step"], f["committed"]) for f in listing] == [("checkpoint-4", 4, True)]
    assert listing[0]["total_bytes"] == sum(len(b) for b in tree(src).values())
    assert sync_main(["ls", s3.uri("runs/r1")]) == 0
    assert "checkpoint-4" in capsys.readouterr().out

    dest = tmp_path / "pulled"
    assert sync_main(["pull", uri, str(dest), "--no_progress"]) == 0
    assert tree(dest) == tree(src)
    # A run URI pulls its newest committed checkpoint.
    assert sync_main(["pull", s3.uri("runs/r1"), str(tmp_path / "pulled2"), "--no_progress"]) == 0
    assert tree(tmp_path / "pulled2") == tree(src)


@pytest.mark.parametrize("same_size", [True, False])
def test_tampered_object_fails_verification(s3, tmp_path, capsys, same_size):
    src = make_folder(tmp_path / "ckpt", {"model.safetensors": 5000, "config.json": 100})
    uri = s3.uri("p/run/checkpoint-2")
    assert sync_main(["push", str(src), uri, "--no_progress"]) == 0
    capsys.readouterr()
    original = (src / "model.safetensors").read_bytes()
    tampered = bytes([original[0] ^ 0xFF]) + original[1:] if same_size else original + b"x"
    s3.client().put_object(Bucket=s3.bucket, Key="p/run/checkpoint-2/model.safetensors", Body=tampered)

    dest = tmp_path / "pulled"
    assert sync_main(["pull", uri, str(dest), "--no_progress"]) == 1
    err = capsys.readouterr().err
    assert "model.safetensors" in err and ("sha256" if same_size else "size") in err
    assert not dest.exists(), "a failed pull must leave nothing that looks like a checkpoint"
    assert not list(tmp_path.glob(".pulled.partial*"))


def test_checkpoint_without_manifest_is_skipped_on_resume(s3, tmp_path):
    client = make_client()
    run = S3Location.parse(s3.uri("pre/myrun"))
    push_directory(client, fake_checkpoint(tmp_path / "src", 2), run.child("checkpoint-2"), progress=False)
    # checkpoint-4's upload "died": its files are there, its manifest never came.
    for p in fake_checkpoint(tmp_path / "src", 4).iterdir():
        client.put_object(Bucket=s3.bucket, Key=run.child("checkpoint-4").key(p.name), Body=p.read_bytes())

    folders = {f.name: f for f in list_run(client, run)}
    assert folders["checkpoint-2"].committed and not folders["checkpoint-4"].committed
    assert "no manifest" in folders["checkpoint-4"].problem
    assert newest_committed(client, run).name == "checkpoint-2"

    out = tmp_path / "fresh-output"
    point = find_resume_point(client, run, out, progress=False)
    assert point is not None and point.source == run.child("checkpoint-2").uri
    assert tree(Path(point.local_dir)) == tree(tmp_path / "src" / "checkpoint-2")


def test_local_checkpoint_newer_than_remote_wins(s3, tmp_path):
    client = make_client()
    run = S3Location.parse(s3.uri("pre/run"))
    push_directory(client, fake_checkpoint(tmp_path / "src", 2), run.child("checkpoint-2"), progress=False)
    out = tmp_path / "out"
    local = fake_checkpoint(out, 6)
    fake_checkpoint(out, 8)
    (out / "checkpoint-8" / "trainer_state.json").unlink()  # cut mid-save: does not count
    point = find_resume_point(client, run, out, progress=False)
    assert point is not None and point.local_dir == str(local)


def test_retention_keeps_newest_committed_only(s3, tmp_path):
    client = make_client()
    run = S3Location.parse(s3.uri("ret/run"))
    uploader = BackgroundUploader(run, keep=2)
    for step in (1, 2, 3, 4):
        uploader.submit(f"checkpoint-{step}", fake_checkpoint(tmp_path, step))
    uploader.close()
    assert not uploader.failures
    assert [f.name for f in list_run(client, run)] == ["checkpoint-3", "checkpoint-4"]


def _args(tmp_path: Path, **kw) -> SimpleNamespace:
    base = dict(output_dir=str(tmp_path / "out"), run_name=None, save_total_limit=None, process_index=0)
    return SimpleNamespace(**{**base, **kw})


def test_wrong_credentials_fail_at_start_with_clear_error(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "definitely-wrong")
    with pytest.raises(StorageAccessError, match="credentials rejected"):
        start_sync(SyncArguments(sync_to=s3.uri("x"), s3_max_attempts=1), _args(tmp_path))


def test_missing_bucket_and_unreachable_endpoint_fail_at_start(s3, tmp_path, monkeypatch):
    with pytest.raises(StorageAccessError, match="no-such-bucket-here.*does not exist"):
        start_sync(SyncArguments(sync_to="s3://no-such-bucket-here/x", s3_max_attempts=1), _args(tmp_path))
    from tests.fixtures_s3 import free_ports

    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    with pytest.raises(StorageAccessError, match="cannot reach S3 endpoint"):
        start_sync(
            SyncArguments(sync_to=s3.uri("x"), s3_endpoint_url=dead, s3_max_attempts=1), _args(tmp_path)
        )
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageAccessError, match="no S3 credentials"):
        start_sync(SyncArguments(sync_to=s3.uri("x"), s3_max_attempts=1), _args(tmp_path))


def test_bad_uri_and_resume_path_are_clear_errors(tmp_path):
    with pytest.raises(StorageError, match="expected an s3://"):
        start_sync(SyncArguments(sync_to="bucket/prefix"), _args(tmp_path))
    with pytest.raises(StorageError, match="no such checkpoint folder"):
        start_sync(SyncArguments(resume=str(tmp_path / "nope")), _args(tmp_path))


def test_run_name_explicit_or_output_dir_basename(tmp_path):
    assert run_name_for(_args(tmp_path, run_name="exp-7")) == "exp-7"
    assert run_name_for(_args(tmp_path)) == "out"
    assert run_name_for(_args(tmp_path, run_name=str(tmp_path / "out"))) == "out"  # HF's default = output_dir


def test_upload_directory_for_merged_and_eval(s3, tmp_path):
    src = make_folder(tmp_path / "merged", {"model.safetensors": 4000, "config.json": 50})
    uri = upload_directory(s3.uri("jobs"), "run-3", "merged", src)
    assert uri == s3.uri("jobs/run-3/merged")
    folders = {f.name: f for f in list_run(make_client(), S3Location.parse(s3.uri("jobs/run-3")))}
    assert folders["merged"].committed and folders["merged"].num_files == 2
    with pytest.raises(StorageError, match="not a directory"):
        upload_directory(s3.uri("jobs"), "run-3", "eval", tmp_path / "missing")


def test_corrupt_newest_checkpoint_falls_back_to_older_one(s3, tmp_path, caplog):
    client = make_client()
    run = S3Location.parse(s3.uri("pre/corrupt"))
    for step in (2, 4):
        push_directory(
            client, fake_checkpoint(tmp_path / "src", step), run.child(f"checkpoint-{step}"), progress=False
        )
    key = run.child("checkpoint-4").key("optimizer.pt")
    client.put_object(Bucket=s3.bucket, Key=key, Body=b"\x00" * 1000)  # same size, other bytes
    point = find_resume_point(client, run, tmp_path / "out", progress=False)
    assert point is not None and point.source == run.child("checkpoint-2").uri
    assert "checkpoint-4/optimizer.pt: sha256" in caplog.text
    assert not (tmp_path / "out" / "checkpoint-4").exists()
    client.put_object(
        Bucket=s3.bucket, Key=run.child("checkpoint-2").key("optimizer.pt"), Body=b"\x01" * 1000
    )
    with pytest.raises(StorageError, match="no usable checkpoint.*checkpoint-4.*checkpoint-2"):
        find_resume_point(client, run, tmp_path / "out2", progress=False)


def test_resume_from_explicit_s3_checkpoint(s3, tmp_path):
    client = make_client()
    run = S3Location.parse(s3.uri("pre/explicit"))
    push_directory(client, fake_checkpoint(tmp_path / "src", 2), run.child("checkpoint-2"), progress=False)
    uri = run.child("checkpoint-2").uri
    session = start_sync(SyncArguments(resume=uri), _args(tmp_path))
    assert session.resumed_from == uri
    assert tree(Path(session.resume_from)) == tree(tmp_path / "src" / "checkpoint-2")
