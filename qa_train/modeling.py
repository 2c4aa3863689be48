"""Model and tokenizer loading shared by training, merge and evaluation.

One place decides the special tokens, the embedding resize, the attention implementation and the RoPE
scaling, so an adapter trained here always merges onto a base prepared exactly the same way.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

from qa_train.data.prompt import SPECIAL_TOKENS

logger = logging.getLogger(__name__)

# Implementations that honour restarted position_ids (no attention_mask, no cache) in transformers 5.
PACKING_SAFE_ATTN = {
    "flash_attention_2",
    "flash_attention_3",
    "sdpa",
    "sdpa_varlen",
    "eager",
    "flex_attention",
}
MODEL_TYPES = ("mistral", "llama")


def default_attn_implementation(packing: bool = False) -> str:
    """flash_attention_2 when flash-attn is importable and a GPU is present; else sdpa_varlen for packed rows
    (per-sample causal SDPA, see qa_train/attention.py) and sdpa otherwise."""
    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa_varlen" if packing else "sdpa"


def resolve_attn_implementation(requested: str | None, packing: bool) -> str:
    """The implementation to load (registering ``sdpa_varlen`` when chosen); warns when packing can't isolate."""
    impl = requested or default_attn_implementation(packing)
    if impl == "sdpa_varlen":
        from qa_train.attention import register

        register()
    if packing and impl not in PACKING_SAFE_ATTN:
        logger.warning(
            "Packing is on but attn_implementation=%r cannot isolate packed samples; they will attend to each "
            "other (cross-contamination). Use one of %s.",
            impl,
            ", ".join(sorted(PACKING_SAFE_ATTN)),
        )
    return impl


# What the Hub accepts as a repo id: "name" or "owner/name" (letters, digits, -, _, .), no "--" or "..".
_HUB_ID = re.compile(r"^(?!.*(--|\.\.))[A-Za-z0-9][\w.-]{0,95}(/[\w.-]{1,96})?$")


def check_model_path(path: str, flag: str) -> str:
    """``local`` for an existing folder, ``hub`` for something only the Hub can resolve; a UsageError naming
    ``flag`` for a missing local path or a file, instead of the Hub client's "Repo id must be in the form…"."""
    from qa_train.fsutil import UsageError

    local = Path(os.path.expanduser(path))
    if local.is_dir():
        return "local"
    if local.exists():
        raise UsageError(f"{flag} {path}: is a file; expected a model folder or a Hub model id")
    if path.startswith(("/", ".", "~")) or os.sep + os.sep in path or not _HUB_ID.match(path):
        raise UsageError(f"{flag} {path}: no such folder (and not a Hub model id)")
    return "hub"


DTYPES = ("auto", "bfloat16", "float16", "float32")


def resolve_dtype(name: str) -> Any:
    """A torch dtype from its name; ``auto`` is bf16 on a GPU and fp32 on CPU (merge and inference share it)."""
    import torch

    if name not in DTYPES:
        raise ValueError(f"dtype must be {', '.join(DTYPES)}, got {name!r}")
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, name)


def prepare_tokenizer(tokenizer: Any) -> int:
    """Add <|bof|>, <|eof|>, <|eot|> as special tokens and make sure a pad token exists; returns #added."""
    added = tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return added


def load_tokenizer(path: str, model_max_length: int | None = None, padding_side: str = "right") -> Any:
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = {"padding_side": padding_side, "use_fast": True}
    if model_max_length is not None:
        kwargs["model_max_length"] = model_max_length
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{path}: a fast tokenizer is required (labels are computed from token offsets)")
    prepare_tokenizer(tokenizer)
    return tokenizer


def _gathered(params: list[Any]) -> Any:
    """Full (unpartitioned) parameters under DeepSpeed ZeRO-3, writable on rank 0; a no-op otherwise."""
    from contextlib import nullcontext

    if any(hasattr(p, "ds_numel") for p in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=0)
    return nullcontext()


def embedding_rows(model: Any) -> int:
    """Vocabulary rows of the input embedding (ZeRO-3 partitions weights to shape [0], so ask ds_shape)."""
    weight = model.get_input_embeddings().weight
    return int(weight.ds_shape[0]) if hasattr(weight, "ds_shape") else int(weight.shape[0])


def resize_embeddings(model: Any, tokenizer: Any) -> None:
    """Grow the embeddings to the tokenizer; new rows start at the mean of the old ones (stable first steps)."""
    import torch

    old = embedding_rows(model)
    new = len(tokenizer)
    if new <= old:
        return
    model.resize_token_embeddings(new, mean_resizing=False)
    embs = [e for e in (model.get_input_embeddings(), model.get_output_embeddings()) if e is not None]
    with _gathered([e.weight for e in embs]), torch.no_grad():
        for emb in embs:
            if emb.weight.shape[0] >= new:
                emb.weight[old:] = emb.weight[:old].mean(dim=0, keepdim=True)


def detect_model_type(config: Any) -> str:
    return str(getattr(config, "model_type", "unknown"))


def rope_scaling_for(config: Any, model_max_length: int) -> dict[str, Any] | None:
    """Linear RoPE scaling for Llama when the training length exceeds the model's context (as the original)."""
    orig = getattr(config, "max_position_embeddings", None)
    if detect_model_type(config) != "llama" or not orig or model_max_length <= orig:
        return None
    factor = float(math.ceil(model_max_length / orig))
    return {"rope_type": "linear", "type": "linear", "factor": factor}


def load_config(path: str, model_max_length: int | None = None) -> Any:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    if model_max_length:
        scaling = rope_scaling_for(config, model_max_length)
        if scaling is not None:
            logger.info(
                "Applying linear RoPE scaling factor %s (%d > %d)",
                scaling["factor"],
                model_max_length,
                config.max_position_embeddings,
            )
            rope = dict(getattr(config, "rope_parameters", None) or {})
            rope.update({"rope_type": "linear", "factor": scaling["factor"]})
            config.rope_parameters = rope
    config.use_cache = False  # packed inputs are only isolated without a KV cache
    return config
