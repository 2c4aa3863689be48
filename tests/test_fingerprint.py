"""A run is bound to its data (issue 23 item 1): a relaunch whose training file changed refuses to resume
with one line; ``--restart_data`` trains from step 0 and says so. Real parts: tiny model, SeaweedFS,
``python -m qa_train train`` subprocesses."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from qa_train.data.synthetic import make_records
from qa_train.fingerprint import INPUTS_NAME, InputsChanged, current_inputs, fingerprint_path
from qa_train.fsutil import write_marker
from qa_train.sync.resume import bind_inputs
from tests.test_sync_train import Proc, step_losses, train_cmd


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and mtime: 'untouched' means this is unchanged."""
    return {
        p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def listing(s3, prefix: str) -> dict[str, tuple[int, str]]:
    out = {}
    for page in s3.client().get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix):
        out.update({o["Key"]: (o["Size"], o["ETag"]) for o in page.get("Contents", [])})
    return out


@pytest.mark.slow
def test_changed_training_file_refuses_resume_then_restart_data_trains_from_zero(s3, tiny_llama, tmp_path):
    data = tmp_path / "train.json"
    data.write_text(json.dumps(make_records(48, seed=1)))
    old_sha = sha(data)
    out = tmp_path / "out"
    env = {**s3.env, "PYTHONUNBUFFERED": "1"}
    sync_to = s3.uri("runs")

    first = Proc(train_cmd(tiny_llama, data, out, sync_to, "bound"), env)
    assert first.wait() == 0, first.output[-3000:]
    record = json.loads(s3.client().get_object(Bucket=s3.bucket, Key="runs/bound/inputs.json")["Body"].read())
    assert record["inputs"]["--train_path"]["sha256"] == old_sha
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["inputs"]["--train_path"]["sha256"] == old_sha and summary["restarted_data"] is None

    data.write_text(json.dumps(make_records(48, seed=5)))  # the same path, other records
    new_sha = sha(data)
    remote_before = listing(s3, "runs/bound/")
    local_before = tree(out)

    second = Proc(train_cmd(tiny_llama, data, out, sync_to, "bound"), env)
    assert second.wait() == 2, second.output[-3000:]
    errors = [line for line in second.lines if line.startswith("error:")]
    assert len(errors) == 1, second.output[-3000:]
    line = errors[0]
    assert f"--train_path {data}" in line
    assert f"recorded sha256:{old_sha[:16]}" in line and f"now sha256:{new_sha[:16]}" in line
    assert "Restore the recorded data" in line and "--run_name" in line and "--restart_data" in line
    assert "'loss'" not in second.output, "nothing may be trained"
    assert "Traceback" not in second.output
    assert listing(s3, "runs/bound/") == remote_before, "object storage must be untouched"
    assert tree(out) == local_before, "local checkpoints must be untouched"

    third = Proc(train_cmd(tiny_llama, data, out, sync_to, "bound", "--restart_data", "True"), env)
    assert third.wait() == 0, third.output[-3000:]
    assert "--restart_data: --train_path differ(s) from the record" in third.output
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed_from"] is None
    assert summary["restarted_data"]["from_step"] == 0
    assert summary["restarted_data"]["changed"] == ["--train_path"]
    assert summary["restarted_data"]["recorded"]["--train_path"]["sha256"] == old_sha
    assert summary["inputs"]["--train_path"]["sha256"] == new_sha
    assert summary["global_step"] == 6
    assert sorted(step_losses(out / "checkpoint-6" / "trainer_state.json")) == [1, 2, 3, 4, 5, 6]
    record = json.loads(s3.client().get_object(Bucket=s3.bucket, Key="runs/bound/inputs.json")["Body"].read())
    assert record["inputs"]["--train_path"]["sha256"] == new_sha
    remote_summary = json.loads(
        s3.client().get_object(Bucket=s3.bucket, Key="runs/bound/final/train_summary.json")["Body"].read()
    )
    assert remote_summary["restarted_data"]["from_step"] == 0


def _fake_checkpoint(out: Path, step: int) -> Path:
    ckpt = out / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    write_marker(ckpt, "train", kind="checkpoint", global_step=step)
    return ckpt


def test_local_record_binds_a_run_without_sync_target(tmp_path):
    data = tmp_path / "train.json"
    data.write_text("[1]")
    out = tmp_path / "out"
    paths = {"--train_path": str(data), "--validation_path": None}
    first = bind_inputs(None, None, out, current_inputs(paths), resume="auto", restart=False, write=True)
    assert first.recorded is None and first.changed == []
    assert not (out / INPUTS_NAME).exists()  # nothing written until train has read the data (record())
    first.record()
    assert json.loads((out / INPUTS_NAME).read_text())["inputs"]["--train_path"]["sha256"] == sha(data)

    _fake_checkpoint(out, 2)
    data.write_text("[2]")
    with pytest.raises(InputsChanged) as err:
        bind_inputs(None, None, out, current_inputs(paths), resume="auto", restart=False, write=True)
    assert "--train_path" in str(err.value) and str(out / INPUTS_NAME) in str(err.value)
    assert "\n" not in str(err.value)
    assert (out / "checkpoint-2").is_dir()
    # no --resume and no sync target: this launch starts from step 0 anyway, so it is not refused
    plain = bind_inputs(None, None, out, current_inputs(paths), resume=None, restart=False, write=True)
    assert plain.changed == ["--train_path"] and (out / "checkpoint-2").is_dir()
    plain.record()
    assert json.loads((out / INPUTS_NAME).read_text())["inputs"]["--train_path"]["sha256"] == sha(data)


def test_restart_data_is_a_no_op_when_inputs_match(tmp_path):
    data = tmp_path / "train.json"
    data.write_text("[1]")
    out = tmp_path / "out"
    paths = {"--train_path": str(data)}
    bind_inputs(None, None, out, current_inputs(paths), resume="auto", restart=False, write=True).record()
    _fake_checkpoint(out, 2)
    again = bind_inputs(None, None, out, current_inputs(paths), resume="auto", restart=True, write=True)
    assert again.restarted is None and (out / "checkpoint-2").is_dir(), "a rerun must not drop progress"


def test_folder_fingerprint_covers_names_and_content(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    (d / "a.arrow").write_bytes(b"x" * 10)
    before = fingerprint_path(d)
    (d / "a.arrow").write_bytes(b"y" * 10)
    assert fingerprint_path(d)["sha256"] != before["sha256"]
    assert fingerprint_path("org/hub-model") == {"id": "org/hub-model"}
