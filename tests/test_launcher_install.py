"""The thin launcher (issue 21 item 5): ``pip install .`` alone gives a working ``qa-launch`` without torch.

A fresh venv gets only the project's default install (from a copy of the checkout, so no build output lands in
the shared tree; wheels come from pip's cache and configured index). Then, from a folder outside the checkout
(so nothing is imported from the source tree): ``--dry_run``, a submit to the vast.ai double with the spec
uploaded to real object storage and the image checked in a real registry, and ``status``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_submit_cli import VAST_KEY

REPO = Path(__file__).resolve().parent.parent
pytest_plugins = [
    "tests.test_submit_cli"
]  # its fixtures: vast (the HTTP double) and tiny_image (in a registry)
HEAVY = ("torch", "transformers", "datasets", "matplotlib")


def _du_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6


def _launcher_venv(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for pkg in ("qa_train", "launch"):
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    p = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(src)],
                       capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    return venv


@pytest.mark.slow
@pytest.mark.docker
def test_the_launcher_alone_installs_without_torch_and_submits(tmp_path, vast, s3, tiny_image):
    import yaml

    venv = _launcher_venv(tmp_path)
    bin_ = venv / "bin"
    away = tmp_path / "elsewhere"
    away.mkdir()
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "HF_", "VAST_", "RUNPOD_", "QA_"))
    }
    base.pop("PYTHONPATH", None)
    base.update(QA_RUNS_ROOT=str(tmp_path / "runs"), PATH=f"{bin_}{os.pathsep}{base.get('PATH', '')}")

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), capture_output=True, text=True, cwd=away, env={**base, **(env or {})},
                              timeout=120)  # fmt: skip

    # nothing heavy is installed, and the launcher is imported from the venv, not from the checkout
    probe = ("import importlib.util, launch; "
             f"print(launch.__file__); print([m for m in {HEAVY!r} if importlib.util.find_spec(m)])")  # fmt: skip
    p = run(str(bin_ / "python"), "-c", probe)
    assert p.returncode == 0, p.stderr
    where, found = p.stdout.splitlines()
    assert where.startswith(str(venv)) and found == "[]", p.stdout
    assert run(str(bin_ / "python"), "-c", "import torch").returncode != 0
    p = run("qa-train", "train", "--help")  # the container's commands say what is missing, in one line
    assert p.returncode == 2 and "needs the train extra" in p.stderr and "Traceback" not in p.stderr, p.stderr
    print(f"launcher-only venv: {_du_mb(venv):.0f} MB")

    # --dry_run
    p = run("qa-launch", "--gpu", "a6000", "--job", str(REPO / "jobs" / "mistral-qa-lora.yaml"), "--dry_run")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["gpu"]["profile"] == "a6000"

    # a submit to the vast double: spec to SeaweedFS, image checked in the registry, one create
    doc = yaml.safe_load((REPO / "jobs" / "mistral-qa-lora.yaml").read_text())
    doc.update(run_name="thin-run", image=tiny_image)
    doc["sync"] = {"target": s3.uri("runs"), "endpoint_url": s3.endpoint_url}
    job = away / "job.yaml"
    job.write_text(yaml.safe_dump(doc))
    env = {"VAST_API_URL": vast.url, "VAST_API_KEY": VAST_KEY, **s3.server.env()}
    p = run("qa-launch", "--gpu", "a6000", "--job", str(job), "--backend", "vast", "--job_id", "thin-1",
            "--poll_s", "0", env=env)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.splitlines()[-1])["created"] is True
    assert len(vast.calls("PUT", "/asks/")) == 1 and len(vast.live_instances()) == 1
    assert set(s3.keys("runs/thin-run/")) >= {"runs/thin-run/spec.json", "runs/thin-run/report.json"}

    # status (people and machines), through the console script and the module
    p = run("qa-launch", "status", "thin-1", env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("job thin-1: RUNNING, 1 launch(es)"), p.stdout
    p = run(str(bin_ / "python"), "-m", "launch", "status", "thin-1", "--json", env=env)
    assert p.returncode == 0 and json.loads(p.stdout)["live"]["state"] == "RUNNING", p.stderr
    assert run("qa-launch", "cancel", "thin-1", env=env).returncode == 0 and vast.live_instances() == []
