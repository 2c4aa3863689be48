"""Multi-node training in real containers on one host network (issue 22 item 6): no mounts, every input and result
through S3, each node configured only by the variables its platform injects.

(a) RunPod Instant Clusters: ``submit.py --nodes 2 --backend runpod --managed`` against the cluster double, whose
    nodes are real containers of the CPU image pulled from a local registry (``DockerHost``, host network,
    127.0.0.1 for every node, RunPod's documented node variables). DDP LoRA with gloo across the 2 containers;
    node 1's container is killed (SIGKILL) right after the first committed checkpoint; the controller sees the
    group STOPPED, deletes the cluster and creates a new one, whose nodes resume from that checkpoint. The run
    ends SUCCEEDED with the same final step and the same per-step losses as the reference, and node 0 alone ran
    merge and eval (one eval summary, one report covering both nodes).

    The reference is a 1-node 2-process run (``torchrun --standalone --nproc_per_node 2``, on this host, of the
    same rendered spec with ``plan.num_gpus = 2``): the same global batch (2 ranks x per-device batch), seed and
    data order, so DDP must give the same losses whichever node a rank sits on. It is the honest equality the
    issue asks for (cross-node gloo == one-node gloo) and the cheaper one: no container start, no image pull.
    The host venv and the image hold the same locked versions (tests/test_locks.py).

(b) Each exported engine (SkyPilot, dstack, Kubeflow Trainer): ``submit.py export --to ENGINE`` writes its file
    and uploads the spec; two containers are started with ``docker run --network host`` running the file's
    command with the file's env, the secrets' values and ONLY the node variables that engine injects (as its docs
    name them; qa_train/nodes.py). Both ranks join: node 0's train_summary.json says world_size 2 and the report's
    group lists both nodes with exit code 0.

Needs the Docker engine, the seeded base image, docker-registry and SeaweedFS. About 11 minutes on 2 busy cores
(image build and push included; (a) ~4-5 min, each engine ~1-1.5 min).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.doubles.docker_host import LABEL, DockerHost
from tests.fixtures_s3 import free_ports
from tests.test_cloud_e2e import _aws, _clean_env, _cli, _job, _ok, _report

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.docker]
pytest_plugins = ["tests.fixtures_images"]  # cpu_image, registry_cpu_image (an anonymous local registry)

GPU = "a6000"  # 1 "GPU" per node in the rendered plan → one rank per container; the image runs CPU torch
STEPS = 40  # long enough that the kill lands between the first committed checkpoint and the end
LOSS_REL = 1e-4
RUN_TIMEOUT_S = 420


@pytest.fixture
def job_data(s3: Any, tmp_path: Path, records_file: Path, validation_file: Path, hotpot_file: Path) -> dict:
    """The job's data section: local files uploaded with ``submit.py upload-data`` (as test_cloud_e2e)."""
    d = tmp_path / "data"
    d.mkdir()
    for src, name in ((records_file, "train.json"), (validation_file, "validation.json"),
                      (hotpot_file, "hotpot_dev.json")):  # fmt: skip
        shutil.copyfile(src, d / name)
    p = _ok(_cli(["upload-data", str(d), s3.uri("data")], _clean_env(_aws(s3))))
    return yaml.safe_load(p.stdout[p.stdout.index("data:") :])["data"]


def _s3_json(s3: Any, key: str) -> dict[str, Any]:
    return json.loads(s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read())


def _committed(s3: Any, run_name: str) -> list[int]:
    keys = s3.keys(f"runs/{run_name}/checkpoint-")
    return sorted(int(k.split("/")[2].rsplit("-", 1)[1]) for k in keys if k.endswith("/_manifest.json"))


def _losses(state: dict[str, Any]) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in state["log_history"] if "loss" in h}


def _reference_losses(s3: Any, run_name: str, tmp_path: Path, env: dict[str, str]) -> dict[int, float]:
    """The run's own rendered spec (from S3) as a 1-node 2-process run on this host: plan.num_gpus 2 (torchrun
    --standalone, DDP), train only, its own output and sync folders."""
    spec = _s3_json(s3, f"runs/{run_name}/spec.json")
    spec["plan"]["num_gpus"] = 2
    spec["job"]["run_name"] = f"{run_name}-ref"
    spec["job"]["stages"] = ["train"]
    spec["job"]["output_root"] = str(tmp_path / "ref-out")
    path = tmp_path / "ref-spec.json"
    path.write_text(json.dumps(spec))
    ref_env = {k: v for k, v in env.items() if k not in ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")}
    p = subprocess.run([sys.executable, "-m", "qa_train", "run", str(path)], cwd=REPO, env=ref_env,
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    (summary_path,) = [
        s for s in (tmp_path / "ref-out").rglob("train_summary.json") if "checkpoint-" not in str(s)
    ]
    summary = json.loads(summary_path.read_text())
    assert summary["world_size"] == 2, summary  # one node, 2 ranks
    final = [summary_path.parent / "trainer_state.json"]
    return _losses(json.loads(final[0].read_text()))


def _explain(what: str, host: DockerHost, log: Path | None = None) -> str:
    out = [what]
    if log is not None and log.exists():
        out.append("--- controller ---\n" + log.read_text(errors="replace")[-4000:])
    for iid in list(host.containers):
        out.append(f"--- pod {iid} ({host.state(iid)}) ---\n" + host.logs(iid)[-2500:])
    return "\n".join(out)


# -- (a) RunPod Instant Clusters, managed, one node killed ----------------------------------------------------
def test_runpod_cluster_of_two_containers_resumes_after_a_node_dies_with_the_losses_of_one_node(
    docker_host, s3, registry_cpu_image, job_data, tmp_path
):
    from tests.doubles.runpod_api import make_gpu_type
    from tests.doubles.runpod_clusters import RunpodClusterDouble

    (port,) = free_ports(1)
    double = RunpodClusterDouble(gpu_types=[make_gpu_type("NVIDIA RTX A6000", 0.49)], start_polls=1, host=docker_host,
                                 addresses=["127.0.0.1", "127.0.0.1"], primary_port=port).start()  # fmt: skip
    try:
        _managed_cluster_run(double, docker_host, s3, registry_cpu_image, job_data, tmp_path)
    finally:
        double.stop()


def _managed_cluster_run(double: Any, host: DockerHost, s3: Any, image: str, data: dict[str, str],
                         tmp_path: Path) -> None:  # fmt: skip
    t0 = time.monotonic()
    run_name = f"mn-runpod-{uuid.uuid4().hex[:6]}"
    job_id = f"mn-{uuid.uuid4().hex[:8]}"
    job = _job(tmp_path, s3, image, data, run_name, max_steps=STEPS, save_steps=2, eval_steps=STEPS,
               save_total_limit=2)  # fmt: skip
    env = _clean_env({**_aws(s3), "RUNPOD_API_URL": f"{double.url}/graphql", "RUNPOD_API_KEY": double.api_key,
                      "QA_RUNS_ROOT": str(tmp_path / "runs")})  # fmt: skip
    log = tmp_path / "controller.log"
    cmd = [sys.executable, "launch/submit.py", "--gpu", GPU, "--job", str(job), "--backend", "runpod",
           "--nodes", "2", "--managed", "--job_id", job_id, "--poll_s", "1", "--ready_timeout_s", "300",
           "--max_restarts", "2", "--backoff_s", "1"]  # fmt: skip
    with open(log, "wb") as fh:
        ctl = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    killed: tuple[str, int] | None = None
    first_envs: list[dict[str, str]] = []
    primaries: dict[str, str] = {}  # cluster id -> its node 0's pod
    try:
        while ctl.poll() is None:
            assert time.monotonic() - t0 < RUN_TIMEOUT_S, _explain(
                "managed job did not end in time", host, log
            )
            for cid, c in list(double.clusters.items()):
                primaries.setdefault(cid, c["_pods"][0])
            if killed is None and double.clusters:
                steps = _committed(s3, run_name)
                if steps:
                    (cid,) = list(double.clusters)
                    first_envs = [double.node_env(cid, r) for r in (0, 1)]
                    double.kill_node(cid, 1)
                    killed = (cid, max(steps))
            time.sleep(0.3)
    finally:
        if ctl.poll() is None:
            ctl.kill()
    t_run = time.monotonic() - t0
    assert ctl.returncode == 0, _explain(f"controller exit {ctl.returncode}", host, log)
    assert killed is not None, _explain("the run ended before its first committed checkpoint", host, log)
    assert killed[1] < STEPS

    # each node: RunPod's variables only (no mounts, host network); one cluster per launch, none left
    for rank, e in enumerate(first_envs):
        assert (e["NUM_NODES"], e["NODE_RANK"], e["PRIMARY_ADDR"], e["NUM_TRAINERS"]) == ("2", str(rank),
                                                                                          "127.0.0.1", "1")  # fmt: skip
        assert not any(k.startswith(("NNODES", "PET_", "SKYPILOT_", "DSTACK_")) for k in e)
    creates = double.calls("POST", r"^/v2/clusters$")
    assert len(creates) == 2 and all(c.json["compute"]["podCount"] == 2 for c in creates)
    assert double.clusters == {} and double.live_pods() == []
    assert len(host.pulls) == 4 and set(host.pulls) == {image}  # every node of both launches pulled it

    report = _report(s3, run_name)
    assert report is not None and report["state"] == "succeeded", _explain(f"report: {report}", host, log)
    assert report["launch"] >= 2 and report["last_committed_step"] == STEPS, report
    # merge and eval ran once, on node 0 of the second cluster (the first one died in train)
    ran = [
        (st["name"], st["exit_code"]) for st in report["stages"] if st["name"] in ("train", "merge", "eval")
    ]
    assert ran == [("train", 0), ("merge", 0), ("eval", 0)], report["stages"]
    (second,) = [pod for cid, pod in primaries.items() if cid != killed[0]]
    assert len(primaries) == 2 and report["instance_id"] == second, (report["instance_id"], primaries)
    g = report["group"]
    assert g["nnodes"] == 2 and g["world_size"] == 2 and g["failed_nodes"] == [], g
    assert [n["exit_code"] for n in g["nodes"]] == [0, 0], g
    keys = s3.keys(f"runs/{run_name}/")
    for part in ("final", "merged", "eval"):
        assert f"runs/{run_name}/{part}/_manifest.json" in keys, sorted(keys)
    evals = [k for k in keys if k.startswith(f"runs/{run_name}/eval/") and k.endswith("summary.json")]
    assert len(evals) == 1, evals  # node 0 alone evaluated
    summary = _s3_json(s3, f"runs/{run_name}/final/train_summary.json")
    assert summary["world_size"] == 2, summary
    # the newest checkpoint committed by the time node 1 died: the one seen, or one committed just after it
    resumed = int(str(summary.get("resumed_from")).rstrip("/").rsplit("checkpoint-", 1)[1])
    assert killed[1] <= resumed < STEPS, (killed, summary)

    state = _s3_json(s3, f"runs/{run_name}/final/trainer_state.json")
    assert state["global_step"] == STEPS
    losses = _losses(state)
    t1 = time.monotonic()
    ref = _reference_losses(s3, run_name, tmp_path, env)
    t_ref = time.monotonic() - t1
    assert sorted(ref) == list(range(1, STEPS + 1)) and sorted(losses) == sorted(ref), (losses, ref)
    for s in ref:
        assert losses[s] == pytest.approx(ref[s], rel=LOSS_REL), (s, losses[s], ref[s])
    print(f"\nrunpod cluster: managed run {t_run:.0f}s (node 1 killed after checkpoint-{killed[1]}, resumed "
          f"from checkpoint-{resumed}), 1-node reference {t_ref:.0f}s")  # fmt: skip


# -- (b) the exported engines' variables ---------------------------------------------------------------------
def _engine_vars(engine: str, rank: int, port: int) -> dict[str, str]:
    """What each engine injects into node ``rank`` of 2 (one GPU each), as its docs name them."""
    if engine == "skypilot":  # docs/source/running-jobs/distributed-jobs.rst
        return {"SKYPILOT_NODE_RANK": str(rank), "SKYPILOT_NODE_IPS": "127.0.0.1\n127.0.0.1",
                "SKYPILOT_NUM_NODES": "2", "SKYPILOT_NUM_GPUS_PER_NODE": "1"}  # fmt: skip
    if engine == "dstack":  # mkdocs/docs/concepts/tasks.md
        return {"DSTACK_NODES_NUM": "2", "DSTACK_NODE_RANK": str(rank), "DSTACK_MASTER_NODE_IP": "127.0.0.1",
                "DSTACK_NODES_IPS": "127.0.0.1\n127.0.0.1", "DSTACK_GPUS_PER_NODE": "1"}  # fmt: skip
    # Kubeflow Trainer's torch-distributed runtime (manifests/base/runtimes/torch_distributed.yaml)
    return {"PET_NNODES": "2", "PET_NODE_RANK": str(rank), "PET_MASTER_ADDR": "127.0.0.1",
            "PET_MASTER_PORT": str(port), "PET_NPROC_PER_NODE": "1"}  # fmt: skip


def _file_env_and_command(engine: str, doc: dict[str, Any], secrets: dict[str, str]) -> tuple[dict, list]:
    """The env and the process the engine would start in the container, read back from its own file: SkyPilot's
    ``run`` and dstack's ``commands`` in a shell, Kubeflow's ``command`` as the container's command (each
    replaces the image's entrypoint)."""
    if engine == "skypilot":
        env = {**doc["envs"], **{k: secrets[k] for k in doc["secrets"]}}
        return env, ["/bin/sh", "-c", doc["run"]]
    if engine == "dstack":
        env = {}
        for item in doc["env"]:
            k, eq, v = item.partition("=")
            env[k] = v if eq else secrets[k]
        return env, ["/bin/sh", "-c", " && ".join(doc["commands"])]
    trainer = doc["spec"]["trainer"]
    env = {e["name"]: e["value"] if "value" in e else secrets[e["valueFrom"]["secretKeyRef"]["key"]]
           for e in trainer["env"]}  # fmt: skip
    return env, list(trainer["command"])


@pytest.mark.parametrize("engine", ["skypilot", "dstack", "kubeflow"])
def test_two_containers_join_under_each_exported_engines_variables(
    engine, docker_engine, cpu_image, s3, job_data, tmp_path
):
    import docker

    t0 = time.monotonic()
    run_name = f"mn-{engine}-{uuid.uuid4().hex[:6]}"
    job = _job(tmp_path, s3, cpu_image, job_data, run_name, max_steps=2, save_steps=2, eval_steps=2)
    doc = yaml.safe_load(job.read_text())
    doc["stages"] = ["train"]
    job.write_text(yaml.safe_dump(doc))
    env = _clean_env(_aws(s3))
    out = tmp_path / f"{run_name}.{engine}.yaml"
    _ok(
        _cli(
            ["export", "--to", engine, "--nodes", "2", "--job", str(job), "--gpu", GPU, "--out", str(out)],
            env,
        )
    )
    exported = yaml.safe_load(out.read_text())
    secrets = {k: v for k, v in _aws(s3).items() if k.startswith("AWS_")}
    file_env, command = _file_env_and_command(engine, exported, secrets)
    assert file_env["QA_JOB_SPEC_URI"] == s3.uri(f"runs/{run_name}/spec.json")
    assert not any(v in out.read_text() for k, v in secrets.items() if "SECRET" in k)

    client = docker.from_env()
    session = uuid.uuid4().hex[:10]
    port = (
        29500 if engine != "kubeflow" else free_ports(1)[0]
    )  # SkyPilot and dstack give no port: the default
    containers = []
    try:
        for rank in (0, 1):
            containers.append(client.containers.run(
                cpu_image, entrypoint=command, detach=True, network_mode="host", mounts=None, volumes=None,
                environment={**file_env, **_engine_vars(engine, rank, port)},
                labels={LABEL: session}, name=f"qa-mn-{engine}-{session}-{rank}",
            ))  # fmt: skip
        codes = []
        for c in containers:
            codes.append(c.wait(timeout=RUN_TIMEOUT_S)["StatusCode"])
        logs = "\n".join(f"--- node {r} ---\n" + c.logs().decode(errors="replace")[-3000:]
                         for r, c in enumerate(containers))  # fmt: skip
        assert codes == [0, 0], logs
    finally:
        for c in containers:
            c.remove(force=True)
    summary = _s3_json(s3, f"runs/{run_name}/final/train_summary.json")
    assert summary["world_size"] == 2, summary
    report = _report(s3, run_name)
    assert report is not None and report["state"] == "succeeded", report
    g = report["group"]
    assert g["nnodes"] == 2 and g["world_size"] == 2 and [n["exit_code"] for n in g["nodes"]] == [0, 0], g
    print(f"\n{engine}: 2 containers {time.monotonic() - t0:.0f}s")
