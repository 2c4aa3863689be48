"""The local Docker engine through the ``docker`` SDK: GPUs via device requests (none for ``cpu``), shm size,
volumes for data and runs, env, labels with the job id. Same spec, same container command as the clouds."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from launch.backends.base import Backend, BackendError, Instance, Offer, Status, container_env, wait_ready
from launch.gpus import GpuProfile
from qa_train.spec import RenderedSpec

logger = logging.getLogger(__name__)
LABEL = "qa-expert.job_id"


def container_name(job_id: str) -> str:
    return "qa-" + re.sub(r"[^A-Za-z0-9_.-]", "-", job_id)


class LocalBackend(Backend):
    name = "local"

    def __init__(
        self,
        *,
        data_dir: str | None = None,
        runs_dir: str | None = None,
        shm_size: str = "16g",
        network_mode: str | None = None,
        ready_timeout_s: float = 120.0,
        poll_s: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
        client: Any = None,
    ):
        self._client = client
        self.data_dir = data_dir if data_dir is not None else os.environ.get("QA_DATA_DIR")
        self.runs_dir = runs_dir if runs_dir is not None else os.environ.get("QA_RUNS_DIR")
        self.shm_size = shm_size
        self.network_mode = network_mode or os.environ.get("QA_DOCKER_NETWORK") or None
        self.ready_timeout_s = ready_timeout_s
        self.poll_s = poll_s
        self.sleep = sleep

    @property
    def client(self) -> Any:
        if self._client is None:
            import docker

            try:
                self._client = docker.from_env()
                self._client.ping()
            except Exception as e:
                raise BackendError(f"local: no Docker engine answers ({e})") from None
        return self._client

    def offers(
        self,
        profile: GpuProfile,
        num_gpus: int,
        *,
        interruptible: bool = False,
        max_price: float | None = None,
        disk_gb: int = 50,
    ) -> list[Offer]:
        return [Offer(self.name, "local", profile.display, num_gpus, 0.0, False, 1.0)]

    def run_kwargs(self, spec: RenderedSpec, env: dict[str, str]) -> dict[str, Any]:
        """Arguments of ``containers.run``: kept separate so tests can check them without an engine."""
        from docker.types import DeviceRequest

        volumes: dict[str, dict[str, str]] = {}
        if self.data_dir:
            volumes[str(Path(self.data_dir).resolve())] = {"bind": "/data", "mode": "ro"}
        if self.runs_dir:
            Path(self.runs_dir).mkdir(parents=True, exist_ok=True)
            volumes[str(Path(self.runs_dir).resolve())] = {"bind": spec.job.output_root, "mode": "rw"}
        kwargs: dict[str, Any] = {
            "image": spec.image,
            "entrypoint": list(spec.command),
            "command": [],
            "environment": env,
            "labels": {LABEL: spec.job_id, "qa-expert.run_name": spec.job.run_name},
            "name": container_name(spec.job_id),
            "detach": True,
            "shm_size": self.shm_size,
            "volumes": volumes,
        }
        if spec.gpu.count > 0:
            kwargs["device_requests"] = [DeviceRequest(count=spec.gpu.count, capabilities=[["gpu"]])]
        if self.network_mode:
            kwargs["network_mode"] = self.network_mode
        return kwargs

    def create(
        self,
        spec: RenderedSpec,
        secret_values: dict[str, str],
        *,
        interruptible: bool = False,
        max_price: float | None = None,
        on_created: Callable[[Instance], None] | None = None,
    ) -> Instance:
        import docker.errors

        kwargs = self.run_kwargs(spec, container_env(spec, secret_values))
        try:
            container = self.client.containers.run(**kwargs)
        except docker.errors.ImageNotFound:
            raise BackendError(f"local: image {spec.image!r} not found (build it, or pass --image)") from None
        except docker.errors.APIError as e:
            raise BackendError(f"local: docker run failed: {e.explanation or e}") from None
        inst = Instance(self.name, container.id, self.offers_one(spec))
        try:
            if on_created:
                on_created(inst)
            wait_ready(
                self, inst.instance_id, deadline_s=self.ready_timeout_s, poll_s=self.poll_s, sleep=self.sleep
            )
        except BaseException:
            # a container that exited non-zero before we saw it run keeps its logs for `logs`; stop only if alive
            st = self.status(inst.instance_id)
            if st.state in ("PENDING", "RUNNING"):
                self.cancel(inst.instance_id)
            raise
        return inst

    def offers_one(self, spec: RenderedSpec) -> Offer:
        return Offer(self.name, "local", spec.gpu.name, spec.gpu.count, 0.0)

    def _get(self, instance_id: str) -> Any:
        import docker.errors

        try:
            return self.client.containers.get(instance_id)
        except docker.errors.NotFound:
            return None

    def status(self, instance_id: str) -> Status:
        c = self._get(instance_id)
        if c is None:
            return Status("GONE", "no such container")
        state = c.attrs.get("State", {})
        s = state.get("Status")
        if s == "running":
            return Status("RUNNING", "running", None, state)
        if s in ("created", "restarting"):
            return Status("PENDING", s, None, state)
        if s in ("exited", "dead"):
            code = state.get("ExitCode")
            return Status(
                "EXITED",
                f"exited with code {code}" + (f": {state['Error']}" if state.get("Error") else ""),
                code,
                state,
            )
        if s == "paused":
            return Status("STOPPED", "paused", None, state)
        return Status("PENDING", str(s), None, state)

    def logs(self, instance_id: str, *, follow: bool = False, tail: int = 1000) -> Iterator[str]:
        c = self._get(instance_id)
        if c is None:
            raise BackendError(f"local: no container {instance_id}")
        buf = b""
        for chunk in c.logs(stream=True, follow=follow, tail=tail):
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                yield line.decode("utf-8", "replace")
        if buf:
            yield buf.decode("utf-8", "replace")

    def cancel(self, instance_id: str) -> None:
        import docker.errors

        c = self._get(instance_id)
        if c is None:
            return
        try:
            c.stop(timeout=10)
        except docker.errors.APIError as e:
            logger.warning("local: stop %s: %s", instance_id, e)
        try:
            c.remove(force=True)
        except docker.errors.NotFound:
            return

    def find_by_job(self, job_id: str) -> list[str]:
        return [c.id for c in self.client.containers.list(all=True, filters={"label": f"{LABEL}={job_id}"})]
