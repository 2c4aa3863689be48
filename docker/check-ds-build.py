"""Build-time check of the DeepSpeed install in docker/Dockerfile: ops built for CUDA, those we use prebuilt, and
cpu_adam free of AVX-512 (a rented host may lack it). DeepSpeed's setup.py skips a requested op silently when
it cannot build it, and records accelerator "cpu" when no GPU is visible: either would mean a JIT compile (or
a crash) on the GPU host, after it is paid for. Usage: python check-ds-build.py OP[,OP...]"""

import glob
import subprocess
import sys

from deepspeed.git_version_info import accelerator_name, installed_ops

need = [op for op in sys.argv[1].split(",") if op]
print(
    "deepspeed accelerator_name:",
    accelerator_name,
    "| prebuilt:",
    sorted(k for k, v in installed_ops.items() if v),
)
if accelerator_name != "cuda":
    sys.exit(
        f"error: DeepSpeed ops were built for accelerator {accelerator_name!r}, not 'cuda' (DS_ACCELERATOR)"
    )
missing = [op for op in need if not installed_ops.get(op)]
if missing:
    sys.exit(
        f"error: DeepSpeed ops not prebuilt: {', '.join(missing)} (they would JIT-compile on the GPU host)"
    )
import deepspeed  # noqa: E402

sos = glob.glob(f"{deepspeed.__path__[0]}/ops/adam/cpu_adam_op*.so")
if not sos:
    sys.exit("error: no cpu_adam shared object in the DeepSpeed install")
for so in sos:
    zmm = subprocess.run(["objdump", "-d", so], capture_output=True, text=True, check=True).stdout.count(
        "zmm"
    )
    print(f"cpu_adam: {so}: {zmm} AVX-512 (zmm) operands")
    if zmm:
        sys.exit(f"error: {so} uses AVX-512 ({zmm} zmm operands): an illegal instruction on AVX2-only hosts")
