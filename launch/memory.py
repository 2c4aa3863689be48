"""Will this plan fit? A per-GPU memory estimate from the model's shape, before any money is spent.

Bytes per parameter follow the ZeRO paper's mixed-precision Adam accounting: 2 (bf16 weights) + 2 (bf16 grads)
+ 12 (fp32 master weights, Adam m and v) for trainable parameters; frozen LoRA base weights cost 2 (bf16) or
~0.5 (QLoRA nf4). ZeRO-3 divides all of it by the GPU count; offload moves optimizer states (and parameters)
to CPU RAM. Activations assume flash/SDPA attention (no seq² term) and gradient checkpointing when enabled.
Numbers are estimates with a 10% margin: good enough to refuse a plan that cannot fit.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

GB = 1024**3
CUDA_OVERHEAD_GB = 1.5
MARGIN = 1.10


@dataclass(frozen=True)
class ModelShape:
    name: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    tie_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of every linear layer in one decoder block (LoRA targets all of them)."""
        h, kv, i = self.hidden_size, self.num_kv_heads * self.head_dim, self.intermediate_size
        return [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]

    @property
    def layer_params(self) -> int:
        return sum(a * b for a, b in self.linear_shapes()) + 2 * self.hidden_size

    @property
    def embed_params(self) -> int:
        return self.vocab_size * self.hidden_size * (1 if self.tie_embeddings else 2)

    @property
    def params(self) -> int:
        return self.num_layers * self.layer_params + self.embed_params + self.hidden_size

    def lora_params(self, r: int) -> int:
        return self.num_layers * sum(r * (a + b) for a, b in self.linear_shapes())


# Offline table so --dry_run never downloads a config. Keys are matched against the name's last path part.
KNOWN: dict[str, ModelShape] = {
    "mistral-7b-v0.1": ModelShape("Mistral-7B-v0.1", 32000, 4096, 32, 14336, 32, 8),
    "mistral-7b-v0.3": ModelShape("Mistral-7B-v0.3", 32768, 4096, 32, 14336, 32, 8),
    "llama-2-7b-hf": ModelShape("Llama-2-7b", 32000, 4096, 32, 11008, 32, 32),
    "llama-2-13b-hf": ModelShape("Llama-2-13b", 32000, 5120, 40, 13824, 40, 40),
    "meta-llama-3-8b": ModelShape("Meta-Llama-3-8B", 128256, 4096, 32, 14336, 32, 8),
    "qwen2-7b": ModelShape("Qwen2-7B", 152064, 3584, 28, 18944, 28, 4),
    "qwen2-0.5b": ModelShape("Qwen2-0.5B", 151936, 896, 24, 4864, 14, 2, tie_embeddings=True),
}


def shape_from_config(cfg: dict, name: str) -> ModelShape:
    heads = int(cfg.get("num_attention_heads", 1))
    return ModelShape(
        name=name,
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=int(cfg["hidden_size"]),
        num_layers=int(cfg["num_hidden_layers"]),
        intermediate_size=int(cfg.get("intermediate_size", 4 * int(cfg["hidden_size"]))),
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )


def lookup_shape(job) -> ModelShape | None:
    """The job's model shape from make_tiny, the known table, or a local config.json; None when unknown."""
    if job.model.make_tiny is not None:
        t = job.model.make_tiny
        return ModelShape(
            f"tiny-{t.arch}", t.vocab_size + 16, t.hidden_size, t.num_layers, 2 * t.hidden_size, 4, 2
        )
    name = str(job.model.name_or_path)
    key = name.rstrip("/").rsplit("/", 1)[-1].lower()
    if key in KNOWN:
        return KNOWN[key]
    cfg = Path(name) / "config.json"
    if cfg.is_file():
        return shape_from_config(json.loads(cfg.read_text()), name)
    return None


@dataclass(frozen=True)
class Estimate:
    gpu_gb: float  # per GPU, with margin
    cpu_gb: float  # host RAM for offloaded states
    params: int
    trainable: int
    breakdown_gb: dict[str, float]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["gpu_gb"] = round(self.gpu_gb, 1)
        d["cpu_gb"] = round(self.cpu_gb, 1)
        return d


def estimate(
    shape: ModelShape,
    *,
    mode: str,  # full | lora | qlora
    num_gpus: int = 1,
    zero_stage: int = 0,  # 0 = no DeepSpeed
    offload_optimizer: bool = False,
    offload_param: bool = False,
    micro_batch: int = 1,
    seq_len: int = 4096,
    gradient_checkpointing: bool = True,
    lora_r: int = 16,
) -> Estimate:
    if mode not in ("full", "lora", "qlora"):
        raise ValueError(f"mode must be full, lora or qlora, got {mode!r}")
    n = max(num_gpus, 1)
    p = shape.params
    if mode == "full":
        trainable, frozen_bytes = p, 0.0
    else:
        # adapters + embed_tokens/lm_head (trained and saved because the special tokens are added)
        trainable = shape.lora_params(lora_r) + shape.embed_params
        base_linear = p - shape.embed_params
        frozen_bytes = base_linear * (0.5 if mode == "qlora" else 2.0)
    weights = 2.0 * trainable + frozen_bytes
    grads = 2.0 * trainable
    optim = 12.0 * trainable
    shard = n if zero_stage == 3 else 1
    gpu = {"weights": weights / shard, "grads": grads / shard, "optimizer": optim / shard}
    cpu = 0.0
    if offload_optimizer:
        cpu += gpu["optimizer"] * shard
        gpu["optimizer"] = 0.0
    if offload_param:
        cpu += (gpu["weights"] + gpu["grads"]) * shard
        # working set: about two decoder layers gathered (with prefetch), in bf16, plus their grads
        gpu["weights"] = 2 * 2.0 * shape.layer_params
        gpu["grads"] = 2 * 2.0 * shape.layer_params
    tokens = micro_batch * seq_len
    h, layers = shape.hidden_size, shape.num_layers
    if gradient_checkpointing:
        acts = tokens * h * 2.0 * layers + 34.0 * tokens * h  # saved layer inputs + one recomputed layer
    else:
        acts = 34.0 * tokens * h * layers
    gpu["activations"] = acts
    gpu["logits"] = tokens * shape.vocab_size * 8.0  # fp32 logits and their gradient
    total = (sum(gpu.values()) / GB + CUDA_OVERHEAD_GB) * MARGIN
    return Estimate(
        gpu_gb=total,
        cpu_gb=cpu / GB,
        params=p,
        trainable=trainable,
        breakdown_gb={k: round(v / GB, 2) for k, v in gpu.items()},
    )


ORIGINAL_TOKENS_PER_EPOCH = 5173 * 4096  # the original README: 5173 packs of 4096 tokens


MFU = 0.35  # assumed model FLOPs utilisation when no measured tokens/s exists for the GPU profile
# Measured training tokens/s per GPU from bench/RESULTS.md, keyed (gpu profile, mode). Empty: no GPU run of
# bench/gpu_check.sh has been recorded yet (only CPU throughput on a tiny model, which says nothing here).
MEASURED_TOKENS_PER_S: dict[tuple[str, str], tuple[float, str]] = {}


def tokens_per_second(
    shape: ModelShape | None, mode: str, peak_tflops: float, num_gpus: int, offload: bool, profile: str = ""
) -> tuple[float, str]:
    """Training tokens/s of the whole job and where the number comes from (printed with every estimate)."""
    n = max(num_gpus, 1)
    if (profile, mode) in MEASURED_TOKENS_PER_S:
        rate, where = MEASURED_TOKENS_PER_S[(profile, mode)]
        return rate * n, f"measured {rate:,.0f} tokens/s per GPU ({where})"
    params = shape.params if shape else 7e9
    per_token = (8.0 if mode == "full" else 6.0) * params
    rate = n * peak_tflops * 1e12 * MFU * (0.5 if offload else 1.0) / per_token
    why = (f"peak {peak_tflops:g} TFLOPs × {MFU:.0%} MFU{' × 0.5 (offload)' if offload else ''} / "
           f"{per_token / params:g}·{params / 1e9:.1f}B FLOPs per token; no measured number in bench/RESULTS.md")  # fmt: skip
    return rate, why


def estimate_hours(tokens_per_epoch: int | None, epochs: float, rate: float) -> float:
    """Rough training time for the offers table at ``rate`` tokens/s (``tokens_per_second``: measured, else
    peak FLOPs × MFU); the original README's data size when the spec gives none."""
    return (tokens_per_epoch or ORIGINAL_TOKENS_PER_EPOCH) * epochs / rate / 3600
