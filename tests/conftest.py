"""Shared fixtures: tiny local models and small synthetic QA Expert / HotpotQA data (nothing downloaded)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qa_train.data.synthetic import make_hotpot, make_records  # noqa: F401 - re-exported for tests

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

# Fixture modules owned by other areas register here so every test file sees them.
pytest_plugins = [p for p in ("tests.fixtures_s3",) if (REPO / (p.replace(".", "/") + ".py")).exists()]


@pytest.fixture(scope="session")
def records_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.json"
    path.write_text(json.dumps(make_records(48, seed=1)))
    return path


@pytest.fixture(scope="session")
def validation_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "validation.json"
    path.write_text(json.dumps(make_records(12, seed=2)))
    return path


@pytest.fixture(scope="session")
def hotpot_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "hotpot_dev.json"
    path.write_text(json.dumps(make_hotpot(16, seed=3)))
    return path


_TINY_CACHE: dict[str, Path] = {}


def tiny_model(arch: str, root: Path) -> Path:
    """Build (once per session) a tiny random model of ``arch`` with a tokenizer trained on synthetic data."""
    if arch not in _TINY_CACHE:
        from qa_train.tiny_model import make_tiny_model

        data = root / f"tok-{arch}.json"
        data.write_text(json.dumps(make_records(64, seed=7)))
        _TINY_CACHE[arch] = make_tiny_model(root / f"tiny-{arch}", arch=arch, data=data, vocab_size=512)
    return _TINY_CACHE[arch]


@pytest.fixture(scope="session")
def tiny_models_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_llama(tiny_models_root) -> Path:
    return tiny_model("llama", tiny_models_root)


@pytest.fixture(scope="session")
def tiny_mistral(tiny_models_root) -> Path:
    return tiny_model("mistral", tiny_models_root)


@pytest.fixture(scope="session")
def tiny_qwen2(tiny_models_root) -> Path:
    return tiny_model("qwen2", tiny_models_root)


def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """Skip without an engine locally; CI sets QA_REQUIRE_DOCKER=1 so a missing engine fails instead."""
    if not docker_available():
        if os.environ.get("QA_REQUIRE_DOCKER") == "1":
            pytest.fail("QA_REQUIRE_DOCKER=1 but no Docker engine answers `docker info`")
        pytest.skip("no Docker engine (set QA_REQUIRE_DOCKER=1 to make this a failure)")


@pytest.fixture
def docker_host(docker_engine: None) -> Iterator[Any]:
    """The cloud doubles' machines: real containers (host network, no mounts), removed at the end."""
    from tests.doubles.docker_host import DockerHost

    h = DockerHost()
    try:
        yield h
    finally:
        h.cleanup()
