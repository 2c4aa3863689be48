"""Push to and check against a real registry (Debian's docker-registry on loopback, anonymous and htpasswd):
push then check, a missing tag or repository, good and bad credentials, an unreachable registry, the CLI."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from launch.backends.base import RegistryAuth
from launch.images import (
    ImageError,
    ImageNotFound,
    ImageUnauthorized,
    RegistryUnreachable,
    check_image,
    parse_ref,
    push,
    registry_auth_from_env,
)

if TYPE_CHECKING:
    from tests.fixtures_registry import LocalRegistry

pytest_plugins = ["tests.fixtures_registry", "tests.fixtures_images"]  # registry, auth_registry, cpu_image

REPO = Path(__file__).resolve().parent.parent
BASE = "qa-expert/base:bookworm"  # seeded by scripts/seed-base-image.sh; small (one layer)


@pytest.mark.parametrize(
    "ref,registry_,repository,reference,url",
    [
        ("ubuntu", "docker.io", "library/ubuntu", "latest", "https://registry-1.docker.io"),
        ("team/qa:1.0", "docker.io", "team/qa", "1.0", "https://registry-1.docker.io"),
        ("ghcr.io/o/qa-expert:cpu", "ghcr.io", "o/qa-expert", "cpu", "https://ghcr.io"),
        ("127.0.0.1:5000/qa/base:t", "127.0.0.1:5000", "qa/base", "t", "http://127.0.0.1:5000"),
        ("localhost:5000/qa", "localhost:5000", "qa", "latest", "http://localhost:5000"),
        ("r.example:443/a/b@sha256:" + "ab" * 32, "r.example:443", "a/b", "sha256:" + "ab" * 32,
         "https://r.example:443"),
    ],
)  # fmt: skip
def test_parse_ref_follows_docker_rules(ref, registry_, repository, reference, url):
    r = parse_ref(ref)
    assert (r.registry, r.repository, r.reference, r.base_url) == (registry_, repository, reference, url)


@pytest.mark.parametrize("bad", ["", "Upper/Case", "a b", "x:bad tag", "x@sha256:zz"])
def test_parse_ref_refuses_bad_references(bad):
    with pytest.raises(ImageError, match="image"):
        parse_ref(bad)


def test_registry_auth_from_env_needs_both_and_names_the_registry():
    assert registry_auth_from_env("ghcr.io/o/x:1", {}) is None
    a = registry_auth_from_env("ghcr.io/o/x:1", {"REGISTRY_USERNAME": "u", "REGISTRY_PASSWORD": "p"})
    assert a == RegistryAuth("ghcr.io", "u", "p")
    with pytest.raises(ImageError, match="REGISTRY_PASSWORD is not set"):
        registry_auth_from_env("ghcr.io/o/x:1", {"REGISTRY_USERNAME": "u"})


# -- against the real registry ---------------------------------------------------------------------------------


def _tag() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture(scope="module")
def base_image(docker_engine) -> str:
    import docker

    try:
        docker.from_env().images.get(BASE)
    except docker.errors.ImageNotFound:
        pytest.skip(f"{BASE} not seeded (scripts/seed-base-image.sh)")
    return BASE


@pytest.mark.slow
@pytest.mark.docker
def test_push_then_check(base_image, registry: LocalRegistry):
    ref = registry.ref("qa/base", _tag())
    out = io.StringIO()
    pushed = push(base_image, ref, out=out)
    assert pushed.ref == ref and pushed.digest.startswith("sha256:")
    assert "pushed" in out.getvalue() and ref in out.getvalue()
    assert check_image(ref) == pushed.digest
    assert check_image(f"{registry.address}/qa/base@{pushed.digest}") == pushed.digest


@pytest.mark.slow
@pytest.mark.docker
def test_missing_tag_and_missing_repository_are_not_found(base_image, registry: LocalRegistry):
    ref = registry.ref("qa/base", _tag())
    push(base_image, ref, out=io.StringIO())
    missing = registry.ref("qa/base", "no-such-tag")
    with pytest.raises(ImageNotFound, match="no such tag") as e:
        check_image(missing)
    assert str(e.value).startswith(f"image {missing}: not found")
    with pytest.raises(ImageNotFound, match="no such repository"):
        check_image(registry.ref("qa/nothing-here", "x"))


def test_unreachable_registry_is_one_clear_error():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    ref = f"127.0.0.1:{port}/qa/base:x"
    with pytest.raises(RegistryUnreachable, match=rf"image {ref}: registry 127.0.0.1:{port} unreachable"):
        check_image(ref, timeout=5)


@pytest.mark.slow
@pytest.mark.docker
def test_auth_registry_good_and_bad_credentials(base_image, auth_registry: LocalRegistry):
    reg = auth_registry
    good = RegistryAuth(reg.address, reg.username or "", reg.password or "")
    bad = RegistryAuth(reg.address, reg.username or "", "wrong-" + uuid.uuid4().hex)
    ref = reg.ref("private/base", _tag())
    with pytest.raises(ImageError, match="push failed"):
        push(base_image, ref, bad, out=io.StringIO())
    pushed = push(base_image, ref, good, out=io.StringIO())
    assert check_image(ref, good) == pushed.digest
    with pytest.raises(ImageUnauthorized, match="refused the credentials") as e:
        check_image(ref, bad)
    assert bad.password not in str(e.value)
    with pytest.raises(ImageUnauthorized, match="requires credentials"):
        check_image(ref)
    with pytest.raises(ImageNotFound):
        check_image(reg.ref("private/base", "missing"), good)
    # credentials for another registry are never sent: this one then sees an anonymous request
    with pytest.raises(ImageUnauthorized, match="requires credentials"):
        check_image(ref, RegistryAuth("ghcr.io", good.username, good.password))


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launch/submit.py", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


@pytest.mark.slow
@pytest.mark.docker
def test_cli_push_and_check_image_with_credentials_from_env(
    base_image, auth_registry: LocalRegistry, tmp_path
):
    reg = auth_registry
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "VAST_", "RUNPOD_"))}
    env["QA_RUNS_ROOT"] = str(tmp_path / "runs")
    ref = reg.ref("cli/base", _tag())
    good = {**env, "REGISTRY_USERNAME": reg.username or "", "REGISTRY_PASSWORD": reg.password or ""}
    p = _cli(["push", "--to", ref, "--image", base_image], good)
    assert p.returncode == 0, p.stderr
    assert f"use it with: --image {ref}" in p.stdout
    assert json.loads(p.stdout.strip().splitlines()[-1])["image"] == ref
    assert reg.password not in p.stdout + p.stderr
    p = _cli(["check_image", ref], good)
    assert p.returncode == 0 and p.stdout.startswith(f"ok: {ref}"), p.stderr
    p = _cli(["check_image", ref], {**good, "REGISTRY_PASSWORD": "wrong-password-123"})
    assert p.returncode == 1
    assert p.stderr.strip() == (
        f"error: image {ref}: registry {reg.address} refused the credentials from "
        "REGISTRY_USERNAME/REGISTRY_PASSWORD (HTTP 401)"
    )
    p = _cli(["check_image", reg.ref("cli/base", "missing")], good)
    assert p.returncode == 1 and "not found" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = _cli(["push", "--to", ref, "--image", "qa-expert/no-such-image:1"], good)
    assert p.returncode == 1 and "no such local image" in p.stderr


@pytest.mark.slow
def test_cpu_image_carries_the_locked_packages_it_promises(cpu_image: str) -> None:
    """tensorboard (``training.report_to``), DeepSpeed and bitsandbytes, at the CPU lock's versions."""
    from tests.test_locks import read_lock

    lock = read_lock("cpu.txt")
    names = ["tensorboard", "deepspeed", "bitsandbytes", "transformers"]
    code = "import importlib.metadata as m, json, sys; print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))"
    p = subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "python", cpu_image, "-c",
                        code, *names], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout) == {n: lock[n] for n in names}


@pytest.mark.slow
@pytest.mark.docker
def test_token_auth_registry_like_docker_hub(base_image, token_registry) -> None:
    """The Bearer flow against a real registry in token mode: the engine pushes through it, ``check_image``
    gets a token from the realm with the credentials (never the registry's own basic auth), an anonymous token
    pulls ``public/…`` only, a wrong password is refused by the token service, and nothing prints a secret."""
    reg, tokens = token_registry
    good = RegistryAuth(reg.address, reg.username or "", reg.password or "")
    bad = RegistryAuth(reg.address, good.username, "wrong-" + uuid.uuid4().hex)
    private, public = reg.ref("private/base", _tag()), reg.ref("public/base", _tag())
    digest = push(base_image, private, good, out=io.StringIO()).digest
    assert push(base_image, public, good, out=io.StringIO()).digest == digest

    tokens.requests.clear()
    assert check_image(private, good) == digest
    assert tokens.requests == [{"user": good.username, "scope": "repository:private/base:pull",
                                "service": "qa-expert-test-registry"}]  # fmt: skip
    assert check_image(public) == digest  # anonymous token, public repository
    with pytest.raises(ImageUnauthorized, match="refused anonymous access .*set REGISTRY_USERNAME"):
        check_image(private)  # an anonymous token without access: the registry still answers 401
    with pytest.raises(ImageUnauthorized, match="token service refused the credentials") as e:
        check_image(private, bad)
    assert bad.password not in str(e.value)
    with pytest.raises(ImageNotFound, match="no such tag"):
        check_image(reg.ref("private/base", "missing"), good)
