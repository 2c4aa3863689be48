"""From a rendered spec + options to what the offer walk and the controller take: computes, the launch
request (the container's short env), the offer query, and the run's store in object storage.

Why here: the unmanaged submit, the managed controller, ``resume`` and ``status`` all need the same pieces;
built once, they cannot disagree (e.g. about which env the container gets or where the report is).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launch.backends.base import CloudError, Compute, LaunchRequest, OfferQuery, RegistryAuth
from launch.gpus import get_profile
from launch.jobs.state import JobOptions
from qa_train.contract import ENV_KEEP_INSTANCE, ENV_SPEC, ENV_SPEC_URI, RunLayout
from qa_train.spec import RenderedSpec
from qa_train.storage import RunStore

# What a cloud container gets besides the spec's URI (short values only: vast caps each at 256 characters).
AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
           "AWS_DEFAULT_REGION", "AWS_REGION")  # fmt: skip


class PlanningError(RuntimeError):
    """The job cannot be launched as asked (no storage for a cloud job, storage unreachable, no cloud)."""


@dataclass
class JobPlan:
    spec: RenderedSpec
    secrets: dict[str, str]  # never stored; in the request's env only
    options: JobOptions
    computes: dict[str, Compute]
    request: LaunchRequest
    query: OfferQuery
    store: RunStore | None  # None: a local job without a sync target

    @property
    def job_id(self) -> str:
        return self.spec.job_id


def run_store(spec: RenderedSpec, secrets: dict[str, str]) -> RunStore | None:
    """The run's folder in object storage (spec.json, report.json, checkpoints), None without ``sync``."""
    if spec.job.sync is None:
        return None
    endpoint = spec.job.sync.endpoint_url or spec.env.get("AWS_ENDPOINT_URL")
    creds = {k: v for k, v in secrets.items() if k.startswith("AWS_")}
    return RunStore(RunLayout.of(spec.job.sync.target, spec.job.run_name), endpoint, creds or None)


def spec_json(spec: RenderedSpec) -> str:
    """The rendered spec as saved (local copy and ``<run>/spec.json``); secrets are never part of it."""
    return json.dumps(spec.model_dump(mode="json"), indent=2) + "\n"


def container_env(
    spec: RenderedSpec, secrets: dict[str, str], *, local: bool, keep_instance: bool
) -> dict[str, str]:
    """The container's whole environment. Cloud: the spec's URI, storage variables and secrets only (the
    container reads the spec from object storage). Local Docker: the spec inline, as before.
    ``QA_BACKEND`` is set by the offer walk, once it knows which cloud the instance lands on."""
    if local:
        env = dict(spec.env)
        env[ENV_SPEC] = json.dumps(spec.model_dump(mode="json"), separators=(",", ":"))
        env.update(secrets)
    else:
        assert spec.job.sync is not None, "a cloud job needs a sync target (checked before)"
        env = {ENV_SPEC_URI: RunLayout.of(spec.job.sync.target, spec.job.run_name).spec}
        env.update({k: spec.env[k] for k in AWS_ENV if spec.env.get(k)})
        env.update({k: v for k, v in secrets.items() if k in AWS_ENV or k == "HF_TOKEN"})
    if keep_instance:
        env[ENV_KEEP_INSTANCE] = "1"
    return env


def host_requirements(spec: RenderedSpec) -> dict[str, Any]:
    """min_cuda / min_ram_gb / min_vcpus for the offer query and the request.

    The cloud engineer adds the helper that derives them from the GPU profile, the offload plan and the image
    (launch/gpus.py or launch/render.py); until it lands a job asks for no minimum."""
    try:
        from launch.gpus import host_requirements as _helper  # type: ignore[attr-defined]
    except ImportError:
        try:
            from launch.render import host_requirements as _helper  # type: ignore[attr-defined,no-redef]
        except ImportError:
            return {}
    req = _helper(spec)
    return {k: v for k, v in (req if isinstance(req, dict) else vars(req)).items()
            if k in ("min_cuda", "min_ram_gb", "min_vcpus")}  # fmt: skip


def registry_auth(image: str) -> RegistryAuth | None:
    """REGISTRY_USERNAME / REGISTRY_PASSWORD for the image's registry (never stored)."""
    from launch.images import registry_auth_from_env

    return registry_auth_from_env(image)


def make_computes(backend: str, options: JobOptions, runs_dir: Path | None = None) -> dict[str, Compute]:
    """The computes a job may use: one cloud, every configured cloud (``cheapest``), or local Docker. A cloud
    without a key raises CloudError here, before anything is recorded."""
    from launch.backends import configured_clouds, get_compute

    if options.nodes > 1:  # launch/jobs/nodes.py refused every other backend
        return {"runpod-cluster": get_compute("runpod-cluster", nodes=options.nodes)}
    if backend == "cheapest":
        clouds = configured_clouds()
        if not clouds:
            raise CloudError("no cloud is configured: set VAST_API_KEY or RUNPOD_API_KEY", cloud="cheapest")
        return dict(clouds)
    kw: dict[str, Any] = {}
    if backend == "local":
        kw = {"data_dir": options.data_dir, "network_mode": options.network, "runs_dir": options.outputs_dir}
    return {backend: get_compute(backend, **kw)}


def make_plan(
    spec: RenderedSpec,
    secrets: dict[str, str],
    options: JobOptions,
    computes: dict[str, Compute] | None = None,
) -> JobPlan:
    local = options.backend == "local"
    if not local and spec.job.sync is None:
        raise PlanningError(
            f"a {options.backend} job needs object storage: set sync.target (s3://bucket/prefix) in the job "
            "spec (a rented host has nowhere else to keep checkpoints and results)"
        )
    computes = make_computes(options.backend, options) if computes is None else computes
    host = host_requirements(spec)
    env = container_env(spec, secrets, local=local, keep_instance=options.keep_instance)
    request = LaunchRequest(
        name=spec.job_id,
        image=spec.image,
        env=env,
        disk_gb=spec.disk_gb,
        gpu_count=spec.gpu.count,
        interruptible=options.interruptible,
        registry_auth=None if local else registry_auth(spec.image),
        **host,
    )
    query = OfferQuery(
        profile=get_profile(spec.gpu.profile),
        num_gpus=spec.gpu.count,
        interruptible=options.interruptible,
        max_price=options.max_price,
        disk_gb=spec.disk_gb,
        **host,
    )
    return JobPlan(spec, secrets, options, computes, request, query, run_store(spec, secrets))


def check_storage(store: RunStore) -> None:
    """The run's storage answers with the given credentials (a clear error before anything is rented)."""
    try:
        store.read_report()
    except Exception as e:  # botocore's errors (no credentials, 403, no bucket, no endpoint) are all this
        from qa_train.storage import describe_error

        raise PlanningError(
            f"object storage {store.layout.root} is not usable with the given credentials "
            f"(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, endpoint {store.endpoint_url or 'AWS_ENDPOINT_URL'}): "
            f"{describe_error(e, store.layout.root, store.endpoint_url)}"
        ) from None
