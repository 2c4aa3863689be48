"""Bad input through the launcher's real CLI (issue 17): refused with one ``error:`` line naming the flag, key or
file, exit 2 for bad input and 1 for a runtime failure, and nothing rendered, recorded, rented or leaked.

Most cases call ``launch.submit.main(argv)`` in-process (fast); a few run ``python launch/submit.py`` as a
subprocess to prove the script path. No Docker, no network: every refusal must come before either is touched.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest

from launch import credentials
from launch.credentials import CHECKED, redact

REPO = Path(__file__).resolve().parent.parent
VAST_SECRET = "vast-key-5f1e9c0d2b"
AWS_TOKEN = "aws-session-token-77af3c"
PW = "hunter2-pw-value"


@pytest.fixture
def cli(monkeypatch, tmp_path, capsys):
    """Run the launcher in-process in the repository, with a clean secret environment and runs under tmp."""
    monkeypatch.chdir(REPO)
    for name in os.environ:
        if name.startswith(("AWS_", "HF_", "VAST_", "RUNPOD_", "QA_", "REGISTRY_", "WANDB_", "MLFLOW_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("QA_RUNS_ROOT", str(tmp_path / "runs"))
    backend_calls: list[str] = []

    def no_backend(name, **kw):  # any backend use means the refusal came too late
        backend_calls.append(name)
        raise AssertionError(f"backend {name} must not be reached")

    monkeypatch.setattr("launch.backends.get_compute", no_backend)

    def run(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
        from launch.submit import main

        rc = main(args)
        out, err = capsys.readouterr()
        return rc, out, err

    run.backend_calls = backend_calls  # type: ignore[attr-defined]
    return run


def _nothing_recorded(runs: Path) -> None:
    """No job folder, and no registry row (a registry file that is garbage stays garbage, untouched)."""
    if not runs.exists():
        return
    assert [p.name for p in runs.iterdir() if p.is_dir()] == []
    db = runs / "registry.sqlite"
    if db.exists() and db.read_bytes().startswith(b"SQLite format 3"):
        assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _job(tmp_path: Path, **patch: object) -> str:
    """jobs/smoke.yaml with top-level keys replaced (valid YAML via JSON)."""
    import yaml

    doc = yaml.safe_load((REPO / "jobs" / "smoke.yaml").read_text())
    doc.update(patch)
    p = tmp_path / "job.yaml"
    p.write_text(json.dumps(doc))
    return str(p)


SMOKE = ["--gpu", "cpu", "--job", "jobs/smoke.yaml"]

# (id, argv, env, exit code, what the error line must contain, values that must appear nowhere)
# fmt: off
CASES = [
    ("dryrun-typo", ["--backend", "local", *SMOKE, "--dryrun"], {}, 2,
     "unknown flag --dryrun for submit (did you mean --dry_run?)", []),
    ("unknown-flag-after-dry-run", ["--dry_run", "--bogus", "1"], {}, 2, "unknown flag --bogus for submit", []),
    ("typo-in-offers", ["offers", "--gpu", "a100", "--limt", "3"], {}, 2,
     "unknown flag --limt for offers (did you mean --limit?)", []),
    ("backend-foo", [*SMOKE, "--backend", "foo"], {}, 2,
     "--backend must be one of local, vast, runpod, cheapest (got 'foo')", []),
    ("num-gpus-abc", ["--num_gpus", "abc"], {}, 2, "--num_gpus must be an integer (got 'abc')", []),
    ("num-gpus-zero", ["--num_gpus", "0", "--dry_run"], {}, 2, "--num_gpus must be at least 1", []),
    ("max-price-negative", ["--max_price=-1", *SMOKE], {}, 2, "--max_price must be greater than 0", []),
    ("dry-run-not-bool", [*SMOKE, "--dry_run", "maybe"], {}, 2, "--dry_run must be True or False", []),
    ("unknown-command", ["foo"], {}, 2, "unknown command 'foo'; commands: submit, offers", []),
    ("command-typo", ["stauts", "j1"], {}, 2, "unknown command 'stauts' (did you mean 'status'?)", []),
    ("missing-job-id", ["logs"], {}, 2, "logs needs JOB_ID", []),
    ("extra-positional", ["status", "a", "b"], {}, 2, "unexpected argument 'b' for status", []),
    ("gpu-unknown", ["--gpu", "a1000", "--dry_run"], {}, 2, "--gpu must be one of", []),
    ("image-flag-semicolon", [*SMOKE, "--dry_run", "--image", "img;rm -rf /"], {}, 2,
     "--image: not a valid Docker image reference", []),
    ("vast-key-newline", ["--gpu", "a6000", "--job", "jobs/mistral-qa-lora.yaml", "--backend", "vast"],
     {"VAST_API_KEY": VAST_SECRET + "\n"}, 2, "VAST_API_KEY contains a newline", [VAST_SECRET]),
    ("aws-token-crlf", [*SMOKE, "--dry_run"], {"AWS_SESSION_TOKEN": AWS_TOKEN + "\r\n"}, 2,
     "AWS_SESSION_TOKEN contains a newline", [AWS_TOKEN]),
    ("registry-password-control-char", ["list"], {"REGISTRY_PASSWORD": PW + "\x1b[0m"}, 2,
     "REGISTRY_PASSWORD contains a control character", [PW]),
    ("plan-does-not-fit", ["--gpu", "a6000", "--num_gpus", "1", "--offload", "none", "--dry_run"], {}, 2,
     "does not fit on RTX A6000", []),
]
# fmt: on


@pytest.mark.parametrize(
    "argv, env, code, message, secret", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_one_error_line_and_nothing_happens(cli, tmp_path, argv, env, code, message, secret):
    rc, out, err = cli(argv, env)
    assert rc == code, err
    assert message in _one_error_line(err)
    assert out == ""  # nothing rendered or printed before the refusal
    assert cli.backend_calls == []  # nothing rented, no container
    _nothing_recorded(tmp_path / "runs")
    for s in secret:
        assert s not in out + err


def test_dry_run_both_spellings_and_no_forms_are_valid(cli, tmp_path):
    for flag in (["--dry-run"], ["--dry_run"], ["--dry_run=True"], ["--dry_run", "true"]):
        rc, out, err = cli([*SMOKE, *flag, "--job_id", "007"])
        assert rc == 0, err
        doc = json.loads(out)
        assert doc["job_id"] == "007"  # typed as a string, not read by Fire as the number 7
    assert not (tmp_path / "runs").exists()  # a dry run records nothing


@pytest.mark.parametrize(
    "patch, key, message",
    [
        ({"image": "qa expert/train:latest"}, "image", "not a valid Docker image reference"),
        ({"image": "qa-expert/train;id"}, "image", "not a valid Docker image reference"),
        ({"output_root": "../../../etc"}, "output_root", "must be an absolute path"),
        ({"output_root": "/runs/../../etc"}, "output_root", "must not contain '..'"),
        ({"sync": {"target": "s3://bkt/runs", "endpoint_url": "ftp://x"}}, "sync.endpoint_url", "http://"),
        (
            {"sync": {"target": "s3://bkt/runs", "endpoint_url": f"http://user:{PW}@host"}},
            "sync.endpoint_url",
            "must not contain credentials",
        ),
        ({"sync": {"target": "s3://Bad_Bucket/runs"}}, "sync.target", "s3://bucket/prefix"),
    ],
)
def test_bad_spec_fields_name_file_and_key(cli, tmp_path, patch, key, message):
    job = _job(tmp_path, **patch)
    rc, out, err = cli(["--gpu", "cpu", "--job", job, "--backend", "local"])
    assert rc == 2, err
    line = _one_error_line(err)
    assert line.startswith(f"error: {job}: {key}: ") and message in line
    assert PW not in err + out  # a password in an endpoint URL is never echoed
    assert cli.backend_calls == []
    _nothing_recorded(tmp_path / "runs")


def test_secret_file_strips_one_newline_only(cli, tmp_path):
    key = tmp_path / "vast.key"
    key.write_text(VAST_SECRET + "\n")  # what `echo key > file` writes: fine
    rc, out, err = cli(["list"], {"VAST_API_KEY_FILE": str(key)})
    assert rc == 0, err
    key.write_text(VAST_SECRET + "\n\n")
    rc, out, err = cli(["list"], {"VAST_API_KEY_FILE": str(key)})
    assert rc == 2 and "VAST_API_KEY contains a newline" in _one_error_line(err)
    assert str(key) in err and VAST_SECRET not in out + err


def test_env_file_secret_with_control_character(cli, tmp_path):
    env_file = tmp_path / "secrets.env"
    env_file.write_text(f"HF_TOKEN=hf_{PW}\tx\n")
    rc, out, err = cli([*SMOKE, "--dry_run", "--env_file", str(env_file)])
    assert rc == 2
    line = _one_error_line(err)
    assert "HF_TOKEN contains a control character" in line and str(env_file) in line
    assert PW not in out + err


def test_registry_that_is_not_a_database(cli, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "registry.sqlite").write_bytes(b"this is not sqlite at all\n" * 100)
    for argv in (["list"], ["status", "j1"], [*SMOKE, "--backend", "local", "--job_id", "j1"]):
        rc, out, err = cli(argv)
        assert rc == 1, err
        assert f"{runs / 'registry.sqlite'} is not a job registry (" in _one_error_line(err)
        assert cli.backend_calls == []
    assert not (runs / "j1").exists()


# -- redaction ---------------------------------------------------------------------------------------------


def test_redacting_json_keeps_it_valid_and_ignores_literals():
    doc = {"use_lora": True, "qlora": False, "n": 12345678, "x": None, "token": "tok-abcdefgh-123",
           "note": 'quote " and \\ backslash secret-q"uo\\te'}  # fmt: skip
    secrets = {"A": "true", "B": "12345678", "C": "tok-abcdefgh-123", "D": "null", "E": 'secret-q"uo\\te'}
    for text in (json.dumps(doc, indent=2), json.dumps(doc)):
        red = json.loads(redact(text, secrets))  # still valid JSON
        assert red["use_lora"] is True and red["qlora"] is False and red["n"] == 12345678 and red["x"] is None
        assert red["token"] == "***" and red["note"] == 'quote " and \\ backslash ***'
    assert redact(doc, secrets)["token"] == "***" and redact(doc, secrets)["use_lora"] is True
    assert redact("short abc value", ["abc"]) == "short abc value"  # < 8 characters: not a secret
    assert redact("retry with tok-abcdefgh-123 failed", secrets) == "retry with *** failed"


def test_log_filter_redacts_message_args_and_traceback():
    credentials.remember(VAST_SECRET)
    stream = StringIO()
    log = logging.getLogger("test_bad_input.redaction")
    log.propagate = False
    handler = logging.StreamHandler(stream)
    log.addHandler(handler)
    credentials.install_log_redaction(log)
    try:
        log.warning("vast: GET /offers failed (%s); retrying", f"Bearer {VAST_SECRET}")
        try:
            raise RuntimeError(f"header Authorization: Bearer {VAST_SECRET}")
        except RuntimeError:
            log.exception("boom")
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    assert "retrying" in text and "RuntimeError" in text
    assert VAST_SECRET not in text and "Bearer ***" in text


def test_registry_redacts_reasons_and_events(tmp_path):
    """Every reason the registry stores (events, launch ends, blocklist) goes through the redaction hook."""
    from launch.jobs.state import JobState, Registry

    credentials.remember(VAST_SECRET)
    reg = Registry(tmp_path / "runs")
    reg.claim("j1", "vast", gpu="a6000", run_name="r", reason=f"submitted with {VAST_SECRET}")
    reg.transition("j1", JobState.STARTING, f"walking with key {VAST_SECRET}")
    reg.add_launch("j1", backend="vast", instance_id="7001", machine_id="501")
    reg.end_launch("j1", "7001", f"destroyed: Bearer {VAST_SECRET}")
    reg.block("j1", {"vast/machine/501"}, f"lost with {VAST_SECRET}")
    reg.transition("j1", JobState.FAILED, f"401 for key {VAST_SECRET}")
    assert not reg.transition("j1", JobState.CANCELLED, f"again {VAST_SECRET}")  # ended: nothing stored
    assert VAST_SECRET.encode() not in (tmp_path / "runs" / "registry.sqlite").read_bytes()
    reasons = [e.reason for e in reg.events("j1")]
    assert reasons == ["submitted with ***", "walking with key ***", "401 for key ***"]
    assert reg.launches("j1")[0].end_reason == "destroyed: Bearer ***"
    own = Registry(tmp_path / "other", redact=lambda v: "X")
    own.claim("j2", "vast", gpu="a6000", run_name="r")
    own.transition("j2", JobState.FAILED, "anything")
    assert [e.reason for e in own.events("j2")] == ["X", "X"]


def test_names_checked_cover_every_known_secret():
    for name in ("VAST_API_KEY", "RUNPOD_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_SESSION_TOKEN", "HF_TOKEN", "REGISTRY_USERNAME", "REGISTRY_PASSWORD", "WANDB_API_KEY",
                 "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):  # fmt: skip
        assert name in CHECKED


# -- the container's `sync ls` with a CRLF token ------------------------------------------------------------


def test_sync_ls_refuses_a_crlf_token_without_printing_it(monkeypatch, capsys):
    from qa_train.sync.cli import main as sync_main

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY01")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-access-key-0001")
    monkeypatch.setenv("AWS_SESSION_TOKEN", AWS_TOKEN + "\r\n")
    rc = sync_main(["--endpoint_url", "http://127.0.0.1:9", "ls", "s3://bucket/run"])
    out, err = capsys.readouterr()
    assert rc == 2
    assert "AWS_SESSION_TOKEN contains a newline" in _one_error_line(err)
    assert AWS_TOKEN not in out + err


# -- the script path ---------------------------------------------------------------------------------------


def _script(
    args: list[str], tmp_path: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "HF_", "VAST_", "RUNPOD_", "QA_"))
    }
    base.update({"QA_RUNS_ROOT": str(tmp_path / "runs"), **(env or {})})
    return subprocess.run([sys.executable, "launch/submit.py", *args], capture_output=True, text=True,
                          cwd=REPO, env=base, timeout=60)  # fmt: skip


def test_script_refuses_a_typo_before_submitting(tmp_path):
    p = _script(["--backend", "local", *SMOKE, "--dryrun"], tmp_path)
    assert p.returncode == 2 and p.stdout == ""
    assert _one_error_line(p.stderr) == "error: unknown flag --dryrun for submit (did you mean --dry_run?)"
    assert not (tmp_path / "runs").exists()


def test_script_refuses_a_key_with_a_newline_without_printing_it(tmp_path):
    p = _script(["--gpu", "a6000", "--job", "jobs/mistral-qa-lora.yaml", "--backend", "vast"], tmp_path,
                {"VAST_API_KEY": VAST_SECRET + "\n", "VAST_API_URL": "http://127.0.0.1:9"})  # fmt: skip
    assert p.returncode == 2
    assert "VAST_API_KEY contains a newline" in _one_error_line(p.stderr)
    assert VAST_SECRET not in p.stdout + p.stderr
    assert not (tmp_path / "runs").exists()


def test_script_garbage_registry_is_one_line(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "registry.sqlite").write_text("garbage")
    p = _script(["list"], tmp_path)
    assert p.returncode == 1 and "is not a job registry" in _one_error_line(p.stderr)
