"""Experiment tracking: ``training.report_to`` from the job spec to the trainer, the trackers' keys as secret
env (names in the spec, never values), and TensorBoard event files under ``<run>/tb/`` in object storage."""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from launch.credentials import CONTAINER_SECRETS, load_secrets, redact
from launch.render import render
from qa_train.contract import TB
from qa_train.run import default_plan, train_flags
from qa_train.spec import SpecError, parse_job
from qa_train.sync import SyncSession
from qa_train.sync.storage import S3Location
from tests.conftest import REPO

BASE = {
    "run_name": "t",
    "model": {"name_or_path": "m"},
    "data": {"train_path": "/data/t.json"},
    "stages": ["train"],
}
HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


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
class FakeClient:
    def __init__(self, fail: bool = False) -> None:
        self.put: list[tuple[str, str]] = []
        self.fail = fail

    def upload_file(self, path: str, bucket: str, key: str) -> None:
        if self.fail:
            raise OSError("connection refused")
        self.put.append((bucket, key))


def _events(d: Path, name: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(b"\x18\x00\x00\x00events")
    return d


def test_push_tb_uploads_every_file_under_run_tb_and_a_failure_is_a_warning(tmp_path, caplog):
    tb = _events(tmp_path / "tb", "events.out.tfevents.1.host.1")
    _events(tb / "eval", "events.out.tfevents.2.host.1")
    client = FakeClient()
    session = SyncSession(run=S3Location("b", "runs/r"), client=client)
    assert session.push_tb(tb) == "s3://b/runs/r/tb"
    assert sorted(client.put) == [("b", "runs/r/tb/eval/events.out.tfevents.2.host.1"),
                                  ("b", "runs/r/tb/events.out.tfevents.1.host.1")]  # fmt: skip
    assert session.push_tb(tmp_path / "missing") is None and session.push_tb(None) is None
    assert SyncSession().push_tb(tb) is None  # no sync target: nothing to do
    broken = SyncSession(run=S3Location("b", "runs/r"), client=FakeClient(fail=True))
    with caplog.at_level(logging.WARNING, logger="qa_train.sync"):
        assert broken.push_tb(tb) is None
    assert "TensorBoard logs not uploaded" in caplog.text and "connection refused" in caplog.text


def test_push_tb_to_seaweedfs_keeps_an_earlier_launchs_files(s3, tmp_path):
    client = s3.client()
    run = S3Location.parse(s3.uri("runs/r"))
    session = SyncSession(run=run, client=client)
    session.push_tb(_events(tmp_path / "launch1" / "tb", "events.out.tfevents.1.a.1"))
    session.push_tb(_events(tmp_path / "launch2" / "tb", "events.out.tfevents.2.b.1"))  # a relaunch
    keys = [
        o["Key"] for o in client.list_objects_v2(Bucket=run.bucket, Prefix=f"{run.prefix}/tb/")["Contents"]
    ]
    assert sorted(keys) == [
        f"{run.prefix}/tb/events.out.tfevents.1.a.1",
        f"{run.prefix}/tb/events.out.tfevents.2.b.1",
    ]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard is not installed in this environment (the CPU image "
                    "carries it); the Trainer's TensorBoard callback needs it")  # fmt: skip
def test_train_with_report_to_tensorboard_lands_event_files_under_run_tb(
    s3, tiny_llama, records_file, tmp_path
):
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "qa_train", "train", "--model_name_or_path", str(tiny_llama), "--train_path",
        str(records_file), "--output_dir", str(out), "--max_steps", "3", "--save_strategy", "no",
        "--logging_steps", "1", "--per_device_train_batch_size", "2", "--packing", "False",
        "--model_max_length", "256", "--use_cpu", "True", "--seed", "0", "--disable_tqdm", "True",
        "--report_to", "tensorboard", "--logging_dir", str(out / TB), "--sync_to", s3.uri("runs"),
        "--run_name", "tbrun",
    ]  # fmt: skip
    p = subprocess.run(cmd, cwd=REPO, env=s3.env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    local = [f for f in (out / TB).rglob("events.out.tfevents.*") if f.stat().st_size > 0]
    assert local, "no TensorBoard event files written"
    run = S3Location.parse(s3.uri("runs/tbrun"))
    listed = s3.client().list_objects_v2(Bucket=run.bucket, Prefix=f"{run.prefix}/{TB}/").get("Contents", [])
    names = {o["Key"].rsplit("/", 1)[-1]: o["Size"] for o in listed}
    assert {f.name: f.stat().st_size for f in local}.items() <= names.items()
