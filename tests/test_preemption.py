"""Preemption-safe training (issue 13): time-bounded saves, a finished run stays finished on resume, SIGTERM.

Real parts only: `python -m qa_train train` subprocesses against SeaweedFS, the CPU image under `docker stop`.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from qa_train.storage import S3Location
from qa_train.sync.manifest import FileEntry, Manifest
from qa_train.sync.remote import apply_retention, list_run
from tests.test_sync_train import Proc

pytest_plugins = ["tests.fixtures_images"]


def cmd(model: Path, data: Path, out: Path, sync_to: str | None, run_name: str, *extra: str) -> list[str]:
    import sys

    base = [
        sys.executable, "-m", "qa_train", "train", "--model_name_or_path", str(model), "--train_path", str(data),
        "--output_dir", str(out), "--logging_steps", "1", "--per_device_train_batch_size", "2",
        "--packing", "False", "--model_max_length", "256", "--report_to", "none", "--use_cpu", "True",
        "--seed", "42", "--disable_tqdm", "True", "--run_name", run_name, "--dataloader_num_workers", "0",
    ]  # fmt: skip
    if sync_to:
        base += ["--sync_to", sync_to]
    return [*base, *extra]


@pytest.mark.slow
def test_resume_at_max_steps_trains_no_step_and_only_verifies_final(s3, tiny_llama, records_file, tmp_path):
    """48 records / batch 2 = 24 steps per epoch: max_steps 6 is not an epoch boundary (the measured bug)."""
    sync_to, env = s3.uri("runs"), {**s3.env, "PYTHONUNBUFFERED": "1"}
    extra = ("--max_steps", "6", "--save_steps", "3")
    first = Proc(cmd(tiny_llama, records_file, tmp_path / "a", sync_to, "done", *extra), env)
    assert first.wait() == 0, first.output[-3000:]
    client = s3.client()
    manifest_key = "runs/done/final/_manifest.json"
    before = client.head_object(Bucket=s3.bucket, Key=manifest_key)["LastModified"]

    again = Proc(cmd(tiny_llama, records_file, tmp_path / "b", sync_to, "done", *extra), env)
    assert again.wait() == 0, again.output[-3000:]
    assert "Resuming from checkpoint-6" in again.output
    assert "training is finished, going straight to the final save" in again.output
    assert "s3://" in again.output and "already committed" in again.output
    summary = json.loads((tmp_path / "b" / "train_summary.json").read_text())
    assert summary["global_step"] == 6, "resuming a finished run must not train another step"
    state = json.loads((tmp_path / "b" / "trainer_state.json").read_text())
    assert max(h["step"] for h in state["log_history"]) == 6
    assert not (tmp_path / "b" / "checkpoint-7").exists()
    assert client.head_object(Bucket=s3.bucket, Key=manifest_key)["LastModified"] == before, (
        "final re-uploaded"
    )
    assert (tmp_path / "b" / "model.safetensors").is_file(), "the local final save still happens"


@pytest.mark.slow
def test_save_every_minutes_saves_on_time_with_save_strategy_no(s3, tiny_llama, records_file, tmp_path):
    """--save_strategy no and a 1e-6 min (60 us) bound: checkpoints appear anyway, and get committed.

    The bound is shorter than any training step, so the timed save is due after the first one on any machine
    (0.6 s was longer than a whole 12-step run on a fast CI host: no save, a flaky failure)."""
    out = tmp_path / "timed"
    p = Proc(
        cmd(tiny_llama, records_file, out, s3.uri("runs"), "timed", "--max_steps", "4", "--save_strategy", "no",
            "--save_every_minutes", "0.000001"),
        {**s3.env, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert p.wait() == 0, p.output[-3000:]
    assert "save_every_minutes:" in p.output
    committed = [f.step for f in list_run(s3.client(), S3Location.parse(s3.uri("runs/timed"))) if f.committed]
    assert len([s for s in committed if s is not None]) >= 1, p.output[-2000:]


def test_save_every_minutes_must_be_positive(tiny_llama, records_file, tmp_path, capsys):
    from qa_train.train import main

    rc = main(cmd(tiny_llama, records_file, tmp_path / "o", None, "x", "--save_every_minutes", "-1")[4:])
    assert rc == 2
    assert "--save_every_minutes must be >= 0" in capsys.readouterr().err


def test_retention_never_deletes_the_newest_committed_checkpoint(s3):
    """keep=1 with a newer upload still in flight (no manifest yet): the newest committed one stays."""
    client = s3.client()
    run = S3Location.parse(s3.uri("ret"))
    for step in (2, 4, 6):
        client.put_object(Bucket=s3.bucket, Key=f"ret/checkpoint-{step}/w.bin", Body=b"x" * 10)
    manifest = Manifest(files=[FileEntry("w.bin", 10, "0" * 64)]).to_json().encode()
    for step in (2, 4):
        client.put_object(Bucket=s3.bucket, Key=f"ret/checkpoint-{step}/_manifest.json", Body=manifest)
    committed = {f.name for f in list_run(client, run) if f.committed}
    assert committed == {"checkpoint-2", "checkpoint-4"}, committed
    deleted = apply_retention(client, run, keep=1)
    assert deleted == ["checkpoint-2"]
    left = {f.name: f.committed for f in list_run(client, run)}
    assert left == {"checkpoint-4": True, "checkpoint-6": False}


def test_spec_field_run_flag_and_interruptible_default(tmp_path, capsys, monkeypatch):
    """The spec field is validated (> 0), passed as --save_every_minutes, defaulted to 30 for interruptible
    jobs by the launcher, and --dry_run says what a preemption can lose."""
    from launch.render import INTERRUPTIBLE_SAVE_MINUTES, with_save_bound
    from launch.submit import main as submit_main
    from qa_train.entrypoint.flags import default_plan, train_flags
    from qa_train.spec import SpecError, load_job, parse_job

    job = load_job("jobs/mistral-qa-lora.yaml")
    assert job.training.save_every_minutes is None
    assert "--save_every_minutes" not in train_flags(job, default_plan(job))
    bounded = with_save_bound(job, interruptible=True)
    flags = train_flags(bounded, default_plan(bounded))
    assert flags[flags.index("--save_every_minutes") + 1] == str(INTERRUPTIBLE_SAVE_MINUTES)
    assert with_save_bound(job, interruptible=False).training.save_every_minutes is None
    own = job.model_copy(update={"training": job.training.model_copy(update={"save_every_minutes": 5.0})})
    assert with_save_bound(own, interruptible=True).training.save_every_minutes == 5.0
    with pytest.raises(SpecError, match="training.save_every_minutes"):
        parse_job({**job.model_dump(), "training": {"save_every_minutes": 0}})

    monkeypatch.setenv("QA_RUNS_ROOT", str(tmp_path / "runs"))
    args = ["--gpu", "a6000", "--job", "jobs/mistral-qa-lora.yaml", "--dry_run", "--job_id", "d1"]
    assert submit_main([*args, "--interruptible"]) in (0, None)
    out = capsys.readouterr()
    assert json.loads(out.out)["job"]["training"]["save_every_minutes"] == INTERRUPTIBLE_SAVE_MINUTES
    assert "a preemption loses at most 30 minutes of training" in out.err
    bound = next(ln for ln in out.err.splitlines() if "a preemption loses at most" in ln)
    assert "$" not in bound, "no offer (and no typical price in launch/gpus.py) at dry-run time"
    assert submit_main(args) in (0, None)
    out = capsys.readouterr()
    assert json.loads(out.out)["job"]["training"]["save_every_minutes"] is None
    assert "a preemption loses" not in out.err


def test_preemption_bound_line_with_a_price():
    from launch.render import preemption_bound_line

    line = preemption_bound_line(30, 1.2)
    assert line is not None and "at most 30 minutes" in line and "≈ $0.60 at this offer's price" in line
    assert preemption_bound_line(None) is None


def _wait_for(proc: Proc, text: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while text not in proc.output and proc.p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert text in proc.output, f"never saw {text!r}:\n{proc.output[-3000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("grace", ["25", "0"])
def test_sigterm_saves_and_commits_when_it_fits_else_exits_at_once(
    s3, tiny_llama, records_file, tmp_path, grace
):
    """Mid-run SIGTERM (save_strategy no: nothing saved before): with a 25 s grace the step ends, a checkpoint
    is saved and committed, exit 143; with a 0 s grace it says the save would not fit and exits, committing
    nothing. Either way no final model."""
    run_name = f"term{grace}"
    out = tmp_path / run_name
    p = Proc(
        cmd(tiny_llama, records_file, out, s3.uri("runs"), run_name, "--max_steps", "100000",
            "--save_strategy", "no", "--sigterm_grace_s", grace),
        {**s3.env, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    _wait_for(p, "'loss'")
    t0 = time.monotonic()
    p.p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout=120)
    took = time.monotonic() - t0
    assert rc == 143, p.output[-3000:]
    committed = [  # checkpoints and final only (the tokenized-data cache commits too, and is neither)
        f
        for f in list_run(s3.client(), S3Location.parse(s3.uri(f"runs/{run_name}")))
        if f.committed and not f.name.startswith("tokenized")
    ]
    assert not (out / "train_summary.json").exists() and "final" not in {f.name for f in committed}
    if grace == "25":
        assert len(committed) == 1 and committed[0].step, p.output[-3000:]
        assert f"SIGTERM: saved and committed checkpoint-{committed[0].step} in" in p.output
        assert took < 25
    else:
        assert (
            "SIGTERM: last checkpoint is" in p.output and "> grace" in p.output and "exiting now" in p.output
        )
        assert committed == []
        assert took < 15


@pytest.mark.slow
@pytest.mark.docker
def test_docker_stop_saves_and_commits_then_report_stays_running(s3, cpu_image, records_file):
    """`docker stop -t 20` on the CPU image mid-training: PID 1 (`qa_train run`) forwards SIGTERM to the train
    stage and waits; the stage ends its step, saves and commits a checkpoint, and the container exits by itself
    (143) before the SIGKILL; the run report stays `running` (a preemption never looks final)."""
    import os
    import shutil
    import subprocess
    import tempfile
    import uuid

    from qa_train.contract import RunLayout
    from qa_train.storage import RunStore

    data = Path(tempfile.mkdtemp(prefix="qa-dstop-", dir="/tmp"))
    name = f"qa-dstop-{uuid.uuid4().hex[:8]}"
    try:
        os.chmod(data, 0o755)
        shutil.copy(records_file, data / "train.json")
        os.chmod(data / "train.json", 0o644)
        job = {
            "run_name": "dstop", "stages": ["train"], "use_lora": False, "packing": True,
            "model": {"make_tiny": {"arch": "llama", "vocab_size": 512, "hidden_size": 64, "num_layers": 2}},
            "data": {"train_path": "/data/train.json"},
            "training": {"max_steps": 100000, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
                         "save_strategy": "no", "evaluation_strategy": "no", "logging_steps": 1,
                         "model_max_length": 512, "gradient_checkpointing": False, "bf16": False, "tf32": False},
            "sync": {"target": s3.uri("runs"), "endpoint_url": s3.endpoint_url},
        }  # fmt: skip
        wanted = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")
        env = {k: s3.env[k] for k in wanted}
        run = ["docker", "run", "-d", "--name", name, "--network", "host", "-v", f"{data}:/data:ro",
               "-e", f"QA_JOB_SPEC={json.dumps(job)}", "-e", "PYTHONUNBUFFERED=1"]  # fmt: skip
        for k, v in env.items():
            run += ["-e", f"{k}={v}"]
        subprocess.run([*run, cpu_image], check=True, capture_output=True, timeout=60)

        def logs() -> str:
            p = subprocess.run(["docker", "logs", name], capture_output=True, text=True, timeout=30)
            return p.stdout + p.stderr

        deadline = time.monotonic() + 300
        while "'loss'" not in logs() and time.monotonic() < deadline:
            time.sleep(1)
        assert "'loss'" in logs(), logs()[-3000:]
        t0 = time.monotonic()
        subprocess.run(["docker", "stop", "-t", "20", name], check=True, capture_output=True, timeout=60)
        stop_s = time.monotonic() - t0
        out = logs()
        state = subprocess.run(["docker", "inspect", "-f", "{{.State.ExitCode}}", name], capture_output=True,
                               text=True, timeout=30).stdout.strip()  # fmt: skip
        assert state == "143", out[-3000:]
        assert stop_s < 20, f"docker had to SIGKILL after {stop_s:.1f}s:\n{out[-3000:]}"
        assert "[run] signal 15: forwarded to the stage" in out
        line = next((ln for ln in out.splitlines() if "SIGTERM: saved and committed checkpoint-" in ln), None)
        assert line is not None, out[-3000:]
        step = int(line.split("checkpoint-")[1].split()[0])
        committed = {
            f.name for f in list_run(s3.client(), S3Location.parse(s3.uri("runs/dstop"))) if f.committed
        }
        assert f"checkpoint-{step}" in committed and "final" not in committed
        report = RunStore(RunLayout.of(s3.uri("runs"), "dstop"), s3.endpoint_url).read_report()
        assert report is not None and report.state == "running" and "interrupted" in (report.error or "")
        print(f"docker stop took {stop_s:.1f}s; {line.strip()}")
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
        shutil.rmtree(data, ignore_errors=True)
