"""``sdpa_varlen``: packed-sequence attention without flash-attn, at the cost of the samples, not of the row.

With plain sdpa/eager, transformers isolates packed samples by building one block-diagonal mask over the whole
flattened row, and the kernel still computes every masked block: a row of k samples of length L costs (kL)²
instead of kL². This implementation reads the ``cu_seq_lens_q`` the packed collator already provides and runs
causal SDPA on each sample's slice (cost Σ Lᵢ², the fused causal kernels apply). Anything else — no cu_seq_lens,
batch > 1, decoding, a sliding window shorter than a sample — falls back to stock sdpa with the mask
transformers built, which is packing-aware itself.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

NAME = "sdpa_varlen"
_registered = False


def sdpa_varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    cu = kwargs.get("cu_seq_lens_q")
    n = query.shape[2]
    usable = cu is not None and query.shape[0] == 1 and n > 1 and key.shape[2] == n and int(cu[-1]) == n
    if usable:
        bounds = [int(x) for x in cu.tolist()]
        window = getattr(module, "sliding_window", None) or getattr(
            getattr(module, "config", None), "sliding_window", None
        )
        if window is not None and max(b - a for a, b in zip(bounds[:-1], bounds[1:], strict=False)) > window:
            usable = False
    if not usable:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    p = dropout if module.training else 0.0
    out = torch.cat(
        [
            F.scaled_dot_product_attention(
                query[:, :, a:b],
                key[:, :, a:b],
                value[:, :, a:b],
                dropout_p=p,
                scale=scaling,
                is_causal=b - a > 1,
            )
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ],
        dim=2,
    )
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Make ``attn_implementation="sdpa_varlen"`` loadable (idempotent); returns the name."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

        AttentionInterface.register(NAME, sdpa_varlen_attention_forward)
        AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
        _registered = True
    return NAME
