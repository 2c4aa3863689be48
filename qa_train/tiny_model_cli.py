"""``python -m qa_train make-tiny-model OUT --arch llama|mistral|qwen2 [--data FILE]``."""

from __future__ import annotations

import argparse

from qa_train.tiny_model import ARCHS, make_tiny_model


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m qa_train make-tiny-model", description=__doc__)
    p.add_argument("out")
    p.add_argument("--arch", choices=ARCHS, default="llama")
    p.add_argument("--data", default=None, help="QA Expert or HotpotQA JSON/JSONL to train the tokenizer on")
    p.add_argument("--vocab_size", type=int, default=1024)
    p.add_argument("--hidden_size", type=int, default=64)
    p.add_argument("--num_layers", type=int, default=2)
    p.add_argument("--max_positions", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    from qa_train.logs import SHORT_FORMAT, setup_logging

    setup_logging(fmt=SHORT_FORMAT, datefmt=None)
    make_tiny_model(a.out, a.arch, a.data, a.vocab_size, a.hidden_size, a.num_layers, a.max_positions, a.seed)
    return 0
