"""The local Docker engine as a ``Compute`` (docker SDK). The container runs the request's image with its
ENTRYPOINT and only the request's env — as on a rented host — plus what a local run needs: the data dir
mounted read-only at ``/data``, a runs dir, a network mode and shared memory. Labelled with the job id so
``find`` works; the exit code comes from Docker."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from launch.backends.base import (
    CloudError,
    Compute,
    Instance,
    InstanceState,
    InstanceStatus,
    LaunchRequest,
    Offer,
    OfferQuery,
    RequestRejected,
)

logger = logging.getLogger(__name__)
LABEL = "qa-expert.job_id"


def container_name(job_id: str) -> str:
    return "qa-" + re.sub(r"[^A-Za-z0-9_.-]", "-", job_id)


class LocalCompute(Compute):
    name = "local"

    def __init__(
        self,
        *,
        data_dir: str | None = None,
        runs_dir: str | None = None,
        runs_mount: str = "/runs",
        shm_size: str = "16g",
        network_mode: str | None = None,
        client: Any = None,
    ):
        self._client = client
        self.data_dir = data_dir if data_dir is not None else os.environ.get("QA_DATA_DIR")
        self.runs_dir = runs_dir if runs_dir is not None else os.environ.get("QA_RUNS_DIR")
        self.runs_mount = runs_mount
        self.shm_size = shm_size
        self.network_mode = network_mode or os.environ.get("QA_DOCKER_NETWORK") or None

    @property
    def client(self) -> Any:
        if self._client is None:
            import docker

            try:
                self._client = docker.from_env()
                self._client.ping()
            except Exception as e:
                raise CloudError(f"local: no Docker engine answers ({e})", cloud="local") from None
        return self._client

    def offers(self, query: OfferQuery) -> list[Offer]:
        return [Offer(self.name, "local", query.profile.display, query.num_gpus, 0.0, False, 1.0)]

    def run_kwargs(self, req: LaunchRequest) -> dict[str, Any]:
        """Arguments of ``containers.run``: kept separate so tests can check them without an engine."""
        from docker.types import DeviceRequest

        volumes: dict[str, dict[str, str]] = {}
        if self.data_dir:
            volumes[str(Path(self.data_dir).resolve())] = {"bind": "/data", "mode": "ro"}
        if self.runs_dir:
            Path(self.runs_dir).mkdir(parents=True, exist_ok=True)
            volumes[str(Path(self.runs_dir).resolve())] = {"bind": self.runs_mount, "mode": "rw"}
        kwargs: dict[str, Any] = {
            "image": req.image,
            "environment": dict(req.env),
            "labels": {LABEL: req.name},
            "name": container_name(req.name),
            "detach": True,
            "shm_size": self.shm_size,
            "volumes": volumes,
        }
        if req.gpu_count > 0:
            kwargs["device_requests"] = [DeviceRequest(count=req.gpu_count, capabilities=[["gpu"]])]
        if self.network_mode:
            kwargs["network_mode"] = self.network_mode
        return kwargs

    def create(self, request: LaunchRequest, offer: Offer | None = None) -> Instance:
        import docker.errors

        try:
            self.client.images.get(request.image)
        except docker.errors.ImageNotFound:
            try:  # a registry reference, as on a rented host
                self.client.images.pull(request.image)
            except docker.errors.APIError as e:
                raise RequestRejected(
                    f"local: image {request.image!r} not found locally and not pullable "
                    f"(build it, or pass --image): {e.explanation or e}",
                    cloud="local", call="pull",
                ) from None  # fmt: skip
        try:
            container = self.client.containers.run(**self.run_kwargs(request))
        except docker.errors.APIError as e:
            raise CloudError(
                f"local: docker run failed: {e.explanation or e}", cloud="local", call="run"
            ) from None
        return Instance(self.name, container.id, offer)

    def _get(self, instance_id: str) -> Any:
        import docker.errors

        try:
            return self.client.containers.get(instance_id)
        except docker.errors.NotFound:
            return None

    def status(self, instance_id: str) -> InstanceStatus:
        c = self._get(instance_id)
        if c is None:
            return InstanceStatus(InstanceState.GONE, "no such container")
        state = c.attrs.get("State", {})
        s = state.get("Status")
        if s == "running":
            return InstanceStatus(InstanceState.RUNNING, "running")
        if s in ("created", "restarting"):
            return InstanceStatus(InstanceState.PROVISIONING, s)
        if s in ("exited", "dead"):
            code = state.get("ExitCode")
            err = f": {state['Error']}" if state.get("Error") else ""
            return InstanceStatus(InstanceState.EXITED, f"exited with code {code}{err}", code)
        if s == "paused":
            return InstanceStatus(InstanceState.STOPPED, "paused")
        if s == "removing":
            return InstanceStatus(InstanceState.GONE, "removing")
        raise CloudError(f"local: unknown container status {s!r}", cloud="local", call="inspect")

    def logs(self, instance_id: str, *, follow: bool = False, tail: int = 1000) -> Iterator[str]:
        c = self._get(instance_id)
        if c is None:
            raise CloudError(f"local: no container {instance_id}", cloud="local", call="logs")
        buf = b""
        for chunk in c.logs(stream=True, follow=follow, tail=tail):  # Docker streams each line once
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                yield line.decode("utf-8", "replace")
        if buf:
            yield buf.decode("utf-8", "replace")

    def stop(self, instance_id: str) -> None:
        c = self._get(instance_id)
        if c is not None:
            c.stop(timeout=10)

    def destroy(self, instance_id: str) -> None:
        import docker.errors

        c = self._get(instance_id)
        if c is None:
            return
        try:
            c.remove(force=True)
        except docker.errors.NotFound:
            return

    def find(self, name: str) -> list[str]:
        return [c.id for c in self.client.containers.list(all=True, filters={"label": f"{LABEL}={name}"})]
