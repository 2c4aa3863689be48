"""``python -m qa_train merge``: fold a LoRA / QLoRA adapter into its base model for fast inference (vLLM).

The base is loaded unquantized (bf16 on GPU, fp32 on CPU — never 4-bit, also for QLoRA adapters) and
prepared exactly as in training (special tokens, embedding resize and new-row initialisation, RoPE scaling
from the saved ``model_max_length``), so the adapter's trained token rows (peft ``trainable_token_indices``:
only the <|bof|>/<|eof|>/<|eot|> rows, not whole matrices) and LoRA deltas land on the same shapes. Adapters
of older runs that saved full ``embed_tokens`` / ``lm_head`` (``modules_to_save``) still merge. The merged model is written to a temporary sibling folder and renamed into place with the completion
marker (``qa_train.fsutil.MARKER``) last, so an interrupted merge never leaves a folder that looks like a model.
The adapter must carry the marker training writes (a cut-off save is refused), and the output may be neither
input, inside one, nor an existing file.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from qa_train.fsutil import (
    ArgumentParser,
    UsageError,
    check_number,
    check_output,
    check_replaceable,
    publish_dir,
    require_marker,
    write_marker,
)

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


class MergeError(UsageError):
    """The adapter cannot be merged into this base; the message says which file / field disagrees."""


def _adapter_tensors(path: Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the saved adapter weights (read lazily; nothing is loaded twice)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
    import torch

    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return {k: tuple(v.shape) for k, v in state.items()}


def _saved_model_max_length(checkpoint: Path) -> int | None:
    """Training saves its tokenizer (with ``model_max_length``) next to the adapter; reuse it for RoPE scaling."""
    cfg = checkpoint / "tokenizer_config.json"
    if not cfg.is_file():
        return None
    value = json.loads(cfg.read_text(encoding="utf-8")).get("model_max_length")
    return int(value) if isinstance(value, (int, float)) and value < 1e9 else None


def _resolve_dtype(name: str) -> Any:
    from qa_train.modeling import resolve_dtype

    try:
        return resolve_dtype(name)
    except ValueError as exc:
        raise MergeError(f"--torch_dtype: {exc}") from None


def check_adapter(checkpoint: Path) -> tuple[dict[str, Any], Path]:
    """adapter_config.json (a LoRA) + its weights file, or MergeError."""
    if not checkpoint.is_dir():
        raise MergeError(f"--checkpoint {checkpoint}: no such directory")
    cfg_path = checkpoint / "adapter_config.json"
    if not cfg_path.is_file():
        raise MergeError(
            f"--checkpoint {checkpoint}: no adapter_config.json, so it is not a LoRA adapter "
            "(a full fine-tune needs no merge)"
        )
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise MergeError(f"{cfg_path}: malformed JSON: {exc}") from exc
    if cfg.get("peft_type") != "LORA":
        raise MergeError(
            f"{cfg_path}: peft_type is {cfg.get('peft_type')!r}, only LORA adapters can be merged"
        )
    weights = next((checkpoint / n for n in ADAPTER_WEIGHTS if (checkpoint / n).is_file()), None)
    if weights is None:
        raise MergeError(
            f"--checkpoint {checkpoint}: adapter weights missing (expected {ADAPTER_WEIGHTS[0]})"
        )
    require_marker(checkpoint, "--checkpoint", "`python -m qa_train train`")
    return cfg, weights


def check_paths(save_folder: Path, pretrained_path: str, checkpoint: Path) -> None:
    """The merged folder replaces ``save_folder`` as a whole: it must not be (in) an input or hold one, must not
    be a file, and an existing folder must be a finished qa_train output (nobody's data is deleted)."""
    from qa_train.modeling import check_model_path

    check_model_path(pretrained_path, "--pretrained_path")
    inputs = {"--pretrained_path": pretrained_path, "--checkpoint": checkpoint}
    check_output(save_folder, "--save_folder", inputs, kind="folder")
    check_replaceable(save_folder, "--save_folder")


def _check_vocab(saved: dict[str, tuple[int, ...]], vocab: int, weights: Path) -> None:
    """Full embedding / head rows saved by ``modules_to_save`` must match the prepared base's vocabulary."""
    for key, shape in saved.items():
        if "lora_" in key or not key.endswith(".weight"):
            continue
        if ("embed_tokens" in key or "lm_head" in key or "embed_out" in key) and shape[0] != vocab:
            raise MergeError(
                f"{weights}: '{key}' has {shape[0]} rows but the base prepared with the QA special tokens has "
                f"{vocab}; the adapter was trained on a different base or tokenizer"
            )


def _check_token_rows(adapter_cfg: dict[str, Any], tokenizer: Any, cfg_path: Path) -> None:
    """The rows an adapter trained (``trainable_token_indices``) must be the QA tokens' ids in this base's
    prepared tokenizer; otherwise the trained rows would land on other tokens."""
    from qa_train.modeling import special_token_ids

    rows = adapter_cfg.get("trainable_token_indices")
    if not rows:
        return
    expected = special_token_ids(tokenizer)
    for layer, ids in rows.items() if isinstance(rows, dict) else [("embeddings", rows)]:
        if sorted(ids) != sorted(expected):
            raise MergeError(
                f"{cfg_path}: trainable_token_indices of {layer} are {ids} but the QA tokens of the prepared base "
                f"are {expected}; the adapter was trained on a different base or tokenizer"
            )


def _check_keys(peft_model: Any, saved: dict[str, tuple[int, ...]], weights: Path) -> None:
    """Every saved tensor must have found a module of the same shape (peft only warns about strays)."""
    from peft import get_peft_model_state_dict

    # Training saves no full embedding matrices (only the trained rows); an older adapter may carry them.
    # "auto" only adds the embedding keys to what False returns, so ``allowed`` holds every needed key.
    needed = get_peft_model_state_dict(peft_model, save_embedding_layers=False)
    allowed = get_peft_model_state_dict(peft_model, save_embedding_layers="auto")
    expected = {k: tuple(v.shape) for k, v in allowed.items()}
    unexpected = sorted(set(saved) - set(expected))
    missing = sorted(set(needed) - set(saved))
    if unexpected or missing:
        raise MergeError(
            f"{weights}: adapter does not fit the base model: {len(unexpected)} tensors without a module "
            f"(e.g. {unexpected[:3]}), {len(missing)} modules without weights (e.g. {missing[:3]})"
        )
    wrong = [k for k in saved if saved[k] != expected[k]]
    if wrong:
        k = wrong[0]
        raise MergeError(f"{weights}: '{k}' has shape {saved[k]} but the base expects {expected[k]}")


def merge(
    save_folder: str | Path,
    pretrained_path: str,
    checkpoint: str | Path,
    model_type: str | None = None,
    torch_dtype: str = "auto",
    model_max_length: int | None = None,
) -> Path:
    """Merge ``checkpoint`` (a LoRA adapter dir) into ``pretrained_path``; returns ``save_folder``."""
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    from qa_train.data.prompt import EOT
    from qa_train.modeling import load_config, load_tokenizer, resize_embeddings

    checkpoint, save_folder = Path(checkpoint), Path(save_folder)
    check_paths(save_folder, pretrained_path, checkpoint)
    adapter_cfg, weights = check_adapter(checkpoint)
    try:
        base_cfg = AutoConfig.from_pretrained(pretrained_path)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MergeError(
            f"--pretrained_path {pretrained_path}: cannot load a model config ({first})"
        ) from None
    if model_type and model_type != base_cfg.model_type:
        raise MergeError(
            f"--model_type {model_type} but {pretrained_path} is a {base_cfg.model_type!r} model"
        )
    if getattr(base_cfg, "quantization_config", None):
        raise MergeError(f"{pretrained_path} is a pre-quantized checkpoint; merge needs the unquantized base")
    base_ref = adapter_cfg.get("base_model_name_or_path")
    if base_ref and Path(str(base_ref)).name != Path(pretrained_path).name:
        logger.warning("adapter was trained on %r; merging into %r", base_ref, pretrained_path)
    ref_cfg = Path(str(base_ref)) / "config.json" if base_ref else None
    if ref_cfg is not None and ref_cfg.is_file():  # the training base is reachable: its type must match
        ref_type = json.loads(ref_cfg.read_text(encoding="utf-8")).get("model_type")
        if ref_type and ref_type != base_cfg.model_type:
            raise MergeError(
                f"{checkpoint}: adapter was trained on a {ref_type!r} model ({base_ref}) but {pretrained_path} "
                f"is a {base_cfg.model_type!r} model"
            )

    max_len = model_max_length or _saved_model_max_length(checkpoint)
    tokenizer = load_tokenizer(pretrained_path, model_max_length=max_len)
    vocab = max(len(tokenizer), int(base_cfg.vocab_size))
    saved = _adapter_tensors(weights)
    _check_vocab(saved, vocab, weights)
    _check_token_rows(adapter_cfg, tokenizer, checkpoint / "adapter_config.json")
    if (checkpoint / "tokenizer_config.json").is_file():
        trained_len = len(load_tokenizer(str(checkpoint)))
        if trained_len != len(tokenizer):
            raise MergeError(
                f"{checkpoint}: the training tokenizer has {trained_len} tokens but {pretrained_path} prepared "
                f"for QA has {len(tokenizer)}; wrong base model?"
            )

    dtype = _resolve_dtype(torch_dtype)
    config = load_config(pretrained_path, max_len)
    logger.info("Loading base %s (%s, %s, unquantized)", pretrained_path, config.model_type, dtype)
    model = AutoModelForCausalLM.from_pretrained(pretrained_path, config=config, dtype=dtype)
    resize_embeddings(model, tokenizer)
    try:
        peft_model = PeftModel.from_pretrained(model, str(checkpoint))
    except (ValueError, RuntimeError, KeyError) as exc:
        raise MergeError(f"{checkpoint}: adapter does not fit {pretrained_path}: {exc}") from exc
    _check_keys(peft_model, saved, weights)
    merged = peft_model.merge_and_unload()
    merged = merged.to(dtype)

    merged.config.use_cache = True  # training turned it off for packing; generation wants it
    merged.config.pad_token_id = tokenizer.pad_token_id
    eot = tokenizer.convert_tokens_to_ids(EOT)
    eos = merged.generation_config.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    merged.generation_config.eos_token_id = [eot, *[e for e in eos_ids if e != eot]]
    merged.generation_config.pad_token_id = tokenizer.pad_token_id

    with publish_dir(save_folder) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_marker(tmp, "merge", pretrained_path=str(pretrained_path), checkpoint=str(checkpoint))
    logger.info("Merged %s into %s -> %s", checkpoint, pretrained_path, save_folder)
    return save_folder


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m qa_train merge",
        allow_abbrev=False,
        description="Merge a LoRA/QLoRA adapter into its (unquantized) base model. Arguments as the original: "
        "--save_folder --pretrained_path --checkpoint, or the three positionally in that order.",
    )
    p.add_argument("positional", nargs="*", metavar="SAVE_FOLDER PRETRAINED_PATH CHECKPOINT")
    p.add_argument("--save_folder", default=None, help="where the merged model + tokenizer are written")
    p.add_argument("--pretrained_path", default=None, help="the base model the adapter was trained on")
    p.add_argument("--checkpoint", default=None, help="adapter folder (training output_dir or checkpoint-N)")
    p.add_argument("--model_type", default=None, help="expected base model_type (llama, mistral, …); checked")
    p.add_argument("--torch_dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"))
    p.add_argument(
        "--model_max_length", type=int, default=None, help="default: the adapter's tokenizer value"
    )
    return p


def _parse(argv: list[str] | None) -> Any:
    parser = build_parser()
    args = parser.parse_args(argv)
    names = ("save_folder", "pretrained_path", "checkpoint")
    if len(args.positional) > len(names):
        parser.error(f"at most 3 positional arguments ({' '.join(names)}), got {len(args.positional)}")
    for name, value in zip(names, args.positional, strict=False):
        if getattr(args, name) is not None:
            parser.error(f"{name} given both positionally and as --{name}")
        setattr(args, name, value)
    missing = [f"--{n}" for n in names if not getattr(args, n)]
    if missing:
        parser.error(f"missing {', '.join(missing)}")
    if args.model_max_length is not None:
        check_number("--model_max_length", args.model_max_length, args.model_max_length > 0, "> 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Exit 0; 2 with one ``error:`` line for bad flags, paths or an adapter that does not fit."""
    from qa_train.logs import SHORT_FORMAT, setup_logging

    setup_logging(fmt=SHORT_FORMAT, datefmt=None)
    try:
        args = _parse(argv)
        merge(
            args.save_folder,
            args.pretrained_path,
            args.checkpoint,
            args.model_type,
            args.torch_dtype,
            args.model_max_length,
        )
    except UsageError as exc:  # MergeError is one
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
