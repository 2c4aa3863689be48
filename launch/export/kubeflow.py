"""Kubeflow Trainer ``TrainJob`` (``kubectl apply``) on the ``torch-distributed`` runtime: ``numNodes`` pods,
each given ``PET_NNODES / PET_NODE_RANK / PET_MASTER_ADDR / PET_MASTER_PORT`` by the runtime; secrets as
``secretKeyRef`` to one Kubernetes Secret (created beforehand with ``kubectl create secret generic``)."""

from __future__ import annotations

import shlex
from typing import Any

from launch.export import EngineMissing, ExportError, ExportJob, dns_name

API_VERSION = "trainer.kubeflow.org/v1alpha1"
RUNTIME = "torch-distributed"  # manifests/base/runtimes/torch_distributed.yaml (ClusterTrainingRuntime)


def file_name(run_name: str) -> str:
    return f"{run_name}.trainjob.yaml"


def document(job: ExportJob) -> dict[str, Any]:
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in job.env.items()]
    env += [
        {"name": n, "valueFrom": {"secretKeyRef": {"name": job.k8s_secret, "key": n}}}
        for n in job.secret_names
    ]
    trainer: dict[str, Any] = {
        "image": job.spec.image,
        "command": job.command,
        "numNodes": job.nodes,
        "env": env,
    }
    if job.gpus_per_node:
        trainer["numProcPerNode"] = job.gpus_per_node
        trainer["resourcesPerNode"] = {"limits": {"nvidia.com/gpu": job.gpus_per_node}}
    return {
        "apiVersion": API_VERSION,
        "kind": "TrainJob",
        "metadata": {"name": dns_name(job.run_name)},
        "spec": {"runtimeRef": {"name": RUNTIME, "apiGroup": "trainer.kubeflow.org",
                                "kind": "ClusterTrainingRuntime"}, "trainer": trainer},
    }  # fmt: skip


def launch_command(path: str, job: ExportJob) -> str:
    lits = " ".join(f'--from-literal={n}="${n}"' for n in job.secret_names)
    return f"kubectl create secret generic {job.k8s_secret} {lits} && kubectl apply -f {shlex.quote(path)}"


def validate(doc: dict[str, Any]) -> None:
    """Kubeflow Trainer's own API models (``kubeflow_trainer_api``, generated from its OpenAPI). They ignore
    unknown keys, so the document must also come back whole from them: a key they dropped is one they do not
    know."""
    try:
        from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob
    except ImportError:
        raise EngineMissing("kubeflow-trainer-api") from None
    try:
        model = TrainerV1alpha1TrainJob.from_dict(doc)
    except Exception as e:  # pydantic's ValidationError
        raise ExportError(f"Kubeflow Trainer refuses the TrainJob: {e}") from None
    back = model.to_dict() if model is not None else {}
    missing = _dropped(doc, back)
    if missing:
        raise ExportError(f"Kubeflow Trainer's TrainJob has no field {missing}")


def _dropped(doc: Any, back: Any, path: str = "") -> str | None:
    if isinstance(doc, dict):
        if not isinstance(back, dict):
            return path or "(top level)"
        for k, v in doc.items():
            if k not in back:
                return f"{path}.{k}".lstrip(".")
            if (got := _dropped(v, back[k], f"{path}.{k}")) is not None:
                return got
    elif isinstance(doc, list) and isinstance(back, list):
        for i, (a, b) in enumerate(zip(doc, back, strict=False)):
            if (got := _dropped(a, b, f"{path}[{i}]")) is not None:
                return got
    return None
