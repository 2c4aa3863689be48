"""Submit pins ``hf://datasets/…`` inputs to the commit they resolve to (issue 23 item 1): every launch of
the job reads the same data. A stand-in hub on loopback (``HF_ENDPOINT``) answers the revision API."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from launch.jobs.pin import PinError, pin_hub_inputs
from launch.render import render
from qa_train.contract import hub_file_url
from qa_train.spec import parse_job
from tests.conftest import REPO

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub(monkeypatch) -> Iterator[list[tuple[str, str | None]]]:
    seen: list[tuple[str, str | None]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_a: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            seen.append((self.path, self.headers.get("Authorization")))
            if self.path == "/api/datasets/org/qa-set/revision/main":
                body = json.dumps({"id": "org/qa-set", "sha": SHA}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
            else:
                body = b'{"error": "Repository not found"}'
                self.send_response(404)
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    yield seen
    server.shutdown()


def smoke(**data: str) -> dict:
    doc = yaml.safe_load((REPO / "jobs" / "smoke.yaml").read_text())
    doc["data"].update(data)
    doc.setdefault("run_name", "pin")
    return doc


def test_unpinned_inputs_are_pinned_and_pinned_ones_kept(hub):
    job = parse_job(smoke(train_path="hf://datasets/org/qa-set/dir/train.json",
                          validation_path="hf://datasets/org/qa-set@v1/val.json"))  # fmt: skip
    rendered, notes = pin_hub_inputs(render(job, "cpu"), {"HF_TOKEN": "hf_secret"})
    assert rendered.job.data.train_path == f"hf://datasets/org/qa-set@{SHA}/dir/train.json"
    assert rendered.job.data.validation_path == "hf://datasets/org/qa-set@v1/val.json"
    assert notes == [
        f"data.train_path: hf://datasets/org/qa-set/dir/train.json pinned to commit {SHA[:12]} "
        "(every launch reads the same data)"
    ]
    assert hub == [("/api/datasets/org/qa-set/revision/main", "Bearer hf_secret")]
    assert hub_file_url(rendered.job.data.train_path).endswith(
        f"/datasets/org/qa-set/resolve/{SHA}/dir/train.json"
    )


def test_plan_is_rebuilt_from_the_pinned_spec_and_a_silent_hub_is_a_warning(hub, capsys):
    from launch.jobs.pin import pin_plan
    from launch.jobs.plan import make_plan
    from launch.jobs.state import JobOptions

    job = parse_job(smoke(train_path="hf://datasets/org/qa-set/train.json"))
    plan = pin_plan(make_plan(render(job, "cpu"), {}, JobOptions(backend="local"), computes={}))
    pinned = f"hf://datasets/org/qa-set@{SHA}/train.json"
    assert plan.spec.job.data.train_path == pinned
    inline = json.loads(plan.request.env["QA_JOB_SPEC"])  # what the container reads
    assert inline["job"]["data"]["train_path"] == pinned
    assert "pinned to commit" in capsys.readouterr().err

    gone = parse_job(smoke(train_path="hf://datasets/org/gone/train.json"))
    with pytest.raises(PinError, match=r"^data.train_path hf://datasets/org/gone/train.json: cannot resolve"):
        pin_hub_inputs(render(gone, "cpu"), {})
    plan = pin_plan(make_plan(render(gone, "cpu"), {}, JobOptions(backend="local"), computes={}))
    assert plan.spec.job.data.train_path == "hf://datasets/org/gone/train.json"
    err = capsys.readouterr().err
    assert (
        err.startswith("warning: not pinned: data.train_path hf://datasets/org/gone/train.json")
        and "HTTP 404" in err
    )
