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

from qa_train.data.prompt import BOF, EOF, EOT, SPECIAL_TOKENS

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
    """Add <|bof|>, <|eof|>, <|eot|> as special tokens and make sure a pad token exists; returns #added.

    The tokens this call added are remembered on the tokenizer (``qa_new_tokens``): only their embedding rows
    are initialised by :func:`resize_embeddings`; a tokenizer that already had them (a merged model) keeps its
    trained rows."""
    before = set(tokenizer.get_vocab())
    added = tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    tokenizer.qa_new_tokens = tuple(t for t in SPECIAL_TOKENS if t not in before)
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


def special_token_ids(tokenizer: Any) -> list[int]:
    """Ids of <|bof|>, <|eof|>, <|eot|> (the rows LoRA trains as ``trainable_token_indices``)."""
    ids = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    unk = tokenizer.unk_token_id
    if any(i is None or (unk is not None and i == unk) for i in ids):
        raise ValueError(f"the tokenizer lacks {SPECIAL_TOKENS}: call prepare_tokenizer first")
    return [int(i) for i in ids]


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


# What each new token means, in words the base model already knows. A new row starts as the mean of these
# words' rows (rescaled to their average norm): a direction the model can already read and predict, so a short
# run only has to sharpen it. Starting at the global mean (no direction, 2/3 of a real row's norm on SmolLM2)
# the rows barely moved in 60 steps and the tuned model never wrote <|bof|> (../shared/docs/special-tokens.md).
NEW_TOKEN_TEXT: dict[str, str] = {
    BOF: " begin function call",
    EOF: " end function call",
    EOT: " end of turn",
}
NEW_TOKEN_INITS = ("text", "mean")


def _text_rows(weight: Any, ids: list[int]) -> Any:
    """Mean of ``weight[ids]``, rescaled to the average norm of those rows."""
    rows = weight[ids].float()
    mean = rows.mean(dim=0)
    return (mean * (rows.norm(dim=-1).mean() / mean.norm().clamp(min=1e-12))).to(weight.dtype)


def init_new_token_rows(
    model: Any, tokenizer: Any, rows: int, tokens: Any = None, how: str = "text"
) -> list[int]:
    """Set the input (and untied output) embedding rows of the newly added QA tokens; returns their ids.

    ``how="text"``: from :data:`NEW_TOKEN_TEXT` (sub-token ids below ``rows``, the base vocabulary);
    ``how="mean"``: the mean of the first ``rows`` rows (the former behaviour, kept for comparison)."""
    import torch

    if how not in NEW_TOKEN_INITS:
        raise ValueError(f"new token init must be one of {NEW_TOKEN_INITS}, got {how!r}")
    tokens = [t for t in (SPECIAL_TOKENS if tokens is None else tokens) if t in SPECIAL_TOKENS]
    if not tokens:
        return []
    ids = [int(i) for i in tokenizer.convert_tokens_to_ids(tokens)]
    sources = {}
    for tok, i in zip(tokens, ids, strict=True):
        text_ids = [
            t for t in tokenizer(NEW_TOKEN_TEXT[tok], add_special_tokens=False)["input_ids"] if t < rows
        ]
        sources[i] = text_ids if how == "text" and text_ids else None
    embs = [model.get_input_embeddings()]
    out = model.get_output_embeddings()
    if out is not None and out.weight is not embs[0].weight:
        embs.append(out)
    with _gathered([e.weight for e in embs]), torch.no_grad():
        for emb in embs:
            w = emb.weight
            if w.shape[0] < max(ids) + 1:  # a ZeRO-3 partition on a rank other than 0
                continue
            mean = w[:rows].mean(dim=0)
            for i, src in sources.items():
                w[i] = _text_rows(w, src) if src else mean
    return ids


def resize_embeddings(model: Any, tokenizer: Any, new_token_init: str = "text") -> None:
    """Grow the embeddings to the tokenizer and initialise the rows of the QA tokens this tokenizer added
    (see :data:`NEW_TOKEN_TEXT`); rows that were already there and already trained are left alone."""
    import torch

    old = embedding_rows(model)
    new = len(tokenizer)
    if new > old:
        model.resize_token_embeddings(new, mean_resizing=False)
        embs = [e for e in (model.get_input_embeddings(), model.get_output_embeddings()) if e is not None]
        with _gathered([e.weight for e in embs]), torch.no_grad():
            for emb in embs:  # any other new row (not a QA token): the mean, as before
                if emb.weight.shape[0] >= new:
                    emb.weight[old:] = emb.weight[:old].mean(dim=0, keepdim=True)
    fresh = getattr(tokenizer, "qa_new_tokens", None)
    if fresh is None:  # a tokenizer not prepared here: rows created just now are the new ones
        fresh = [t for t in SPECIAL_TOKENS if tokenizer.convert_tokens_to_ids(t) >= old]
    base_rows = min(old, *[int(tokenizer.convert_tokens_to_ids(t)) for t in fresh]) if fresh else old
    init_new_token_rows(model, tokenizer, base_rows, fresh, new_token_init)


def lora_config(model: Any, tokenizer: Any, r: int, alpha: float, dropout: float) -> Any:
    """The LoRA of training: every linear layer, plus the rows of the QA tokens (peft
    ``trainable_token_indices``) in the input embedding and in an untied output head (a tied head follows its
    embedding inside peft). Training the whole embedding and head (``modules_to_save``) stored each matrix
    several times over in every adapter: 680 MB for a 135M model."""
    from peft import LoraConfig

    embed = model.get_input_embeddings()
    head = model.get_output_embeddings()
    name_of = {id(m): n.split(".")[-1] for n, m in model.named_modules()}
    ids = special_token_ids(tokenizer)
    rows: dict[str, list[int]] = {name_of[id(embed)]: ids}
    if head is not None and head.weight is not embed.weight:
        rows[name_of[id(head)]] = ids
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules="all-linear",
        trainable_token_indices=rows,
        bias="none",
        task_type="CAUSAL_LM",
    )


def save_token_rows_only(peft_model: Any) -> None:
    """peft saves the whole embedding (and head) matrices whenever the vocabulary was resized; the adapter
    needs only the trained rows (``trainable_tokens_delta``): the other rows are the base's, and the new rows'
    starting values are recomputed identically at merge. Every save path (Trainer checkpoints, the final
    save, ZeRO-3) calls ``save_pretrained`` on this instance."""
    original = peft_model.save_pretrained

    def save_pretrained(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("save_embedding_layers", False)
        return original(*args, **kwargs)

    peft_model.save_pretrained = save_pretrained


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
