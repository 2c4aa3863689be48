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


def test_submit_to_vast_saves_spec_registry_and_is_idempotent(tmp_path, vast):
    env = {"VAST_API_URL": vast.url, "VAST_API_KEY": VAST_KEY, "HF_TOKEN": HOSTILE,
           "AWS_SECRET_ACCESS_KEY": "aws-secret-value-2"}  # fmt: skip
    args = ["--gpu", "a6000", "--job", "jobs/mistral-qa-lora.yaml", "--backend", "vast", "--job_id", "same-1",
            "--poll_s", "0"]  # fmt: skip
    p = cli(args, tmp_path, env)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.splitlines()[-1])["created"] is True
    (put,) = vast.calls("PUT", "/asks/")
    assert put.body["env"]["HF_TOKEN"] == HOSTILE  # hostile value intact, as env only
    assert put.body["env"]["AWS_SECRET_ACCESS_KEY"] == "aws-secret-value-2"
    assert "VAST_API_KEY" not in put.body["env"] and VAST_KEY not in put.raw
    assert HOSTILE not in json.dumps(put.body["args"]) and HOSTILE not in put.body["env"]["QA_JOB_SPEC"]
    saved = (tmp_path / "runs" / "same-1" / "spec.json").read_text()
    assert json.loads(saved)["secret_env"] == ["AWS_SECRET_ACCESS_KEY", "HF_TOKEN"]
    db = (tmp_path / "runs" / "registry.sqlite").read_bytes()
    for secret in ("aws-secret-value-2", "s3cr3t", VAST_KEY):
        assert secret not in saved and secret.encode() not in db and secret not in p.stdout + p.stderr
    row = sqlite3.connect(tmp_path / "runs" / "registry.sqlite").execute(
        "SELECT backend, instance_id, state FROM jobs WHERE job_id='same-1'").fetchone()  # fmt: skip
    assert row == ("vast", str(vast.live_instances()[0]), "RUNNING")
    # same --job_id again: no second instance
    p2 = cli(args, tmp_path, env)
    assert p2.returncode == 0 and "already submitted" in p2.stdout
    assert len(vast.calls("PUT", "/asks/")) == 1 and len(vast.live_instances()) == 1
    # companions: list, status, logs, cancel
    assert "same-1" in cli(["list"], tmp_path, env).stdout
    st = json.loads(cli(["status", "same-1"], tmp_path, env).stdout)
    assert st["live"]["state"] == "RUNNING"
    vast.set_logs(vast.live_instances()[0], "hello from the container\n")
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
