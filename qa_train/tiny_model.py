"""Build a tiny, randomly initialised causal LM with a locally trained BPE tokenizer.

Tests, benchmarks and the smoke job use it so that nothing downloads weights. The QA special tokens are NOT
part of the tokenizer: training adds them and resizes the embeddings, exactly as with a real base model.
The folder is published whole (temporary sibling + rename) with the completion marker, so it can stand in for
any finished model folder (eval and merge refuse local folders without the marker).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from qa_train.fsutil import check_replaceable, publish_dir, write_marker

logger = logging.getLogger(__name__)

ARCHS = ("llama", "mistral", "qwen2")
BASE_SPECIAL = {"bos": "<s>", "eos": "</s>", "unk": "<unk>", "pad": "<pad>"}

_FALLBACK_TEXT = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Who was the president of the United States when the bridge was built?",
    "retrieved context: The city is the capital of the state and was founded in 1850.",
    "Summary: Based on the provided knowledge, the answer is the year 1952.",
    'assistant: retrieve:\n{"query": "when was the state of emergency declared"}',
]


def _record_texts(path: Path) -> Iterator[str]:
    """Text of QA Expert records or HotpotQA records (JSON list or JSONL), rendered as training prompts."""
    from qa_train.data.prompt import render_prompt
    from qa_train.data.records import record_to_messages

    raw = path.read_text(encoding="utf-8")
    records = (
        json.loads(raw)
        if raw.lstrip().startswith("[")
        else [json.loads(x) for x in raw.splitlines() if x.strip()]
    )
    for rec in records:
        if "sub_questions" in rec:
            yield render_prompt(record_to_messages(rec))
        else:  # HotpotQA: question, answer, context [[title, [sentences]]]
            yield rec.get("question", "") + " " + str(rec.get("answer", ""))
            for title, sents in rec.get("context", []):
                yield title + ". " + "".join(sents)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024, model_max_length: int = 2048):
    """Byte-level BPE (no unknown tokens, offsets available) wrapped as a fast HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(BASE_SPECIAL.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    bos_id = tok.token_to_id(BASE_SPECIAL["bos"])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BASE_SPECIAL['bos']} $A",
        pair=f"{BASE_SPECIAL['bos']} $A $B",
        special_tokens=[(BASE_SPECIAL["bos"], bos_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BASE_SPECIAL["bos"],
        eos_token=BASE_SPECIAL["eos"],
        unk_token=BASE_SPECIAL["unk"],
        pad_token=BASE_SPECIAL["pad"],
        model_max_length=model_max_length,
    )


def tiny_config(
    arch: str, vocab_size: int, hidden_size: int = 64, num_layers: int = 2, max_positions: int = 2048
):
    from transformers import AutoConfig

    if arch not in ARCHS:
        raise ValueError(f"--arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=3,
    )
    if arch == "mistral":
        kwargs["sliding_window"] = max_positions
    if arch == "qwen2":
        kwargs["use_sliding_window"] = False
    return AutoConfig.for_model(arch, **kwargs)


def make_tiny_model(
    out: str | Path,
    arch: str = "llama",
    data: str | Path | None = None,
    vocab_size: int = 1024,
    hidden_size: int = 64,
    num_layers: int = 2,
    max_positions: int = 2048,
    seed: int = 0,
) -> Path:
    """Write tokenizer + random model to ``out`` and return it."""
    import torch
    from transformers import AutoModelForCausalLM

    out = Path(out)
    texts = list(_record_texts(Path(data))) if data else []
    texts += _FALLBACK_TEXT * 4
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size, model_max_length=max_positions)
    for name, token in BASE_SPECIAL.items():
        assert tokenizer.convert_tokens_to_ids(token) == list(BASE_SPECIAL).index(name)
    config = tiny_config(arch, len(tokenizer), hidden_size, num_layers, max_positions)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    check_replaceable(out, "OUT")
    with publish_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_marker(tmp, "make-tiny-model", arch=arch)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("Saved tiny %s model (%d parameters, vocab %d) to %s", arch, n_params, len(tokenizer), out)
    return out
