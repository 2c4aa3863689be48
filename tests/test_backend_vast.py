"""vast.ai backend against the local REST double (tests/doubles/vast_api.py): payloads, retries, spot traps."""

from __future__ import annotations

import json

import pytest

from launch.backends.base import BackendError, LaunchFailed
from launch.backends.vast import VastBackend
from launch.gpus import PROFILES
from launch.render import render
from qa_train.spec import parse_job
from tests.doubles.vast_api import VastDouble, make_offer

KEY = "vast-secret-KEY-123"
HOSTILE = "p@ss \"quoted\" 'single' $HOME `cmd` \\ back\nnew line"


@pytest.fixture
def double():
    d = VastDouble(
        api_key=KEY,
        offers=[
            make_offer(1, "RTX A6000", 1, 0.40, min_bid=0.20),
            make_offer(2, "RTX A6000", 1, 0.55, min_bid=0.25),
            make_offer(3, "RTX A6000", 1, 0.90),
            make_offer(4, "A100 SXM4", 1, 1.20, gpu_ram=81920),
            make_offer(5, "RTX A6000", 1, 0.30, reliability=0.80),  # filtered out: unreliable
        ],
    ).start()
    yield d
    d.stop()


def backend(d: VastDouble, **kw) -> VastBackend:
    kw.setdefault("poll_s", 0.0)
    kw.setdefault("ready_timeout_s", 5.0)
    return VastBackend(d.url, KEY, sleep=lambda s: None, http_backoff=0.0, **kw)


def spec(job_id: str = "job-1"):
    job = parse_job(
        {
            "run_name": "r",
            "model": {"name_or_path": "mistralai/Mistral-7B-v0.1"},
            "use_lora": True,
            "data": {"train_path": "/data/t.json", "hotpot_qa_dev_path": "/data/h.json"},
        }  # fmt: skip
    )
    return render(job, "a6000", job_id=job_id, secret_names=["HF_TOKEN"])


def test_offer_search_payload_and_order(double):
    offers = backend(double).offers(PROFILES["a6000"], 1, disk_gb=150)
    assert [o.offer_id for o in offers] == ["1", "2", "3"]
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
        "order": [["dph_total", "asc"]],
        "type": "on-demand",
        "allocated_storage": 150,
        "limit": 20,
    }
    assert req.headers["Authorization"] == f"Bearer {KEY}"


def test_create_exact_payload_polls_until_running_and_key_only_in_header(double):
    s = spec()
    inst = backend(double).create(s, {"HF_TOKEN": HOSTILE}, on_created=lambda i: None)
    assert inst.instance_id == str(double.live_instances()[0])
    (put,) = double.calls("PUT", r"/api/v0/asks/1/")
    env = put.body.pop("env")
    assert put.body == {"client_id": "me", "image": s.image, "disk": s.disk_gb, "runtype": "args", "args": [],
                        "label": "job-1"}  # fmt: skip
    assert env["HF_TOKEN"] == HOSTILE  # hostile value intact, only in env
    assert json.loads(env["QA_JOB_SPEC"])["job_id"] == "job-1"
    assert HOSTILE not in env["QA_JOB_SPEC"]
    # null → loading → running: several status polls happened before create returned
    polls = double.calls("GET", r"/api/v0/instances/\d+/")
    assert len(polls) >= 3 and all(p.query == {"owner": ["me"]} for p in polls)
    for r in double.requests:  # the API key travels only in the auth header
        assert KEY not in r.raw and KEY not in r.path and KEY not in json.dumps(r.query)


def test_plain_text_429_then_success(double):
    double.fail_next("POST", "/api/v0/bundles/", 429, "Too Many Requests", times=2)
    offers = backend(double).offers(PROFILES["a6000"], 1)
    assert offers and len(double.calls("POST", "/api/v0/bundles/")) == 3


def test_5xx_html_page_is_retried_then_reported(double):
    page = "<html><body><h1>502 Bad Gateway</h1>cloudflare</body></html>"
    double.fail_next("GET", r"/api/v0/instances/", 502, page, content_type="text/html", times=1)
    inst = backend(double).create(spec(), {})
    assert inst.instance_id
    double.fail_next("POST", "/api/v0/bundles/", 503, page, content_type="text/html", times=99)
    with pytest.raises(Exception, match=r"HTTP 503: 502 Bad Gateway cloudflare"):
        backend(double).offers(PROFILES["a6000"], 1)


def test_search_quota_429_is_not_retried(double):
    double.fail_next(
        "POST", "/api/v0/bundles/", 429, {"success": False, "error": "search_quota_exceeded"}, times=9
    )
    with pytest.raises(Exception, match="search_quota_exceeded"):
        backend(double).offers(PROFILES["a6000"], 1)
    assert len(double.calls("POST", "/api/v0/bundles/")) == 1


def test_no_capacity_moves_to_the_next_offer(double):
    double.offer_gone(1)
    inst = backend(double).create(spec(), {})
    assert inst.offer.offer_id == "2"
    assert [r.path for r in double.calls("PUT", "/asks/")] == ["/api/v0/asks/1/", "/api/v0/asks/2/"]


def test_spot_bid_is_sent_and_created_stopped_is_destroyed(double):
    b = backend(double)
    offers = b.offers(PROFILES["a6000"], 1, interruptible=True)
    assert offers[0].bid_price == pytest.approx(0.22)
    assert double.calls("POST", "/bundles/")[-1].body["type"] == "bid"
    offers[0].bid_price = 0.01  # below min_bid: vast creates the instance *stopped* and errors
    inst = b.create(spec(), {}, interruptible=True, offers=offers)
    first, second = double.calls("PUT", "/asks/")[:2]
    assert first.body["price"] == 0.01 and second.body["price"] == pytest.approx(0.275)
    assert len(double.destroyed) == 1  # the stopped one, found through new_contract
    assert double.live_instances() == [int(inst.instance_id)]


def test_crash_after_create_destroys_the_instance(double):
    def boom(_inst):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        backend(double).create(spec(), {}, on_created=boom)
    assert double.live_instances() == [] and len(double.destroyed) == 1


def test_failing_start_is_destroyed_and_retried_once_elsewhere(double):
    b = backend(double)
    real_status = b.status

    def status(iid):  # every instance reports the provisioning error vast puts in status_msg
        double.set_state(int(iid), "created", "OCI runtime create failed: no such file")
        return real_status(iid)

    b.status = status
    with pytest.raises(LaunchFailed, match="OCI runtime create failed"):
        b.create(spec(), {})
    assert double.live_instances() == [] and len(double.destroyed) == 2  # two launches, both destroyed


def test_readiness_deadline_destroys(double):
    double.start_polls = 10**6
    with pytest.raises(LaunchFailed, match="not running after"):
        backend(double, ready_timeout_s=0.0, max_failed_launches=1).create(spec(), {})
    assert double.live_instances() == []


def test_status_logs_preempt_and_cancel(double):
    b = backend(double)
    inst = b.create(spec(), {})
    iid = int(inst.instance_id)
    assert b.status(inst.instance_id).state == "RUNNING"
    double.set_logs(iid, "line 1\nline 2\n")
    assert list(b.logs(inst.instance_id)) == ["line 1", "line 2"]
    double.preempt(iid)
    st = b.status(inst.instance_id)
    assert st.state == "STOPPED" and st.raw["intended_status"] == "stopped"
    b.cancel(inst.instance_id)
    assert b.status(inst.instance_id).state == "GONE"
    b.cancel(inst.instance_id)  # no_such_instance = done
    assert double.calls("DELETE")[-1].path == f"/api/v0/instances/{iid}/"


def test_missing_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("VAST_API_KEY", raising=False)
    with pytest.raises(BackendError, match="VAST_API_KEY"):
        VastBackend("http://127.0.0.1:9")


def test_5xx_on_create_after_the_instance_exists_destroys_it_by_label(double):
    double.create_then_error = 504
    inst = backend(double).create(spec("job-5xx"), {})
    assert inst.offer.offer_id == "2"  # the first offer's launch was abandoned...
    assert len(double.destroyed) == 1  # ...and the instance it made anyway was found by label and destroyed
    assert double.live_instances() == [int(inst.instance_id)]
    assert len(double.calls("PUT", "/asks/1/")) == 1  # a create is never blindly retried after a 5xx
