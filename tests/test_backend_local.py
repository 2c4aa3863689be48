"""Local compute against a real Docker engine: run a small locally built image, read its logs, destroy it.

The image is built FROM the locally seeded base (``scripts/seed-base-image.sh`` → ``qa-expert/base:bookworm``)
with a stand-in ``qa_train`` package whose ``run`` prints what the launcher handed over, so the test checks the
launcher's contract (entrypoint, env, labels, volumes, hostile values) without building the full project image.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from launch.backends.base import InstanceState, LaunchRequest, OfferQuery, RequestRejected
from launch.backends.local import LABEL, LocalCompute
from launch.gpus import PROFILES

REPO = Path(__file__).resolve().parent.parent
BASE = "qa-expert/base:bookworm"
TAG = "qa-expert/launcher-test:latest"
HOSTILE = "p@ss \"dq\" 'sq' $HOME ${X} `id` ; echo pwned \\ \nline two"

FAKE_RUN = """
import json, os, sys, time
print("JOB", os.environ["QA_JOB_ID"], flush=True)
print("TOKEN", json.dumps(os.environ.get("HF_TOKEN")), flush=True)
print("DATA", sorted(os.listdir("/data")), flush=True)
open("/runs/marker", "w").write("written in the container")
if os.environ.get("QA_TEST_EXIT"):
    sys.exit(int(os.environ["QA_TEST_EXIT"]))
for i in range(600):
    print("tick", i, flush=True)
    time.sleep(0.5)
"""


@pytest.fixture(scope="module")
def image(docker_engine, tmp_path_factory):
    import docker

    client = docker.from_env()
    try:
        client.images.get(BASE)
    except docker.errors.ImageNotFound:
        subprocess.run(["bash", str(REPO / "scripts" / "seed-base-image.sh")], check=True, timeout=900)
    ctx = tmp_path_factory.mktemp("img")
    (ctx / "qa_train").mkdir()
    (ctx / "qa_train" / "__init__.py").write_text("")
    (ctx / "qa_train" / "__main__.py").write_text(FAKE_RUN)
    (ctx / "Dockerfile").write_text(
        f"FROM {BASE}\nRUN ln -sf /usr/bin/python3 /usr/local/bin/python\nCOPY qa_train /app/qa_train\n"
        'ENV PYTHONPATH=/app\nENTRYPOINT ["python", "-m", "qa_train", "run"]\n'
    )
    client.images.build(path=str(ctx), tag=TAG, rm=True, network_mode="host")
    return TAG


def _request(job_id: str, **env: str) -> LaunchRequest:
    return LaunchRequest(name=job_id, image=TAG, env={"QA_JOB_ID": job_id, **env}, disk_gb=10, gpu_count=0)


def _compute(tmp_path: Path) -> LocalCompute:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "t.json").write_text("[]")
    return LocalCompute(
        data_dir=str(data), runs_dir=str(tmp_path / "runs"), shm_size="64m", network_mode="none"
    )


@pytest.mark.slow
def test_run_logs_find_and_destroy(image, tmp_path):
    c = _compute(tmp_path)
    job_id = f"lt-{uuid.uuid4().hex[:6]}"
    inst = c.create(_request(job_id, HF_TOKEN=HOSTILE))
    try:
        ctr = c.client.containers.get(inst.instance_id)
        assert ctr.labels[LABEL] == job_id
        assert ctr.attrs["HostConfig"]["ShmSize"] == 64 * 1024 * 1024
        assert not ctr.attrs["HostConfig"].get("DeviceRequests")  # no GPU asked for
        assert c.find(job_id) == [inst.instance_id] and c.find("nobody") == []
        lines: list[str] = []
        for line in c.logs(inst.instance_id, follow=True):
            lines.append(line)
            if line.startswith("tick 2"):
                break
        assert f"JOB {job_id}" in lines
        assert json.loads(next(x for x in lines if x.startswith("TOKEN "))[6:]) == HOSTILE  # intact
        assert "DATA ['t.json']" in lines
        assert (tmp_path / "runs" / "marker").read_text() == "written in the container"
        assert c.status(inst.instance_id).state == InstanceState.RUNNING
        # the image's own ENTRYPOINT runs; the secret is in env only, not on the command line
        assert ctr.attrs["Config"]["Entrypoint"] == ["python", "-m", "qa_train", "run"]
        assert HOSTILE not in json.dumps(ctr.attrs["Config"]["Cmd"])
        c.stop(inst.instance_id)
        assert c.status(inst.instance_id).state == InstanceState.EXITED
    finally:
        c.destroy(inst.instance_id)
    assert c.status(inst.instance_id).state == InstanceState.GONE
    c.destroy(inst.instance_id)  # already gone = done


def test_exit_code_is_reported(image, tmp_path):
    c = _compute(tmp_path)
    job_id = f"lt-{uuid.uuid4().hex[:6]}"
    inst = c.create(_request(job_id, QA_TEST_EXIT="3"))
    try:
        deadline = time.time() + 30
        while c.status(inst.instance_id).state != InstanceState.EXITED and time.time() < deadline:
            time.sleep(0.2)
        st = c.status(inst.instance_id)
        assert st.state == InstanceState.EXITED and st.exit_code == 3
        assert any(line.startswith("JOB ") for line in c.logs(inst.instance_id))  # logs outlive the run
    finally:
        c.destroy(inst.instance_id)


def test_missing_image_is_rejected(docker_engine, tmp_path):
    c = _compute(tmp_path)
    with pytest.raises(RequestRejected, match="not found"):
        c.create(LaunchRequest("lt-noimg", "qa-expert/does-not-exist:0", {}, 10, gpu_count=0))


def test_run_kwargs_request_gpus(tmp_path):
    """No engine needed: the device request and mounts the SDK would get for two GPUs."""
    c = LocalCompute(data_dir=str(tmp_path), runs_dir=str(tmp_path / "runs"))
    kw = c.run_kwargs(LaunchRequest("g1", "img:1", {"A": "1"}, 50, gpu_count=2))
    (req,) = kw["device_requests"]
    assert req["Count"] == 2 and req["Capabilities"] == [["gpu"]]
    assert "entrypoint" not in kw and "command" not in kw and kw["environment"] == {"A": "1"}
    assert kw["labels"][LABEL] == "g1" and kw["name"] == "qa-g1"
    assert kw["volumes"][str(tmp_path.resolve())] == {"bind": "/data", "mode": "ro"}
    assert kw["volumes"][str((tmp_path / "runs").resolve())]["bind"] == "/runs"
    assert c.offers(OfferQuery(PROFILES["cpu"], 0))[0].backend == "local"
