"""GPU check (run on a lent GPU machine): flash-attention varlen isolation and packed training throughput.

1. flash_attention_2 (and sdpa_varlen) packed vs unpacked logits on a small random Llama, bf16: max |diff| per sample.
2. Packed training tokens/s and MFU on a ~1B random Llama (bf16, FA2 if installed else sdpa_varlen), a few steps.
Prints a table and one JSON line. Usage: python bench/gpu_check.py [--steps 8] [--seq 4096]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from qa_train.attention import register  # noqa: E402
from qa_train.data.packing import collate_packed, pack_lengths  # noqa: E402

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "A6000": 155.0, "L40S": 362.0, "4090": 165.0}


def _peak(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def _llama(hidden: int, layers: int, heads: int, kv: int, inter: int, attn: str, vocab: int = 32000):
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=8192,
        use_cache=False,
    )
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation=attn).cuda()


@torch.no_grad()
def isolation(attn: str) -> float:
    torch.manual_seed(0)
    model = _llama(512, 4, 8, 4, 1536, attn).eval()
    lengths = [97, 513, 31, 260, 1024]
    samples = [{"input_ids": torch.randint(10, 32000, (n,)).tolist()} for n in lengths]
    batch = {
        k: (v.cuda() if torch.is_tensor(v) else v)
        for k, v in collate_packed([samples]).items()
        if k != "labels"
    }
    packed = model(**batch).logits[0]
    worst, start = 0.0, 0
    for s in samples:
        n = len(s["input_ids"])
        ref = model(input_ids=torch.tensor([s["input_ids"]], device="cuda")).logits[0]
        worst = max(worst, (packed[start : start + n] - ref).abs().max().item())
        start += n
    return worst


def throughput(attn: str, steps: int, seq: int) -> dict:
    torch.manual_seed(0)
    model = _llama(2048, 16, 16, 8, 5632, attn)  # ~1.1B parameters
    model.gradient_checkpointing_enable()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    g = torch.Generator().manual_seed(0)
    lengths = torch.clamp(torch.exp(torch.normal(6.4, 0.8, (4000,), generator=g)), 32, seq).long().tolist()
    groups = pack_lengths(lengths, seq)
    rows = []
    for grp in groups[: steps + 2]:
        samples = [{"input_ids": torch.randint(10, 32000, (lengths[i],)).tolist()} for i in grp]
        for s in samples:
            s["labels"] = s["input_ids"]
        rows.append(
            {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in collate_packed([samples]).items()}
        )
    for r in rows[:2]:  # warm-up
        model(**r).loss.backward()
        opt.step(), opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    t0, tokens, attn_flops = time.perf_counter(), 0, 0.0
    for r in rows[2:]:
        model(**r).loss.backward()
        opt.step(), opt.zero_grad(set_to_none=True)
        tokens += r["input_ids"].numel()
        seg = (r["cu_seq_lens_q"][1:] - r["cu_seq_lens_q"][:-1]).double()
        attn_flops += float((seg**2).sum()) * 2048 * 16 * 2 * 3  # QK^T and AV, causal half, fwd+bwd ×3
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    flops = 6 * n_params * tokens + attn_flops
    peak = _peak(torch.cuda.get_device_name())
    return {
        "attn": attn,
        "params": n_params,
        "tokens_per_s": tokens / dt,
        "mfu": flops / dt / (peak * 1e12) if peak else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--seq", type=int, default=4096)
    a = ap.parse_args()
    register()
    impls = ["sdpa_varlen"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") else [])
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for impl in impls:
        out[f"isolation_max_abs_diff_{impl}"] = isolation(impl)
        out[f"throughput_{impl}"] = throughput(impl, a.steps, a.seq)
    for k, v in out.items():
        print(f"{k:40s} {v}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
