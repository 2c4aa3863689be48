"""``--backend local`` binds a host runs folder by default (issue 21 item 8): the submit says where the outputs
are, ``status`` reads the run's report and live metrics there, and the artifacts are listed with host paths.

The local Docker engine is replaced by the in-memory compute of tests/test_controller.py (named ``local``); the
real container writing into the bound folder is covered by tests/test_managed_local.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from launch.jobs.local_run import LocalRun
from launch.jobs.submission import local_outputs
from qa_train.contract import RunReport, RunState, StageResult
from tests.test_status_watch import _metrics
from tests.test_submit_cli import REPO, _fake_clouds, _main


def _local_job(tmp_path: Path) -> Path:
    doc = yaml.safe_load((REPO / "jobs" / "smoke.yaml").read_text())
    doc.pop("sync", None)
    doc["run_name"] = "local-run"
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_local_job_binds_outputs_and_status_reads_them(tmp_path, monkeypatch, capsys):
    from tests.test_controller import FakeCompute, offer

    monkeypatch.delenv("QA_RUNS_DIR", raising=False)
    local = FakeCompute(name="local", market=[offer(1, 0.0, backend="local")])
    _fake_clouds(monkeypatch, {"local": local})
    argv = ["--gpu", "cpu", "--job", str(_local_job(tmp_path)), "--backend", "local", "--job_id", "loc-1"]
    assert _main(monkeypatch, tmp_path, argv) == 0
    out = capsys.readouterr().out
    run_dir = (tmp_path / "runs" / "loc-1" / "outputs" / "local-run").resolve()
    assert f"outputs (report, metrics, model): {run_dir}" in out
    assert json.loads(out.splitlines()[-1])["outputs"] == str(run_dir)  # the last line says where
    outputs = run_dir.parent
    assert outputs.is_dir() and (os.getuid() == 1000 or outputs.stat().st_mode & 0o777 == 0o777)

    assert _main(monkeypatch, tmp_path, ["status", "loc-1"]) == 0
    assert "training: no metrics yet" in capsys.readouterr().out
    # what the container writes under /runs/local-run: the report and model/metrics.json
    (run_dir / "model").mkdir(parents=True)
    (run_dir / "model" / "metrics.json").write_text(_metrics(step=4, max_steps=4).to_json())
    (run_dir / "model" / "adapter_model.safetensors").write_bytes(b"x")
    report = RunReport("local-run", RunState.SUCCEEDED, [StageResult("train", 0)], last_committed_step=4)
    report.write_local(run_dir / "report.json")
    assert _main(monkeypatch, tmp_path, ["status", "loc-1"]) == 0
    text = capsys.readouterr().out
    assert "step 4/4 (100.0%)" in text and "run report: succeeded" in text, text
    assert f"artifacts in {run_dir}" in text and f"{run_dir / 'model'}  [ok, 2 files]" in text, text
    assert _main(monkeypatch, tmp_path, ["status", "loc-1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["state"] == "SUCCEEDED" and doc["progress"]["step"] == 4


def test_qa_runs_dir_overrides_the_default_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("QA_RUNS_DIR", str(tmp_path / "mine"))
    assert local_outputs(tmp_path / "runs", "j") == str((tmp_path / "mine").resolve())
    monkeypatch.delenv("QA_RUNS_DIR")
    assert local_outputs(tmp_path / "runs", "j") == str((tmp_path / "runs" / "j" / "outputs").resolve())


def test_a_spec_writing_outside_runs_has_no_host_folder(tmp_path):
    from launch.jobs.plan import make_plan
    from launch.jobs.state import JobOptions
    from launch.render import render
    from qa_train.spec import load_job

    job = load_job(str(_local_job(tmp_path)))
    rendered = render(job.model_copy(update={"output_root": "/workspace/out"}), "cpu")
    plan = make_plan(rendered, {}, JobOptions(backend="local", outputs_dir=str(tmp_path / "o")), {})
    assert LocalRun.of(plan) is None


def test_a_local_job_with_object_storage_binds_nothing_by_default(tmp_path, monkeypatch):
    """With sync the container's disk is its own, like a rented machine's: a relaunch resumes from object
    storage (tests/test_managed_local.py), and status reads the run there."""
    from launch.cli.submit import _outputs_dir
    from launch.render import render
    from qa_train.spec import load_job

    monkeypatch.delenv("QA_RUNS_DIR", raising=False)
    doc = yaml.safe_load(_local_job(tmp_path).read_text())
    doc["sync"] = {"target": "s3://bucket/runs"}
    (tmp_path / "sync.yaml").write_text(yaml.safe_dump(doc))
    synced = render(load_job(str(tmp_path / "sync.yaml")), "cpu")
    assert _outputs_dir(str(tmp_path), synced, "local") is None
    plain = render(load_job(str(_local_job(tmp_path))), "cpu")
    assert _outputs_dir(str(tmp_path), plain, "local") is not None
    assert _outputs_dir(str(tmp_path), plain, "vast") is None
