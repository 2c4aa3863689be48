"""One-shot GPU check for a session lent a GPU machine (issue 20 item 7): one JSON out, <= 10 minutes.

Why: CI has no GPU, so what only a GPU can show is measured here, once, on the real kernels:
1. isolation: packed varlen attention equals unpacked (flash_attention_2 when flash-attn is installed, else ours,
   ``sdpa_varlen``): max |logit difference| per implementation on a small random Llama;
2. throughput: packed vs padded training of a ~0.6B random Llama (same samples, same optimizer): real (non-pad)
   tokens/s and MFU (useful FLOPs: 6·N·tokens + causal attention, over the GPU's peak bf16);
3. QLoRA: one optimizer step of a 4-bit (bitsandbytes NF4) model with a LoRA adapter (peft): loss, step time,
   peak memory.
Each part records its error instead of stopping the others. ``--tiny`` runs the same code on CPU with a tiny
model (float32), to check the script itself on a machine without a GPU.

Usage: python bench/gpu_check.py [--tiny] [--steps 6] [--seq 4096] [--budget_s 540] [--out FILE]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from qa_train.attention import register  # noqa: E402
from qa_train.data.packing import collate_packed, pack_lengths  # noqa: E402

# Dense bf16 peak (TFLOP/s, no sparsity) by device-name fragment.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "A6000": 155.0, "L40S": 362.0, "4090": 165.0}
SIZES = {  # hidden, layers, heads, kv heads, intermediate, vocab
    "full": (1536, 20, 12, 4, 4096, 32000),  # ~0.6B parameters
    "tiny": (64, 2, 4, 2, 128, 512),
    "iso": (512, 4, 8, 4, 1536, 32000),
    "iso_tiny": (64, 2, 4, 2, 128, 512),
}


class Ctx:
    """Device, dtype and the wall-clock budget every part shares."""

    def __init__(self, tiny: bool, budget_s: float):
        self.tiny = tiny
        self.device = torch.device("cpu" if tiny or not torch.cuda.is_available() else "cuda")
        self.dtype = torch.float32 if self.device.type == "cpu" else torch.bfloat16
        self.deadline = time.monotonic() + budget_s

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def llama(ctx: Ctx, size: str, attn: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, LlamaConfig

    hidden, layers, heads, kv, inter, vocab = SIZES[size]
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=8192,
                      use_cache=False)  # fmt: skip
    return AutoModelForCausalLM.from_config(cfg, dtype=ctx.dtype, attn_implementation=attn).to(ctx.device)


def to(ctx: Ctx, batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v.to(ctx.device) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.no_grad()
def isolation(ctx: Ctx, attn: str) -> dict[str, Any]:
    """Packed forward of 5 samples vs each sample alone: the largest |logit| difference."""
    torch.manual_seed(0)
    size = "iso_tiny" if ctx.tiny else "iso"
    model = llama(ctx, size, attn).eval()
    vocab = SIZES[size][5]
    lengths = [13, 40, 7, 25, 64] if ctx.tiny else [97, 513, 31, 260, 1024]
    samples = [{"input_ids": torch.randint(10, vocab, (n,)).tolist()} for n in lengths]
    packed = model(**to(ctx, {k: v for k, v in collate_packed([samples]).items() if k != "labels"})).logits[0]
    worst, start = 0.0, 0
    for s in samples:
        n = len(s["input_ids"])
        ref = model(input_ids=torch.tensor([s["input_ids"]], device=ctx.device)).logits[0]
        worst = max(worst, (packed[start : start + n] - ref).abs().max().float().item())
        start += n
    scale = packed.abs().max().float().item()
    return {"max_abs_diff": worst, "max_abs_logit": scale, "samples": lengths}


def _lengths(ctx: Ctx, seq: int, n: int) -> list[int]:
    """An SFT-like length distribution (log-normal, median ~600 tokens at full size), capped at ``seq``."""
    g = torch.Generator().manual_seed(0)
    mu = 3.0 if ctx.tiny else 6.4
    return torch.clamp(torch.exp(torch.normal(mu, 0.8, (n,), generator=g)), 8, seq).long().tolist()


def _padded(samples: list[dict], pad: int = 0) -> dict[str, torch.Tensor]:
    """The non-packed path: a batch padded to its longest sample, with an attention mask."""
    longest = max(len(s["input_ids"]) for s in samples)
    ids = torch.full((len(samples), longest), pad)
    labels = torch.full((len(samples), longest), -100)
    mask = torch.zeros((len(samples), longest), dtype=torch.long)
    for i, s in enumerate(samples):
        n = len(s["input_ids"])
        ids[i, :n] = torch.tensor(s["input_ids"])
        labels[i, :n] = torch.tensor(s["input_ids"])
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def throughput(ctx: Ctx, attn: str, mode: str, steps: int, seq: int) -> dict[str, Any]:
    """Training steps on the same sample stream, packed (one row of <= seq tokens) or padded (batches of
    ``seq // median`` samples): real tokens/s and MFU."""
    torch.manual_seed(0)
    size = "tiny" if ctx.tiny else "full"
    hidden, layers, *_, vocab = SIZES[size]
    model = llama(ctx, size, attn if mode == "packed" else "sdpa")
    model.gradient_checkpointing_enable()
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=ctx.device.type == "cuda")
    lengths = _lengths(ctx, seq, 4000)
    samples = [{"input_ids": torch.randint(10, vocab, (n,)).tolist()} for n in lengths[: 64 * (steps + 2)]]
    for s in samples:
        s["labels"] = s["input_ids"]
    if mode == "packed":
        groups = pack_lengths([len(s["input_ids"]) for s in samples], seq)
        batches = [collate_packed([[samples[i] for i in g]]) for g in groups[: steps + 2]]
    else:  # as many sequences per batch as a pack holds on average, in the stream's order
        per = max(1, round(seq / sorted(lengths)[len(lengths) // 2]))
        batches = [_padded(samples[i : i + per]) for i in range(0, per * (steps + 2), per)]
    for b in batches[:2]:  # warm-up (kernels, allocator)
        model(**to(ctx, b)).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    ctx.sync()
    t0, tokens, padded_tokens, attn_flops, done = time.perf_counter(), 0, 0, 0.0, 0
    for b in batches[2:]:
        if ctx.left() < 30:
            break
        model(**to(ctx, b)).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if "cu_seq_lens_q" in b:
            seg = (b["cu_seq_lens_q"][1:] - b["cu_seq_lens_q"][:-1]).double()
        else:
            seg = b["attention_mask"].sum(1).double()
        tokens += int(seg.sum())
        padded_tokens += b["input_ids"].numel()
        attn_flops += float((seg**2).sum()) * hidden * layers * 2 * 3  # QK^T + AV, causal half, fwd + 2x bwd
        done += 1
    ctx.sync()
    dt = time.perf_counter() - t0
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device_name(ctx)), None)
    flops = 6 * n_params * tokens + attn_flops
    out = {"attn": attn if mode == "packed" else "sdpa", "params": n_params, "steps": done, "seconds": round(dt, 3),
           "real_tokens": tokens, "computed_tokens": padded_tokens,
           "tokens_per_s": tokens / dt if dt else None,
           "mfu": flops / dt / (peak * 1e12) if peak and dt else None}  # fmt: skip
    if ctx.device.type == "cuda":
        out["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
    del model, opt
    return out


def qlora_step(ctx: Ctx, seq: int) -> dict[str, Any]:
    """One optimizer step of NF4 weights + LoRA (what a ``qlora: true`` job trains)."""
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig

    torch.manual_seed(0)
    size = "tiny" if ctx.tiny else "full"
    hidden, layers, heads, kv, inter, vocab = SIZES[size]
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, use_cache=False)  # fmt: skip
    tmp = Path("/tmp/qa-gpu-check-qlora")
    AutoModelForCausalLM.from_config(cfg, dtype=ctx.dtype).save_pretrained(tmp)  # 4-bit loads from weights
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=ctx.dtype,
                               bnb_4bit_use_double_quant=True)  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=quant, dtype=ctx.dtype,
                                                 device_map={"": str(ctx.device)})  # fmt: skip
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    model = get_peft_model(model, lora)
    n4 = sum(1 for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(10, vocab, (1, min(seq, 64 if ctx.tiny else 2048)), device=ctx.device)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    ctx.sync()
    t0 = time.perf_counter()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    ctx.sync()
    dt = time.perf_counter() - t0
    trained = [p for p in model.parameters() if p.requires_grad]
    moved = sum(int(not torch.equal(a, p)) for a, p in zip(before, trained, strict=True))
    out = {"linear4bit_layers": n4, "loss": loss.item(), "step_seconds": round(dt, 3), "tokens": ids.numel(),
           "lora_tensors_updated": moved, "bitsandbytes": bnb.__version__}  # fmt: skip
    if ctx.device.type == "cuda":
        out["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return out


def device_name(ctx: Ctx) -> str:
    return torch.cuda.get_device_name() if ctx.device.type == "cuda" else "cpu"


def attempt(out: dict[str, Any], key: str, fn, *args) -> None:  # noqa: ANN001
    """Run one part; its error (one line + the last frame) goes into the JSON instead of ending the check."""
    t0 = time.perf_counter()
    try:
        out[key] = fn(*args)
    except Exception as e:  # noqa: BLE001
        out[key] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                    "where": traceback.format_exc().strip().splitlines()[-3].strip()}  # fmt: skip
    out.setdefault("part_seconds", {})[key] = round(time.perf_counter() - t0, 2)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--tiny", action="store_true", help="CPU, tiny model: checks the script, measures nothing"
    )
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument(
        "--budget_s", type=float, default=540.0, help="stop measuring steps past this (<= 10 min)"
    )
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args(argv)
    seq = min(a.seq, 256) if a.tiny else a.seq
    ctx = Ctx(a.tiny, a.budget_s)
    if ctx.device.type == "cpu" and not a.tiny:
        print("error: no CUDA device visible; use --tiny to check the script on CPU", file=sys.stderr)
        return 2
    register()
    impls = ["sdpa_varlen"]
    if ctx.device.type == "cuda" and importlib.util.find_spec("flash_attn"):
        impls.insert(0, "flash_attention_2")
    import transformers

    out: dict[str, Any] = {"device": device_name(ctx), "tiny": a.tiny, "torch": torch.__version__,
                           "cuda": torch.version.cuda, "transformers": transformers.__version__, "seq": seq,
                           "attn_implementations": impls}  # fmt: skip
    for impl in impls:
        attempt(out, f"isolation_{impl}", isolation, ctx, impl)
    attempt(out, "train_packed", throughput, ctx, impls[0], "packed", a.steps, seq)
    attempt(out, "train_padded", throughput, ctx, impls[0], "padded", a.steps, seq)
    p, q = out.get("train_packed", {}), out.get("train_padded", {})
    if p.get("tokens_per_s") and q.get("tokens_per_s"):
        out["packed_over_padded_tokens_per_s"] = p["tokens_per_s"] / q["tokens_per_s"]
    attempt(out, "qlora_step", qlora_step, ctx, seq)
    out["seconds"] = round(a.budget_s - ctx.left(), 1)
    text = json.dumps(out)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
