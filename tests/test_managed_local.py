"""A managed smoke job on the real Docker engine, real CPU image, real SeaweedFS: ``docker kill`` its container
once the first checkpoint is committed; the controller relaunches, the new container resumes from that
checkpoint in object storage (its log says so) and the job ends SUCCEEDED after one restart, nothing left.

Needs the Docker engine (``docker_engine``: skipped locally without one, a failure in CI) and builds the CPU
image from docker/Dockerfile.cpu (cached layers; set QA_CPU_IMAGE=tag to use an existing image as is).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from launch.backends.local import LABEL
from launch.jobs.state import JobState, Registry

REPO = Path(__file__).resolve().parent.parent
MAX_STEPS = 120  # long enough (tens of seconds) that the kill lands before the end, even on a fast machine

pytestmark = [pytest.mark.slow, pytest.mark.docker]
pytest_plugins = ["tests.fixtures_images"]  # cpu_image


@pytest.fixture
def data_dir(tmp_path, records_file, validation_file, hotpot_file) -> Path:
    """World-readable: the container runs as uid 1000 and pytest's tmp dirs are private to this user."""
    d = tmp_path / "data"
    d.mkdir()
    for src, name in ((records_file, "train.json"), (validation_file, "validation.json"),
                      (hotpot_file, "hotpot_dev.json")):  # fmt: skip
        shutil.copyfile(src, d / name)
        (d / name).chmod(0o644)
    d.chmod(0o755)
    return d


def _containers(job_id: str) -> list:
    import docker

    return docker.from_env().containers.list(all=True, filters={"label": f"{LABEL}={job_id}"})


def _committed_steps(s3, run_uri: str) -> list[int]:
    from qa_train.storage import S3Location
    from qa_train.sync.remote import committed_checkpoints

    return [f.step for f in committed_checkpoints(s3.client(), S3Location.parse(run_uri))]


def test_killed_container_is_relaunched_and_resumes_from_object_storage(tmp_path, cpu_image, data_dir, s3):
    job_id = "ml-" + uuid.uuid4().hex[:8]
    doc = yaml.safe_load((REPO / "jobs" / "smoke.yaml").read_text())
    doc["run_name"] = "managed-smoke"
    doc["image"] = cpu_image
    doc["sync"] = {"target": s3.uri("runs"), "endpoint_url": s3.endpoint_url}
    # enough steps that the kill lands between the first committed checkpoint and the end of training
    doc["training"].update(max_steps=MAX_STEPS, save_steps=3, eval_steps=MAX_STEPS, save_total_limit=2)
    job = tmp_path / "managed-smoke.yaml"
    job.write_text(yaml.safe_dump(doc))
    run_uri = s3.uri("runs/managed-smoke")
    runs = tmp_path / "runs"
    env = {k: v for k, v in s3.env.items() if not k.startswith(("VAST_", "RUNPOD_", "QA_"))}
    env["QA_RUNS_ROOT"] = str(runs)
    log = tmp_path / "controller.log"
    cmd = [sys.executable, "launch/submit.py", "--gpu", "cpu", "--job", str(job), "--backend", "local",
           "--managed", "--job_id", job_id, "--data_dir", str(data_dir), "--network", "host",
           "--poll_s", "0.5", "--ready_timeout_s", "120", "--max_restarts", "2"]  # fmt: skip
    with open(log, "wb") as fh:
        ctl = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    killed_at: int | None = None

    def explain(what: str) -> str:
        tail = log.read_text(errors="replace")[-3000:]
        logs = ""
        for c in _containers(job_id):
            logs += f"\n--- container {c.short_id} ({c.status}) ---\n" + c.logs(tail=40).decode(
                errors="replace"
            )
        return f"{what}\n--- controller log ---\n{tail}{logs}"

    try:
        # 1. the first container commits a checkpoint to object storage; then it is killed like a lost machine
        deadline = time.monotonic() + 600
        first = None
        while time.monotonic() < deadline:
            assert ctl.poll() is None, explain(f"controller exited early ({ctl.returncode})")
            steps = _committed_steps(s3, run_uri)
            live = [c for c in _containers(job_id) if c.status == "running"]
            if steps and live:
                first = live[0]
                break
            time.sleep(0.2)
        assert first is not None, explain("no committed checkpoint within 600 s")
        subprocess.run(["docker", "kill", first.id], check=True, capture_output=True, timeout=60)
        first.reload()
        assert first.status in ("exited", "dead"), explain(
            f"container not dead after docker kill: {first.status}"
        )
        killed_at = max(_committed_steps(s3, run_uri))  # nothing commits after the kill
        assert killed_at < MAX_STEPS, explain(
            "training had already finished before the kill: lengthen the job"
        )

        # 2. the controller relaunches; the job ends SUCCEEDED with one restart
        try:
            rc = ctl.wait(timeout=900)
        except subprocess.TimeoutExpired:
            pytest.fail(explain("managed job did not finish within 900 s"))
        out = log.read_text(errors="replace")
        assert rc == 0, explain(f"controller exit status {rc}")
        reg = Registry(runs)
        row = reg.get(job_id)
        assert row is not None and row.state == JobState.SUCCEEDED, explain(f"state {row and row.state}")
        assert row.restarts == 1
        states = [str(e.state) for e in reg.events(job_id)]
        assert states == [
            "PENDING",
            "STARTING",
            "RUNNING",
            "RECOVERING",
            "RUNNING",
            "SUCCEEDED",
        ]
        assert "exit 137" in reg.events(job_id)[3].reason  # lost: the report never said it finished
        launches = reg.launches(job_id)
        assert len(launches) == 2 and launches[0].instance_id == first.id
        # 3. the second container resumed from the checkpoint committed before the kill (its own log says so)
        saved = runs / job_id / "logs" / f"launch-2-local-{launches[1].instance_id}.log"
        second_log = saved.read_text(errors="replace")
        assert f"Resuming from checkpoint-{killed_at} ({run_uri}/checkpoint-{killed_at})" in second_log, (
            explain(f"no resume line for checkpoint-{killed_at} in {saved}:\n{second_log[-3000:]}")
        )
        first_log = (runs / job_id / "logs" / f"launch-1-local-{first.id}.log").read_text(errors="replace")
        assert "Resuming from" not in first_log  # the first launch started fresh
        # 4. final artifacts are committed in object storage and the controller said where
        assert f"artifacts in {run_uri}" in out
        arts = next(json.loads(x) for x in out.splitlines() if x.startswith('{"artifacts"'))["artifacts"][
            "folders"
        ]
        assert set(arts) == {"final", "merged", "eval"}, arts
        assert arts["final"]["committed"] and arts["eval"]["committed"], arts
        # the merged model is reported as it really is in storage (the merge stage does not sync it yet)
        merged_there = bool(s3.keys("runs/managed-smoke/merged/_manifest.json"))
        assert arts["merged"]["committed"] == merged_there, arts
        assert ("MISSING" in out) == (not merged_there)
        assert max(_committed_steps(s3, run_uri)) == MAX_STEPS
        assert json.loads(out.strip().splitlines()[-1])["restarts"] == 1
    finally:
        if ctl.poll() is None:
            ctl.kill()
            ctl.wait(30)
        leftovers = _containers(job_id)
        for c in leftovers:
            c.remove(force=True)
    assert leftovers == [], f"containers left behind: {[c.short_id for c in leftovers]}"
