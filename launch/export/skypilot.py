"""SkyPilot task YAML (``sky jobs launch``): ``num_nodes``, the image as ``docker:``, secrets as null-valued
``secrets:`` entries resolved at launch from ``--secret NAME`` (the value of the user's ``$NAME``)."""

from __future__ import annotations

import shlex
from typing import Any

from launch.export import EngineMissing, ExportError, ExportJob, dns_name

# SkyPilot's accelerator names (``sky show-gpus``) for our GPU profiles.
ACCELERATORS = {"a100": "A100-80GB", "a100-40gb": "A100", "a6000": "A6000", "h100": "H100", "l40s": "L40S",
                "rtx4090": "RTX4090"}  # fmt: skip


def file_name(run_name: str) -> str:
    return f"{run_name}.sky.yaml"


def document(job: ExportJob) -> dict[str, Any]:
    resources: dict[str, Any] = {"image_id": f"docker:{job.spec.image}", "disk_size": job.spec.disk_gb}
    if job.gpus_per_node:
        resources["accelerators"] = f"{ACCELERATORS[job.spec.gpu.profile]}:{job.gpus_per_node}"
    else:
        resources["cpus"] = "4+"
    return {
        "name": dns_name(job.run_name),
        "num_nodes": job.nodes,
        "resources": resources,
        "envs": dict(job.env),
        "secrets": {name: None for name in job.secret_names},
        "run": shlex.join(job.command) + "\n",
    }


def launch_command(path: str, job: ExportJob) -> str:
    secrets = " ".join(f"--secret {n}" for n in job.secret_names)
    return f"sky jobs launch -n {dns_name(job.run_name)} {secrets} {shlex.quote(path)}"


def validate(doc: dict[str, Any]) -> None:
    """SkyPilot's own task schema (``sky.utils.schemas.get_task_schema``), as ``sky launch`` checks it."""
    try:
        from sky.utils import common_utils, schemas
    except ImportError:
        raise EngineMissing("skypilot") from None
    try:
        common_utils.validate_schema(doc, schemas.get_task_schema(), "Invalid task YAML: ")
    except ValueError as e:
        raise ExportError(f"SkyPilot refuses the task: {e}") from None
