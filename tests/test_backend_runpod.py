"""RunPod backend against the local GraphQL double (tests/doubles/runpod_api.py): variables, errors in 200."""

from __future__ import annotations

import json

import pytest

from launch.backends.base import BackendError, LaunchFailed
from launch.backends.runpod import RunpodBackend
from launch.gpus import PROFILES
from launch.render import render
from qa_train.spec import parse_job
from tests.doubles.runpod_api import NO_CAPACITY, RunpodDouble, make_gpu_type

KEY = "rp-secret-KEY-456"
HOSTILE = "v@l \"dq\" 'sq' $PATH ${X} `id` \\ \n second line"


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


def backend(d: RunpodDouble, **kw) -> RunpodBackend:
    kw.setdefault("poll_s", 0.0)
    kw.setdefault("ready_timeout_s", 5.0)
    return RunpodBackend(f"{d.url}/graphql", KEY, sleep=lambda s: None, http_backoff=0.0, **kw)


def spec(job_id: str = "job-rp"):
    job = parse_job(
        {
            "run_name": "r",
            "model": {"name_or_path": "mistralai/Mistral-7B-v0.1"},
            "use_lora": True,
            "data": {"train_path": "/data/t.json", "hotpot_qa_dev_path": "/data/h.json"},
        }  # fmt: skip
    )
    return render(job, "a100", job_id=job_id, secret_names=["AWS_SECRET_ACCESS_KEY"])


def test_offers_use_variables_and_sort_by_price(double):
    offers = backend(double).offers(PROFILES["a100"], 2)
    assert [o.offer_id for o in offers] == ["NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-80GB"]
    assert offers[0].price_per_hour == pytest.approx(1.64 * 2)
    ops = double.operations()
    assert [op for op, _ in ops] == ["gpuTypes", "gpuTypes"]
    assert ops[0][1] == {"input": {"id": "NVIDIA A100-SXM4-80GB"}, "lowestPriceInput": {"gpuCount": 2}}


def test_create_exact_input_hostile_env_intact_and_key_only_in_header(double):
    s = spec()
    inst = backend(double).create(s, {"AWS_SECRET_ACCESS_KEY": HOSTILE})
    (op, variables), *_ = [(o, v) for o, v in double.operations() if o == "podFindAndDeployOnDemand"]
    inp = variables["input"]
    env = {e["key"]: e["value"] for e in inp.pop("env")}
    assert inp == {"name": "job-rp", "imageName": s.image, "gpuTypeId": "NVIDIA A100 80GB PCIe", "gpuCount": 1,
                   "cloudType": "ALL", "containerDiskInGb": s.disk_gb, "volumeInGb": 0, "dockerArgs": "",
                   "startSsh": False}  # fmt: skip
    assert env["AWS_SECRET_ACCESS_KEY"] == HOSTILE
    assert json.loads(env["QA_JOB_SPEC"])["secret_env"] == ["AWS_SECRET_ACCESS_KEY"]
    assert inst.instance_id in double.live_pods()
    for r in double.requests:
        assert KEY not in r.raw and KEY not in r.path
        if isinstance(r.body, dict):
            assert HOSTILE not in r.body["query"]  # values travel as variables, never in the query text


def test_runtime_null_while_starting_is_waited_for(double):
    double.start_polls = 3
    inst = backend(double).create(spec(), {})
    pod_polls = [v for op, v in double.operations() if op == "pod"]
    assert len(pod_polls) == 4 and pod_polls[0] == {"input": {"podId": inst.instance_id}}


def test_graphql_errors_in_200_are_surfaced(double):
    double.fail_next("POST", "/graphql", 200, {"errors": [{"message": "Something broke", "extensions": {"code": "X"}}]},
                     match_body="gpuTypes")  # fmt: skip
    with pytest.raises(BackendError, match="runpod: Something broke"):
        backend(double).offers(PROFILES["a6000"], 1)


def test_plain_text_429_and_5xx_then_success(double):
    double.fail_next("POST", "/graphql", 429, "rate limited", times=1)
    double.fail_next(
        "POST", "/graphql", 502, "<html>502 Bad Gateway</html>", content_type="text/html", times=1
    )
    assert backend(double).offers(PROFILES["a6000"], 1)
    assert len(double.calls("POST", "/graphql")) == 3


def test_no_capacity_moves_to_the_next_gpu_type(double):
    double.no_capacity("NVIDIA A100 80GB PCIe")
    b = backend(double)
    offers = b.offers(PROFILES["a100"], 1)
    assert [o.offer_id for o in offers] == ["NVIDIA A100-SXM4-80GB"]
    # capacity vanished between offers and create: the error comes in a 200 and we go on
    double.gpu_types["NVIDIA A100 80GB PCIe"]["_stock"] = "Low"
    offers = b.offers(PROFILES["a100"], 1)
    double.no_capacity("NVIDIA A100 80GB PCIe")
    inst = b.create(spec(), {}, offers=offers)
    assert inst.offer.offer_id == "NVIDIA A100-SXM4-80GB"
    creates = [v["input"]["gpuTypeId"] for op, v in double.operations() if op == "podFindAndDeployOnDemand"]
    assert creates == ["NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-80GB"]


def test_all_offers_without_capacity_is_a_clear_launch_error(double):
    b = backend(double)
    offers = b.offers(PROFILES["a100"], 1)
    for g in list(double.gpu_types):
        double.no_capacity(g)
    with pytest.raises(LaunchFailed, match=NO_CAPACITY[:40]):
        b.create(spec(), {}, offers=offers)
    assert double.live_pods() == []


def test_spot_uses_rent_interruptable_with_bid(double):
    b = backend(double)
    inst = b.create(spec(), {}, interruptible=True)
    ((op, v),) = [(o, v) for o, v in double.operations() if o.startswith("pod") and o != "pod"]
    assert op == "podRentInterruptable" and v["input"]["bidPerGpu"] == pytest.approx(0.89 * 1.1)
    assert double.pods[inst.instance_id]["interruptible"]


def test_crash_after_create_terminates_the_pod(double):
    def boom(_inst):
        raise RuntimeError("controller crashed")

    with pytest.raises(RuntimeError):
        backend(double).create(spec(), {}, on_created=boom)
    assert double.live_pods() == [] and len(double.terminated) == 1


def test_status_logs_preempt_and_terminate(double):
    b = backend(double)
    inst = b.create(spec(), {})
    assert b.status(inst.instance_id).state == "RUNNING"
    double.set_logs(inst.instance_id, ["step 1 loss 2.0", "step 2 loss 1.5"])
    assert list(b.logs(inst.instance_id)) == ["step 1 loss 2.0", "step 2 loss 1.5"]
    double.preempt(inst.instance_id)
    assert b.status(inst.instance_id).state == "EXITED"
    b.cancel(inst.instance_id)
    assert b.status(inst.instance_id).state == "GONE"
    b.cancel(inst.instance_id)  # "pod not found" = already gone = done


def test_bad_key_is_a_clear_error(double):
    b = RunpodBackend(f"{double.url}/graphql", "wrong", sleep=lambda s: None)
    with pytest.raises(BackendError, match="401"):
        b.offers(PROFILES["a6000"], 1)


def test_double_rejects_interpolated_values(double):
    import requests

    r = requests.post(f"{double.url}/graphql", headers={"Authorization": f"Bearer {KEY}"},
                      json={"query": 'query { pod(input: {podId: "x"}) { id } }'})  # fmt: skip
    assert r.status_code == 200 and "variables" in r.json()["errors"][0]["message"]
