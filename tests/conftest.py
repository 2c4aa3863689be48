"""Shared fixtures: tiny local models and small synthetic QA Expert / HotpotQA data (nothing downloaded)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

# Fixture modules owned by other areas register here so every test file sees them.
pytest_plugins = [p for p in ("tests.fixtures_s3",) if (REPO / (p.replace(".", "/") + ".py")).exists()]

_WORDS = (
    "river city state king queen film album band river mountain island war treaty president author novel "
    "capital founded born died year century company league team season museum bridge university school"
).split()


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n)).capitalize() + "."


def make_records(n: int, seed: int = 0, min_words: int = 8, max_words: int = 60) -> list[dict]:
    """Synthetic QA Expert records with varied lengths; half multi-hop."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        hops = 2 if i % 2 else 1
        subs = []
        for _ in range(hops):
            subs.append(
                {
                    "question": _sentence(rng, rng.randint(4, 10))[:-1] + "?",
                    "answer": rng.choice(_WORDS),
                    "paragraph": " ".join(
                        _sentence(rng, rng.randint(min_words, max_words)) for _ in range(2)
                    ),
                    "long_answer": _sentence(rng, rng.randint(5, 15)) + "\nAnswer: " + rng.choice(_WORDS),
                }
            )
        out.append(
            {
                "question": _sentence(rng, rng.randint(5, 12))[:-1] + "?",
                "answer": subs[-1]["answer"],
                "multihop": hops > 1,
                "sub_questions": subs,
                "final_answer": _sentence(rng, rng.randint(5, 20)) + "\nAnswer: " + subs[-1]["answer"],
            }
        )
    return out


def make_hotpot(n: int, seed: int = 0) -> list[dict]:
    """Synthetic HotpotQA dev-distractor records (bridge and comparison)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        titles = [f"{rng.choice(_WORDS).title()} {i}-{k}" for k in range(4)]
        context = [[t, [_sentence(rng, rng.randint(6, 14)) + " " for _ in range(3)]] for t in titles]
        answer = rng.choice(_WORDS)
        context[0][1][1] = f"The answer is {answer}. "
        out.append(
            {
                "_id": f"q{i}",
                "question": f"What is the {rng.choice(_WORDS)} of {titles[0]}?",
                "answer": answer,
                "type": "bridge" if i % 2 else "comparison",
                "level": "medium",
                "supporting_facts": [[titles[0], 1], [titles[1], 0]] if i % 2 else [[titles[0], 1]],
                "context": context,
            }
        )
    return out


@pytest.fixture(scope="session")
def records_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.json"
    path.write_text(json.dumps(make_records(48, seed=1)))
    return path


@pytest.fixture(scope="session")
def validation_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "validation.json"
    path.write_text(json.dumps(make_records(12, seed=2)))
    return path


@pytest.fixture(scope="session")
def hotpot_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "hotpot_dev.json"
    path.write_text(json.dumps(make_hotpot(16, seed=3)))
    return path


_TINY_CACHE: dict[str, Path] = {}


def tiny_model(arch: str, root: Path) -> Path:
    """Build (once per session) a tiny random model of ``arch`` with a tokenizer trained on synthetic data."""
    if arch not in _TINY_CACHE:
        from qa_train.tiny_model import make_tiny_model

        data = root / f"tok-{arch}.json"
        data.write_text(json.dumps(make_records(64, seed=7)))
        _TINY_CACHE[arch] = make_tiny_model(root / f"tiny-{arch}", arch=arch, data=data, vocab_size=512)
    return _TINY_CACHE[arch]


@pytest.fixture(scope="session")
def tiny_models_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_llama(tiny_models_root) -> Path:
    return tiny_model("llama", tiny_models_root)


@pytest.fixture(scope="session")
def tiny_mistral(tiny_models_root) -> Path:
    return tiny_model("mistral", tiny_models_root)


@pytest.fixture(scope="session")
def tiny_qwen2(tiny_models_root) -> Path:
    return tiny_model("qwen2", tiny_models_root)


def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """Skip without an engine locally; CI sets QA_REQUIRE_DOCKER=1 so a missing engine fails instead."""
    if not docker_available():
        if os.environ.get("QA_REQUIRE_DOCKER") == "1":
            pytest.fail("QA_REQUIRE_DOCKER=1 but no Docker engine answers `docker info`")
        pytest.skip("no Docker engine (set QA_REQUIRE_DOCKER=1 to make this a failure)")
