"""DockerHost: a cloud double's instance as a real container, pulled from a real local registry, with only the env
it is given, no mounts, host networking; kill (preemption), restart (same container), stop, remove."""

from __future__ import annotations

import io
import time
import uuid
from typing import TYPE_CHECKING

import pytest

from launch.images import push
from tests.doubles.common import HostError
from tests.doubles.docker_host import LABEL, DockerHost

if TYPE_CHECKING:
    from tests.fixtures_registry import LocalRegistry

pytest_plugins = ["tests.fixtures_registry"]
pytestmark = pytest.mark.docker

BASE = "qa-expert/base:bookworm"


@pytest.fixture(scope="module")
def base_in_registry(docker_engine, registry: LocalRegistry) -> str:
    import docker

    client = docker.from_env()
    try:
        client.images.get(BASE)
    except docker.errors.ImageNotFound:
        pytest.skip(f"{BASE} not seeded (scripts/seed-base-image.sh)")
    ref = registry.ref("qa/base", "h" + uuid.uuid4().hex[:8])
    push(BASE, ref, out=io.StringIO())
    return ref


@pytest.fixture
def host(docker_engine):
    h = DockerHost(stop_timeout_s=2)
    try:
        yield h
    finally:
        h.cleanup()


def _wait_exited(host: DockerHost, iid: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while host.state(iid) != "exited":
        assert time.monotonic() < end, f"{iid} still {host.state(iid)}: {host.logs(iid)}"
        time.sleep(0.2)


def _wait_logs(host: DockerHost, iid: str, word: str, count: int, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while host.logs(iid).count(word) < count:
        assert time.monotonic() < end, host.logs(iid)
        time.sleep(0.2)


@pytest.mark.slow
def test_pulls_from_the_registry_and_runs_with_only_the_given_env(host: DockerHost, base_in_registry: str):
    import docker

    client = docker.from_env()
    # a decoy under the same reference: a bare host has no local copy, so start must pull the registry's image
    decoy, _ = client.images.build(fileobj=io.BytesIO(f"FROM {BASE}\nLABEL decoy=1\n".encode()), rm=True)
    decoy.tag(base_in_registry)
    env = {"QA_ONLY": "this", "CONTAINER_ID": "7001"}
    script = "import os,sys; print(sorted(os.environ.items())); sys.exit(3)"
    try:
        host.start("7001", base_in_registry, env, None, command=["python3", "-c", script])
    finally:
        try:
            client.images.remove(decoy.id, force=True)
        except docker.errors.ImageNotFound:
            pass  # start dropped it already (the reference was its only tag)
    assert host.pulls == [base_in_registry]
    _wait_exited(host, "7001")
    assert host.exit_code("7001") == 3
    c = host.container("7001")
    assert c.image.id != decoy.id and c.image.id == client.images.get(BASE).id
    assert c.attrs["Mounts"] == [] and not c.attrs["HostConfig"].get("Binds")
    assert c.attrs["HostConfig"]["NetworkMode"] == "host"
    assert c.labels[LABEL] == host.session
    image_env = set(client.images.get(BASE).attrs["Config"].get("Env") or [])
    assert set(c.attrs["Config"]["Env"]) - image_env == {"QA_ONLY=this", "CONTAINER_ID=7001"}
    assert "('QA_ONLY', 'this')" in host.logs("7001")


@pytest.mark.slow
def test_kill_restart_stop_remove(host: DockerHost, base_in_registry: str):
    loop = "import time\nprint('up', flush=True)\nwhile True: time.sleep(0.2)"
    host.start("7002", base_in_registry, {}, None, command=["python3", "-c", loop])
    assert host.state("7002") == "running" and host.exit_code("7002") is None
    first = host.container("7002").id
    _wait_logs(host, "7002", "up", 1)
    host.kill("7002")  # preemption
    _wait_exited(host, "7002")
    assert host.exit_code("7002") == 137
    host.restart("7002")  # the same container again, its logs continue
    assert host.state("7002") == "running" and host.container("7002").id == first
    _wait_logs(host, "7002", "up", 2)
    host.stop("7002")
    assert host.state("7002") == "exited"
    host.remove("7002")
    assert host.state("7002") == "missing" and host.logs("7002") == ""
    host.kill("7002")  # already gone: nothing to do
    host.stop("7002")


def test_missing_image_is_a_host_error(host: DockerHost, registry: LocalRegistry):
    with pytest.raises(HostError, match="image missing"):
        host.start("7003", registry.ref("qa/nothing", "x"), {}, None)
    assert host.state("7003") == "missing"


@pytest.mark.slow
def test_private_registry_needs_the_create_requests_credentials(
    host: DockerHost, auth_registry: LocalRegistry
):
    from launch.backends.base import RegistryAuth

    reg = auth_registry
    ref = reg.ref("private/base", "h" + uuid.uuid4().hex[:8])
    push(BASE, ref, RegistryAuth(reg.address, reg.username or "", reg.password or ""), out=io.StringIO())
    with pytest.raises(HostError, match="pull access denied"):
        host.start("7004", ref, {}, None, command=["true"])
    host.start("7004", ref, {}, (reg.address, reg.username or "", reg.password or ""), command=["true"])
    _wait_exited(host, "7004")
    assert host.exit_code("7004") == 0
