"""RunPod compute against the RunPod double (tests/doubles/runpod_api.py), whose answers follow RunPod's docs:
GraphQL variables and errors in 200, pod states, host minimums, registry auth, the v2 SSE log stream."""

from __future__ import annotations

import json
import threading
import time

import pytest

from launch.backends.base import (
    AmbiguousCreate,
    CloudError,
    InstanceState,
    LaunchRequest,
    NoCapacity,
    OfferQuery,
    RegistryAuth,
    RequestRejected,
)
from launch.backends.runpod import RunpodCompute
from launch.gpus import PROFILES
from tests.doubles.runpod_api import NO_CAPACITY, RunpodDouble, make_gpu_type

KEY = "rp-secret-KEY-456"
SECRET = "v@l \"dq\" 'sq' $PATH ${X} `id` \\ second"
REG_PASSWORD = "reg-pass-Q7"


@pytest.fixture
def double():
    d = RunpodDouble(
        api_key=KEY,
        gpu_types=[
            make_gpu_type("NVIDIA A100-SXM4-80GB", 1.89, spot=0.99, memory_gb=80),
            make_gpu_type("NVIDIA A100 80GB PCIe", 1.64, spot=0.89, memory_gb=80),
            make_gpu_type("NVIDIA RTX A6000", 0.49, spot=0.25),
        ],
    ).start()
    yield d
    d.stop()


def compute(d: RunpodDouble, **kw) -> RunpodCompute:
    kw.setdefault("poll_s", 0.0)
    kw.setdefault("log_idle_s", 0.3)
    return RunpodCompute(KEY, f"{d.url}/graphql", sleep=kw.pop("sleep", lambda s: None), backoff=0.0, **kw)


def query(profile: str = "a100", n: int = 1, **kw) -> OfferQuery:
    kw.setdefault("min_cuda", "12.8")
    kw.setdefault("min_ram_gb", 80)
    kw.setdefault("min_vcpus", 4)
    return OfferQuery(PROFILES[profile], n, **kw)


def request(name: str = "job-rp", **kw) -> LaunchRequest:
    kw.setdefault("min_cuda", "12.8")
    kw.setdefault("min_ram_gb", 80)
    kw.setdefault("min_vcpus", 4)
    env = {"QA_SPEC_URI": "s3://bucket/runs/r/spec.json", "AWS_SECRET_ACCESS_KEY": SECRET}
    return LaunchRequest(name=name, image="registry.example.com/qa/train:1", env=env, disk_gb=120, **kw)


def running(c: RunpodCompute, pod_id: str) -> None:
    for _ in range(5):
        if c.status(pod_id).state == InstanceState.RUNNING:
            return
    raise AssertionError("pod never ran")


def test_offers_send_host_minimums_and_sort_by_price(double):
    double.gpu_types["NVIDIA A100-SXM4-80GB"]["_host_ram_gb"] = 64  # no host with 80 GB RAM behind this type
    offers = compute(double).offers(query(n=2))
    assert [o.offer_id for o in offers] == ["NVIDIA A100 80GB PCIe"]
    assert offers[0].price_per_hour == pytest.approx(1.64 * 2)
    ops = double.operations()
    assert [op for op, _ in ops] == ["gpuTypes", "gpuTypes"]
    assert ops[0][1] == {"input": {"id": "NVIDIA A100-SXM4-80GB"},
                         "lowestPriceInput": {"gpuCount": 2, "minMemoryInGb": 80, "minVcpuCount": 4}}  # fmt: skip


def test_stock_status_string_none_is_no_offer(double):
    double.no_capacity("NVIDIA A100 80GB PCIe")
    offers = compute(double).offers(query())
    assert [o.offer_id for o in offers] == ["NVIDIA A100-SXM4-80GB"]


def test_conversation_create_poll_exit_stop_terminate(double):
    """Deploy → runtime null → running → the container exits and RunPod restarts it (still RUNNING) → the pod
    stops itself with its own key (EXITED → STOPPED) → terminate → gone."""
    c = compute(double)
    auth = RegistryAuth("registry.example.com", "bot", REG_PASSWORD)
    offer = c.offers(query())[0]
    inst = c.create(request(registry_auth=auth), offer)
    ops = double.operations()
    (save_vars,) = [v for op, v in ops if op == "saveRegistryAuth"]
    assert save_vars["input"]["username"] == "bot" and save_vars["input"]["password"] == REG_PASSWORD
    ((op, variables),) = [(o, v) for o, v in ops if o == "podFindAndDeployOnDemand"]
    inp = variables["input"]
    assert inp == {
        "name": "job-rp", "imageName": "registry.example.com/qa/train:1", "gpuTypeId": "NVIDIA A100 80GB PCIe",
        "gpuCount": 1, "cloudType": "ALL", "containerDiskInGb": 120, "volumeInGb": 0, "dockerArgs": "",
        "env": [{"key": "QA_SPEC_URI", "value": "s3://bucket/runs/r/spec.json"},
                {"key": "AWS_SECRET_ACCESS_KEY", "value": SECRET}],
        "startSsh": False, "allowedCudaVersions": ["12.8", "12.9", "13.0"], "minMemoryInGb": 80, "minVcpuCount": 4,
        "containerRegistryAuthId": "cra00001",
    }  # fmt: skip
    pod_id = inst.instance_id
    states = [c.status(pod_id).state for _ in range(3)]
    assert states == [InstanceState.PROVISIONING, InstanceState.PROVISIONING, InstanceState.RUNNING]
    env = double.host.env(pod_id)
    pod_key = env.pop("RUNPOD_API_KEY")
    assert pod_key == double.pod_key(pod_id) and pod_key != KEY
    assert env.pop("RUNPOD_POD_ID") == pod_id
    assert (
        env.pop("RUNPOD_API_URL") == f"{double.url}/graphql"
        and env.pop("RUNPOD_REST_URL") == f"{double.url}/v1"
    )
    assert env == {"QA_SPEC_URI": "s3://bucket/runs/r/spec.json", "AWS_SECRET_ACCESS_KEY": SECRET}
    assert double.host.containers[pod_id].registry_auth == ("registry.example.com", "bot", REG_PASSWORD)
    double.host.exit(pod_id, 1)
    assert c.status(pod_id).state == InstanceState.RUNNING  # restarted; desiredStatus stays RUNNING
    assert double.host.containers[pod_id].starts == 2
    import requests

    r = requests.post(f"{env_url(double)}/pods/{pod_id}/stop", headers={"Authorization": f"Bearer {pod_key}"})
    assert r.status_code == 200
    st = c.status(pod_id)
    assert st.state == InstanceState.STOPPED and st.detail.startswith("EXITED")
    c.destroy(pod_id)
    assert c.status(pod_id).state == InstanceState.GONE
    c.destroy(pod_id)  # "pod not found to terminate" = already gone = done
    for rec in double.requests:
        assert KEY not in rec.raw and KEY not in rec.path
        if isinstance(rec.body, dict):
            assert SECRET not in rec.body["query"] and REG_PASSWORD not in rec.body["query"]
            inp = (rec.body.get("variables") or {}).get("input") or {}
            assert SECRET not in json.dumps([inp.get("dockerArgs"), inp.get("name")])


def env_url(double: RunpodDouble) -> str:
    return f"{double.url}/v1"


def test_pod_key_only_stops_its_own_pod(double):
    import requests

    c = compute(double)
    a = c.create(request("a"), c.offers(query())[0])
    b = c.create(request("b"), c.offers(query())[0])
    hdr = {"Authorization": f"Bearer {double.pod_key(a.instance_id)}"}
    assert requests.post(f"{double.url}/v1/pods/{b.instance_id}/stop", headers=hdr).status_code == 401
    assert requests.post(f"{double.url}/graphql", json={"query": "query Q { myself { pods { id } } }"},
                         headers=hdr).status_code == 401  # fmt: skip
    assert requests.delete(f"{double.url}/v1/pods/{a.instance_id}", headers=hdr).status_code == 401


def test_registry_auth_is_reused_when_it_exists(double):
    auth = RegistryAuth("registry.example.com", "bot", REG_PASSWORD)
    compute(double).create(request("a", registry_auth=auth), compute(double).offers(query())[0])
    c2 = compute(double)  # a fresh launcher process: saveRegistryAuth says the name exists → look it up
    c2.create(request("b", registry_auth=auth), c2.offers(query())[0])
    assert len(double.registry_auths) == 1
    ids = {
        v["input"].get("containerRegistryAuthId") for op, v in double.operations() if op.startswith("podFind")
    }
    assert ids == {"cra00001"}


@pytest.mark.parametrize(
    ("desired", "runtime", "state"),
    [
        ("RUNNING", None, InstanceState.PROVISIONING),
        ("RUNNING", {"uptimeInSeconds": 3}, InstanceState.RUNNING),
        ("CREATED", None, InstanceState.PROVISIONING),
        ("RESTARTING", None, InstanceState.PROVISIONING),
        ("EXITED", None, InstanceState.STOPPED),
        ("PAUSED", None, InstanceState.STOPPED),
        ("TERMINATED", None, InstanceState.GONE),
        ("DEAD", None, InstanceState.FAILED),
    ],
)
def test_states(double, desired, runtime, state):
    c = compute(double)
    inst = c.create(request(), c.offers(query())[0])
    double.pods[inst.instance_id].update(desiredStatus=desired, runtime=runtime, _stopped=True)
    assert c.status(inst.instance_id).state == state


def test_unknown_desired_status_is_a_clear_error(double):
    c = compute(double)
    inst = c.create(request(), c.offers(query())[0])
    double.pods[inst.instance_id].update(desiredStatus="MIGRATING", _stopped=True)
    with pytest.raises(CloudError, match="unknown desiredStatus 'MIGRATING'"):
        c.status(inst.instance_id)


def test_interruptible_pod_reclaimed_by_its_host_is_stopped(double):
    c = compute(double)
    offer = c.offers(query(interruptible=True))[0]
    inst = c.create(request(interruptible=True), offer)
    ((op, v),) = [(o, v) for o, v in double.operations() if o.startswith("pod") and o != "pod"]
    assert op == "podRentInterruptable" and v["input"]["bidPerGpu"] == pytest.approx(0.89 * 1.1)
    running(c, inst.instance_id)
    double.preempt(inst.instance_id)
    assert c.status(inst.instance_id).state == InstanceState.STOPPED
    assert double.host.state(inst.instance_id) == "exited"


def test_graphql_errors_in_200(double):
    c = compute(double)
    double.fail_next("POST", "/graphql", 200, {"errors": [{"message": "Something broke", "extensions": {"code": "X"}}]},
                     match_body="gpuTypes")  # fmt: skip
    with pytest.raises(CloudError, match="runpod: gpuTypes NVIDIA RTX A6000: Something broke"):
        c.offers(query("a6000"))
    offers = c.offers(query())
    double.no_capacity("NVIDIA A100 80GB PCIe")
    with pytest.raises(NoCapacity, match=NO_CAPACITY[:40]):
        c.create(request(), offers[0])
    inst = c.create(request(), offers[1])  # the controller's next offer
    assert double.live_pods() == [inst.instance_id]


def test_create_refused_by_validation_is_rejected(double):
    c = compute(double)
    offer = c.offers(query())[0]
    double.fail_next("POST", "/graphql", 200, {"errors": [{"message": 'Field "imageName" required',
                     "extensions": {"code": "BAD_USER_INPUT"}}]}, match_body="podFind")  # fmt: skip
    with pytest.raises(RequestRejected):
        c.create(request(), offer)


@pytest.mark.parametrize("how", ["html-502", "dropped"])
def test_ambiguous_create_is_never_resent_and_found_by_name(double, how):
    c = compute(double)
    offer = c.offers(query())[0]
    if how == "dropped":
        double.fail_next("POST", "/graphql", 0, match_body="podFind", after=True, drop=True)
    else:
        double.fail_next("POST", "/graphql", 502, "<html>502 Bad Gateway</html>", content_type="text/html",
                         match_body="podFind", after=True)  # fmt: skip
    with pytest.raises(AmbiguousCreate):
        c.create(request("job-amb"), offer)
    assert len([op for op, _ in double.operations() if op.startswith("podFind")]) == 1
    (pod_id,) = c.find("job-amb")
    assert pod_id in double.live_pods() and c.find("nobody") == []
    c.destroy(pod_id)
    assert double.live_pods() == []


def test_plain_text_429_and_5xx_are_retried_bad_key_is_rejected(double):
    double.fail_next("POST", "/graphql", 429, "rate limited", headers={"Retry-After": "0"})
    double.fail_next("POST", "/graphql", 502, "<html>502 Bad Gateway</html>", content_type="text/html")
    assert compute(double).offers(query("a6000"))
    assert len(double.calls("POST", "/graphql")) == 3
    with pytest.raises(RequestRejected, match="401"):
        RunpodCompute("wrong", f"{double.url}/graphql", backoff=0.0).offers(query("a6000"))


def test_logs_stream_container_lines_only_and_tail_capped(double):
    c = compute(double)
    inst = c.create(request(), c.offers(query())[0])
    running(c, inst.instance_id)
    double.host.print(inst.instance_id, "step 1 loss 2.0", "step 2 loss 1.5")
    t0 = time.monotonic()
    assert list(c.logs(inst.instance_id, tail=10_000)) == ["step 1 loss 2.0", "step 2 loss 1.5"]
    assert time.monotonic() - t0 < 5  # read with a deadline, not until the server gives up
    (req,) = double.calls("GET", "/logs")
    assert req.query == {"source": ["container"], "tail": ["5000"]}
    # without source the stream mixes system lines in: the double does what the reference says
    import requests

    r = requests.get(f"{double.url}/v2/pods/{inst.instance_id}/logs", headers={"Authorization": f"Bearer {KEY}"},
                     stream=True, timeout=5)  # fmt: skip
    assert '"source": "system"' in r.text


def test_follow_prints_every_line_once_across_reconnects(double):
    c = compute(double)
    inst = c.create(request(), c.offers(query())[0])
    pod_id = inst.instance_id
    running(c, pod_id)
    double.sse_hold_s = 0.4  # the server closes streams often: the client resumes with Last-Event-ID
    written = ["tick"] * 3
    double.host.print(pod_id, *written)  # before following: tail=2 shows the last two of these

    def writer() -> None:
        time.sleep(0.2)
        for i in range(12):
            batch = ["tick", f"line {i}"] if i % 3 else ["tick"]
            written.extend(batch)
            double.host.print(pod_id, *batch)
            time.sleep(0.1)
        time.sleep(0.3)
        c.stop(pod_id)

    t = threading.Thread(target=writer)
    t.start()
    got = list(c.logs(pod_id, follow=True, tail=2))
    t.join()
    assert got == written[1:]  # every line once, repeated "tick" lines included
    gets = double.calls("GET", "/logs")
    assert len(gets) >= 2  # the stream was closed and resumed...
    assert all("last-event-id" in {k.lower() for k in r.headers} for r in gets[1:])  # ...after the last event
