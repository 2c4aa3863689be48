"""vast.ai compute against the vast double (tests/doubles/vast_api.py), whose answers follow vast's OpenAPI
reference: exact payloads, documented errors and states, no re-sent creates, logs without the key."""

from __future__ import annotations

import json

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
from launch.backends.vast import VastCompute
from launch.gpus import PROFILES
from tests.doubles.vast_api import VastDouble, make_offer

KEY = "vast-secret-KEY-123"
SECRET = "hf_p@ss \"quoted\" 'single' $HOME `cmd` \\ back"
REG_PASSWORD = "reg-pass-Z9"


@pytest.fixture
def double():
    d = VastDouble(
        api_key=KEY,
        offers=[
            make_offer(1, "RTX A6000", 1, 0.40, min_bid=0.20),
            make_offer(2, "RTX A6000", 1, 0.55, min_bid=0.25),
            make_offer(3, "RTX A6000", 1, 0.90),
            make_offer(4, "A100 SXM4", 1, 1.20, gpu_ram=81920),
            make_offer(5, "RTX A6000", 1, 0.30, reliability=0.80),  # unreliable
            make_offer(6, "RTX A6000", 1, 0.20, cuda_max_good=12.2),  # driver too old for a CUDA 12.8 image
            make_offer(7, "RTX A6000", 1, 0.25, cpu_ram=32000),  # too little host RAM for CPU offload
            make_offer(8, "RTX A6000", 1, 0.26, cpu_cores_effective=2.0),  # too few vCPUs
        ],
    ).start()
    yield d
    d.stop()


def compute(d: VastDouble, **kw) -> VastCompute:
    kw.setdefault("poll_s", 0.0)
    kw.setdefault("logs_ready_s", 5.0)
    return VastCompute(KEY, d.url, sleep=kw.pop("sleep", lambda s: None), backoff=0.0, **kw)


def query(**kw) -> OfferQuery:
    kw.setdefault("min_cuda", "12.8")
    kw.setdefault("min_ram_gb", 64)
    kw.setdefault("min_vcpus", 4)
    return OfferQuery(PROFILES["a6000"], 1, disk_gb=kw.pop("disk_gb", 150), **kw)


def request(name: str = "job-1", **kw) -> LaunchRequest:
    env = {"QA_SPEC_URI": "s3://bucket/runs/r/spec.json", "HF_TOKEN": SECRET}
    return LaunchRequest(name=name, image="registry.example.com/qa/train:1", env=env, disk_gb=150, **kw)


def create_on_cheapest(c: VastCompute, req: LaunchRequest | None = None, **q):
    offer = c.offers(query(**q))[0]
    return c.create(req or request(), offer), offer


def test_offer_search_sends_host_filters_and_the_double_applies_them(double):
    offers = compute(double).offers(query())
    assert [o.offer_id for o in offers] == ["1", "2", "3"]  # 6, 7, 8 fail a host filter, 5 reliability
    (req,) = double.calls("POST", "/api/v0/bundles/")
    assert req.body == {
        "gpu_name": {"in": ["RTX A6000"]},
        "num_gpus": {"eq": 1},
        "gpu_ram": {"gte": 47000},
        "reliability2": {"gte": 0.95},
        "verified": {"eq": True},
        "rentable": {"eq": True},
        "rented": {"eq": False},
        "disk_space": {"gte": 150},
        "cpu_ram": {"gte": 64 * 1024},
        "cpu_cores_effective": {"gte": 4},
        "order": [["dph_total", "asc"]],
        "type": "on-demand",
        "allocated_storage": 150,
        "limit": 50,
    }
    assert req.headers["Authorization"] == f"Bearer {KEY}"
    assert offers[0].extra["cuda_max_good"] == 12.8


def test_conversation_create_poll_exit_destroy(double):
    """create → null → loading → running → exited → destroy, with the reference's request and answer shapes."""
    c = compute(double)
    auth = RegistryAuth("registry.example.com", "bot", REG_PASSWORD)
    inst, offer = create_on_cheapest(c, request(registry_auth=auth))
    (put,) = double.calls("PUT", r"/api/v0/asks/1/$")
    assert put.body == {
        "client_id": "me",
        "image": "registry.example.com/qa/train:1",
        "disk": 150,
        "env": {"QA_SPEC_URI": "s3://bucket/runs/r/spec.json", "HF_TOKEN": SECRET},
        "runtype": "args",
        "args": [],
        "label": "job-1",
        "cancel_unavail": True,
        "image_login": f"-u bot -p {REG_PASSWORD} registry.example.com",
    }
    assert inst.instance_id == "7000" and inst.offer is offer
    states = [c.status(inst.instance_id).state for _ in range(3)]
    assert states == [InstanceState.PROVISIONING, InstanceState.PROVISIONING, InstanceState.RUNNING]
    polls = double.calls("GET", r"/api/v0/instances/7000/$")
    assert all(p.query == {"owner": ["me"]} for p in polls)
    # the container got exactly the create's env plus what vast injects, and the registry login
    env = double.host.env("7000")
    assert env.pop("CONTAINER_ID") == "7000" and env.pop("VAST_API_URL") == double.url
    assert env.pop("CONTAINER_API_KEY") == double.container_key(7000)
    assert env == {"QA_SPEC_URI": "s3://bucket/runs/r/spec.json", "HF_TOKEN": SECRET}
    assert double.host.containers["7000"].registry_auth == ("registry.example.com", "bot", REG_PASSWORD)
    double.host.exit("7000", 0)
    st = c.status(inst.instance_id)
    assert st.state == InstanceState.EXITED and st.exit_code is None  # vast never reports an exit code
    assert st.detail == "exited: container process exited" and st.machine_id == str(offer.extra["machine_id"])
    c.destroy(inst.instance_id)
    assert double.calls("DELETE")[-1].path == "/api/v0/instances/7000/"
    assert c.status(inst.instance_id).state == InstanceState.GONE
    c.destroy(inst.instance_id)  # 404 not_found: already gone = done
    for r in double.requests:  # secrets only in env; the API key only in the auth header
        assert KEY not in r.raw and KEY not in r.path and KEY not in json.dumps(r.query)
        if isinstance(r.body, dict):
            assert SECRET not in json.dumps([r.body.get("args"), r.body.get("label"), r.body.get("onstart")])


@pytest.mark.parametrize("error", ["invalid_args", "invalid_price", "no_ssh_key_for_vm"])
def test_400_is_a_rejected_request_not_no_capacity(double, error):
    double.fail_next("PUT", r"/asks/", 400, {"success": False, "error": error, "msg": "error 400/3467: nope"})
    with pytest.raises(RequestRejected, match=error) as e:
        create_on_cheapest(compute(double))
    assert e.value.status == 400 and len(double.calls("PUT", "/asks/")) == 1


def test_env_value_over_vasts_limit_is_refused_before_sending(double):
    c = compute(double)
    offer = c.offers(query())[0]
    long_secret = "s" * 257
    with pytest.raises(RequestRejected, match="env AWS_SECRET_ACCESS_KEY is 257 characters") as e:
        c.create(LaunchRequest("job-1", "img:1", {"AWS_SECRET_ACCESS_KEY": long_secret}, 150), offer)
    assert long_secret not in str(e.value)
    too_many = {f"V{i}": "x" * 250 for i in range(140)}
    with pytest.raises(RequestRejected, match="env totals"):
        c.create(LaunchRequest("job-1", "img:1", too_many, 150), offer)
    with pytest.raises(RequestRejected, match="label"):
        c.create(LaunchRequest("j" * 257, "img:1", {}, 150), offer)
    assert double.calls("PUT", "/asks/") == []


def test_the_doubles_limits_match_the_reference(double):
    """Without the client-side check the double answers as vast does: 400 invalid_args → RequestRejected."""
    import launch.backends.vast.compute as vc

    c = compute(double)
    offer = c.offers(query())[0]
    orig = vc.check_limits
    vc.check_limits = lambda payload: None
    try:
        with pytest.raises(RequestRejected, match="invalid_args"):
            c.create(LaunchRequest("job-1", "img:1", {"QA_JOB_SPEC": "{" + "x" * 2000 + "}"}, 150), offer)
    finally:
        vc.check_limits = orig


def test_offer_gone_404_and_410_are_no_capacity(double):
    c = compute(double)
    offers = c.offers(query(interruptible=True))
    double.offer_gone(1)
    with pytest.raises(NoCapacity, match="no_such_ask") as e:
        c.create(request(interruptible=True), offers[0])
    assert e.value.status == 404
    offers[1].bid_price = 0.01  # under min_bid: with cancel_unavail vast answers 410 instead of creating
    with pytest.raises(NoCapacity) as e:
        c.create(request(interruptible=True), offers[1])
    assert e.value.status == 410 and double.live_instances() == []


def test_bid_sends_price_and_cancel_unavail(double):
    c = compute(double)
    offers = c.offers(query(interruptible=True))
    assert double.calls("POST", "/bundles/")[-1].body["type"] == "bid"
    assert offers[0].bid_price == pytest.approx(0.22)  # min_bid 0.20 + 10 %
    inst = c.create(request(interruptible=True), offers[0])
    put = double.calls("PUT", "/asks/")[-1].body
    assert put["price"] == pytest.approx(0.22) and put["cancel_unavail"] is True
    assert double.instances[int(inst.instance_id)]["is_bid"]


def test_spot_trap_instance_is_destroyed_then_raised(double):
    """Without cancel_unavail a low bid creates the instance stopped and the error carries new_contract."""
    c = compute(double)
    offers = c.offers(query(interruptible=True))
    offers[0].bid_price = 0.01
    orig = c.create_payload
    c.create_payload = lambda r, o: {**orig(r, o), "cancel_unavail": False}
    with pytest.raises(NoCapacity, match="created stopped and is destroyed"):
        c.create(request(interruptible=True), offers[0])
    assert double.destroyed == [7000] and double.live_instances() == []


@pytest.mark.parametrize("how", ["html-504", "dropped"])
def test_ambiguous_create_is_never_resent_and_found_by_label(double, how):
    if how == "dropped":
        double.fail_next("PUT", r"/asks/", 0, after=True, drop=True)
    else:
        page = "<html><body><h1>504 Gateway Time-out</h1></body></html>"
        double.fail_next("PUT", r"/asks/", 504, page, content_type="text/html", after=True)
    c = compute(double)
    with pytest.raises(AmbiguousCreate):
        create_on_cheapest(c, request("job-amb"))
    assert len(double.calls("PUT", "/asks/")) == 1  # sent once, whatever happened
    assert c.find("job-amb") == ["7000"] and c.find("other-job") == []
    lists = double.calls("GET", "/api/v1/instances/")
    assert json.loads(lists[0].query["select_filters"][0]) == {"label": {"eq": "job-amb"}}
    c.destroy("7000")
    assert double.live_instances() == []


def test_find_pages_through_next_token(double):
    c = compute(double)
    for i in range(33):
        double.offers[100 + i] = make_offer(100 + i)
        c.create(request("job-many" if i % 11 else f"other-{i}"), c.offers(query())[0])
    assert len(c.find("job-many")) == 30  # more than one page of 25
    assert (
        len({r.query.get("after_token", [None])[0] for r in double.calls("GET", "/api/v1/instances/")}) >= 2
    )


@pytest.mark.parametrize(
    ("fields", "state"),
    [
        ({"actual_status": None}, InstanceState.PROVISIONING),
        ({"actual_status": "loading"}, InstanceState.PROVISIONING),
        ({"actual_status": "created"}, InstanceState.PROVISIONING),
        ({"actual_status": "scheduling"}, InstanceState.PROVISIONING),
        ({"actual_status": "rebooting"}, InstanceState.PROVISIONING),
        ({"actual_status": "running"}, InstanceState.RUNNING),
        ({"actual_status": "exited"}, InstanceState.EXITED),
        ({"actual_status": "unknown", "status_msg": "no recent heartbeat"}, InstanceState.FAILED),
        ({"actual_status": "offline"}, InstanceState.FAILED),
        ({"actual_status": "created", "status_msg": "Error response from daemon: x"}, InstanceState.FAILED),
        ({"actual_status": "stopped", "intended_status": "stopped"}, InstanceState.STOPPED),
        ({"actual_status": "running", "cur_state": "unloaded"}, InstanceState.GONE),
        # outbid at any actual_status — loading included — once all three say stopped
        (
            {
                "actual_status": "loading",
                "cur_state": "stopped",
                "intended_status": "stopped",
                "next_state": "stopped",
            },
            InstanceState.STOPPED,
        ),  # fmt: skip
        (
            {
                "actual_status": "running",
                "cur_state": "stopped",
                "intended_status": "stopped",
                "next_state": "stopped",
            },
            InstanceState.STOPPED,
        ),  # fmt: skip
        # one field alone says nothing: still running
        ({"actual_status": "running", "next_state": "stopped"}, InstanceState.RUNNING),
    ],
)
def test_states(double, fields, state):
    c = compute(double)
    inst, _ = create_on_cheapest(c)
    actual = fields.pop("actual_status")
    double.set_state(int(inst.instance_id), actual, fields.pop("status_msg", ""), **fields)
    assert c.status(inst.instance_id).state == state


def test_unknown_actual_status_is_a_clear_error(double):
    c = compute(double)
    inst, _ = create_on_cheapest(c)
    double.set_state(int(inst.instance_id), "hibernating")
    with pytest.raises(CloudError, match="unknown actual_status 'hibernating'"):
        c.status(inst.instance_id)


def test_preempted_while_loading_is_stopped(double):
    c = compute(double)
    inst, _ = create_on_cheapest(c)
    assert c.status(inst.instance_id).state == InstanceState.PROVISIONING
    double.preempt(int(inst.instance_id), actual_status="loading")
    assert c.status(inst.instance_id).state == InstanceState.STOPPED


def test_image_that_cannot_start_is_failed(double):
    double.host.bad_images["registry.example.com/qa/train:1"] = "exec format error"
    double.start_polls = 0
    c = compute(double)
    inst, _ = create_on_cheapest(c)
    st = c.status(inst.instance_id)
    assert st.state == InstanceState.FAILED and "OCI runtime create failed" in st.detail


def test_destroy_answering_success_false_is_not_destroyed(double):
    c = compute(double)
    inst, _ = create_on_cheapest(c)
    double.refuse_destroy.add(int(inst.instance_id))
    with pytest.raises(CloudError, match="could not be destroyed"):
        c.destroy(inst.instance_id)
    assert double.live_instances() == [int(inst.instance_id)]


def test_stop_and_the_containers_own_key(double):
    import requests

    c = compute(double)
    inst, _ = create_on_cheapest(c)
    iid = int(inst.instance_id)
    c.status(inst.instance_id), c.status(inst.instance_id), c.status(inst.instance_id)
    ckey = double.container_key(iid)
    other, _ = create_on_cheapest(c, request("job-2"))
    hdr = {"Authorization": f"Bearer {ckey}"}
    assert requests.put(f"{double.url}/api/v0/instances/{other.instance_id}/", json={"state": "stopped"},
                        headers=hdr).status_code == 403  # fmt: skip
    assert requests.post(f"{double.url}/api/v0/bundles/", json={}, headers=hdr).status_code == 403
    r = requests.put(f"{double.url}/api/v0/instances/{iid}/", json={"state": "stopped"}, headers=hdr)
    assert r.status_code == 200 and r.json() == {"success": True}
    assert c.status(inst.instance_id).state == InstanceState.STOPPED
    c.stop(other.instance_id)
    assert double.calls("PUT", rf"/instances/{other.instance_id}/$")[-1].body == {"state": "stopped"}
    assert c.status(other.instance_id).state == InstanceState.STOPPED


def test_logs_come_from_the_result_url_without_the_key(double):
    c = compute(double)
    inst, _ = create_on_cheapest(c)
    c.status(inst.instance_id), c.status(inst.instance_id), c.status(inst.instance_id)
    double.host.print(inst.instance_id, "line 1", "line 2")
    assert list(c.logs(inst.instance_id, tail=50)) == ["line 1", "line 2"]
    (req_logs,) = double.calls("PUT", "/request_logs/")
    assert req_logs.body == {"tail": "50"}
    s3 = double.calls("GET", "/s3/")
    assert len(s3) == 2  # 404 once (not uploaded yet), then the text
    assert all("authorization" not in {k.lower() for k in r.headers} for r in s3)


def test_follow_prints_every_line_once_past_the_tail_window(double):
    """The log ends far longer than the 4-line tail window; repeated identical lines stay repeated."""
    c = compute(double)
    inst, _ = create_on_cheapest(c)
    iid = inst.instance_id
    c.status(iid), c.status(iid), c.status(iid)
    written: list[str] = []
    batches = [["start"], ["tick", "tick", "tick"], ["a", "tick", "tick"], ["b"], [], ["tick", "end"]]

    def step(_s: float) -> None:  # the container writes between polls, then exits
        if batches:
            batch = batches.pop(0)
            written.extend(batch)
            double.host.print(iid, *batch)
        else:
            double.host.exit(iid, 0)

    c.sleep = step
    got = list(c.logs(iid, follow=True, tail=4))
    assert got == written and len(written) > 4


def test_plain_text_429_is_retried_quota_is_not_and_html_5xx_is_named(double):
    c = compute(double)
    double.fail_next("POST", "/api/v0/bundles/", 429, "Too Many Requests", times=2)
    assert c.offers(query()) and len(double.calls("POST", "/api/v0/bundles/")) == 3
    double.fail_next(
        "POST", "/api/v0/bundles/", 429, {"success": False, "error": "search_quota_exceeded"}, times=9
    )
    with pytest.raises(CloudError, match="search_quota_exceeded"):
        c.offers(query())
    assert len(double.calls("POST", "/api/v0/bundles/")) == 4
    double.faults.clear()
    page = "<html><body><h1>502 Bad Gateway</h1>cloudflare</body></html>"
    double.fail_next("POST", "/api/v0/bundles/", 502, page, content_type="text/html", times=99)
    with pytest.raises(
        CloudError, match=r"vast: search offers → HTTP 502 \(text/html\): 502 Bad Gateway"
    ) as e:
        c.offers(query())
    assert e.value.status == 502 and e.value.cloud == "vast"
    double.faults.clear()
    double.fail_next("GET", r"/instances/", 200, "", content_type="text/plain")
    with pytest.raises(CloudError, match="empty body"):
        c.status("7000")


def test_bad_key_is_rejected_and_missing_key_is_clear(double, monkeypatch):
    with pytest.raises(RequestRejected, match="401"):
        VastCompute("wrong", double.url, backoff=0.0).offers(query())
    monkeypatch.delenv("VAST_API_KEY", raising=False)
    with pytest.raises(CloudError, match="VAST_API_KEY"):
        VastCompute(None, "http://127.0.0.1:9")


def test_api_key_from_a_file_as_the_error_message_says(tmp_path, monkeypatch):
    """``VAST_API_KEY_FILE`` works like the launcher's other secrets: one trailing newline stripped, a key with a
    control character inside refused by name (never echoed)."""
    from launch.backends.vast.compute import VastCompute
    from launch.credentials import SecretError

    monkeypatch.delenv("VAST_API_KEY", raising=False)
    key_file = tmp_path / "vast.key"
    key_file.write_text("k-file-0123456789\n")
    monkeypatch.setenv("VAST_API_KEY_FILE", str(key_file))
    compute = VastCompute()
    assert compute.api is not None
    key_file.write_text("k-file-01234\r56789\n")
    with pytest.raises(SecretError) as err:
        VastCompute()
    assert "VAST_API_KEY" in str(err.value) and "k-file-01234" not in str(err.value)
