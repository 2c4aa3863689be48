"""Generation backends for the agent loop: ``hf`` (transformers ``generate``) and ``vllm`` (optional).

Both decode greedily, stop at ``<|eot|>`` and return each assistant turn without it, with ``<|bof|>`` /
``<|eof|>`` kept (they are special tokens, so decoding must not skip special tokens).
"""

from __future__ import annotations

import logging
from typing import Any

from qa_train.data.prompt import EOT

logger = logging.getLogger(__name__)

BACKENDS = ("hf", "vllm")


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here (missing package or unusable model)."""


def _stop_ids(tokenizer: Any) -> list[int]:
    eot = tokenizer.convert_tokens_to_ids(EOT)
    if eot is None or eot == tokenizer.unk_token_id:
        raise BackendUnavailable(f"tokenizer has no {EOT} token; was the model trained/merged with qa_train?")
    ids = [eot]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id != eot:
        ids.append(tokenizer.eos_token_id)
    return ids


class HFBackend:
    """transformers ``generate`` with left padding, greedy decoding and a KV cache (prompts are unpacked)."""

    def __init__(
        self,
        model_path: str,
        max_new_tokens: int = 512,
        dtype: str = "auto",
        device: str | None = None,
        attn_implementation: str | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from qa_train.modeling import load_tokenizer, resize_embeddings, resolve_dtype

        self.tokenizer = load_tokenizer(model_path, padding_side="left")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype)}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        self.model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs).to(self.device)
        if len(self.tokenizer) > self.model.get_input_embeddings().weight.shape[0]:
            logger.warning(
                "%s has no rows for the QA special tokens; resizing (untrained embeddings)", model_path
            )
            resize_embeddings(self.model, self.tokenizer)
        self.model.eval()
        self.stop_ids = _stop_ids(self.tokenizer)
        self.max_new_tokens = max_new_tokens

    def generate(self, prompts: list[str]) -> list[str]:
        import torch
        from transformers import GenerationConfig

        if not prompts:
            return []
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.device)
        config = GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=self.stop_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            use_cache=True,
        )
        with torch.inference_mode():
            out = self.model.generate(**enc, generation_config=config)
        new_tokens = out[:, enc["input_ids"].shape[1] :].tolist()
        texts = []
        for ids in new_tokens:
            cut = next((k for k, t in enumerate(ids) if t in self.stop_ids), len(ids))
            texts.append(
                self.tokenizer.decode(
                    ids[:cut], skip_special_tokens=False, clean_up_tokenization_spaces=False
                )
            )
        return texts


class VLLMBackend:
    """vLLM offline engine; it schedules a round's prompts with continuous batching on the GPU."""

    def __init__(
        self,
        model_path: str,
        max_new_tokens: int = 512,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
    ) -> None:
        try:
            from vllm import LLM, SamplingParams
        except ImportError as exc:
            raise BackendUnavailable(
                "--inference_type vllm needs the vllm package (pip install 'qa-expert-trainer[eval]' on a CUDA "
                "machine); use --inference_type hf otherwise"
            ) from exc
        from transformers import AutoConfig

        from qa_train.modeling import load_tokenizer

        tokenizer = load_tokenizer(model_path)
        vocab = AutoConfig.from_pretrained(model_path).vocab_size
        if len(tokenizer) > vocab:
            raise BackendUnavailable(
                f"{model_path}: tokenizer has {len(tokenizer)} tokens but the model only {vocab}; "
                "vllm needs a merged model (python -m qa_train merge)"
            )
        kwargs: dict[str, Any] = {"model": model_path, "dtype": dtype, "seed": 0}
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        self.llm = LLM(**kwargs)
        self.params = SamplingParams(
            temperature=0.0,
            max_tokens=max_new_tokens,
            stop_token_ids=_stop_ids(tokenizer),
            skip_special_tokens=False,
            spaces_between_special_tokens=False,
        )

    def generate(self, prompts: list[str]) -> list[str]:
        if not prompts:
            return []
        outputs = self.llm.generate(prompts, self.params, use_tqdm=False)
        return [o.outputs[0].text.split(EOT)[0] for o in outputs]


def make_backend(kind: str, model_path: str, max_new_tokens: int = 512, dtype: str = "auto") -> Any:
    if kind == "hf":
        try:
            return HFBackend(model_path, max_new_tokens=max_new_tokens, dtype=dtype)
        except (OSError, ValueError) as exc:  # missing files, a hub id that is unreachable or malformed
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendUnavailable(
                f"--model_path {model_path}: cannot load model or tokenizer ({first})"
            ) from None
    if kind == "vllm":
        return VLLMBackend(model_path, max_new_tokens=max_new_tokens, dtype=dtype)
    raise ValueError(f"--inference_type must be one of {', '.join(BACKENDS)}, got {kind!r}")
