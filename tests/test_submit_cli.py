"""The Fire CLI as users run it (subprocesses): dry run, secrets, registry idempotency, companions."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.doubles.runpod_api import RunpodDouble, make_gpu_type
from tests.doubles.vast_api import VastDouble, make_offer

REPO = Path(__file__).resolve().parent.parent
pytest_plugins = ["tests.fixtures_registry"]  # registry: a local image registry (the vast test's image)
# Every shell/JSON metacharacter, but no newline: a secret with a control character is refused up front
# (tests/test_bad_input_launcher.py).
HOSTILE = "s3cr3t \"dq\" 'sq' $HOME ${PATH} `id` ; rm -rf / \\ line two"
VAST_KEY = "vast-cli-key-0987"


def cli(args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "HF_", "VAST_", "RUNPOD_", "QA_"))
    }
    base.update({"QA_RUNS_ROOT": str(tmp_path / "runs"), **(env or {})})
    return subprocess.run([sys.executable, "launch/submit.py", *args], capture_output=True, text=True, cwd=REPO,
                          env=base, timeout=120)  # fmt: skip


def test_dry_run_prints_the_rendered_spec_and_redacts_secrets(tmp_path):
    p = cli(["--gpu", "a6000", "--dry_run", "--job_id", "dry-1"], tmp_path,
            {"HF_TOKEN": HOSTILE, "AWS_SECRET_ACCESS_KEY": "aws-secret-value-1", "AWS_ENDPOINT_URL": "http://s3:8333"})  # fmt: skip
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert {"job_id", "image", "gpu", "command", "env", "secret_env", "deepspeed", "disk_gb"} <= set(doc)
    assert doc["job_id"] == "dry-1"
    assert doc["gpu"] == {"profile": "a6000", "name": "RTX A6000", "count": 1}
    assert doc["command"] == ["python", "-m", "qa_train", "run"]
    assert doc["secret_env"] == ["AWS_SECRET_ACCESS_KEY", "HF_TOKEN"]
    assert doc["env"]["AWS_ENDPOINT_URL"] == "http://s3:8333"
    assert doc["deepspeed"]["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert HOSTILE not in p.stdout + p.stderr and "aws-secret-value-1" not in p.stdout + p.stderr
    assert not (tmp_path / "runs" / "dry-1").exists()  # a dry run submits and saves nothing


def test_bare_gpu_form_and_errors(tmp_path):
    p = cli(["--gpu", "a100", "--dry_run"], tmp_path)
    assert p.returncode == 0 and json.loads(p.stdout)["deepspeed"]["zero_optimization"]["stage"] == 3
    p = cli(["--gpu", "a6000", "--num_gpus", "1", "--offload", "none", "--dry_run"], tmp_path)
    assert p.returncode == 2 and "does not fit on RTX A6000" in p.stderr and "Traceback" not in p.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name_or_path: m}\ndata: {train_path: t}\ntraining: {epochs: 3}\n")
    p = cli(["--gpu", "cpu", "--job", str(bad), "--dry_run"], tmp_path)
    assert p.returncode == 2 and f"{bad}: training.epochs: unknown key" in p.stderr


@pytest.mark.parametrize("managed", [False, True])
def test_cloud_without_a_key_fails_before_anything_is_recorded(tmp_path, managed):
    args = [
        "--gpu",
        "a6000",
        "--job",
        "jobs/mistral-qa-lora.yaml",
        "--backend",
        "cheapest",
        "--job_id",
        "nokey",
    ]
    p = cli(args + (["--interruptible", "--managed"] if managed else []), tmp_path)
    assert p.returncode == 1 and "no cloud is configured" in p.stderr and "Traceback" not in p.stderr
    listing = cli(["list"], tmp_path)
    assert listing.returncode == 0 and "nokey" not in listing.stdout
    assert not (tmp_path / "runs" / "nokey").exists()


@pytest.fixture
def vast():
    d = VastDouble(
        api_key=VAST_KEY, offers=[make_offer(1, "RTX A6000", 1, 0.4), make_offer(2, "RTX A6000", 1, 0.5)]
    )
    d.start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def tiny_image(docker_engine, registry) -> str:
    """A one-file image (FROM scratch) pushed to the session's local registry: what a cloud submit checks
    before renting. Nothing runs it here (the vast double's SimulatedHost), so it needs no Python."""
    import io
    import tarfile
    import uuid

    import docker
    from launch.images import push

    ctx = io.BytesIO()
    with tarfile.open(fileobj=ctx, mode="w") as tar:
        for name, data in (
            ("Dockerfile", b"FROM scratch\nCOPY hello.txt /hello.txt\n"),
            ("hello.txt", b"hi\n"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    ctx.seek(0)
    client = docker.from_env()
    local = "qa-expert/tiny-test:" + uuid.uuid4().hex[:8]
    client.images.build(fileobj=ctx, custom_context=True, tag=local, rm=True)
    try:
        pushed = push(local, registry.ref("qa-expert/tiny", uuid.uuid4().hex[:8]), out=io.StringIO())
    finally:
        client.images.remove(local)
    return pushed.ref


@pytest.mark.slow
@pytest.mark.docker
def test_submit_to_vast_saves_spec_registry_and_is_idempotent(tmp_path, vast, s3, tiny_image):
    """The unmanaged vast path as a user runs it: image checked in a real registry, spec to SeaweedFS, one
    create whose env carries the secrets intact (and only there), then list, status, logs and cancel."""
    import yaml

    vast.log_delay = 0
    doc = yaml.safe_load((REPO / "jobs" / "mistral-qa-lora.yaml").read_text())
    doc.update(run_name="same-run", image=tiny_image)
    doc["sync"] = {"target": s3.uri("runs"), "endpoint_url": s3.endpoint_url}
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(doc))
    aws_secret = s3.server.secret_key
    env = {"VAST_API_URL": vast.url, "VAST_API_KEY": VAST_KEY, "HF_TOKEN": HOSTILE,
           **{k: v for k, v in s3.server.env().items()}}  # fmt: skip
    args = ["--gpu", "a6000", "--job", str(job), "--backend", "vast", "--job_id", "same-1", "--poll_s", "0"]
    p = cli(args, tmp_path, env)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.splitlines()[-1])["created"] is True
    (put,) = vast.calls("PUT", "/asks/")
    assert put.body["image"] == tiny_image
    assert put.body["env"]["HF_TOKEN"] == HOSTILE  # hostile value intact, as env only
    assert put.body["env"]["AWS_SECRET_ACCESS_KEY"] == aws_secret
    assert put.body["env"]["QA_JOB_SPEC_URI"] == s3.uri("runs/same-run/spec.json")
    assert "VAST_API_KEY" not in put.body["env"] and VAST_KEY not in put.raw
    assert "QA_JOB_SPEC" not in put.body["env"] and HOSTILE not in json.dumps(put.body["args"])
    saved = (tmp_path / "runs" / "same-1" / "spec.json").read_text()
    remote = s3.client().get_object(Bucket=s3.bucket, Key="runs/same-run/spec.json")["Body"].read().decode()
    assert json.loads(saved)["secret_env"] == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN"]
    db = (tmp_path / "runs" / "registry.sqlite").read_bytes()
    for secret in (aws_secret, "s3cr3t", VAST_KEY):
        assert secret not in saved and secret not in remote and secret.encode() not in db
        assert secret not in p.stdout + p.stderr
    row = sqlite3.connect(tmp_path / "runs" / "registry.sqlite").execute(
        "SELECT backend, instance_id, state FROM jobs WHERE job_id='same-1'").fetchone()  # fmt: skip
    assert row == ("vast", str(vast.live_instances()[0]), "RUNNING")
    # same --job_id again: no second instance
    p2 = cli(args, tmp_path, env)
    assert p2.returncode == 0 and "already submitted" in p2.stdout
    assert len(vast.calls("PUT", "/asks/")) == 1 and len(vast.live_instances()) == 1
    # companions: list, status, logs, cancel
    assert "same-1" in cli(["list"], tmp_path, env).stdout
    st = json.loads(cli(["status", "same-1", "--json"], tmp_path, env).stdout)
    assert st["live"]["state"] == "RUNNING"
    vast.host.print(str(vast.live_instances()[0]), "hello from the container")
    logs = cli(["logs", "same-1", "--follow", "False"], tmp_path, env)
    assert "hello from the container" in logs.stdout
    c = cli(["cancel", "same-1"], tmp_path, env)
    assert c.returncode == 0 and vast.live_instances() == []


def test_offers_table_across_clouds(tmp_path, vast):
    rp = RunpodDouble(api_key="rp-key-1", gpu_types=[make_gpu_type("NVIDIA RTX A6000", 0.45)]).start()
    try:
        env = {"VAST_API_URL": vast.url, "VAST_API_KEY": VAST_KEY, "RUNPOD_API_URL": f"{rp.url}/graphql",
               "RUNPOD_API_KEY": "rp-key-1"}  # fmt: skip
        p = cli(
            ["offers", "--gpu", "a6000", "--job", "jobs/mistral-qa-lora.yaml", "--as_json"], tmp_path, env
        )
        assert p.returncode == 0, p.stderr
        rows = json.loads(p.stdout)
        assert [(r["backend"], r["price_per_hour"]) for r in rows] == [
            ("vast", 0.4),
            ("runpod", 0.45),
            ("vast", 0.5),
        ]
        assert all(
            r["est_cost"] == pytest.approx(r["price_per_hour"] * r["est_hours"], abs=0.01) for r in rows
        )
        table = cli(["offers", "--gpu", "a6000", "--job", "jobs/mistral-qa-lora.yaml"], tmp_path, env).stdout
        assert "$/h" in table and "RTX A6000" in table
    finally:
        rp.stop()


def test_dry_run_is_fast_and_imports_no_torch(tmp_path):
    code = ("import sys, runpy; sys.argv=['launch/submit.py','--gpu','a100','--dry_run'];"
            "import launch.submit as s; rc=s.main(sys.argv[1:]);"
            "print('HEAVY', sorted(m for m in ('torch','transformers','docker') if m in sys.modules))")  # fmt: skip
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "HEAVY []"
    assert time.monotonic() - t0 < 10  # the < 1 s target is measured in bench/bench_dry_run.py


# -- in-process (main(argv)): the submit steps against an in-memory cloud and a real S3 server ---------------
def _fake_clouds(monkeypatch, clouds: dict) -> None:
    import launch.backends

    monkeypatch.setattr(launch.backends, "get_compute", lambda name, **kw: clouds[name], raising=False)
    monkeypatch.setattr(launch.backends, "configured_clouds", lambda **kw: dict(clouds), raising=False)
    monkeypatch.setattr("launch.images.check_image", lambda ref, auth=None, **kw: "sha256:0")


def _cloud_job(tmp_path: Path, s3, run_name: str = "lora-cloud") -> Path:
    """The shipped LoRA job syncing to the test's bucket (``s3`` None: without a sync target)."""
    import yaml

    doc = yaml.safe_load((REPO / "jobs" / "mistral-qa-lora.yaml").read_text())
    doc["run_name"] = run_name
    doc.pop("sync", None)
    if s3 is not None:
        doc["sync"] = {"target": s3.uri("runs"), "endpoint_url": s3.endpoint_url}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _main(monkeypatch, tmp_path: Path, argv: list[str]) -> int:
    from launch.submit import main

    monkeypatch.setenv("QA_RUNS_ROOT", str(tmp_path / "runs"))
    return main(argv)


def test_cloud_submit_uploads_the_spec_before_renting_and_sends_only_short_env(
    tmp_path, s3, monkeypatch, capsys
):
    from qa_train.contract import ENV_SPEC, RunLayout, RunReport, RunState, StageResult
    from qa_train.storage import RunStore
    from tests.test_controller import FakeCompute, offer

    cloud = FakeCompute(name="vast", market=[offer(1, 0.4, backend="vast")])
    at_create: dict = {}
    real_create = cloud.create

    def create(request, off):
        at_create["keys"] = set(s3.keys("runs/lora-cloud/"))
        at_create["request"] = request
        return real_create(request, off)

    cloud.create = create
    _fake_clouds(monkeypatch, {"vast": cloud})
    monkeypatch.setenv("HF_TOKEN", "hf-token-value-123")
    job = _cloud_job(tmp_path, s3)
    rc = _main(monkeypatch, tmp_path, ["--gpu", "a6000", "--job", str(job), "--backend", "vast", "--job_id", "c-1",
                                       "--keep_instance", "--poll_s", "0"])  # fmt: skip
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert json.loads(out.out.splitlines()[-1])["instance_id"] == "vast-i1"
    assert {"runs/lora-cloud/spec.json", "runs/lora-cloud/report.json"} <= at_create["keys"]
    env = at_create["request"].env
    assert set(env) == {"QA_JOB_SPEC_URI", "QA_BACKEND", "QA_KEEP_INSTANCE", "AWS_ACCESS_KEY_ID",
                        "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "HF_TOKEN"}  # fmt: skip
    assert env["QA_JOB_SPEC_URI"] == s3.uri("runs/lora-cloud/spec.json") and env["QA_BACKEND"] == "vast"
    assert ENV_SPEC not in env and all(len(v) <= 256 for v in env.values())
    spec = s3.client().get_object(Bucket=s3.bucket, Key="runs/lora-cloud/spec.json")["Body"].read().decode()
    assert json.loads(spec)["job_id"] == "c-1" and "hf-token-value-123" not in spec
    # the container reports success: status reads it from S3, settles the job, shows the live instance
    store = RunStore(RunLayout.of(s3.uri("runs"), "lora-cloud"), s3.endpoint_url)
    store.write_report(
        RunReport("lora-cloud", RunState.SUCCEEDED, [StageResult("train", 0)], last_committed_step=7)
    )
    assert _main(monkeypatch, tmp_path, ["status", "c-1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["state"] == "SUCCEEDED" and doc["report"]["last_committed_step"] == 7
    assert doc["live"]["state"] == "RUNNING"  # --keep_instance: the instance is left as it is
    assert _main(monkeypatch, tmp_path, ["status", "c-1"]) == 0
    assert "run report: succeeded" in capsys.readouterr().out


def test_cloud_job_without_object_storage_is_refused_before_anything(tmp_path, monkeypatch, capsys):
    from tests.test_controller import FakeCompute, offer

    cloud = FakeCompute(name="vast", market=[offer(1, 0.4, backend="vast")])
    _fake_clouds(monkeypatch, {"vast": cloud})
    rc = _main(monkeypatch, tmp_path, ["--gpu", "a6000", "--job", str(_cloud_job(tmp_path, None)), "--backend",
                                       "vast", "--job_id", "nosync"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and "needs object storage: set sync.target" in err
    assert cloud.creates == [] and not (tmp_path / "runs" / "nosync").exists()


def test_unreachable_storage_is_refused_before_anything(tmp_path, s3, monkeypatch, capsys):
    from tests.test_controller import FakeCompute, offer

    cloud = FakeCompute(name="vast", market=[offer(1, 0.4, backend="vast")])
    _fake_clouds(monkeypatch, {"vast": cloud})
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-right-secret-key")
    rc = _main(monkeypatch, tmp_path, ["--gpu", "a6000", "--job", str(_cloud_job(tmp_path, s3)), "--backend", "vast",
                                       "--job_id", "badkey"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and "is not usable with the given credentials" in err and "not-the-right" not in err
    assert cloud.creates == []
    _main(monkeypatch, tmp_path, ["list", "--as_json"])
    assert json.loads(capsys.readouterr().out) == []


def test_a_launch_that_fails_after_renting_leaves_nothing_and_fails_the_job(
    tmp_path, s3, monkeypatch, capsys
):
    from tests.test_controller import FakeCompute, offer

    cloud = FakeCompute(name="vast", market=[offer(1, 0.4, backend="vast")], plan=["fail-start"])
    _fake_clouds(monkeypatch, {"vast": cloud})
    rc = _main(monkeypatch, tmp_path, ["--gpu", "a6000", "--job", str(_cloud_job(tmp_path, s3)), "--backend", "vast",
                                       "--job_id", "f-1", "--poll_s", "0"])  # fmt: skip
    assert rc == 1 and "failed to start" in capsys.readouterr().err
    assert cloud.creates == ["o1"] and cloud.live() == []
    _main(monkeypatch, tmp_path, ["status", "f-1", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["state"] == "FAILED" and doc["launches"][0]["ended_at"] is not None


def test_cancel_destroys_the_live_instance(tmp_path, s3, monkeypatch, capsys):
    from tests.test_controller import FakeCompute, offer

    cloud = FakeCompute(name="vast", market=[offer(1, 0.4, backend="vast")])
    _fake_clouds(monkeypatch, {"vast": cloud})
    argv = ["--gpu", "a6000", "--job", str(_cloud_job(tmp_path, s3)), "--backend", "vast", "--job_id", "x-1"]
    assert _main(monkeypatch, tmp_path, argv) == 0
    assert _main(monkeypatch, tmp_path, argv) == 0 and "already submitted" in capsys.readouterr().out
    assert cloud.creates == ["o1"]  # the same --job_id twice: one instance
    assert _main(monkeypatch, tmp_path, ["cancel", "x-1"]) == 0
    assert cloud.live() == [] and "cancelled x-1 (vast instance vast-i1)" in capsys.readouterr().out
