"""Experiment tracking: ``training.report_to`` from the job spec to the trainer, the trackers' keys as secret
env (names in the spec, never values), and TensorBoard event files under ``<run>/tb/`` in object storage."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch.credentials import CONTAINER_SECRETS, load_secrets, redact
from launch.render import render
from qa_train.contract import TB
from qa_train.entrypoint.flags import default_plan, train_flags
from qa_train.spec import SpecError, parse_job
from qa_train.storage import S3Location, make_client
from qa_train.sync import SyncSession
from qa_train.sync.tb_push import TensorBoardPusher
from tests.conftest import REPO
from tests.fixtures_s3 import free_ports
from tests.test_sync_train import Proc

BASE = {
    "run_name": "t",
    "model": {"name_or_path": "m"},
    "data": {"train_path": "/data/t.json"},
    "stages": ["train"],
}


def job(**training):
    return parse_job({**BASE, "training": training})


# -- the spec field ------------------------------------------------------------------------------------------
def test_report_to_defaults_to_none_and_takes_the_trainers_trackers():
    assert job().training.report_to == ["none"]
    assert job(report_to=["tensorboard", "wandb", "mlflow"]).training.report_to == [
        "tensorboard",
        "wandb",
        "mlflow",
    ]


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (["comet"], "training.report_to"),
        (["none", "wandb"], "cannot be combined"),
        (["wandb", "wandb"], "twice"),
        ([], "training.report_to"),
        ("tensorboard", "training.report_to"),
    ],
)
def test_report_to_refuses_what_the_trainer_would_not_take(value, words):
    with pytest.raises(SpecError, match=words):
        job(report_to=value)


# -- rendering and the train flags ---------------------------------------------------------------------------
def test_train_flags_carry_report_to_and_a_logging_dir_under_the_output_dir():
    j = job(report_to=["tensorboard", "mlflow"])
    f = train_flags(j, default_plan(j))
    i = f.index("--report_to")
    assert f[i + 1] == "tensorboard,mlflow" and f[i + 2].startswith("--")  # one value: HF's parser takes one
    assert f[f.index("--logging_dir") + 1] == f"{j.train_output_dir()}/{TB}"
    out = f[f.index("--output_dir") + 1]
    assert f[f.index("--logging_dir") + 1].startswith(out + "/")
    plain = job()
    g = train_flags(plain, default_plan(plain))
    assert g[g.index("--report_to") + 1] == "none" and "--logging_dir" not in g


def test_rendered_spec_has_report_to_and_the_tracking_key_names_never_their_values():
    env = {"WANDB_API_KEY": "wandb-key-0123456789abcdef", "MLFLOW_TRACKING_URI": "https://u:pw-secret-42@ml.example",
           "MLFLOW_TRACKING_USERNAME": "alice-analyst", "MLFLOW_TRACKING_PASSWORD": "mlflow-pass-0123456789",
           "MLFLOW_TRACKING_TOKEN": "mlflow-token-0123456789"}  # fmt: skip
    secrets = load_secrets(CONTAINER_SECRETS, env=env)
    assert set(secrets) == set(env)  # every tracker key travels as secret env, like the S3 keys
    rendered = render(job(report_to=["wandb", "mlflow"]), "cpu", secret_names=list(secrets))
    text = redact(rendered.model_dump_json(), secrets)
    doc = json.loads(text)
    assert doc["job"]["training"]["report_to"] == ["wandb", "mlflow"]
    assert set(env) <= set(doc["secret_env"])
    for name, value in env.items():
        assert value not in rendered.model_dump_json(), name
    assert redact("user alice-analyst") == "user alice-analyst"  # a username is checked, never redacted


def test_dry_run_shows_secret_names_only(monkeypatch, capsys, tmp_path):
    from launch.submit import main

    monkeypatch.setenv("WANDB_API_KEY", "wandb-key-abcdef0123456789")
    monkeypatch.setenv("QA_RUNS_ROOT", str(tmp_path))
    assert main(["--gpu", "cpu", "--job", "jobs/smoke.yaml", "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "WANDB_API_KEY" in json.loads(out)["secret_env"] and "wandb-key-abcdef0123456789" not in out


def test_train_parses_the_comma_joined_trackers_and_none():
    from qa_train.args import parse_train_args
    from qa_train.train import split_trackers

    def parsed(value: str) -> list[str]:
        argv = [
            "--model_name_or_path",
            "m",
            "--train_path",
            "t.json",
            "--output_dir",
            "/tmp/o",
            "--report_to",
            value,
        ]
        return split_trackers(parse_train_args(argv)[2].report_to)

    assert parsed("tensorboard,mlflow") == ["tensorboard", "mlflow"] and parsed("wandb") == ["wandb"]
    assert parsed("none") == [] and split_trackers(None) == []


# -- TensorBoard files to <run>/tb/ --------------------------------------------------------------------------
def _events(d: Path, name: str, data: bytes = b"\x18\x00\x00\x00events") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)
    return d


def _tb_keys(s3, run: S3Location) -> dict[str, int]:
    """``{path under <run>/tb/: size}`` (``run`` is in the test's bucket)."""
    prefix = f"{run.prefix}/{TB}/"
    return {key[len(prefix) :]: size for key, size in s3.keys(prefix).items()}


def test_pusher_sends_new_and_grown_files_only(s3, tmp_path):
    run = S3Location.parse(s3.uri("runs/p"))
    tb = _events(tmp_path / "tb", "events.out.tfevents.1.host.1")
    _events(tb / "eval", "events.out.tfevents.2.host.1")
    pusher = TensorBoardPusher(s3.client(), run.child(TB), tb)
    assert pusher.push() == 2
    assert _tb_keys(s3, run) == {"events.out.tfevents.1.host.1": 10, "eval/events.out.tfevents.2.host.1": 10}
    assert pusher.push() == 0, "unchanged files went again"
    with (tb / "events.out.tfevents.1.host.1").open("ab") as f:  # the writer appends scalars
        f.write(b"more")
    assert pusher.push() == 1 and _tb_keys(s3, run)["events.out.tfevents.1.host.1"] == 14
    pusher.request()  # the background path: the same push, from the callback's thread
    _events(tb, "events.out.tfevents.3.host.1")
    pusher.request()
    pusher.close()
    assert "events.out.tfevents.3.host.1" in _tb_keys(s3, run)


def test_push_tb_failure_is_a_warning_and_nothing_without_a_target(s3, tmp_path, caplog):
    tb = _events(tmp_path / "tb", "events.out.tfevents.1.host.1")
    assert SyncSession().push_tb(tb) is None  # no sync target: nothing to do
    run = S3Location.parse(s3.uri("runs/r"))
    assert SyncSession(run=run, client=s3.client()).push_tb(tmp_path / "missing") is None
    (port,) = free_ports(1)  # a port nothing listens on: a real connection error
    broken = SyncSession(run=run, client=make_client(f"http://127.0.0.1:{port}", max_attempts=1))
    with caplog.at_level(logging.WARNING, logger="qa_train.sync"):
        assert broken.push_tb(tb) is None
    assert "TensorBoard logs not uploaded" in caplog.text and f"127.0.0.1:{port}" in caplog.text


def test_push_tb_to_seaweedfs_keeps_an_earlier_launchs_files(s3, tmp_path):
    client = s3.client()
    run = S3Location.parse(s3.uri("runs/r"))
    session = SyncSession(run=run, client=client)
    session.push_tb(_events(tmp_path / "launch1" / "tb", "events.out.tfevents.1.a.1"))
    session.push_tb(_events(tmp_path / "launch2" / "tb", "events.out.tfevents.2.b.1"))  # a relaunch
    keys = s3.keys(f"{run.prefix}/tb/")
    assert sorted(keys) == [
        f"{run.prefix}/tb/events.out.tfevents.1.a.1",
        f"{run.prefix}/tb/events.out.tfevents.2.b.1",
    ]


def _train_cmd(model: Path, data: Path, out: Path, sync_to: str, run_name: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "qa_train", "train", "--model_name_or_path", str(model), "--train_path", str(data),
        "--output_dir", str(out), "--logging_steps", "1", "--per_device_train_batch_size", "2", "--packing",
        "False", "--model_max_length", "256", "--use_cpu", "True", "--seed", "0", "--disable_tqdm", "True",
        "--report_to", "tensorboard", "--sync_to", sync_to, "--run_name", run_name, *extra,
    ]  # fmt: skip


def _scalars(s3, run: S3Location, dest: Path, tag: str = "train/loss") -> list[int]:
    """Steps of ``tag`` in the event files stored under <run>/tb/ (downloaded, read with TensorBoard)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps: list[int] = []
    for rel in _tb_keys(s3, run):
        local = dest / rel
        local.parent.mkdir(parents=True, exist_ok=True)
        s3.client().download_file(run.bucket, f"{run.prefix}/{TB}/{rel}", str(local))
        acc = EventAccumulator(str(local))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            steps += [e.step for e in acc.Scalars(tag)]
    return sorted(steps)


@pytest.mark.slow
def test_train_with_report_to_tensorboard_lands_event_files_under_run_tb(
    s3, tiny_llama, records_file, tmp_path
):
    """No --logging_dir: the events go to <output_dir>/tb (transformers 5 would pick a folder of its own)."""
    out = tmp_path / "out"
    cmd = _train_cmd(tiny_llama, records_file, out, s3.uri("runs"), "tbrun", "--max_steps", "3",
                     "--save_strategy", "no")  # fmt: skip
    p = subprocess.run(cmd, cwd=REPO, env=s3.env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    local = [f for f in (out / TB).rglob("events.out.tfevents.*") if f.stat().st_size > 0]
    assert local, f"no TensorBoard event files under {out / TB}"
    run = S3Location.parse(s3.uri("runs/tbrun"))
    stored = _tb_keys(s3, run)
    assert {f.relative_to(out / TB).as_posix(): f.stat().st_size for f in local}.items() <= stored.items()
    assert _scalars(s3, run, tmp_path / "dl") == [1, 2, 3]


@pytest.mark.slow
def test_a_killed_run_has_its_curves_in_storage_up_to_its_last_save(s3, tiny_llama, records_file, tmp_path):
    """Pushed at each save, not only at the end: SIGKILL (a preemption without grace) after the pushes that
    follow the step-2 and step-4 saves, and the stored events already hold the loss of steps 1..4."""
    out = tmp_path / "out"
    cmd = _train_cmd(tiny_llama, records_file, out, s3.uri("runs"), "tbkill", "--max_steps", "100000",
                     "--save_steps", "2", "--logging_dir", str(tmp_path / "tb-here"))  # fmt: skip
    proc = Proc(cmd, {**s3.env, "PYTHONUNBUFFERED": "1"})
    run = S3Location.parse(s3.uri("runs/tbkill"))

    def pushed_twice() -> bool:  # the second push follows the step-4 save at the earliest
        return (
            "Queued upload of checkpoint-4" in proc.output and proc.output.count("TensorBoard file(s)") >= 2
        )

    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.p.poll() is None and not pushed_twice():
            time.sleep(0.1)
        assert pushed_twice(), f"no two TensorBoard pushes seen: {proc.output[-3000:]}"
    finally:
        proc.p.kill()
        proc.wait()
    assert "Uploaded" in proc.output and "TensorBoard file(s)" in proc.output, proc.output[-3000:]
    assert not (out / TB).exists() and (tmp_path / "tb-here").is_dir(), "--logging_dir not honoured"
    steps = _scalars(s3, run, tmp_path / "dl")
    assert set(range(1, 5)) <= set(steps), steps
