"""Images a rented host can pull: push a local image to a registry, and check that a reference resolves.

A cloud host pulls ``image`` from its registry; a local tag (``qa-expert/train:latest``) means nothing there.
``push`` tags and pushes through the Docker engine (docker SDK). ``check_image`` asks the registry itself over
its HTTP API v2 (no engine needed) whether the manifest exists, so a submit can stop before renting anything.

Credentials of a private registry come from ``REGISTRY_USERNAME`` / ``REGISTRY_PASSWORD`` only
(``registry_auth_from_env``); they are sent to the registry (or the token service it names) and never printed,
logged or stored.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TextIO

import requests

from launch.backends.base import RegistryAuth

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
)
TIMEOUT_S = 20.0


class ImageError(RuntimeError):
    """One clear line naming the image reference (never a credential)."""


class ImageNotFound(ImageError):
    """The registry answers, but has no such repository or tag."""


class ImageUnauthorized(ImageError):
    """The registry wants credentials, or refused the ones given."""


class RegistryUnreachable(ImageError):
    """No usable answer from the registry (connection refused, DNS, TLS, timeout, 5xx)."""


@dataclass(frozen=True)
class ImageRef:
    """A parsed reference, with Docker's defaults filled in (``ubuntu`` → ``docker.io/library/ubuntu:latest``)."""

    registry: str  # as written by the user (docker.io for Hub)
    repository: str  # path inside the registry, e.g. library/ubuntu or team/qa-expert
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What the manifest endpoint takes: the digest when there is one, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def base_url(self) -> str:
        """http for loopback registries (Docker allows those without TLS), https for everything else."""
        return f"{'http' if is_loopback(self.registry) else 'https'}://{self.api_host}"

    @property
    def name(self) -> str:
        """The full reference a host would pull (``registry/repository:tag`` or ``…@digest``)."""
        out = f"{self.registry}/{self.repository}"
        return out + (f"@{self.digest}" if self.digest else f":{self.tag or 'latest'}")

    @property
    def local_name(self) -> str:
        """The repository part as the Docker engine names it (no docker.io prefix for Hub images)."""
        if self.registry == DOCKER_HUB:
            return self.repository.removeprefix("library/")
        return f"{self.registry}/{self.repository}"


_NAME_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[A-Fa-f0-9]{32,}$")


def parse_ref(ref: str) -> ImageRef:
    """Docker's rules: the first path part is a registry when it has a ``.`` or ``:`` or is ``localhost``."""
    s = ref.strip()
    if not s or any(c.isspace() for c in s):
        raise ImageError(f"image {ref!r}: not a valid image reference")
    digest = None
    if "@" in s:
        s, digest = s.split("@", 1)
        if not _DIGEST_RE.match(digest):
            raise ImageError(f"image {ref}: bad digest {digest!r}")
    tag = None
    last = s.rsplit("/", 1)[-1]
    if ":" in last:
        s, tag = s.rsplit(":", 1)
        if not _TAG_RE.match(tag):
            raise ImageError(f"image {ref}: bad tag {tag!r}")
    first, _, rest = s.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, rest
    else:
        registry, repository = DOCKER_HUB, s
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if not _NAME_RE.match(repository):
        raise ImageError(
            f"image {ref}: bad repository name {repository!r} (lowercase letters, digits, . _ - /)"
        )
    if tag is None and digest is None:
        tag = "latest"
    return ImageRef(registry=registry, repository=repository, tag=tag, digest=digest)


def is_loopback(registry: str) -> bool:
    host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 or registry.startswith("[") else registry
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def registry_auth_from_env(ref: str, env: dict[str, str] | None = None) -> RegistryAuth | None:
    """``RegistryAuth`` for the registry of ``ref`` from REGISTRY_USERNAME / REGISTRY_PASSWORD, or None.

    One of the two without the other is an error: a half-configured login would silently pull anonymously."""
    env = dict(os.environ) if env is None else env
    user, password = env.get("REGISTRY_USERNAME", ""), env.get("REGISTRY_PASSWORD", "")
    if not user and not password:
        return None
    if not user or not password:
        missing = "REGISTRY_PASSWORD" if user else "REGISTRY_USERNAME"
        raise ImageError(
            f"image {ref}: REGISTRY_USERNAME and REGISTRY_PASSWORD go together; {missing} is not set"
        )
    return RegistryAuth(registry=parse_ref(ref).registry, username=user, password=password)


# -- check: the registry HTTP API v2 ---------------------------------------------------------------------------
def _challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="…",service="…",scope="…"`` → ("bearer", {realm, service, scope})."""
    scheme, _, params = header.strip().partition(" ")
    pairs = re.findall(r'(\w+)\s*=\s*(?:"([^"]*)"|([^,\s]*))', params)
    return scheme.lower(), {k.lower(): quoted or bare for k, quoted, bare in pairs}


def _error_codes(resp: requests.Response) -> list[str]:
    try:
        return [str(e.get("code", "")) for e in resp.json().get("errors", [])]
    except (ValueError, AttributeError):
        return []


def check_image(ref: str, auth: RegistryAuth | None = None, *, timeout: float = TIMEOUT_S) -> str:
    """Raise ImageNotFound / ImageUnauthorized / RegistryUnreachable unless ``ref``'s manifest exists.

    Returns the manifest digest when the registry tells it (``Docker-Content-Digest``), else "". Token flow as
    Docker does it: 401 with a Bearer challenge → token from the realm (anonymous, or with basic auth when
    credentials are given) → retry; a Basic challenge → the credentials directly."""
    r = parse_ref(ref)
    if auth is not None and auth.registry not in (r.registry, r.api_host):
        auth = None  # credentials for another registry are never sent here
    url = f"{r.base_url}/v2/{r.repository}/manifests/{r.reference}"
    headers = {"Accept": ", ".join(MANIFEST_TYPES)}
    session = requests.Session()
    session.trust_env = False  # no ~/.netrc credentials or proxies picked up behind the user's back

    def call(method: str, u: str, **kw: Any) -> requests.Response:
        try:
            return session.request(method, u, timeout=timeout, allow_redirects=True, **kw)
        except requests.exceptions.SSLError as e:
            raise RegistryUnreachable(
                f"image {r.name}: TLS error talking to {r.api_host}: {_short(e)}"
            ) from None
        except requests.RequestException as e:
            raise RegistryUnreachable(
                f"image {r.name}: registry {r.api_host} unreachable: {_short(e)}"
            ) from None

    resp = call("HEAD", url, headers=headers)
    if resp.status_code == 401:
        scheme, params = _challenge(resp.headers.get("WWW-Authenticate", ""))
        if scheme == "bearer" and params.get("realm"):
            token = _bearer_token(r, params, auth, call)
            resp = call("HEAD", url, headers={**headers, "Authorization": f"Bearer {token}"})
        elif scheme == "basic" and auth is not None:
            resp = call("HEAD", url, headers=headers, auth=(auth.username, auth.password))
        elif scheme == "basic":
            raise ImageUnauthorized(
                f"image {r.name}: registry {r.api_host} requires credentials "
                "(set REGISTRY_USERNAME and REGISTRY_PASSWORD)"
            )
    if resp.status_code == 405:  # a registry that refuses HEAD on manifests
        resp = call("GET", url, headers=dict(resp.request.headers), stream=True)
        resp.close()  # the status and headers are enough; a manifest list can be large
    if resp.status_code == 404:  # which part is missing: the repository, or only this tag?
        tags = call("GET", f"{r.base_url}/v2/{r.repository}/tags/list", headers=dict(resp.request.headers))
        return _verdict(r, resp, auth, tags)
    return _verdict(r, resp, auth)


def _bearer_token(
    r: ImageRef, params: dict[str, str], auth: RegistryAuth | None, call: Callable[..., requests.Response]
) -> str:
    query = {k: params[k] for k in ("service", "scope") if params.get(k)}
    query.setdefault("scope", f"repository:{r.repository}:pull")
    kw: dict[str, Any] = {"params": query}
    if auth is not None:
        kw["auth"] = (auth.username, auth.password)
    resp = call("GET", params["realm"], **kw)
    if resp.status_code in (401, 403):
        raise ImageUnauthorized(
            f"image {r.name}: the registry's token service refused "
            + ("the credentials from REGISTRY_USERNAME/REGISTRY_PASSWORD" if auth else "an anonymous token")
            + f" (HTTP {resp.status_code})"
        )
    if resp.status_code >= 400:
        raise RegistryUnreachable(f"image {r.name}: token service answered HTTP {resp.status_code}")
    try:
        body = resp.json()
        return str(body.get("token") or body["access_token"])
    except (ValueError, KeyError, AttributeError):
        raise RegistryUnreachable(f"image {r.name}: token service sent no token") from None


def _verdict(
    r: ImageRef, resp: requests.Response, auth: RegistryAuth | None, tags: requests.Response | None = None
) -> str:
    code = resp.status_code
    if code == 200:
        return resp.headers.get("Docker-Content-Digest", "")
    if code == 404:
        what = f"no such {'digest' if r.digest else 'tag'}"
        if tags is not None and (tags.status_code == 404 or "NAME_UNKNOWN" in _error_codes(resp)):
            what = "no such repository"
        elif tags is not None and tags.status_code == 200:
            try:
                known = sorted(str(t) for t in tags.json().get("tags") or [])
            except (ValueError, AttributeError):
                known = []
            if known:
                what += "; tags there: " + ", ".join(known[:8]) + (", …" if len(known) > 8 else "")
        raise ImageNotFound(
            f"image {r.name}: not found in registry {r.api_host} ({what}); push it first: "
            f"python launch/submit.py push --to {r.name}"
        )
    if code in (401, 403):
        if auth is None:
            # Docker Hub answers an anonymous pull of a missing repository this way too
            raise ImageUnauthorized(
                f"image {r.name}: registry {r.api_host} refused anonymous access (HTTP {code}): the image does "
                "not exist or is private (set REGISTRY_USERNAME and REGISTRY_PASSWORD)"
            )
        raise ImageUnauthorized(
            f"image {r.name}: registry {r.api_host} refused the credentials from REGISTRY_USERNAME/"
            f"REGISTRY_PASSWORD (HTTP {code})"
        )
    if code == 429:
        raise RegistryUnreachable(f"image {r.name}: registry {r.api_host} rate-limited the check (HTTP 429)")
    raise RegistryUnreachable(f"image {r.name}: registry {r.api_host} answered HTTP {code}")


def _short(e: BaseException) -> str:
    """The innermost reason of a requests error, without the URL-and-pool boilerplate."""
    text = str(e)
    m = re.search(r"(Connection refused|Name or service not known|timed out|Temporary failure[^'\"),]*|"
                  r"No route to host|certificate verify failed[^'\"),]*|Failed to resolve[^'\"),]*)", text)  # fmt: skip
    return m.group(1) if m else text[:200]


# -- push: through the Docker engine ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Pushed:
    ref: str  # registry/repository:tag, what to pass as --image
    digest: str  # sha256:…, "" when the engine did not say


def push(
    local_image: str,
    to_ref: str,
    auth: RegistryAuth | None = None,
    *,
    client: Any = None,
    out: TextIO | None = None,
) -> Pushed:
    """Tag ``local_image`` as ``to_ref`` and push it, one line per layer as it finishes (a bar while it uploads
    on a terminal). Any error in the engine's stream becomes one ImageError naming the reference."""
    import docker

    out = out or sys.stderr
    r = parse_ref(to_ref)
    if r.digest:
        raise ImageError(f"image {to_ref}: push to a tag, not a digest")
    client = client or docker.from_env()
    try:
        image = client.images.get(local_image)
    except docker.errors.ImageNotFound:
        raise ImageError(
            f"image {local_image}: no such local image to push (build it first, see docker/README.md)"
        ) from None
    except docker.errors.DockerException as e:
        raise ImageError(f"image {local_image}: Docker engine error: {e}") from None
    repo, tag = r.local_name, r.tag or "latest"
    if not image.tag(repo, tag):
        raise ImageError(f"image {to_ref}: the engine refused to tag {local_image} as {repo}:{tag}")
    kw: dict[str, Any] = {}
    if auth is not None:
        kw["auth_config"] = {"username": auth.username, "password": auth.password}
    print(
        f"pushing {local_image} ({image.short_id.removeprefix('sha256:')}) to {r.name}", file=out, flush=True
    )
    try:
        stream = client.api.push(repo, tag=tag, stream=True, decode=True, **kw)
        digest = _follow_push(stream, r, out)
    except docker.errors.DockerException as e:
        raise ImageError(f"image {r.name}: push failed: {e}") from None
    print(f"pushed {r.name}" + (f" ({digest})" if digest else ""), file=out, flush=True)
    return Pushed(ref=f"{repo}:{tag}" if r.registry != DOCKER_HUB else r.name, digest=digest)


_DONE = {"Pushed": "pushed", "Layer already exists": "already in the registry"}


def _follow_push(events: Iterable[dict[str, Any]], r: ImageRef, out: TextIO) -> str:
    """Show per-layer progress; raise on the first error event; return the digest the engine reports."""
    from tqdm import tqdm

    bars: dict[str, Any] = {}
    sizes: dict[str, int] = {}
    digest = ""
    tty = out.isatty()
    try:
        for ev in events:
            if "error" in ev or "errorDetail" in ev:
                msg = (ev.get("errorDetail") or {}).get("message") or ev.get("error") or "unknown error"
                raise ImageError(f"image {r.name}: push failed: {_push_hint(str(msg))}")
            if "aux" in ev and isinstance(ev["aux"], dict):
                digest = str(ev["aux"].get("Digest") or digest)
                continue
            layer, status = ev.get("id", ""), str(ev.get("status", ""))
            detail = ev.get("progressDetail") or {}
            if status == "Pushing" and detail.get("total"):
                sizes[layer] = int(detail["total"])
                if tty:
                    bar = bars.get(layer)
                    if bar is None:
                        bar = bars[layer] = tqdm(total=sizes[layer], desc=layer, unit="B", unit_scale=True,
                                                 file=out, leave=False)  # fmt: skip
                    bar.update(max(0, int(detail.get("current", 0)) - bar.n))
            elif status in _DONE or status.startswith("Mounted from"):
                if layer in bars:
                    bars.pop(layer).close()
                size = f" ({_human(sizes[layer])})" if layer in sizes else ""
                print(f"  {layer}: {_DONE.get(status, status.lower())}{size}", file=out, flush=True)
            elif m := re.search(r"digest: (sha256:[0-9a-f]+)", status):
                digest = m.group(1)
    finally:
        for bar in bars.values():
            bar.close()
    return digest


def _push_hint(msg: str) -> str:
    low = msg.lower()
    if "unauthorized" in low or "authentication required" in low or "no basic auth credentials" in low:
        return msg + " (set REGISTRY_USERNAME and REGISTRY_PASSWORD, or `docker login` to the registry)"
    return msg


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
