"""The QA tokens a short run must teach (issue 16): rows initialised from describing text, trained in LoRA mode
at their own learning rate, saved as rows only (not whole matrices), kept through resume and merge.

Tiny local models only (tests/conftest.py); an extra tied variant covers heads that share the embedding
(SmolLM2 is tied)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qa_train.data.prompt import BOF, EOF, EOT, SPECIAL_TOKENS
from qa_train.modeling import NEW_TOKEN_TEXT, load_tokenizer, resize_embeddings, special_token_ids
from tests.conftest import make_records

ROW_KEY = "trainable_tokens_delta"


def _load(path: Path, how: str = "text"):
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    resize_embeddings(model, tok, how)
    return model, tok


def _expected_row(weight: torch.Tensor, tok, token: str) -> torch.Tensor:
    ids = tok(NEW_TOKEN_TEXT[token], add_special_tokens=False)["input_ids"]
    rows = weight[ids]
    mean = rows.mean(0)
    return mean * rows.norm(dim=-1).mean() / mean.norm()


@pytest.fixture(scope="module")
def tiny_tied(tiny_llama: Path, tmp_path_factory) -> Path:
    """tiny_llama with ``tie_word_embeddings`` (one matrix for input and output, as SmolLM2)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("tied") / "tiny-tied"
    config = AutoConfig.from_pretrained(str(tiny_llama))
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(tiny_llama)).save_pretrained(str(out))
    return out


def test_new_rows_start_from_their_describing_text_in_embedding_and_untied_head(tiny_llama: Path) -> None:
    model, tok = _load(tiny_llama)
    emb, head = model.get_input_embeddings().weight.detach(), model.get_output_embeddings().weight.detach()
    assert emb.data_ptr() != head.data_ptr()  # untied: both matrices must get their own rows
    base = emb.shape[0] - len(SPECIAL_TOKENS)
    for token in (BOF, EOF, EOT):
        i = tok.convert_tokens_to_ids(token)
        torch.testing.assert_close(emb[i], _expected_row(emb, tok, token))
        torch.testing.assert_close(head[i], _expected_row(head, tok, token))
        assert (emb[i] - emb[:base].mean(0)).norm() > 0.1 * emb[i].norm()  # not the global mean
    bof, eof = tok.convert_tokens_to_ids([BOF, EOF])
    assert not torch.allclose(emb[bof], emb[eof])  # distinct meanings, distinct rows
    # the former behaviour stays available for comparison
    mean_model, _ = _load(tiny_llama, "mean")
    w = mean_model.get_input_embeddings().weight.detach()
    torch.testing.assert_close(w[bof], w[:base].mean(0))


def test_rows_of_a_tokenizer_that_already_has_the_tokens_are_left_alone(
    tiny_llama: Path, tmp_path: Path
) -> None:
    """A merged model (tokens already trained) reloaded for inference or more training keeps its rows."""
    model, tok = _load(tiny_llama)
    ids = special_token_ids(tok)
    with torch.no_grad():
        model.get_input_embeddings().weight[ids] = 7.0
    model.save_pretrained(str(tmp_path / "m"))
    tok.save_pretrained(str(tmp_path / "m"))
    again, tok2 = _load(tmp_path / "m")
    assert tok2.qa_new_tokens == ()
    assert torch.all(again.get_input_embeddings().weight[ids] == 7.0)


def test_tied_model_gets_one_row_for_input_and_output(tiny_tied: Path) -> None:
    model, tok = _load(tiny_tied)
    w = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight is w
    i = tok.convert_tokens_to_ids(BOF)
    torch.testing.assert_close(w[i].detach(), _expected_row(w.detach(), tok, BOF))


def test_lora_config_trains_only_the_token_rows(tiny_llama: Path, tiny_tied: Path) -> None:
    from peft import get_peft_model

    from qa_train.modeling import lora_config

    for path, layers in ((tiny_llama, {"embed_tokens", "lm_head"}), (tiny_tied, {"embed_tokens"})):
        model, tok = _load(path)
        cfg = lora_config(model, tok, 4, 8, 0.0)
        assert set(cfg.trainable_token_indices) == layers and not cfg.modules_to_save
        peft_model = get_peft_model(model, cfg)
        trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
        rows = {n for n in trainable if ROW_KEY in n}
        assert len(rows) == len(layers) and all("lora_" in n for n in trainable - rows)
        for n, p in peft_model.named_parameters():
            if ROW_KEY in n:
                assert tuple(p.shape) == (3, model.config.hidden_size)


# ------------------------------------------------------------------------------------------ training runs


def _data(tmp_path: Path) -> Path:
    path = tmp_path / "train.json"
    path.write_text(json.dumps(make_records(24, seed=5, max_words=20)))
    return path


def _train(model: Path, data: Path, out: Path, steps: int, *extra: str) -> dict:
    from qa_train.train import run as train_run

    torch.manual_seed(0)  # LoRA A is drawn before the Trainer seeds: same start as a fresh process
    return train_run([
        "--model_name_or_path", str(model), "--train_path", str(data), "--output_dir", str(out),
        "--use_lora", "True", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0.0",
        "--max_steps", str(steps), "--per_device_train_batch_size", "2", "--learning_rate", "1e-3",
        "--lr_scheduler_type", "constant", "--packing", "True", "--model_max_length", "512",
        "--logging_steps", "1", "--report_to", "none", "--seed", "0", "--dataloader_num_workers", "0",
        "--disable_tqdm", "True", *extra,
    ])  # fmt: skip


def _saved(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def _rows(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in _saved(folder).items() if ROW_KEY in k}


def _adapter_bound(model_dir: Path, r: int) -> int:
    """Bytes the adapter may take: fp32 LoRA A/B of every linear layer + 3 rows per trained matrix + header."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    lora = sum(
        r * (m.in_features + m.out_features)
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")
    )
    matrices = 1 if model.config.tie_word_embeddings else 2
    rows = matrices * 3 * model.config.hidden_size
    n_tensors = 2 * sum(1 for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)) + matrices
    return 4 * (lora + rows) + 256 * n_tensors + 4096


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["untied", "tied"])
def test_short_lora_run_moves_the_rows_and_saves_only_them(
    arch: str, tiny_llama: Path, tiny_tied: Path, tmp_path: Path
) -> None:
    model_dir = tiny_llama if arch == "untied" else tiny_tied
    data = _data(tmp_path)
    _train(model_dir, data, tmp_path / "fast", 6)  # --new_token_lr default: 10 x 1e-3
    _train(model_dir, data, tmp_path / "slow", 6, "--new_token_lr", "1e-3")
    init_model, tok = _load(model_dir)
    ids = special_token_ids(tok)
    init = {
        "embed_tokens": init_model.get_input_embeddings().weight[ids].detach(),
        "lm_head": init_model.get_output_embeddings().weight[ids].detach(),
    }
    fast, slow = _rows(tmp_path / "fast"), _rows(tmp_path / "slow")
    layers = {"embed_tokens", "lm_head"} if arch == "untied" else {"embed_tokens"}
    assert {k.split(".")[-3] for k in fast} == layers  # …<layer>.token_adapter.trainable_tokens_delta
    for key, rows in fast.items():
        layer = key.split(".")[-3]
        moved = (rows - init[layer]).norm(dim=-1)
        moved_slow = (slow[key] - init[layer]).norm(dim=-1)
        # Adam moves a weight by ~lr per step: 6 steps at 1e-2 vs 1e-3 over a 64-wide row
        assert torch.all(moved > 0.05), (layer, moved)
        assert torch.all(moved > 4 * moved_slow), (layer, moved, moved_slow)

    saved = _saved(tmp_path / "fast")
    assert all("lora_" in k or ROW_KEY in k for k in saved), sorted(saved)[:5]  # no whole matrix
    size = (tmp_path / "fast" / "adapter_model.safetensors").stat().st_size
    assert size <= _adapter_bound(model_dir, r=4), size
    vocab_matrix = 4 * init_model.get_input_embeddings().weight.numel()
    assert size < vocab_matrix  # the old adapter held (several copies of) whole matrices
    cfg = json.loads((tmp_path / "fast" / "adapter_config.json").read_text())
    assert not cfg.get("modules_to_save") and set(cfg["trainable_token_indices"]) == layers


@pytest.mark.slow
def test_resume_keeps_the_trained_rows_and_their_optimizer_group(tiny_llama: Path, tmp_path: Path) -> None:
    """8 steps straight == 4 steps, checkpoint, resume to 8 (rows trained by then come back from the
    checkpoint, with their Adam state at --new_token_lr: otherwise the final rows would differ)."""
    data = _data(tmp_path)
    _train(tiny_llama, data, tmp_path / "straight", 8, "--save_strategy", "no")
    _train(tiny_llama, data, tmp_path / "first", 4, "--save_strategy", "steps", "--save_steps", "4")
    ckpt = tmp_path / "first" / "checkpoint-4"
    assert _rows(ckpt) and all("lora_" in k or ROW_KEY in k for k in _saved(ckpt))
    summary = _train(tiny_llama, data, tmp_path / "first", 8, "--save_strategy", "no", "--resume", str(ckpt))
    assert summary["resumed_from"] == str(ckpt) and summary["global_step"] == 8
    straight, resumed, at4 = _rows(tmp_path / "straight"), _rows(tmp_path / "first"), _rows(ckpt)
    for key in straight:
        assert not torch.allclose(resumed[key], at4[key])  # trained further after the resume
        torch.testing.assert_close(resumed[key], straight[key], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["untied", "tied"])
def test_merged_logits_equal_adapter_logits(
    arch: str, tiny_llama: Path, tiny_tied: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from qa_train.merge import merge

    model_dir = tiny_llama if arch == "untied" else tiny_tied
    _train(model_dir, _data(tmp_path), tmp_path / "a", 4, "--learning_rate", "5e-3")
    merge(tmp_path / "m", str(model_dir), tmp_path / "a", torch_dtype="float32")
    base, tok = _load(model_dir)
    text = f'user: who?{EOT}\nassistant: {BOF}retrieve:\n{{"query": "q"}}{EOF}{EOT}'
    ids = tok(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
        adapter_logits = PeftModel.from_pretrained(base, str(tmp_path / "a")).eval()(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"), dtype=torch.float32).eval()
        merged_logits = merged(input_ids=ids).logits
    assert (adapter_logits - base_logits).abs().max() > 1e-3  # the adapter (rows + LoRA) changes the model
    torch.testing.assert_close(merged_logits, adapter_logits, atol=1e-5, rtol=1e-5)
    special = special_token_ids(tok)
    trained = _rows(tmp_path / "a")
    emb_key = next(k for k in trained if ".embed_tokens." in k)
    torch.testing.assert_close(merged.get_input_embeddings().weight[special], trained[emb_key])
