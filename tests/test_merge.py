"""Merge: merged logits equal base+adapter logits (LoRA and QLoRA-trained), and mismatches fail clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from qa_train.data.prompt import BOF, EOF, EOT
from qa_train.merge import main as merge_main
from qa_train.modeling import load_tokenizer, resize_embeddings


def _lora_config(model, tokenizer):
    """As training: all linear layers + the rows of the QA tokens (embedding and untied head)."""
    from qa_train.modeling import lora_config

    return lora_config(model, tokenizer, r=4, alpha=8, dropout=0.0)


def _legacy_lora_config():
    """Adapters of earlier runs: full embeddings / head as ``modules_to_save`` (still merged)."""
    from peft import LoraConfig

    return LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
        modules_to_save=["embed_tokens", "lm_head"], bias="none", task_type="CAUSAL_LM",
    )  # fmt: skip


def _base(path: Path, **kwargs):
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, **kwargs)
    resize_embeddings(model, tokenizer)
    return model, tokenizer


def _perturb(peft_model, seed: int) -> None:
    """LoRA B starts at zero, which would make any merge look right: give every trainable tensor noise."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)


def _inputs(tokenizer) -> torch.Tensor:
    text = f'user: who built the bridge?{EOT}\nassistant: {BOF}retrieve:\n{{"query": "bridge"}}{EOF}{EOT}'
    return tokenizer(text, return_tensors="pt")["input_ids"]


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def _save_adapter(peft_model, tokenizer, out: Path) -> Path:
    """As training saves one: adapter (token rows only, no whole matrices) + tokenizer, then the marker."""
    from qa_train.fsutil import write_marker
    from qa_train.modeling import save_token_rows_only

    if peft_model.peft_config["default"].trainable_token_indices:
        save_token_rows_only(peft_model)
    peft_model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    write_marker(out, "train")
    return out


def _merged_logits(tmp_path: Path, base: Path, adapter: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    rc = merge_main(["--save_folder", str(out), "--pretrained_path", str(base), "--checkpoint", str(adapter),
                     "--torch_dtype", "float32", "--model_type", "llama"])  # fmt: skip
    assert rc == 0
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not (out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    tok = load_tokenizer(str(out))
    assert len(tok) == merged.get_input_embeddings().weight.shape[0]
    assert tok.convert_tokens_to_ids(EOT) in merged.generation_config.eos_token_id
    return _logits(merged, ids)


def _reference_logits(base: Path, adapter: Path, ids: torch.Tensor) -> torch.Tensor:
    from peft import PeftModel

    model, _ = _base(base)
    return _logits(PeftModel.from_pretrained(model, str(adapter)), ids)


def test_lora_merge_matches_adapter(tiny_llama: Path, tmp_path: Path) -> None:
    from peft import get_peft_model

    model, tokenizer = _base(tiny_llama)
    ids = _inputs(tokenizer)
    base_logits = _logits(model, ids)
    peft_model = get_peft_model(model, _lora_config(model, tokenizer))
    _perturb(peft_model, seed=1)
    adapter = _save_adapter(peft_model, tokenizer, tmp_path / "adapter")
    from safetensors import safe_open

    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as fh:
        rows = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys() if "lora_" not in k}  # noqa: SIM118
    assert sorted(rows.values()) == [(3, 64), (3, 64)], rows  # embed + untied head rows, no whole matrix
    expected = _reference_logits(tiny_llama, adapter, ids)
    assert (expected - base_logits).abs().max() > 1e-2  # the adapter really changes the model
    merged = _merged_logits(tmp_path, tiny_llama, adapter, ids)
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=1e-5)


def test_legacy_adapter_with_full_embeddings_still_merges(tiny_llama: Path, tmp_path: Path) -> None:
    from peft import get_peft_model

    model, tokenizer = _base(tiny_llama)
    ids = _inputs(tokenizer)
    peft_model = get_peft_model(model, _legacy_lora_config())
    _perturb(peft_model, seed=2)
    adapter = _save_adapter(peft_model, tokenizer, tmp_path / "legacy")
    expected = _reference_logits(tiny_llama, adapter, ids)
    merged = _merged_logits(tmp_path, tiny_llama, adapter, ids)
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=1e-5)


def test_qlora_trained_adapter_merges_into_unquantized_base(tiny_llama: Path, tmp_path: Path) -> None:
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    tokenizer = load_tokenizer(str(tiny_llama))
    quant = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    q_model = AutoModelForCausalLM.from_pretrained(
        str(tiny_llama), quantization_config=quant, dtype=torch.float32
    )
    assert any("4bit" in type(m).__name__ for m in q_model.modules())
    resize_embeddings(q_model, tokenizer)
    q_model = get_peft_model(
        prepare_model_for_kbit_training(q_model, use_gradient_checkpointing=False),
        _lora_config(q_model, tokenizer),
    )
    ids = _inputs(tokenizer)
    opt = torch.optim.AdamW([p for p in q_model.parameters() if p.requires_grad], lr=5e-2)
    for _ in range(3):  # a few real QLoRA steps: gradients flow through the 4-bit base
        loss = q_model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    lora_b = [p for n, p in q_model.named_parameters() if "lora_B" in n]
    assert all(p.abs().sum() > 0 for p in lora_b)
    adapter = _save_adapter(q_model, tokenizer, tmp_path / "qadapter")

    base_model, _ = _base(tiny_llama)
    base_logits = _logits(base_model, ids)
    expected = _reference_logits(tiny_llama, adapter, ids)  # the adapter on the fp32 base
    assert (expected - base_logits).abs().max() > 1e-2
    merged = _merged_logits(tmp_path, tiny_llama, adapter, ids)
    torch.testing.assert_close(merged, expected, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def lora_adapter(tiny_llama: Path, tmp_path_factory) -> Path:
    from peft import get_peft_model

    model, tokenizer = _base(tiny_llama)
    peft_model = get_peft_model(model, _lora_config(model, tokenizer))
    return _save_adapter(peft_model, tokenizer, tmp_path_factory.mktemp("a") / "adapter")


@pytest.fixture(scope="module")
def legacy_adapter(tiny_llama: Path, tmp_path_factory) -> Path:
    from peft import get_peft_model

    model, tokenizer = _base(tiny_llama)
    return _save_adapter(
        get_peft_model(model, _legacy_lora_config()), tokenizer, tmp_path_factory.mktemp("l") / "a"
    )


def _run_merge(tmp_path: Path, base: Path, adapter: Path, *extra: str) -> int:
    return merge_main(["--save_folder", str(tmp_path / "out"), "--pretrained_path", str(base),
                       "--checkpoint", str(adapter), "--torch_dtype", "float32", *extra])  # fmt: skip


def test_missing_adapter(tiny_llama: Path, tmp_path: Path, capsys) -> None:
    assert _run_merge(tmp_path, tiny_llama, tmp_path / "nope") == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert _run_merge(tmp_path, tiny_llama, tmp_path / "empty") == 2
    assert "no adapter_config.json" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_adapter_without_weights(tiny_llama: Path, lora_adapter: Path, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(lora_adapter / "adapter_config.json", broken)
    assert _run_merge(tmp_path, tiny_llama, broken) == 2
    assert "adapter weights missing" in capsys.readouterr().err


def test_model_type_mismatch(tiny_llama: Path, lora_adapter: Path, tmp_path: Path, capsys) -> None:
    assert _run_merge(tmp_path, tiny_llama, lora_adapter, "--model_type", "mistral") == 2
    assert "is a 'llama' model" in capsys.readouterr().err


def test_adapter_trained_on_other_model_type(
    tiny_mistral: Path, lora_adapter: Path, tmp_path: Path, capsys
) -> None:
    # same tokenizer, vocab and module names: only the recorded training base tells them apart
    assert _run_merge(tmp_path, tiny_mistral, lora_adapter) == 2
    assert "trained on a 'llama' model" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_vocab_mismatch(
    tiny_llama: Path, lora_adapter: Path, legacy_adapter: Path, tmp_path: Path, capsys
) -> None:
    from qa_train.tiny_model import make_tiny_model

    other = make_tiny_model(tmp_path / "other", arch="llama", vocab_size=300)
    assert _run_merge(tmp_path, other, lora_adapter) == 2
    err = capsys.readouterr().err  # the trained rows would land on other tokens
    assert "trainable_token_indices" in err and "[512, 513, 514]" in err and "[300, 301, 302]" in err
    assert not (tmp_path / "out").exists()
    assert _run_merge(tmp_path, other, legacy_adapter) == 2
    err = capsys.readouterr().err
    assert "rows" in err and "has 303" in err and ("embed_tokens" in err or "lm_head" in err)
    assert not (tmp_path / "out").exists()


def test_module_mismatch(tiny_llama: Path, lora_adapter: Path, tmp_path: Path, capsys) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(tiny_llama))
    config.num_hidden_layers = 1  # same vocab, one layer fewer: adapter tensors for layer 1 have no module
    shallow = tmp_path / "shallow"
    AutoModelForCausalLM.from_config(config).save_pretrained(str(shallow))
    load_tokenizer(str(tiny_llama)).save_pretrained(str(shallow))
    # keep the saved tokenizer identical to the base one (without QA tokens), as a real base would be
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_llama / name, shallow / name)
    assert _run_merge(tmp_path, shallow, lora_adapter) == 2
    assert "does not fit" in capsys.readouterr().err


def test_positional_arguments(tiny_llama: Path, lora_adapter: Path, tmp_path: Path) -> None:
    out = tmp_path / "pos"
    assert merge_main([str(out), str(tiny_llama), str(lora_adapter), "--torch_dtype", "float32"]) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
