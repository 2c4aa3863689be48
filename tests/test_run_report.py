"""``qa_train run`` keeps the run report (contract.RunReport) current in S3 (SeaweedFS) and locally; a relaunch
counts itself and skips stages whose output is committed; the spec can come by URI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qa_train.contract import RunLayout, RunReport, RunState
from qa_train.entrypoint.reporter import Reporter
from qa_train.entrypoint.runner import run_stages
from qa_train.entrypoint.stages import Stage, Step
from qa_train.spec import parse_job
from qa_train.storage import RunStore, upload_dir

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


def _job(s3, tmp_path: Path, **kw) -> dict:
    job = {
        "run_name": "rep",
        "model": {"name_or_path": "org/model"},
        "data": {"train_path": "/nowhere/t.json"},
        "stages": ["train"],
        "sync": {"target": s3.uri("runs")},
        "output_root": str(tmp_path / "out"),
    }
    job.update(kw)
    return job


def _ok(tag: str) -> list[str]:
    return [PY, "-c", f"print({tag!r})"]


def _store(s3, name: str = "rep") -> RunStore:
    return RunStore(RunLayout.of(s3.uri("runs"), name))


def _commit_folder(s3, tmp_path: Path, folder: str, name: str = "rep") -> None:
    """Commit a folder the way the stages do (qa_train.sync push: files, then the manifest)."""
    src = tmp_path / f"src-{folder}"
    src.mkdir(exist_ok=True)
    (src / "train_summary.json").write_text("{}")
    p = subprocess.run(
        [PY, "-m", "qa_train", "sync", "push", str(src), f"{s3.uri('runs')}/{name}/{folder}", "--no_progress"],
        capture_output=True, text=True, env=s3.env, cwd=REPO,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr


def test_report_follows_every_stage_and_ends_succeeded(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("QA_BACKEND", "vast")
    monkeypatch.setenv("CONTAINER_ID", "4242")
    job = parse_job(_job(s3, tmp_path))
    seen = tmp_path / "seen.json"
    # the middle stage reads the report in S3 while it runs: state running, its own entry open
    peek = [PY, "-c", "import json, sys; from qa_train.entrypoint.reporter import RunStore, RunLayout; "
            f"r = RunStore(RunLayout.of({s3.uri('runs')!r}, 'rep')).read_report(); "
            f"open({str(seen)!r}, 'w').write(r.to_json())"]  # fmt: skip
    reporter = Reporter(job, tmp_path / "out" / "rep")
    code = run_stages(
        [Stage("train", [Step(_ok("t"))]), Stage("merge", [Step(peek)]), Stage("eval", [Step(_ok("e"))])],
        tmp_path / "summary.json",
        reporter,
    )
    assert code == 0
    during = RunReport.from_json(seen.read_text())
    assert during.state is RunState.RUNNING and [(s.name, s.exit_code) for s in during.stages] == [
        ("train", 0), ("merge", None)]  # fmt: skip
    final = _store(s3).read_report()
    assert final.state is RunState.SUCCEEDED and final.error is None and final.launch == 1
    assert [(s.name, s.exit_code, s.skipped) for s in final.stages] == [
        ("train", 0, False), ("merge", 0, False), ("eval", 0, False)]  # fmt: skip
    assert all(s.seconds is not None and s.started_at for s in final.stages)
    assert (final.instance_id, final.backend) == ("4242", "vast")
    local = RunReport.from_json((tmp_path / "out" / "rep" / "report.json").read_text())
    assert local == final


def test_run_report_pages_are_uploaded_before_the_final_report(s3, tmp_path):
    """The controller destroys the instance once it reads a final report.json: the HTML report must already
    be in storage then. ``before_final`` sees the local report final and the stored one still running."""
    job = parse_job(_job(s3, tmp_path))
    reporter = Reporter(job, tmp_path / "out" / "rep")
    seen: list[tuple[RunState, RunState]] = []

    def render() -> None:
        local = RunReport.from_json(reporter.local_path.read_text())
        seen.append((local.state, _store(s3).read_report().state))

    reporter.before_final = render
    assert run_stages([Stage("train", [Step(_ok("t"))])], None, reporter) == 0
    assert seen == [(RunState.SUCCEEDED, RunState.RUNNING)]
    assert _store(s3).read_report().state is RunState.SUCCEEDED


def test_a_failing_before_final_still_publishes_the_final_report(s3, tmp_path, capsys):
    """The controller waits for a final report.json: nothing run before it may keep it from being written."""
    job = parse_job(_job(s3, tmp_path, run_name="rep-bf"))
    reporter = Reporter(job, tmp_path / "out" / "rep-bf")

    def broken() -> None:
        raise OSError("disk full")

    reporter.before_final = broken
    assert run_stages([Stage("train", [Step(_ok("t"))])], None, reporter) == 0
    assert _store(s3, "rep-bf").read_report().state is RunState.SUCCEEDED
    assert "warning: before the final report: OSError: disk full" in capsys.readouterr().err


def test_failed_stage_is_named_and_relaunch_counts(s3, tmp_path):
    job = parse_job(_job(s3, tmp_path))
    bad = [PY, "-c", "import sys; sys.exit(5)"]
    never = tmp_path / "eval-ran"
    stages = [
        Stage("train", [Step(_ok("t"))]),
        Stage("merge", [Step(bad)]),
        Stage("eval", [Step([PY, "-c", f"open({str(never)!r}, 'w')"])]),
    ]
    assert run_stages(stages, None, Reporter(job, tmp_path / "out" / "rep")) == 5
    report = _store(s3).read_report()
    assert report.state is RunState.FAILED and report.failed_stage().name == "merge"
    assert report.failed_stage().exit_code == 5 and report.error == "stage 'merge' failed (exit 5)"
    assert [s.name for s in report.stages] == ["train", "merge"] and not never.exists()
    # second launch on a fresh disk: counted from the report in storage
    assert (
        run_stages([Stage("train", [Step(_ok("t"))])], None, Reporter(job, tmp_path / "fresh" / "rep")) == 0
    )
    report = _store(s3).read_report()
    assert report.launch == 2 and report.state is RunState.SUCCEEDED


def test_committed_outputs_are_skipped_on_relaunch(s3, tmp_path):
    job = parse_job(_job(s3, tmp_path))
    _commit_folder(s3, tmp_path, "final")
    _commit_folder(s3, tmp_path, "checkpoint-6")
    marker = tmp_path / "train-ran"
    local_model = tmp_path / "out" / "rep" / "model"
    stages = [
        Stage("train", [Step([PY, "-c", f"open({str(marker)!r}, 'w')"])], output="final"),
        Stage("merge", [Step([PY, "-c", f"import os, sys; sys.exit(0 if os.path.exists({str(local_model / 'train_summary.json')!r}) else 9)"])],
              output="merged", needs=[("final", str(local_model), "train_summary.json")]),
    ]  # fmt: skip
    assert run_stages(stages, None, Reporter(job, tmp_path / "out" / "rep")) == 0
    assert not marker.exists()  # train was not redone
    assert (local_model / "train_summary.json").is_file()  # final/ restored for the merge that needed it
    report = _store(s3).read_report()
    assert [(s.name, s.skipped, s.exit_code) for s in report.stages] == [
        ("train", True, 0),
        ("merge", False, 0),
    ]
    assert report.last_committed_step == 6


def _run_cli(env: dict[str, str], *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in env.items() if k not in ("QA_JOB_SPEC", "QA_JOB_SPEC_URI")} | env
    return subprocess.run([PY, "-m", "qa_train", "run", *args], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=timeout)  # fmt: skip


def test_spec_from_uri_runs_and_a_failed_input_is_reported(s3, tmp_path):
    """Spec by reference; its missing data URI fails the inputs stage: exit 3, one error line, report failed."""
    job = _job(s3, tmp_path, data={"train_path": s3.uri("data/missing.json")})
    s3.client().put_object(Bucket=s3.bucket, Key="runs/rep/spec.json", Body=json.dumps(job).encode())
    env = {
        **s3.env,
        "QA_JOB_SPEC_URI": s3.uri("runs/rep/spec.json"),
        "QA_INPUT_CACHE": str(tmp_path / "cache"),
    }
    env.pop("QA_JOB_SPEC", None)
    p = _run_cli(env)
    assert p.returncode == 3, p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: data.train_path: {s3.uri('data/missing.json')}: not found"]
    assert json.loads(p.stdout.strip().splitlines()[-1]) == {
        "ok": False, "stages": [{"stage": "inputs", "exit_code": 3, "seconds": pytest.approx(0, abs=30)}]}  # fmt: skip
    report = _store(s3).read_report()
    assert report.state is RunState.FAILED and report.failed_stage().name == "inputs"
    assert s3.uri("data/missing.json") in report.error


def test_missing_spec_uri_is_one_line_exit_3(s3, tmp_path):
    uri = s3.uri("runs/nothing/spec.json")
    env = {**s3.env, "QA_JOB_SPEC_URI": uri}
    env.pop("QA_JOB_SPEC", None)
    p = _run_cli(env)
    assert p.returncode == 3
    assert p.stderr.strip().splitlines() == [f"error: cannot read the job spec {uri}: no such object"]
    assert p.stdout == ""
    p = _run_cli({**env, "QA_JOB_SPEC_URI": "s3://just-a-bucket"})
    assert p.returncode == 2 and "QA_JOB_SPEC_URI" in p.stderr and "s3://just-a-bucket" in p.stderr
    p = _run_cli({**env, "AWS_SECRET_ACCESS_KEY": "wrong-secret-value"})
    assert p.returncode == 3 and p.stderr.startswith(f"error: cannot read the job spec {uri}: ")
    assert "wrong-secret-value" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_smoke_pipeline_from_s3_inputs_reports_and_relaunches(
    s3, tmp_path, records_file, validation_file, hotpot_file
):
    """The smoke job with data in S3: report succeeded with every stage; a relaunch on a fresh disk redoes
    nothing; with eval/ gone, the next launch restores merged/ and runs only eval."""
    data = tmp_path / "data"
    data.mkdir()
    for f in (records_file, validation_file, hotpot_file):
        (data / f.name).write_bytes(f.read_bytes())
    upload_dir(data, s3.uri("data"), progress=False)
    job = {
        "run_name": "smoke-rep",
        "model": {"make_tiny": {"arch": "llama", "vocab_size": 400, "hidden_size": 32}},
        "data": {"train_path": s3.uri(f"data/{records_file.name}"), "validation_path": s3.uri(f"data/{validation_file.name}"),
                 "hotpot_qa_dev_path": s3.uri(f"data/{hotpot_file.name}")},
        "training": {"max_steps": 4, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "eval_steps": 2,
                     "save_strategy": "steps", "save_steps": 2, "save_total_limit": 2, "model_max_length": 512,
                     "gradient_checkpointing": False, "learning_rate": 1e-3, "bf16": False, "tf32": False},
        "use_lora": True, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "eval": {"limit": 4, "batch_size": 4},
        "sync": {"target": s3.uri("runs")}, "output_root": str(tmp_path / "disk1"),
    }  # fmt: skip
    env = {
        **s3.env,
        "QA_JOB_SPEC": json.dumps(job),
        "QA_INPUT_CACHE": str(tmp_path / "cache1"),
        "QA_REPORT_INTERVAL": "2",
    }
    p = _run_cli(env, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    store = _store(s3, "smoke-rep")
    report = store.read_report()
    assert report.state is RunState.SUCCEEDED and report.launch == 1
    assert [(s.name, s.exit_code) for s in report.stages] == [
        ("inputs", 0),
        ("train", 0),
        ("merge", 0),
        ("eval", 0),
    ]
    assert report.last_committed_step == 4
    assert {"final", "merged", "eval"} <= store.committed()

    p = _run_cli({**env, "QA_INPUT_CACHE": str(tmp_path / "cache2"),
                  "QA_JOB_SPEC": json.dumps({**job, "output_root": str(tmp_path / "disk2")})})  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    report = store.read_report()
    assert report.launch == 2 and report.state is RunState.SUCCEEDED
    assert [(s.name, s.skipped) for s in report.stages] == [
        ("inputs", False),
        ("train", True),
        ("merge", True),
        ("eval", True),
    ]
    assert "[run] $ " not in p.stderr  # no command ran at all (not even make-tiny-model)

    client = s3.client()
    for key in s3.keys("runs/smoke-rep/eval/"):
        client.delete_object(Bucket=s3.bucket, Key=key)
    p = _run_cli(
        {**env, "QA_JOB_SPEC": json.dumps({**job, "output_root": str(tmp_path / "disk3")})}, timeout=600
    )
    assert p.returncode == 0, p.stderr[-3000:]
    report = store.read_report()
    assert report.launch == 3 and [(s.name, s.skipped) for s in report.stages] == [
        ("inputs", False), ("train", True), ("merge", True), ("eval", False)]  # fmt: skip
    assert "restoring merged/" in p.stderr and "eval" in store.committed()
    assert (tmp_path / "disk3" / "smoke-rep" / "merged" / "config.json").is_file()
    assert not (tmp_path / "disk3" / "smoke-rep" / "model").exists()  # final/ was not needed: merge was done
    assert os.path.isdir(tmp_path / "cache1")


def test_cloud_backend_refuses_a_container_path_before_training(tmp_path):
    """No /data on a rented host: a local data path that is not there fails the inputs stage at once."""
    job = {"run_name": "nodata", "model": {"name_or_path": "org/m"}, "stages": ["train"],
           "data": {"train_path": "/data/train.json"}, "output_root": str(tmp_path / "out")}  # fmt: skip
    env = {**os.environ, "QA_JOB_SPEC": json.dumps(job), "QA_BACKEND": "runpod"}
    for k in ("RUNPOD_POD_ID", "RUNPOD_API_KEY", "QA_KEEP_INSTANCE"):
        env.pop(k, None)
    p = _run_cli(env)
    assert p.returncode == 2, p.stderr
    assert "error: data.train_path: /data/train.json does not exist on this runpod instance" in p.stderr
    report = RunReport.from_json((tmp_path / "out" / "nodata" / "report.json").read_text())
    assert report.state is RunState.FAILED and [(s.name, s.exit_code) for s in report.stages] == [
        ("inputs", 2)
    ]
    assert "cannot stop the runpod instance myself: RUNPOD_POD_ID, RUNPOD_API_KEY not set" in p.stderr
