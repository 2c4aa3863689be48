"""docker/locks/*.txt agree with pyproject.toml, with each other and with this test venv (issue 12).

Refresh the locks with ``scripts/lock.sh``. Fast: parses files, no resolver, no network.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
LOCKS = REPO / "docker" / "locks"
sys.path.insert(0, str(REPO / "docker"))
from project_requirements import normalize, project_requirements  # noqa: E402

# Versions that follow the torch build (CUDA vs CPU): allowed to differ between the CPU and GPU locks.
TORCH_SPECIFIC = re.compile(r"^(torch|triton|pytorch-triton|nvidia-.*|cuda-.*)$")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")
CUDA_ONLY = re.compile(r"^# cuda-only: ([A-Za-z0-9._-]+)==(\S+)")


def read_lock(name: str, cuda_only: bool = False) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (LOCKS / name).read_text().splitlines():
        m = PIN.match(line) or (CUDA_ONLY.match(line) if cuda_only else None)
        if m:
            assert normalize(m[1]) not in pins, f"{name}: {m[1]} pinned twice"
            pins[normalize(m[1])] = m[2]
    assert pins, f"{name}: no pins"
    return pins


def check_specifiers(lock: dict[str, str], reqs: list[str], lock_name: str) -> None:
    for r in map(Requirement, reqs):
        if r.marker and not r.marker.evaluate({"platform_machine": "x86_64", "sys_platform": "linux"}):
            continue
        name = normalize(r.name)
        assert name in lock, f"{lock_name}: {r} from pyproject.toml is not locked: run scripts/lock.sh"
        version = Version(lock[name])
        assert r.specifier.contains(version, prereleases=True) or r.specifier.contains(
            Version(version.base_version), prereleases=True
        ), f"{lock_name}: {name}=={lock[name]} does not satisfy pyproject's {r}: run scripts/lock.sh"


def lock_extras(image: str) -> list[str]:
    """The extras scripts/lock.sh resolves for an image (CPU_EXTRAS / GPU_EXTRAS there)."""
    m = re.search(rf"^{image}_EXTRAS=(\S+)$", (REPO / "scripts" / "lock.sh").read_text(), flags=re.M)
    assert m, f"scripts/lock.sh: no {image}_EXTRAS="
    return m[1].split(",")


def test_images_carry_the_tracking_integrations() -> None:
    """training.report_to reaches the Trainer's integrations: tensorboard in the CPU image (and this venv), the
    three in the GPU image."""
    assert {"gpu", "tensorboard"} <= set(lock_extras("CPU")) and {"gpu", "tracking"} <= set(
        lock_extras("GPU")
    )
    assert "tensorboard" in read_lock("cpu.txt")
    cpu_image = re.search(
        r"^ARG PROJECT_EXTRAS=(\S+)$", (REPO / "docker" / "Dockerfile.cpu").read_text(), re.M
    )
    assert cpu_image and cpu_image[1].split(",") == lock_extras("CPU"), "Dockerfile.cpu installs other extras"
    assert {"tensorboard", "wandb", "mlflow-skinny"} <= set(read_lock("gpu.txt"))


def test_cpu_lock_covers_pyproject() -> None:
    reqs = project_requirements(REPO / "pyproject.toml", lock_extras("CPU"), ["flash-attn"])
    lock = read_lock("cpu.txt")
    check_specifiers(lock, reqs, "cpu.txt")
    # The CPU build of the torch on this machine's disk (.ci/run installs torch==2.13.0 first).
    assert lock["torch"].split("+")[0] == "2.13.0"
    assert "flash-attn" not in lock and not any(n.startswith("nvidia-") for n in lock)


def test_gpu_lock_covers_pyproject() -> None:
    reqs = project_requirements(REPO / "pyproject.toml", lock_extras("GPU"), [])
    lock = read_lock("gpu.txt", cuda_only=True)
    check_specifiers(lock, reqs, "gpu.txt")
    assert "+" not in lock["torch"] and any(n.startswith("nvidia-") for n in lock), (
        "gpu.txt: not a CUDA torch"
    )
    assert "vllm" not in lock, "vLLM belongs to the eval venv (eval.txt), not the training venv"


def test_eval_lock_covers_pyproject() -> None:
    reqs = project_requirements(REPO / "pyproject.toml", ["eval"], [])
    lock = read_lock("eval.txt")
    check_specifiers(lock, reqs, "eval.txt")
    assert "deepspeed" not in lock and "flash-attn" not in lock


def test_cpu_and_gpu_locks_share_versions() -> None:
    cpu, gpu = read_lock("cpu.txt"), read_lock("gpu.txt")
    shared = sorted((set(cpu) & set(gpu)) - {n for n in cpu if TORCH_SPECIFIC.match(n)})
    assert len(shared) > 40
    differ = {n: (cpu[n], gpu[n]) for n in shared if cpu[n] != gpu[n]}
    assert not differ, f"CPU and GPU locks disagree (cpu, gpu): {differ}: run scripts/lock.sh"


def test_cpu_constraints_match_cpu_lock() -> None:
    assert read_lock("cpu.constraints.txt") == read_lock("cpu.txt"), (
        "cpu.constraints.txt is stale: run scripts/lock.sh"
    )


def test_lock_detects_a_violated_specifier() -> None:
    """The specifier check is real: a lock below pyproject's floor fails it."""
    with pytest.raises(AssertionError, match="does not satisfy"):
        check_specifiers({"transformers": "4.57.0"}, ["transformers>=5.0,<6"], "fake.txt")
    with pytest.raises(AssertionError, match="not locked"):
        check_specifiers({}, ["peft>=0.17"], "fake.txt")


def test_test_venv_matches_cpu_lock() -> None:
    """The venv running these tests has the CPU image's versions (.ci/run installs with -c cpu.constraints.txt)."""
    installed = {normalize(d.metadata["Name"]): d.version for d in md.distributions()}
    lock = read_lock("cpu.txt")
    differ = {n: (v, installed[n]) for n, v in lock.items() if n in installed and installed[n] != v}
    assert not differ, f"test venv differs from docker/locks/cpu.txt (lock, installed): {differ}"
    missing = sorted(set(lock) - set(installed))
    assert not missing, f"in docker/locks/cpu.txt but not installed in this venv: {missing}"
