"""Packed forward == unpacked forward, per sample, on tiny random Llama / Mistral / Qwen2 (sdpa and eager, fp32).

This is the proof that ``collate_packed`` + ``use_cache=False`` isolates samples. The same batch run the wrong
ways (positions not restarted, a KV cache, an all-ones attention mask) must be contaminated, so the check can fail
and the traps documented in docs/packing.md stay visible if transformers changes its behaviour.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qa_train.data.packing import IGNORE_INDEX, collate_packed

ATOL = 1e-5
LENGTHS = (9, 17, 1, 12, 6)  # a length-1 sample checks back-to-back restarts (position ids 0, 0)


@pytest.fixture(params=["llama", "mistral", "qwen2"])
def arch_path(request):
    return request.param, request.getfixturevalue(f"tiny_{request.param}")


def _load(path, attn: str, **config_overrides):
    from transformers import AutoModelForCausalLM

    if attn == "sdpa_varlen":
        from qa_train.attention import register

        register()

    model = AutoModelForCausalLM.from_pretrained(
        path, attn_implementation=attn, dtype=torch.float32, **config_overrides
    )
    assert model.config._attn_implementation == attn
    return model.eval()


def _samples(vocab_size: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in LENGTHS:
        ids = torch.randint(4, vocab_size, (n,), generator=g).tolist()
        labels = [IGNORE_INDEX if k < n // 3 else t for k, t in enumerate(ids)]  # a masked prompt part
        out.append({"input_ids": ids, "labels": labels})
    return out


def _token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token loss of one sample (its first label is never a target)."""
    return F.cross_entropy(logits[:-1].float(), labels[1:], ignore_index=IGNORE_INDEX, reduction="sum")


def _split(t: torch.Tensor, cu: torch.Tensor) -> list[torch.Tensor]:
    return [t[0, a:b] for a, b in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True)]


@torch.no_grad()
def _check_equivalence(model, samples: list[dict]) -> dict:
    batch = collate_packed([samples[:2], samples[2:]])  # two packs flattened into one row
    assert "attention_mask" not in batch
    packed = model(**batch, use_cache=False)
    cu = batch["cu_seq_lens_q"]
    total_loss, total_tokens = 0.0, 0
    for k, (s, logits) in enumerate(zip(samples, _split(packed.logits, cu), strict=True)):
        ids = torch.tensor([s["input_ids"]])
        ref = model(input_ids=ids, use_cache=False).logits[0]
        diff = (logits - ref).abs().max().item()
        assert diff <= ATOL, f"sample {k}: packed logits differ from unpacked by {diff:.2e}"
        labels = torch.tensor(s["labels"])
        loss_packed = _token_losses(logits, labels)
        loss_ref = _token_losses(ref, labels)
        assert torch.allclose(loss_packed, loss_ref, atol=ATOL, rtol=0), f"sample {k}: loss differs"
        total_loss += loss_ref.item()
        total_tokens += int((labels[1:] != IGNORE_INDEX).sum())
    # the model's own loss on the packed row is the token-weighted mean over all samples' label tokens
    assert packed.loss.item() == pytest.approx(total_loss / total_tokens, abs=ATOL)
    return batch


def _later_samples_diff(model, batch: dict, reference: torch.Tensor, **kwargs) -> float:
    out = model(**batch, **kwargs).logits
    first_end = int(batch["cu_seq_lens_q"][1]) if "cu_seq_lens_q" in batch else LENGTHS[0]
    return (out[0, first_end:] - reference[0, first_end:]).abs().max().item()


@pytest.mark.parametrize("attn", ["sdpa", "eager", "sdpa_varlen"])
def test_packed_logits_and_losses_equal_unpacked(arch_path, attn):
    arch, path = arch_path
    model = _load(path, attn)
    samples = _samples(model.config.vocab_size)
    batch = _check_equivalence(model, samples)

    with torch.no_grad():
        good = model(**batch, use_cache=False).logits
        # naive concatenation: one long sequence, positions 0..N-1 -> samples see each other
        naive = dict(batch, position_ids=torch.arange(batch["input_ids"].shape[1])[None])
        (
            naive.pop("cu_seq_lens_q"),
            naive.pop("cu_seq_lens_k"),
            naive.pop("max_length_q"),
            naive.pop("max_length_k"),
        )
        assert _later_samples_diff(model, naive, good, use_cache=False) > 1e-3, (
            f"{arch}/{attn}: naive concatenation should contaminate"
        )
        if attn == "sdpa_varlen":
            # per-sample attention from cu_seq_lens: neither a cache nor an all-ones mask can contaminate it
            ones = torch.ones_like(batch["input_ids"])
            assert _later_samples_diff(model, batch, good, use_cache=True) <= ATOL
            assert _later_samples_diff(model, batch, good, use_cache=False, attention_mask=ones) <= ATOL
            return
        # trap 1: a KV cache disables packed-sequence detection for sdpa/eager
        assert _later_samples_diff(model, batch, good, use_cache=True) > 1e-3, (
            f"{arch}/{attn}: use_cache=True no longer contaminates — docs/packing.md needs updating"
        )
        # trap 2: any 2-D attention mask, even all ones, disables it too
        ones = torch.ones_like(batch["input_ids"])
        assert _later_samples_diff(model, batch, good, use_cache=False, attention_mask=ones) > 1e-3, (
            f"{arch}/{attn}: an all-ones attention_mask no longer contaminates — docs/packing.md needs updating"
        )
        # the model's config default is use_cache=True: calling it without the flag is the same trap
        assert model.config.use_cache is True
        assert _later_samples_diff(model, batch, good) > 1e-3


@pytest.mark.parametrize("attn", ["sdpa", "eager", "sdpa_varlen"])
def test_mistral_sliding_window_packed_equals_unpacked(tiny_mistral, attn):
    """Sliding-window masks are packing-aware too: a window of 4 (< the sample lengths) still isolates samples."""
    model = _load(tiny_mistral, attn, sliding_window=4)
    assert model.config.sliding_window == 4
    _check_equivalence(model, _samples(model.config.vocab_size, seed=1))
    with torch.no_grad():  # and the window really applies: a full-attention model gives different logits
        ids = torch.tensor([_samples(model.config.vocab_size, seed=1)[1]["input_ids"]])
        full = _load(tiny_mistral, attn, sliding_window=None)
        diff = (
            model(input_ids=ids, use_cache=False).logits - full(input_ids=ids, use_cache=False).logits
        ).abs()
        assert diff.max().item() > 1e-4


def test_training_gradients_equal_unpacked(tiny_llama):
    """The loss gradient of a packed row equals that of the same samples run one by one (token-weighted)."""
    model = _load(tiny_llama, "sdpa")
    samples = _samples(model.config.vocab_size, seed=2)
    model.zero_grad()
    model(**collate_packed([samples]), use_cache=False).loss.backward()
    packed_grad = model.model.layers[0].self_attn.q_proj.weight.grad.clone()
    model.zero_grad()
    n_tokens = sum(sum(1 for t in s["labels"][1:] if t != IGNORE_INDEX) for s in samples)
    for s in samples:
        logits = model(input_ids=torch.tensor([s["input_ids"]]), use_cache=False).logits[0]
        (_token_losses(logits, torch.tensor(s["labels"])) / n_tokens).backward()
    ref_grad = model.model.layers[0].self_attn.q_proj.weight.grad
    assert torch.allclose(packed_grad, ref_grad, atol=1e-6, rtol=1e-4)
