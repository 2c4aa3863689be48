"""GPU profiles: what each card can do and what it is called on each cloud.

The DeepSpeed choice per card follows the original README: A100 80GB → ZeRO-3 without offload; A6000 48GB →
ZeRO-3 with optimizer and parameter offload to pinned CPU memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
