"""RunPod Instant Clusters (launch/backends/runpod/clusters.py) against the cluster double, whose answers and
checks follow api-reference-v2/openapi.json and instant-clusters/configuration.mdx: the create payload, the
price of every node, the group's state from its nodes, stop / delete / find, and each node's environment turned
into torchrun flags by qa_train/nodes.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from launch.backends.base import (
    InstanceState,
    LaunchRequest,
    NoCapacity,
    OfferQuery,
    RegistryAuth,
    RequestRejected,
)
from launch.backends.runpod.clusters import RunpodClusterCompute
from launch.gpus import PROFILES
from qa_train.nodes import detect
from tests.doubles.runpod_api import make_gpu_type
from tests.doubles.runpod_clusters import RunpodClusterDouble, create_problems

KEY = "rp-cluster-KEY-789"
H100 = "NVIDIA H100 80GB HBM3"


@pytest.fixture
def double() -> Iterator[RunpodClusterDouble]:
    d = RunpodClusterDouble(api_key=KEY, gpu_types=[make_gpu_type(H100, 2.99, memory_gb=80)], start_polls=1)
    d.start()
    yield d
    d.stop()


def compute(d: RunpodClusterDouble, nodes: int = 2) -> RunpodClusterCompute:
    return RunpodClusterCompute(nodes, api_key=KEY, api_url=f"{d.url}/graphql", sleep=lambda s: None,
                                backoff=0.0, poll_s=0.0, log_idle_s=0.2)  # fmt: skip


def request(**kw: object) -> LaunchRequest:
    return LaunchRequest(name="job-2n", image="ghcr.io/me/qa:1", env={"QA_JOB_SPEC_URI": "s3://b/r/spec.json",
                         "AWS_SECRET_ACCESS_KEY": "s3cr3t"}, disk_gb=200, gpu_count=8, **kw)  # type: ignore[arg-type]  # fmt: skip


def test_offer_price_counts_every_node(double: RunpodClusterDouble) -> None:
    offers = compute(double, nodes=4).offers(OfferQuery(PROFILES["h100"], 8))
    assert [o.offer_id for o in offers] == [H100]
    assert offers[0].price_per_hour == pytest.approx(2.99 * 8 * 4)
    assert offers[0].extra["nodes"] == 4 and offers[0].extra["per_node_per_hour"] == pytest.approx(2.99 * 8)
    assert compute(double, 4).offers(OfferQuery(PROFILES["h100"], 8, max_price=90.0)) == []  # 95.68 > 90


def test_create_sends_the_documented_body_and_every_node_gets_runpods_variables(
    double: RunpodClusterDouble,
) -> None:
    c = compute(double)
    offer = c.offers(OfferQuery(PROFILES["h100"], 8))[0]
    inst = c.create(request(), offer)
    posts = double.calls("POST", r"^/v2/clusters$")
    assert len(posts) == 1
    body = posts[0].json
    assert create_problems(body) == []
    assert body == {"name": "job-2n", "type": "TRAINING", "compute": {"gpuTypeId": H100, "gpuCountPerPod": 8,
                    "podCount": 2}, "image": "ghcr.io/me/qa:1", "env": request().env, "disk": 200}  # fmt: skip
    flags = []
    for rank in range(2):
        node = detect(double.node_env(inst.instance_id, rank))
        assert node is not None and node.platform == "runpod" and node.env == {"NCCL_SOCKET_IFNAME": "ens1"}
        flags.append(node.torchrun_flags())
    assert flags[1] == ["--nnodes", "2", "--node_rank", "1", "--master_addr", "10.65.0.2", "--master_port", "29500",
                        "--nproc_per_node", "8"]  # fmt: skip
    assert flags[0][3] == "0" and flags[0][4:] == flags[1][4:]
    assert c.find("job-2n") == [inst.instance_id] and c.find("other") == []


def test_group_state_from_its_nodes(double: RunpodClusterDouble) -> None:
    c = compute(double)
    inst = c.create(request(), c.offers(OfferQuery(PROFILES["h100"], 8))[0])
    assert c.status(inst.instance_id).state == InstanceState.PROVISIONING  # no node started yet
    states = [c.status(inst.instance_id).state for _ in range(3)]
    assert states[-1] == InstanceState.RUNNING, states
    double.kill_node(inst.instance_id, 1)  # one node lost: the group is lost (the controller relaunches it)
    st = c.status(inst.instance_id)
    assert st.state == InstanceState.STOPPED and "EXITED 1" in st.detail
    c.destroy(inst.instance_id)
    assert c.status(inst.instance_id).state == InstanceState.GONE and double.live_pods() == []
    c.destroy(inst.instance_id)  # already gone = done


def test_stop_stops_every_node(double: RunpodClusterDouble) -> None:
    c = compute(double, nodes=3)
    inst = c.create(request(), c.offers(OfferQuery(PROFILES["h100"], 8))[0])
    for _ in range(3):
        c.status(inst.instance_id)
    c.stop(inst.instance_id)
    assert [r.json for r in double.calls("POST", r"/action$")] == [{"action": "stop"}] * 3
    assert c.status(inst.instance_id).state == InstanceState.STOPPED
    c.stop(inst.instance_id)  # stopped nodes offer no stop: nothing sent, no error
    assert len(double.calls("POST", r"/action$")) == 3


def test_refused_up_front(double: RunpodClusterDouble) -> None:
    with pytest.raises(RequestRejected, match="2-250 nodes"):
        compute(double, nodes=1)
    c = compute(double)
    with pytest.raises(RequestRejected, match="on-demand only"):
        c.offers(OfferQuery(PROFILES["h100"], 8, interruptible=True))
    offer = c.offers(OfferQuery(PROFILES["h100"], 8))[0]
    with pytest.raises(RequestRejected, match="private registry"):
        c.create(request(registry_auth=RegistryAuth("ghcr.io", "me", "pw")), offer)
    assert double.calls("POST", r"^/v2/clusters$") == []  # nothing sent


def test_the_double_refuses_what_the_schema_refuses(double: RunpodClusterDouble) -> None:
    c = compute(double)
    offer = c.offers(OfferQuery(PROFILES["h100"], 8))[0]
    body = c.cluster_request(request(), offer)
    assert create_problems({**body, "registry": {"id": "x"}}) == [
        "$: additional properties 'registry' not allowed"
    ]
    assert create_problems({**body, "compute": {**body["compute"], "podCount": 1}}) == [
        "$.compute.podCount: must be an integer between 2 and 250"
    ]
    double.no_capacity(H100)
    with pytest.raises(NoCapacity):
        c.create(request(), offer)


def test_the_offer_walk_rents_one_cluster_for_the_whole_group(
    double: RunpodClusterDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    """submit --nodes 3 --backend runpod: JobOptions.nodes → make_computes → one cluster, priced for 3 nodes;
    status / logs / cancel find the same compute again by the recorded backend name."""
    from launch.backends import get_compute
    from launch.jobs.offers import OfferWalk
    from launch.jobs.plan import make_computes
    from launch.jobs.state import JobOptions

    monkeypatch.setenv("RUNPOD_API_KEY", KEY)
    monkeypatch.setenv("RUNPOD_API_URL", f"{double.url}/graphql")
    opts = JobOptions.from_json(JobOptions(backend="runpod", nodes=3).to_json())
    computes = make_computes("runpod", opts)
    assert list(computes) == ["runpod-cluster"] and computes["runpod-cluster"].nodes == 3  # type: ignore[attr-defined]
    got = OfferWalk(computes, poll_s=0.0, sleep=lambda s: None).launch(
        request(), OfferQuery(PROFILES["h100"], 8)
    )
    assert got.backend == "runpod-cluster" and got.price_per_hour == pytest.approx(2.99 * 8 * 3)
    body = double.calls("POST", r"^/v2/clusters$")[0].json
    assert body["compute"]["podCount"] == 3 and body["env"]["QA_BACKEND"] == "runpod-cluster"
    again = get_compute("runpod-cluster")
    assert again.status(got.instance_id).state == InstanceState.RUNNING
    again.destroy(got.instance_id)
    assert double.clusters == {}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "vast", "--nodes", "2"], "error: --nodes 2 runs only on --backend runpod (Instant Clusters): "
         "vast.ai overlay networks work only inside one physical cluster"),
        (["--backend", "local", "--nodes", "2"], "error: --nodes 2 runs only on --backend runpod (Instant Clusters): "
         "local Docker is one machine"),
        (["--nodes", "4"], "error: --nodes 4 runs only on --backend runpod"),
        (["--backend", "runpod", "--nodes", "2"], "error: --nodes 2 needs --managed or --detach"),
        (["--backend", "runpod", "--nodes", "2", "--managed", "--interruptible"],
         "error: --nodes > 1 on RunPod: Instant Clusters are on-demand only"),
        (["--backend", "runpod", "--nodes", "0"], "error: --nodes must be >= 1 (got 0)"),
    ],
)  # fmt: skip
def test_submit_refuses_nodes_where_no_cluster_can_be_had(
    args: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from launch.cli import main

    monkeypatch.setenv("QA_RUNS_ROOT", str(tmp_path))
    assert main(["submit", "--gpu", "h100", "--job", "jobs/mistral-qa-lora.yaml", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err
    assert not any(p.name == "registry.sqlite" for p in tmp_path.iterdir())  # type: ignore[attr-defined]
