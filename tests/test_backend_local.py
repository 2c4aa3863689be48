"""Local backend against a real Docker engine: run a small locally built image, read its logs, cancel it.

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

from launch.backends.local import LABEL, LocalBackend
from launch.render import render
from qa_train.spec import parse_job

REPO = Path(__file__).resolve().parent.parent
BASE = "qa-expert/base:bookworm"
TAG = "qa-expert/launcher-test:latest"
HOSTILE = "p@ss \"dq\" 'sq' $HOME ${X} `id` ; echo pwned \\ \nline two"

FAKE_RUN = """
import json, os, sys, time
spec = json.loads(os.environ["QA_JOB_SPEC"])
print("JOB", spec["job_id"], flush=True)
print("TOKEN", json.dumps(os.environ.get("HF_TOKEN")), flush=True)
print("DATA", sorted(os.listdir("/data")), flush=True)
open(spec["job"]["output_root"] + "/marker", "w").write("written in the container")
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


def _spec(tmp_path: Path, job_id: str):
    job = parse_job({"run_name": "local-test", "model": {"make_tiny": {"arch": "llama"}},
                     "data": {"train_path": "/data/t.json", "hotpot_qa_dev_path": "/data/h.json"}})  # fmt: skip
    return render(job, "cpu", job_id=job_id, image=TAG)


def _backend(tmp_path: Path) -> LocalBackend:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "t.json").write_text("[]")
    return LocalBackend(
        data_dir=str(data), runs_dir=str(tmp_path / "runs"), shm_size="64m", network_mode="none"
    )


def test_run_logs_and_cancel(image, tmp_path):
    b = _backend(tmp_path)
    job_id = f"lt-{uuid.uuid4().hex[:6]}"
    inst = b.create(_spec(tmp_path, job_id), {"HF_TOKEN": HOSTILE})
    try:
        c = b.client.containers.get(inst.instance_id)
        assert c.labels[LABEL] == job_id
        assert c.attrs["HostConfig"]["ShmSize"] == 64 * 1024 * 1024
        assert not c.attrs["HostConfig"].get("DeviceRequests")  # cpu profile: no GPU request
        assert b.find_by_job(job_id) == [inst.instance_id]
        lines: list[str] = []
        for line in b.logs(inst.instance_id, follow=True):
            lines.append(line)
            if line.startswith("tick 2"):
                break
        assert f"JOB {job_id}" in lines
        assert json.loads(next(x for x in lines if x.startswith("TOKEN "))[6:]) == HOSTILE  # intact
        assert "DATA ['t.json']" in lines
        assert (tmp_path / "runs" / "marker").read_text() == "written in the container"
        assert b.status(inst.instance_id).state == "RUNNING"
        # the secret is in the container env only: not in its command line
        assert HOSTILE not in json.dumps(c.attrs["Config"]["Cmd"]) + json.dumps(
            c.attrs["Config"]["Entrypoint"]
        )
    finally:
        b.cancel(inst.instance_id)
    assert b.status(inst.instance_id).state == "GONE"
    b.cancel(inst.instance_id)  # already gone = done


def test_exit_code_is_reported(image, tmp_path):
    b = _backend(tmp_path)
    spec = _spec(tmp_path, f"lt-{uuid.uuid4().hex[:6]}")
    spec.env["QA_TEST_EXIT"] = "3"
    inst = None
    try:
        try:  # it may be seen running before it exits, or already exited (then create says so)
            b.create(spec, {})
        except Exception as e:
            assert "exited" in str(e)
        (iid,) = b.find_by_job(spec.job_id)
        inst = iid
        deadline = time.time() + 30
        while b.status(iid).state != "EXITED" and time.time() < deadline:
            time.sleep(0.2)
        st = b.status(iid)
        assert st.state == "EXITED" and st.exit_code == 3
        assert any(line.startswith("JOB ") for line in b.logs(iid))  # logs outlive the container's run
    finally:
        if inst:
            b.cancel(inst)


def test_run_kwargs_request_gpus_for_gpu_profiles(tmp_path):
    """No engine needed: the device request and mounts the SDK would get for an A100 plan."""
    job = parse_job({"run_name": "g", "model": {"name_or_path": "mistralai/Mistral-7B-v0.1"},
                     "data": {"train_path": "/data/t.json", "hotpot_qa_dev_path": "/data/h.json"}})  # fmt: skip
    spec = render(job, "a100", job_id="g1")
    kw = LocalBackend(data_dir=str(tmp_path), runs_dir=str(tmp_path / "runs")).run_kwargs(spec, {"A": "1"})
    (req,) = kw["device_requests"]
    assert req["Count"] == spec.gpu.count and req["Capabilities"] == [["gpu"]]
    assert kw["entrypoint"] == ["python", "-m", "qa_train", "run"] and kw["labels"][LABEL] == "g1"
    assert kw["volumes"][str(tmp_path.resolve())] == {"bind": "/data", "mode": "ro"}
    assert kw["volumes"][str((tmp_path / "runs").resolve())]["bind"] == "/runs"


def test_submit_cli_to_local_docker_with_secrets_from_an_env_file(image, tmp_path, monkeypatch, capsys):
    """The whole launcher path on a real engine: render → registry → spec.json → container env → logs → cancel."""
    import sys

    sys.path.insert(0, str(REPO))
    from launch.submit import Launcher

    for k in ("HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    env_file = tmp_path / "secrets.env"
    env_file.write_text(
        "# comment\nexport AWS_SECRET_ACCESS_KEY='aws \"quoted\" $secret'\nHF_TOKEN=hf_abc$DEF xyz\n"
    )
    job = tmp_path / "job.yaml"
    job.write_text(
        "model: {make_tiny: {arch: llama}}\ndata: {train_path: /data/t.json, hotpot_qa_dev_path: /data/h.json}\n"
    )
    data = tmp_path / "data"
    data.mkdir()
    (data / "t.json").write_text("[]")
    job_id = f"cli-{uuid.uuid4().hex[:6]}"
    launcher = Launcher(str(tmp_path / "runs"))
    launcher.submit(gpu="cpu", job=str(job), backend="local", image=TAG, job_id=job_id, env_file=str(env_file),
                    data_dir=str(data), network="none")  # fmt: skip
    try:
        out = capsys.readouterr().out
        assert f"submitted {job_id}: local instance" in out
        saved = (tmp_path / "runs" / job_id / "spec.json").read_text()
        assert json.loads(saved)["secret_env"] == ["AWS_SECRET_ACCESS_KEY", "HF_TOKEN"]
        assert "quoted" not in saved and "hf_abc" not in saved
        (iid,) = LocalBackend().find_by_job(job_id)
        env = dict(e.split("=", 1) for e in LocalBackend().client.containers.get(iid).attrs["Config"]["Env"])
        assert env["AWS_SECRET_ACCESS_KEY"] == 'aws "quoted" $secret' and env["HF_TOKEN"] == "hf_abc$DEF xyz"
        assert json.loads(env["QA_JOB_SPEC"])["job_id"] == job_id
    finally:
        launcher.cancel(job_id)
    assert LocalBackend().find_by_job(job_id) == []
    assert "CANCELLED" in (launcher.list() or capsys.readouterr().out)
