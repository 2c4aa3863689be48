"""A ``Host`` (tests/doubles/common.py) that runs each instance of a cloud double as a real container on the local
Docker engine, the way a rented machine would: the image is pulled from its registry (any local copy of that
reference is removed first, so the pull really happens), the container gets exactly the env the double hands
over (the create request's env plus what the cloud injects), no mounts, host networking (these machines have
no bridge; it also lets the container reach the doubles and the S3 server on loopback).

Every container carries the label ``qa-expert.test-host=<session>``; ``cleanup()`` removes this host's
containers, and ``DockerHost.remove_all()`` those of every session (a crashed test's leftovers).
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from docker.errors import APIError, DockerException, ImageNotFound, NotFound

import docker
from launch.images import ImageError, parse_ref
from tests.doubles.common import HostError, HostState

LABEL = "qa-expert.test-host"
INSTANCE_LABEL = "qa-expert.test-instance"
ALIVE = ("created", "running", "restarting", "paused")  # Docker states a cloud shows as a running instance


class DockerHost:
    """Real containers for a cloud double's instances (ids are the double's instance ids)."""

    def __init__(self, client: Any = None, *, session: str | None = None, stop_timeout_s: int = 10) -> None:
        self.client = client or docker.from_env()
        self.session = session or uuid.uuid4().hex[:10]
        self.stop_timeout_s = stop_timeout_s
        self.containers: dict[str, str] = {}  # instance id -> container id
        self.pulls: list[str] = []  # every image reference pulled, in order (a test can assert a real pull)
        self._lock = threading.RLock()  # one pull at a time: removing a local copy must not race another pull

    # -- Host ------------------------------------------------------------------------------------------------
    def start(
        self,
        instance_id: str,
        image: str,
        env: dict[str, str],
        registry_auth: tuple[str, str, str] | None,
        *,
        command: list[str] | None = None,
    ) -> None:
        """Pull ``image`` afresh and run it detached with exactly ``env``. ``command`` (tests of the host itself
        only) replaces the image's CMD; a cloud double never passes it, so the image's entrypoint runs."""
        try:
            ref = parse_ref(image)
        except ImageError as e:
            raise HostError(str(e)) from None
        auth = {"username": registry_auth[1], "password": registry_auth[2]} if registry_auth else None
        with self._lock:
            try:
                self.client.images.remove(image, force=True)  # a bare host has no copy
            except ImageNotFound:
                pass
            except APIError as e:
                raise HostError(f"cannot drop the local copy of {image}: {e.explanation or e}") from None
            try:
                if ref.digest:
                    self.client.images.pull(ref.local_name, tag=ref.digest, auth_config=auth)
                else:
                    self.client.images.pull(ref.local_name, tag=ref.tag, auth_config=auth)
            except DockerException as e:
                raise HostError(f"pull access denied or image missing: {image}: {_explain(e)}") from None
            self.pulls.append(image)
            old = self.containers.pop(instance_id, None)
            if old:
                self._remove(old)
            try:
                c = self.client.containers.run(
                    image,
                    command=command,
                    detach=True,
                    environment=dict(env),
                    network_mode="host",
                    labels={LABEL: self.session, INSTANCE_LABEL: instance_id},
                    name=f"qa-host-{self.session}-{instance_id}",
                    volumes=None,
                    mounts=None,
                )
            except DockerException as e:
                raise HostError(f"cannot start {image}: {_explain(e)}") from None
            self.containers[instance_id] = c.id

    def state(self, instance_id: str) -> HostState:
        c = self._container(instance_id)
        if c is None:
            return "missing"
        status = c.attrs.get("State", {}).get("Status", "")
        return "running" if status in ALIVE else "exited"

    def exit_code(self, instance_id: str) -> int | None:
        c = self._container(instance_id)
        if c is None or c.attrs.get("State", {}).get("Status") in ALIVE:
            return None
        return int(c.attrs["State"].get("ExitCode", 0))

    def restart(self, instance_id: str) -> None:
        """The same container again (RunPod restarts a pod's container when its main process exits)."""
        c = self._container(instance_id)
        if c is None:
            raise HostError(f"no container for instance {instance_id}")
        c.start()

    def stop(self, instance_id: str) -> None:
        c = self._container(instance_id)
        if c is not None:
            try:
                c.stop(timeout=self.stop_timeout_s)
            except NotFound:
                pass

    def kill(self, instance_id: str) -> None:
        """A preemption: SIGKILL, no chance to clean up."""
        c = self._container(instance_id)
        if c is not None and c.status in ALIVE[1:]:
            try:
                c.kill()
            except (NotFound, APIError):  # already dead between the reload and the kill
                pass

    def remove(self, instance_id: str) -> None:
        with self._lock:
            cid = self.containers.pop(instance_id, None)
        if cid:
            self._remove(cid)

    def logs(self, instance_id: str) -> str:
        c = self._container(instance_id)
        return c.logs(stdout=True, stderr=True).decode(errors="replace") if c is not None else ""

    # -- for tests -------------------------------------------------------------------------------------------
    def container(self, instance_id: str) -> Any:
        """The docker SDK container (inspect its env, mounts, network) or None."""
        return self._container(instance_id)

    def cleanup(self) -> None:
        """Remove every container this host started (the doubles' leftovers included)."""
        for c in self.client.containers.list(all=True, filters={"label": f"{LABEL}={self.session}"}):
            self._remove(c.id)
        self.containers.clear()

    @staticmethod
    def remove_all(client: Any = None) -> None:
        client = client or docker.from_env()
        for c in client.containers.list(all=True, filters={"label": LABEL}):
            try:
                c.remove(force=True)
            except NotFound:
                pass

    def _container(self, instance_id: str) -> Any:
        cid = self.containers.get(instance_id)
        if cid is None:
            return None
        try:
            return self.client.containers.get(cid)
        except NotFound:
            return None

    def _remove(self, cid: str) -> None:
        try:
            self.client.containers.get(cid).remove(force=True)
        except NotFound:
            pass


def _explain(e: DockerException) -> str:
    return str(getattr(e, "explanation", None) or e).strip()
