"""The project's CPU image for tests that run the real container: built once per session from the working tree,
and (``registry_cpu_image``) pushed to the session's local registry so a "bare host" can pull it.

A test module gets these with ``pytest_plugins = ["tests.fixtures_images"]`` (the registry fixtures come along).
Set ``QA_CPU_IMAGE=tag`` to use an existing local image as is instead of building.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.fixtures_registry import LocalRegistry

pytest_plugins = ["tests.fixtures_registry"]

REPO = Path(__file__).resolve().parent.parent
BASE = "qa-expert/base:bookworm"
DEFAULT_TAG = "qa-expert/train-cpu:latest"  # compose.yaml's tag for docker/Dockerfile.cpu


def _run(cmd: list[str], timeout: float) -> None:
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"`{' '.join(cmd)}` failed ({p.returncode}):\n{(p.stdout + p.stderr)[-4000:]}")


@pytest.fixture(scope="session")
def cpu_image(docker_engine) -> str:
    """The project's CPU image, built from the working tree (only the project layer changes between runs)."""
    import docker

    client = docker.from_env()
    given = os.environ.get("QA_CPU_IMAGE")
    if given:
        try:
            client.images.get(given)
        except docker.errors.ImageNotFound:
            pytest.fail(f"QA_CPU_IMAGE={given} is not an image on this engine")
        return given
    try:
        client.images.get(BASE)
    except docker.errors.ImageNotFound:
        _run(["bash", "scripts/seed-base-image.sh"], timeout=1800)
    # every time: seconds when the wheels are there, and a lock change (a new package) reaches the image
    _run(["bash", "scripts/build-wheelhouse.sh"], timeout=3600)
    _run(["docker", "build", "-f", "docker/Dockerfile.cpu", "--network", "host", "--build-arg", f"BASE_IMAGE={BASE}",
          "--build-arg", "PIP_OFFLINE=1", "-t", DEFAULT_TAG, "."], timeout=3600)  # fmt: skip
    return DEFAULT_TAG


@pytest.fixture(scope="session")
def registry_cpu_image(cpu_image: str, registry: LocalRegistry) -> str:
    """``cpu_image`` pushed to the local registry with ``launch.images.push`` (what a user does before a cloud
    submit); the reference a host pulls. Its local tag is dropped so only the registry has it under that name."""
    import docker
    from launch.images import push

    ref = registry.ref("qa-expert/train-cpu", "t" + uuid.uuid4().hex[:8])
    pushed = push(cpu_image, ref)
    docker.from_env().images.remove(pushed.ref)
    return pushed.ref
