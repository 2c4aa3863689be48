"""Model preparation shared by training and merge: RoPE scaling, special tokens, attention choice."""

from __future__ import annotations

import logging

import torch

from qa_train.data.prompt import SPECIAL_TOKENS
from qa_train.modeling import load_config, load_tokenizer, resize_embeddings, resolve_attn_implementation


def test_llama_gets_linear_rope_scaling_beyond_its_context(tiny_llama, tiny_mistral):
    base = load_config(str(tiny_llama))
    assert base.rope_parameters.get("rope_type") == "default" and base.use_cache is False
    scaled = load_config(str(tiny_llama), model_max_length=base.max_position_embeddings * 2 + 1)
    assert scaled.rope_parameters["rope_type"] == "linear" and scaled.rope_parameters["factor"] == 3.0
    assert (
        load_config(str(tiny_mistral), model_max_length=100_000).rope_parameters.get("rope_type") != "linear"
    )

    from transformers import AutoModelForCausalLM

    ids = torch.arange(5, 40)[None]
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_llama), config=base).eval()
    longer = AutoModelForCausalLM.from_pretrained(str(tiny_llama), config=scaled).eval()
    with torch.no_grad():
        diff = (plain(input_ids=ids).logits - longer(input_ids=ids).logits).abs().max().item()
    assert diff > 1e-4  # the scaling really reaches the rotary embedding


def test_special_tokens_are_added_once_and_new_rows_start_from_text(tiny_llama):
    """New rows: from their describing text (tests/test_new_tokens.py has the details), or the global mean
    with ``new_token_init="mean"``; the old rows are untouched."""
    from transformers import AutoModelForCausalLM

    from qa_train.modeling import NEW_TOKEN_TEXT

    tok = load_tokenizer(str(tiny_llama))
    ids = tok.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    assert len(set(ids)) == 3 and all(i >= 512 for i in ids)
    assert tok("a<|eot|>", add_special_tokens=False)["input_ids"][-1] == ids[2]
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama))
    old = model.get_input_embeddings().weight.detach().clone()
    resize_embeddings(model, tok)
    new = model.get_input_embeddings().weight.detach()
    assert new.shape[0] == len(tok) == old.shape[0] + 3
    assert torch.allclose(new[:512], old)
    src = tok(NEW_TOKEN_TEXT[SPECIAL_TOKENS[0]], add_special_tokens=False)["input_ids"]
    mean = old[src].mean(0)
    assert torch.allclose(new[512], mean * old[src].norm(dim=-1).mean() / mean.norm(), atol=1e-6)
    resize_embeddings(model, tok)  # idempotent
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    assert torch.equal(model.get_input_embeddings().weight[:515], new)
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_llama))
    resize_embeddings(plain, load_tokenizer(str(tiny_llama)), new_token_init="mean")
    assert torch.allclose(plain.get_input_embeddings().weight[512], old.mean(0), atol=1e-6)


def test_attention_choice_on_cpu_and_warning_for_unsafe_packing(caplog):
    assert resolve_attn_implementation(None, packing=True) == "sdpa_varlen"
    assert resolve_attn_implementation(None, packing=False) == "sdpa"
    with caplog.at_level(logging.WARNING):
        assert resolve_attn_implementation("paged_attention", packing=True) == "paged_attention"
    assert "cross-contamination" in caplog.text
