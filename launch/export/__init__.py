"""``export --to skypilot|dstack|kubeflow``: the job as the engine's own file, for clusters we do not provision.

Why: SkyPilot, dstack and Kubeflow Trainer already provision and wire several nodes (and relaunch a group);
what they need from us is a file that runs our image's entrypoint (``python -m qa_train run``) on every node
with the rendered spec by reference (``QA_JOB_SPEC_URI``: the spec lives in object storage, as for vast and
RunPod). Inside, ``qa_train/nodes.py`` turns the engine's node variables into torchrun's flags. Secrets appear
by name only: SkyPilot ``secrets:`` with null values (given with ``--secret NAME`` at launch), dstack ``env``
names without a value (taken from the user's environment), Kubernetes ``secretKeyRef``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from qa_train.contract import ENV_SPEC_URI, RunLayout
from qa_train.spec import RenderedSpec

ENGINES = ("skypilot", "dstack", "kubeflow")
# Always passed by name: the container reads and writes its run in object storage with them.
STORAGE_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
PLAIN_ENV = ("PYTHONUNBUFFERED", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION")


class ExportError(ValueError):
    """The job cannot be exported as asked (no object storage, a file the engine's own schema refuses)."""


class EngineMissing(ImportError):
    """The engine's package (its schema or models) is not installed here: the file is written unchecked."""


@dataclass(frozen=True)
class ExportJob:
    """What every engine's file is made from: the rendered spec, the node count, and names, never values."""

    spec: RenderedSpec
    nodes: int
    secret_names: tuple[str, ...]
    k8s_secret: str = "qa-expert"
    env: dict[str, str] = field(default_factory=dict)

    @property
    def run_name(self) -> str:
        return self.spec.job.run_name

    @property
    def gpus_per_node(self) -> int:
        return self.spec.gpu.count

    @property
    def command(self) -> list[str]:
        return list(self.spec.command)  # the image's ENTRYPOINT: python -m qa_train run


def export_job(
    spec: RenderedSpec, nodes: int, secret_names: list[str], k8s_secret: str = "qa-expert"
) -> ExportJob:
    """The spec's plain env (its URI, the storage endpoint) and the secret names the container needs."""
    if spec.job.sync is None:
        raise ExportError(
            "an exported job needs object storage: set sync.target (s3://bucket/prefix) in the job spec "
            "(the nodes read the spec from <target>/<run>/spec.json and keep checkpoints there)"
        )
    if nodes < 1:
        raise ExportError(f"--nodes must be >= 1 (got {nodes})")
    env = {ENV_SPEC_URI: RunLayout.of(spec.job.sync.target, spec.job.run_name).spec}
    env.update({k: spec.env[k] for k in PLAIN_ENV if spec.env.get(k)})
    names = tuple(sorted(set(STORAGE_SECRETS) | set(secret_names)))
    return ExportJob(spec, nodes, names, k8s_secret, env)


def dns_name(run_name: str, limit: int = 63) -> str:
    """A name every engine takes (a Kubernetes DNS-1035 label: lowercase letters, digits, '-', a letter first,
    <= 63; dstack: <= 40)."""
    name = re.sub(r"[^a-z0-9-]+", "-", run_name.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = f"qa-{name}".rstrip("-")
    return name[:limit].rstrip("-")


def engine(name: str) -> ModuleType:
    """The module of one engine (``document``, ``file_name``, ``launch_command``, ``validate``)."""
    if name not in ENGINES:
        raise ExportError(f"--to must be one of {', '.join(ENGINES)} (got {name!r})")
    from importlib import import_module

    return import_module(f"launch.export.{name}")


def to_yaml(doc: dict[str, Any], header: str) -> str:
    """The file's text: a comment header (what it is, how to launch it), then the document in key order."""
    import yaml

    lines = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return lines + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=1000)
