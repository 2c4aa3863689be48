"""GPU profiles: what each card can do and what it is called on each cloud.

The DeepSpeed choice per card follows the original README: A100 80GB → ZeRO-3 without offload; A6000 48GB →
ZeRO-3 with optimizer and parameter offload to pinned CPU memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class GpuProfile:
    name: str
    display: str
    memory_gb: float  # per GPU; 0 for cpu
    bf16: bool
    tf32: bool
    micro_batch: int  # per-device train batch the profile starts from
    offload_optimizer: bool  # default ZeRO-3 offload when DeepSpeed is needed
    offload_param: bool
    peak_tflops: float  # dense bf16 (fp32 for cpu), for cost estimates only
    vast_names: tuple[str, ...] = ()
    vast_min_ram_mb: int = 0
    vast_max_ram_mb: int | None = None
    runpod_ids: tuple[str, ...] = ()
    counts: tuple[int, ...] = field(default=(1, 2, 4, 8))

    @property
    def is_cpu(self) -> bool:
        return self.memory_gb == 0


PROFILES: dict[str, GpuProfile] = {
    p.name: p
    for p in (
        GpuProfile(
            "a100", "A100 80GB", 80, True, True, 3, False, False, 312,
            ("A100 SXM4", "A100 PCIE"), 79000, None,
            ("NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe"),
        ),
        GpuProfile(
            "a100-40gb", "A100 40GB", 40, True, True, 2, True, False, 312,
            ("A100 SXM4", "A100 PCIE"), 39000, 42000,
            ("NVIDIA A100-PCIE-40GB",),
        ),
        GpuProfile(
            "a6000", "RTX A6000", 48, True, True, 3, True, True, 155,
            ("RTX A6000",), 47000, None,
            ("NVIDIA RTX A6000",),
        ),
        GpuProfile(
            "h100", "H100 80GB", 80, True, True, 3, False, False, 989,
            ("H100 SXM", "H100 PCIE", "H100 NVL"), 79000, None,
            ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H100 NVL"),
        ),
        GpuProfile(
            "l40s", "L40S 48GB", 48, True, True, 2, True, True, 362,
            ("L40S",), 44000, None,
            ("NVIDIA L40S",),
        ),
        GpuProfile(
            "rtx4090", "RTX 4090 24GB", 24, True, True, 1, True, True, 165,
            ("RTX 4090",), 23000, None,
            ("NVIDIA GeForce RTX 4090",),
        ),
        GpuProfile("cpu", "CPU", 0, False, False, 3, False, False, 1, counts=(0,)),
    )
}  # fmt: skip


def get_profile(name: str) -> GpuProfile:
    key = name.strip().lower()
    if key not in PROFILES:
        raise ValueError(f"unknown GPU profile {name!r}; choose one of: {', '.join(PROFILES)}")
    return PROFILES[key]


# -- host requirements (the machine around the GPUs) -----------------------------------------------------------
DEFAULT_MIN_CUDA = (
    "12.8"  # docker/Dockerfile's CUDA base; used when the image's qa-expert.cuda label is unreadable
)
CUDA_LABEL = "qa-expert.cuda"
VCPUS_PER_GPU = 4  # SkyPilot's default minimum
OFFLOAD_HEADROOM_GB = 16  # OS, page cache, dataloader workers, pinned-buffer slack beside offloaded states


@dataclass(frozen=True)
class HostRequirements:
    """What a job needs from the host around its GPUs. Unpacks as ``(min_ram_gb, min_vcpus)``."""

    min_ram_gb: int
    min_vcpus: int
    min_cuda: str | None = None  # the image's CUDA version (its qa-expert.cuda label)

    def __iter__(self):  # noqa: ANN204 - ``ram, vcpus = host_requirements(spec)``
        return iter((self.min_ram_gb, self.min_vcpus))


def host_requirements(rendered: Any, *, docker_client: Any = None) -> HostRequirements:
    """Host minimums for a rendered spec.

    RAM: at least the GPUs' memory (checkpoint loading and saving stage through host RAM), and for a ZeRO
    offload plan the offloaded states from ``launch/memory.py``'s estimate (``memory.cpu_gb``) × 1.25 plus
    headroom. vCPUs: 4 per GPU (CPU Adam of an offload plan needs them too). CUDA: the image's label. CPU jobs:
    no minimum."""
    profile = get_profile(rendered.gpu.profile)
    count = max(int(rendered.gpu.count), 0)
    if profile.is_cpu or count == 0:
        return HostRequirements(0, 0, None)
    ram = math.ceil(profile.memory_gb * count)
    cpu_gb = float((rendered.memory or {}).get("cpu_gb") or 0.0)
    if cpu_gb > 0:
        ram = max(ram, math.ceil(cpu_gb * 1.25 + OFFLOAD_HEADROOM_GB))
    return HostRequirements(ram, VCPUS_PER_GPU * count, image_min_cuda(rendered.image, docker_client))


def image_min_cuda(image: str, client: Any = None) -> str:
    """The CUDA version an image needs, from its ``qa-expert.cuda`` label (local Docker engine); the default
    when the engine or the image is not at hand (e.g. an image only in a remote registry)."""
    try:
        if client is None:
            import docker

            client = docker.from_env()
        labels = client.images.get(image).labels or {}
        return str(labels.get(CUDA_LABEL) or DEFAULT_MIN_CUDA)
    except Exception:
        return DEFAULT_MIN_CUDA
