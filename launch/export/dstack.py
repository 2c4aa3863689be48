"""dstack ``.dstack.yml`` task (``dstack apply``): ``nodes``, ``image``, ``commands``; secrets as ``env`` names
with no value, which dstack takes from the environment of the user running ``dstack apply``."""

from __future__ import annotations

import shlex
from typing import Any

from launch.export import EngineMissing, ExportError, ExportJob, dns_name

# dstack's GPU names (gpuhunt) and the memory that tells the A100s apart.
GPUS = {"a100": "A100:80GB", "a100-40gb": "A100:40GB", "a6000": "A6000", "h100": "H100", "l40s": "L40S",
        "rtx4090": "RTX4090"}  # fmt: skip


def file_name(run_name: str) -> str:
    return f"{run_name}.dstack.yml"


def document(job: ExportJob) -> dict[str, Any]:
    resources: dict[str, Any] = {"disk": f"{job.spec.disk_gb}GB"}
    if job.gpus_per_node:
        resources["gpu"] = f"{GPUS[job.spec.gpu.profile]}:{job.gpus_per_node}"
    return {
        "type": "task",
        "name": dns_name(job.run_name, 40),
        "image": job.spec.image,
        "nodes": job.nodes,
        "env": [f"{k}={v}" for k, v in job.env.items()] + list(job.secret_names),
        "commands": [shlex.join(job.command)],
        "resources": resources,
    }


def launch_command(path: str, job: ExportJob) -> str:
    return f"dstack apply -f {shlex.quote(path)}  # with {', '.join(job.secret_names)} set in this shell"


def validate(doc: dict[str, Any]) -> None:
    """dstack's own configuration models (``parse_run_configuration``: pydantic, unknown keys refused)."""
    try:
        from dstack._internal.core.models.configurations import parse_run_configuration
    except ImportError:
        raise EngineMissing("dstack") from None
    try:
        parse_run_configuration(doc)
    except Exception as e:  # dstack's ConfigurationError wraps pydantic's ValidationError
        raise ExportError(f"dstack refuses the task: {e}") from None
