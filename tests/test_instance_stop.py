"""The container stops its own instance (vast: PUT state stopped; RunPod: POST …/stop) — against a recording
HTTP server on loopback; through ``qa_train run`` the request comes only after the report in S3 is final."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from qa_train.contract import RunLayout
from qa_train.instance_stop import plan_stop, stop_self
from qa_train.storage import RunStore
from tests.loopback import LoopbackServer

REPO = Path(__file__).resolve().parent.parent
KEY = "instance-scoped-key-0123456789"


class CloudApi:
    """Records method, path, body and Authorization; answers ``status`` (a list: one per request, last repeats)."""

    def __init__(self, statuses: list[int] | None = None, on_request=None) -> None:  # noqa: ANN001
        self.calls: list[dict] = []
        self.statuses = statuses or [200]
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_a: object) -> None:
                pass

            def _any(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                api.calls.append({"method": self.command, "path": self.path, "auth": self.headers.get("Authorization"),
                                  "body": json.loads(body) if body else None})  # fmt: skip
                if on_request is not None:
                    on_request()
                code = api.statuses[min(len(api.calls), len(api.statuses)) - 1]
                out = json.dumps({"success": code == 200}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_PUT = do_POST = do_GET = _any  # noqa: N815

        self._http = LoopbackServer(Handler)
        self.url = self._http.url

    def close(self) -> None:
        self._http.close()


@pytest.fixture
def api() -> Iterator[CloudApi]:
    a = CloudApi()
    yield a
    a.close()


def test_vast_stops_with_the_instance_key(api, capsys):
    env = {
        "QA_BACKEND": "vast",
        "CONTAINER_ID": "31337",
        "CONTAINER_API_KEY": KEY,
        "VAST_API_URL": api.url + "/",
    }
    line = stop_self(env)
    assert api.calls == [
        {
            "method": "PUT",
            "path": "/api/v0/instances/31337/",
            "auth": f"Bearer {KEY}",
            "body": {"state": "stopped"},
        }
    ]
    assert line is not None and "asked to stop vast instance 31337" in line and KEY not in line
    assert capsys.readouterr().err.strip() == line


def test_runpod_stops_through_rest(api):
    env = {
        "QA_BACKEND": "runpod",
        "RUNPOD_POD_ID": "pod-abc",
        "RUNPOD_API_KEY": KEY,
        "RUNPOD_REST_URL": api.url + "/v1",
    }
    line = stop_self(env)
    assert api.calls == [
        {"method": "POST", "path": "/v1/pods/pod-abc/stop", "auth": f"Bearer {KEY}", "body": None}
    ]
    assert "RunPod pod pod-abc" in line


def test_default_hosts_are_the_documented_ones():
    vast = plan_stop({"QA_BACKEND": "vast", "CONTAINER_ID": "7", "CONTAINER_API_KEY": "k"})
    assert (vast.method, vast.url) == ("PUT", "https://console.vast.ai/api/v0/instances/7/")
    pod = plan_stop({"QA_BACKEND": "runpod", "RUNPOD_POD_ID": "p", "RUNPOD_API_KEY": "k"})
    assert (pod.method, pod.url) == ("POST", "https://rest.runpod.io/v1/pods/p/stop")


def test_on_a_runpod_cluster_only_node_0_stops_its_pod():
    """Another node's stop after its train stage would read as a lost node while node 0 still merges."""
    env = {"QA_BACKEND": "runpod-cluster", "RUNPOD_POD_ID": "p", "RUNPOD_API_KEY": "k"}
    pod = plan_stop({**env, "NODE_RANK": "0"})
    assert (pod.method, pod.url) == ("POST", "https://rest.runpod.io/v1/pods/p/stop")
    assert "node 0 stops" in plan_stop({**env, "NODE_RANK": "1"})


def test_keep_instance_local_backend_and_missing_env_send_nothing(api, capsys):
    base = {"CONTAINER_ID": "1", "CONTAINER_API_KEY": KEY, "VAST_API_URL": api.url}
    assert "QA_KEEP_INSTANCE=1" in stop_self({**base, "QA_BACKEND": "vast", "QA_KEEP_INSTANCE": "1"})
    assert stop_self({**base, "QA_BACKEND": "local"}) is None
    assert stop_self(base) is None
    line = stop_self({"QA_BACKEND": "runpod", "RUNPOD_POD_ID": "p", "RUNPOD_REST_URL": api.url})
    assert "RUNPOD_API_KEY not set" in line and "controller" in line
    assert api.calls == []


def test_failure_is_one_warning_after_retries():
    api = CloudApi(statuses=[503, 503, 401])
    try:
        env = {"QA_BACKEND": "vast", "CONTAINER_ID": "9", "CONTAINER_API_KEY": KEY, "VAST_API_URL": api.url}
        line = stop_self(env)
    finally:
        api.close()
    assert len(api.calls) == 3  # two 503s retried, the 401 is final
    assert "warning: could not stop vast instance 9: HTTP 401" in line and KEY not in line


@pytest.mark.slow
def test_run_stops_the_instance_after_the_final_report(s3, tmp_path):
    """Through ``qa_train run``: the stop request arrives when report.json in S3 is already final, and a
    failing stop changes neither the exit code nor the report."""
    store = RunStore(RunLayout.of(s3.uri("runs"), "stopper"))
    seen: list[str] = []
    api = CloudApi(statuses=[500], on_request=lambda: seen.append(store.read_report().state))
    job = {"run_name": "stopper", "model": {"name_or_path": "org/m"}, "stages": ["train"],
           "data": {"train_path": s3.uri("data/absent.json")}, "sync": {"target": s3.uri("runs")},
           "output_root": str(tmp_path / "out")}  # fmt: skip
    env = {**s3.env, "QA_JOB_SPEC": json.dumps(job), "QA_BACKEND": "vast", "CONTAINER_ID": "77",
           "CONTAINER_API_KEY": KEY, "VAST_API_URL": api.url, "QA_INPUT_CACHE": str(tmp_path / "c")}  # fmt: skip
    env.pop("QA_JOB_SPEC_URI", None)
    env.pop("QA_KEEP_INSTANCE", None)
    try:
        p = subprocess.run([sys.executable, "-m", "qa_train", "run"], capture_output=True, text=True, env=env,
                           cwd=REPO, timeout=120)  # fmt: skip
    finally:
        api.close()
    assert p.returncode == 3, p.stderr  # the input's error, not the stop's
    assert [c["path"] for c in api.calls] == ["/api/v0/instances/77/"] * 4  # retried 500s
    assert seen and set(seen) == {"failed"}
    report = store.read_report()
    assert report.state == "failed" and report.failed_stage().name == "inputs"
    assert "warning: could not stop vast instance 77" in p.stderr and KEY not in p.stderr + p.stdout
    assert os.path.exists(tmp_path / "out" / "stopper" / "report.json")


def test_a_signal_leaves_the_report_running_and_the_instance_up(s3, tmp_path):
    """docker stop / preemption mid-run: not a final report (the controller may relaunch), no self-stop."""
    import signal
    import time

    from tests.test_inputs import Recorder

    web, api = Recorder(), CloudApi()
    store = RunStore(RunLayout.of(s3.uri("runs"), "sig"))
    job = {"run_name": "sig", "model": {"name_or_path": "org/m"}, "stages": ["train"],
           "data": {"train_path": f"{web.url}/d/slow.json"}, "sync": {"target": s3.uri("runs")},
           "output_root": str(tmp_path / "out")}  # fmt: skip
    env = {**s3.env, "QA_JOB_SPEC": json.dumps(job), "QA_BACKEND": "vast", "CONTAINER_ID": "5",
           "CONTAINER_API_KEY": KEY, "VAST_API_URL": api.url, "QA_INPUT_CACHE": str(tmp_path / "c"),
           "QA_INPUT_TIMEOUT": "60"}  # fmt: skip
    try:
        proc = subprocess.Popen([sys.executable, "-m", "qa_train", "run"], env=env, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        deadline = time.monotonic() + 60
        while not web.requests and time.monotonic() < deadline:
            time.sleep(0.1)
        assert web.requests, "the inputs stage never started"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        web.close()
        api.close()
    assert proc.returncode == 128 + signal.SIGTERM, err
    report = store.read_report()
    assert report.state == "running" and "interrupted" in report.error
    assert [(s.name, s.exit_code) for s in report.stages] == [("inputs", None)]
    assert api.calls == []
