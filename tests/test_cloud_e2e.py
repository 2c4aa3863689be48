"""A cloud job from an empty machine, end to end, on the vast.ai and RunPod doubles whose instances are real
containers (``DockerHost``): the CPU image pushed with ``submit.py push`` to a private local registry (htpasswd),
data uploaded with ``submit.py upload-data`` to SeaweedFS, the real CLI submitting as a subprocess, the host
pulling the image with the create request's registry credentials, and the container reading its spec, inputs
and writing every result through S3 only (no mounts).

(a) managed + interruptible: the instance is preempted (the double's documented outbid/reclaim) right after the
    first committed checkpoint; the controller relaunches on another machine, the new container resumes from
    that checkpoint, and the job ends SUCCEEDED with final/, merged/, eval/ and report.json in S3 and no instance
    left on the double.
(b) unmanaged: submit returns once the instance runs; the container finishes the run and stops its own instance
    with the key the cloud injected. ``status``, ``logs`` and ``sync pull`` (docs/cloud-quickstart.md) run too.

Every command of docs/cloud-quickstart.md is run here. Needs the Docker engine, the seeded base image,
docker-registry (scripts/start-registry.sh installs it) and SeaweedFS; a few minutes per test on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests.doubles.docker_host import DockerHost

if TYPE_CHECKING:
    from tests.fixtures_registry import LocalRegistry
    from tests.fixtures_s3 import S3Bucket

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.docker]
pytest_plugins = ["tests.fixtures_images"]  # cpu_image, and the registry fixtures

GPU = "a6000"  # the doubles offer RTX A6000; the image runs CPU torch, the smoke job renders without bf16/DeepSpeed
MANAGED_STEPS = 40  # enough that the preemption lands between the first committed checkpoint and the end
RUN_TIMEOUT_S = 300


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's env without any cloud, registry or job variable of the developer's, plus ``extra``."""
    drop = ("VAST_", "RUNPOD_", "REGISTRY_", "QA_", "CONTAINER_", "AWS_")
    return {**{k: v for k, v in os.environ.items() if not k.startswith(drop)}, **extra}


def _cli(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launch/submit.py", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def _ok(p: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert p.returncode == 0, (
        f"`{' '.join(map(str, p.args))}` exit {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    )
    return p


# -- the image, pushed as a user would ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def private_image(cpu_image: str, auth_registry: LocalRegistry) -> tuple[str, dict[str, str]]:
    """quickstart "push": the CPU image in a private registry; returns (reference, REGISTRY_* env)."""
    import docker

    creds = {
        "REGISTRY_USERNAME": auth_registry.username or "",
        "REGISTRY_PASSWORD": auth_registry.password or "",
    }
    ref = auth_registry.ref("qa-expert/train-cpu", "e2e-" + uuid.uuid4().hex[:8])
    p = _ok(_cli(["push", "--to", ref, "--image", cpu_image], _clean_env(creds), timeout=900))
    assert f"use it with: --image {ref}" in p.stdout
    assert creds["REGISTRY_PASSWORD"] not in p.stdout + p.stderr
    assert _ok(_cli(["check_image", ref], _clean_env(creds))).stdout.startswith(f"ok: {ref}")
    docker.from_env().images.remove(ref)  # only the registry has it under that name now
    return ref, creds


# -- the clouds --------------------------------------------------------------------------------------------------
@dataclass
class Cloud:
    name: str
    double: Any
    env: dict[str, str]

    def live(self) -> list[str]:
        if self.name == "vast":
            return [str(i) for i in self.double.live_instances()]
        return list(self.double.live_pods())

    def preempt(self, iid: str) -> None:
        self.double.preempt(int(iid) if self.name == "vast" else iid)

    def creates(self) -> list[Any]:
        if self.name == "vast":
            return self.double.calls("PUT", r"^/api/v0/asks/\d+/$")
        return [r for r in self.double.calls("POST", r"^/graphql$") if "podRentInterruptable" in r.raw
                or "podFindAndDeployOnDemand" in r.raw]  # fmt: skip

    def machines(self) -> list[str]:
        """The machine of each create: the vast offer's machine; on RunPod every pod lands on a host RunPod
        picks, so each create counts as its own."""
        if self.name == "vast":
            asks = [int(c.path.strip("/").rsplit("/", 1)[-1]) for c in self.creates()]
            return [str(self.double.offers[a]["machine_id"]) for a in asks]
        return [f"runpod-pod-{i}" for i, _ in enumerate(self.creates())]

    def stopped_by_itself(self, iid: str) -> bool:
        """The container called the cloud's stop with the key injected for its own instance."""
        if self.name == "vast":
            key = self.double.container_key(int(iid))
            calls = self.double.calls("PUT", rf"^/api/v0/instances/{iid}/$")
            stop = [c for c in calls if c.headers.get("Authorization") == f"Bearer {key}"
                    and (c.body or {}).get("state") == "stopped"]  # fmt: skip
            return bool(stop) and self.double.instances[int(iid)]["actual_status"] == "stopped"
        key = self.double.pod_key(iid)
        calls = self.double.calls("POST", rf"^/v1/pods/{iid}/stop$")
        stop = [c for c in calls if c.headers.get("Authorization") == f"Bearer {key}"]
        return bool(stop) and self.double.pods[iid]["desiredStatus"] == "EXITED"


@pytest.fixture(params=["vast", "runpod"])
def cloud(request, docker_host: DockerHost) -> Iterator[Cloud]:
    if request.param == "vast":
        from tests.doubles.vast_api import VastDouble, make_offer

        offers = [make_offer(4101, dph_total=0.40, machine_id=51), make_offer(4102, dph_total=0.45, machine_id=52),
                  make_offer(4103, dph_total=0.55, machine_id=53)]  # fmt: skip
        double = VastDouble(offers=offers, start_polls=1, host=docker_host).start()
        env = {"VAST_API_URL": double.url, "VAST_API_KEY": double.api_key}
    else:
        from tests.doubles.runpod_api import RunpodDouble, make_gpu_type

        double = RunpodDouble(gpu_types=[make_gpu_type("NVIDIA RTX A6000", 0.49, spot=0.25)], start_polls=1,
                              host=docker_host).start()  # fmt: skip
        env = {"RUNPOD_API_URL": f"{double.url}/graphql", "RUNPOD_API_KEY": double.api_key}
    try:
        yield Cloud(request.param, double, env)
    finally:
        double.stop()


# -- the job -----------------------------------------------------------------------------------------------------
@pytest.fixture
def data_uris(s3: S3Bucket, tmp_path, records_file, validation_file, hotpot_file) -> dict[str, str]:
    """quickstart "upload data": local files → s3://…/data with upload-data; returns the job's data section."""
    d = tmp_path / "data"
    d.mkdir()
    for src, name in ((records_file, "train.json"), (validation_file, "validation.json"),
                      (hotpot_file, "hotpot_dev.json")):  # fmt: skip
        shutil.copyfile(src, d / name)
    p = _ok(_cli(["upload-data", str(d), s3.uri("data")], _clean_env(_aws(s3))))
    data = yaml.safe_load(p.stdout[p.stdout.index("data:") :])["data"]
    assert data == {"train_path": s3.uri("data/train.json"), "validation_path": s3.uri("data/validation.json"),
                    "hotpot_qa_dev_path": s3.uri("data/hotpot_dev.json")}  # fmt: skip
    return data


def _aws(s3: S3Bucket) -> dict[str, str]:
    return {k: v for k, v in s3.server.env().items()}


def _job(
    tmp_path: Path, s3: S3Bucket, image: str, data: dict[str, str], run_name: str, **training: Any
) -> Path:
    """jobs/smoke.yaml for a bare host: inputs and results in S3, the image from the registry."""
    doc = yaml.safe_load((REPO / "jobs" / "smoke.yaml").read_text())
    doc.update(run_name=run_name, image=image, data=data)
    doc["sync"] = {"target": s3.uri("runs"), "endpoint_url": s3.endpoint_url}
    doc["training"].update(training)
    path = tmp_path / f"{run_name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _report(s3: S3Bucket, run_name: str) -> dict[str, Any] | None:
    try:
        body = s3.client().get_object(Bucket=s3.bucket, Key=f"runs/{run_name}/report.json")["Body"].read()
    except Exception:
        return None
    return json.loads(body)


def _committed_steps(s3: S3Bucket, run_name: str) -> list[int]:
    from qa_train.storage import S3Location
    from qa_train.sync.remote import committed_checkpoints

    return [f.step for f in committed_checkpoints(s3.client(), S3Location.parse(s3.uri(f"runs/{run_name}")))]


def _assert_results(s3: S3Bucket, run_name: str) -> dict[str, Any]:
    keys = s3.keys(f"runs/{run_name}/")
    for part in ("final", "merged", "eval"):
        assert f"runs/{run_name}/{part}/_manifest.json" in keys, f"no committed {part}/ in {sorted(keys)}"
    assert any(k.startswith(f"runs/{run_name}/eval/") and k.endswith("summary.json") for k in keys), sorted(
        keys
    )
    report = _report(s3, run_name)
    assert report is not None and report["state"] == "succeeded", report
    return report


def _explain(what: str, cloud: Cloud, docker_host: DockerHost, log: Path | None = None) -> str:
    out = [what]
    if log is not None and log.exists():
        out.append("--- launcher ---\n" + log.read_text(errors="replace")[-4000:])
    for iid in list(docker_host.containers):
        out.append(
            f"--- {cloud.name} instance {iid} ({docker_host.state(iid)}) ---\n"
            + docker_host.logs(iid)[-2500:]
        )
    return "\n".join(out)


# -- (a) managed, preempted once ------------------------------------------------------------------------------
def test_managed_interruptible_job_survives_a_preemption(
    cloud, docker_host, s3, private_image, data_uris, tmp_path
):
    image, creds = private_image
    run_name = f"e2e-{cloud.name}-managed-{uuid.uuid4().hex[:6]}"
    job_id = f"{cloud.name}-m-{uuid.uuid4().hex[:8]}"
    job = _job(tmp_path, s3, image, data_uris, run_name, max_steps=MANAGED_STEPS, save_steps=4,
               eval_steps=MANAGED_STEPS, save_total_limit=2)  # fmt: skip
    runs = tmp_path / "runs"
    env = _clean_env({**_aws(s3), **cloud.env, **creds, "QA_RUNS_ROOT": str(runs)})
    log = tmp_path / "controller.log"
    cmd = [sys.executable, "launch/submit.py", "--gpu", GPU, "--job", str(job), "--backend", cloud.name,
           "--interruptible", "--managed", "--job_id", job_id, "--poll_s", "1", "--ready_timeout_s", "300",
           "--max_restarts", "2", "--backoff_s", "1"]  # fmt: skip
    t0 = time.monotonic()
    with open(log, "wb") as fh:
        ctl = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    preempted: str | None = None
    preempted_at_step: int | None = None
    try:
        while ctl.poll() is None:
            assert time.monotonic() - t0 < RUN_TIMEOUT_S, _explain(
                "managed job did not end in time", cloud, docker_host, log
            )
            if preempted is None:
                steps = _committed_steps(s3, run_name)
                live = cloud.live()
                if steps and live:
                    assert len(live) == 1, live
                    preempted, preempted_at_step = live[0], max(steps)
                    cloud.preempt(preempted)
            time.sleep(0.5)
    finally:
        if ctl.poll() is None:
            ctl.kill()
    assert ctl.returncode == 0, _explain(f"controller exit {ctl.returncode}", cloud, docker_host, log)
    assert preempted is not None, _explain(
        "the job ended before its first committed checkpoint", cloud, docker_host, log
    )
    assert preempted_at_step is not None and preempted_at_step < MANAGED_STEPS

    report = _assert_results(s3, run_name)
    assert report["launch"] >= 2 and report["last_committed_step"] == MANAGED_STEPS, report
    creates = cloud.creates()
    assert len(creates) == 2, [c.raw for c in creates]
    assert len(set(cloud.machines())) == 2, cloud.machines()
    assert cloud.live() == [], f"instances left on the {cloud.name} double: {cloud.live()}"
    assert len(docker_host.pulls) == 2 and set(docker_host.pulls) == {
        image
    }  # each machine pulled the image itself
    # the second container resumed from the checkpoint committed before the preemption
    summary = json.loads(s3.client().get_object(Bucket=s3.bucket,
                                                Key=f"runs/{run_name}/final/train_summary.json")["Body"].read())  # fmt: skip
    assert summary.get("resumed_from") and "checkpoint-" in str(summary["resumed_from"]), summary

    # quickstart "watch": status and list read the registry and the run report
    st = _ok(_cli(["status", job_id, "--json"], env))
    doc = json.loads(st.stdout)
    assert "SUCCEEDED" in json.dumps(doc), doc
    assert job_id in _ok(_cli(["list"], env)).stdout
    print(
        f"\n{cloud.name} managed e2e: {time.monotonic() - t0:.0f}s, preempted {preempted} at step {preempted_at_step}"
    )


# -- (b) unmanaged: the instance stops itself ------------------------------------------------------------------
def test_unmanaged_submit_ends_with_the_instance_stopped_by_itself(cloud, docker_host, s3, private_image, data_uris,
                                                                    tmp_path):  # fmt: skip
    image, creds = private_image
    run_name = f"e2e-{cloud.name}-once-{uuid.uuid4().hex[:6]}"
    job_id = f"{cloud.name}-u-{uuid.uuid4().hex[:8]}"
    job = _job(tmp_path, s3, image, data_uris, run_name)  # smoke.yaml's 4 steps
    env = _clean_env({**_aws(s3), **cloud.env, **creds, "QA_RUNS_ROOT": str(tmp_path / "runs")})
    t0 = time.monotonic()
    p = _ok(_cli(["--gpu", GPU, "--job", str(job), "--backend", cloud.name, "--job_id", job_id, "--poll_s", "1",
                  "--ready_timeout_s", "300"], env))  # fmt: skip
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["created"] is True and out["backend"] == cloud.name
    iid = str(out["instance_id"])
    assert cloud.live() == [iid]
    while not (cloud.stopped_by_itself(iid) and (_report(s3, run_name) or {}).get("state") == "succeeded"):
        assert time.monotonic() - t0 < RUN_TIMEOUT_S, _explain(
            "the instance did not stop itself", cloud, docker_host
        )
        time.sleep(1)
    _assert_results(s3, run_name)
    # the cloud's stop ends the container (SIGTERM while `run` waits for it: exit 143), as on a real host
    assert docker_host.state(iid) == "exited", _explain("container", cloud, docker_host)
    assert '"ok": true' in docker_host.logs(iid)

    # quickstart "watch" and "fetch results"
    logs = _ok(_cli(["logs", job_id, "--follow=False"], env)).stdout
    assert '"ok": true' in logs, logs[-2000:]
    st = json.loads(_ok(_cli(["status", job_id, "--json"], env)).stdout)
    assert "succeeded" in json.dumps(st).lower(), st
    assert job_id in _ok(_cli(["status", job_id], env)).stdout
    assert job_id in _ok(_cli(["list"], env)).stdout
    ls = subprocess.run([sys.executable, "-m", "qa_train", "sync", "ls", s3.uri(f"runs/{run_name}")], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert ls.returncode == 0 and "merged" in ls.stdout, ls.stdout + ls.stderr
    dest = tmp_path / "merged"
    pull = subprocess.run([sys.executable, "-m", "qa_train", "sync", "pull", s3.uri(f"runs/{run_name}/merged"),
                           str(dest), "--no_progress"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert pull.returncode == 0, pull.stderr
    assert (dest / "config.json").exists()
    print(f"\n{cloud.name} unmanaged e2e: {time.monotonic() - t0:.0f}s")
