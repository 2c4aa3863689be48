"""Bad input inside the container never costs data (issue 17): every case goes through the real command line
(the ``python -m qa_train`` dispatcher, in process; a few also as a subprocess) and must give exit 2, exactly one
``error:`` line naming the flag or file, and leave every input byte-for-byte (and mtime) unchanged and no output.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from qa_train.__main__ import main as cli
from qa_train.fsutil import MARKER, atomic_write_text, publish_dir, read_marker, write_marker
from tests.conftest import REPO, make_hotpot, make_records


@dataclass
class Ctx:
    tmp: Path
    base: Path  # a finished base model folder (tiny llama copy, with marker)
    adapter: Path  # a finished LoRA adapter (marker)
    cutoff: Path  # the same adapter without the marker: a save that was cut off
    nomarker: Path  # a model folder without the marker
    records: Path
    hotpot: Path
    not_utf8: Path
    a_file: Path  # some existing file that is nobody's output

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    @property
    def cut_train(self) -> Path:
        """A full train's output_dir whose final save was cut off: model files, checkpoints, no marker."""
        return self.nomarker


def _snapshot(path: Path) -> dict[str, tuple[int, int, str]]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {
        str(p.relative_to(path.parent)): (
            p.stat().st_size,
            p.stat().st_mtime_ns,
            hashlib.sha256(p.read_bytes()).hexdigest(),
        )
        for p in files
    }


@pytest.fixture(scope="module")
def ctx_root(tiny_llama: Path, tmp_path_factory) -> Path:
    """Inputs built once per module; each test gets its own copy (so a broken refusal cannot leak)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from qa_train.modeling import load_tokenizer, resize_embeddings

    root = tmp_path_factory.mktemp("bad-input")
    shutil.copytree(tiny_llama, root / "base")
    tok = load_tokenizer(str(tiny_llama))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama))
    resize_embeddings(model, tok)
    config = LoraConfig(r=2, lora_alpha=4, target_modules="all-linear", task_type="CAUSAL_LM",
                        modules_to_save=["embed_tokens", "lm_head"])  # fmt: skip
    get_peft_model(model, config).save_pretrained(str(root / "adapter"))
    tok.save_pretrained(str(root / "adapter"))
    write_marker(root / "adapter", "train")
    return root


@pytest.fixture
def ctx(ctx_root: Path, tmp_path: Path) -> Ctx:
    shutil.copytree(ctx_root / "base", tmp_path / "base")
    shutil.copytree(ctx_root / "adapter", tmp_path / "adapter")
    shutil.copytree(ctx_root / "adapter", tmp_path / "cutoff", ignore=shutil.ignore_patterns(MARKER))
    shutil.copytree(ctx_root / "base", tmp_path / "nomarker", ignore=shutil.ignore_patterns(MARKER))
    (tmp_path / "nomarker" / "checkpoint-2").mkdir()
    (tmp_path / "nomarker" / "trainer_state.json").write_text("{}")
    (tmp_path / "records.json").write_text(json.dumps(make_records(6, seed=3)))
    (tmp_path / "hotpot.json").write_text(json.dumps(make_hotpot(4, seed=3)))
    (tmp_path / "latin1.json").write_bytes(b'[{"question": "caf\xe9?"}]')
    (tmp_path / "notes.txt").write_text("not an output\n")
    c = Ctx(tmp_path, tmp_path / "base", tmp_path / "adapter", tmp_path / "cutoff", tmp_path / "nomarker",
            tmp_path / "records.json", tmp_path / "hotpot.json", tmp_path / "latin1.json", tmp_path / "notes.txt")  # fmt: skip
    assert read_marker(c.base) is not None and read_marker(c.adapter) is not None
    return c


def _train(c: Ctx, *extra: str, model: Path | None = None, data: Path | None = None) -> list[str]:
    return ["train", "--model_name_or_path", str(model or c.base), "--train_path", str(data or c.records),
            "--output_dir", str(c.out), "--report_to", "none", "--data_cache_dir", str(c.tmp / "cache"),
            "--max_steps", "1", *extra]  # fmt: skip


def _merge(c: Ctx, save: Path, checkpoint: Path | None = None, base: Path | None = None) -> list[str]:
    return ["merge", "--save_folder", str(save), "--pretrained_path", str(base or c.base),
            "--checkpoint", str(checkpoint or c.adapter), "--torch_dtype", "float32"]  # fmt: skip


def _eval(c: Ctx, *extra: str, model: Path | None = None, save: Path | None = None) -> list[str]:
    return ["eval", "--model_path", str(model or c.base), "--hotpot_qa_dev_path", str(c.hotpot),
            "--save_path", str(save or c.out / "pred.jsonl"), "--no_progress", *extra]  # fmt: skip


# id: (argv, words the one error line must contain, nothing else may be created besides these outputs)
Case = tuple[Callable[[Ctx], list[str]], Callable[[Ctx], list[str]]]
CASES: dict[str, Case] = {
    # merge: outputs that are (in / around) an input, or an existing file; unfinished adapters
    "merge into base": (lambda c: _merge(c, c.base), lambda c: ["--save_folder", str(c.base), "--pretrained_path"]),
    "merge into adapter": (lambda c: _merge(c, c.adapter), lambda c: ["--save_folder", "--checkpoint", "overwritten"]),
    "merge inside adapter": (lambda c: _merge(c, c.adapter / "merged"), lambda c: ["--save_folder", "inside"]),
    "merge around inputs": (lambda c: _merge(c, c.tmp), lambda c: ["--save_folder", "contains", "delete"]),
    "merge into a file": (lambda c: _merge(c, c.a_file), lambda c: ["--save_folder", "existing file"]),
    "merge over foreign folder": (lambda c: _merge(c, c.nomarker), lambda c: ["--save_folder", MARKER]),
    "merge cut-off adapter": (lambda c: _merge(c, c.out, c.cutoff), lambda c: ["--checkpoint", str(c.cutoff), MARKER]),
    "merge missing base": (lambda c: _merge(c, c.out, base=c.tmp / "nobase"), lambda c: ["--pretrained_path", "no such folder"]),
    "merge max length": (lambda c: [*_merge(c, c.out), "--model_max_length", "0"], lambda c: ["--model_max_length", "> 0"]),
    "merge unknown flag": (lambda c: [*_merge(c, c.out), "--bogus"], lambda c: ["unrecognized arguments: --bogus"]),
    # eval: unfinished or missing models, outputs that are inputs, numbers
    "eval cut-off train": (lambda c: _eval(c, model=c.cut_train), lambda c: ["--model_path", str(c.cut_train), MARKER]),
    "eval missing model": (lambda c: _eval(c, model=c.tmp / "gone"), lambda c: ["--model_path", "no such folder"]),
    "eval model is file": (lambda c: _eval(c, model=c.a_file), lambda c: ["--model_path", "is a file"]),
    "eval save onto input": (lambda c: _eval(c, save=c.hotpot), lambda c: ["--save_path", "--hotpot_qa_dev_path"]),
    "eval save into model": (lambda c: _eval(c, save=c.base / "p.jsonl"), lambda c: ["--save_path", "inside"]),
    "eval limit 0": (lambda c: _eval(c, "--limit", "0"), lambda c: ["--limit must be >= 1 (got 0)"]),
    "eval batch 0": (lambda c: _eval(c, "--batch_size", "0"), lambda c: ["--batch_size must be >= 1 (got 0)"]),
    "eval tokens 0": (lambda c: _eval(c, "--max_new_tokens", "0"), lambda c: ["--max_new_tokens must be >= 1"]),
    "eval hops 0": (lambda c: _eval(c, "--max_hops", "0"), lambda c: ["--max_hops must be >= 1 (got 0)"]),
    "eval limit abc": (lambda c: _eval(c, "--limit", "abc"), lambda c: ["--limit", "invalid int value"]),
    "eval not utf8": (lambda c: _eval(c) + ["--hotpot_qa_dev_path", str(c.not_utf8)], lambda c: [str(c.not_utf8), "UTF-8", "offset 18"]),
    # convert-hotpot
    "convert IN IN": (lambda c: ["convert-hotpot", str(c.hotpot), str(c.hotpot)], lambda c: ["OUT", "IN", "overwritten"]),
    "convert IN IN spelled": (
        lambda c: ["convert-hotpot", str(c.hotpot), str(c.tmp / "x" / ".." / c.hotpot.name)], lambda c: ["overwritten"]
    ),
    "convert limit 0": (lambda c: ["convert-hotpot", str(c.hotpot), str(c.out / "o.json"), "--limit", "0"], lambda c: ["--limit must be >= 1"]),
    "convert not utf8": (lambda c: ["convert-hotpot", str(c.not_utf8), str(c.out / "o.json")], lambda c: [str(c.not_utf8), "not UTF-8", "0xe9", "offset 18"]),
    "convert dir input": (lambda c: ["convert-hotpot", str(c.base), str(c.out / "o.json")], lambda c: [str(c.base), "is a directory"]),
    # train: numbers named by flag, unknown flags, bad paths and files
    "train max length -5": (lambda c: _train(c, "--model_max_length", "-5"), lambda c: ["--model_max_length must be > 0 (got -5)"]),
    "train epochs -1": (lambda c: _train(c, "--num_train_epochs", "-1"), lambda c: ["--num_train_epochs must be > 0"]),
    "train epochs 0": (lambda c: _train(c, "--num_train_epochs", "0", "--max_steps", "-1"), lambda c: ["--num_train_epochs must be > 0"]),
    "train lr 0": (lambda c: _train(c, "--learning_rate", "0"), lambda c: ["--learning_rate must be > 0"]),
    "train lora_r 0": (lambda c: _train(c, "--use_lora", "True", "--lora_r", "0"), lambda c: ["--lora_r must be >= 1 (got 0)"]),
    "train lora_alpha 0": (lambda c: _train(c, "--lora_alpha", "0"), lambda c: ["--lora_alpha must be > 0"]),
    "train lora_dropout 1": (lambda c: _train(c, "--lora_dropout", "1"), lambda c: ["--lora_dropout must be >= 0 and < 1"]),
    "train batch 0": (lambda c: _train(c, "--per_device_train_batch_size", "0"), lambda c: ["--per_device_train_batch_size must be >= 1"]),
    "train accumulation 0": (lambda c: _train(c, "--gradient_accumulation_steps", "0"), lambda c: ["--gradient_accumulation_steps must be >= 1"]),
    "train max_steps 0": (lambda c: _train(c, "--max_steps", "0"), lambda c: ["--max_steps must be -1"]),
    "train save_steps 0": (lambda c: _train(c, "--save_steps", "0"), lambda c: ["--save_steps must be"]),
    "train logging_steps -2": (lambda c: _train(c, "--logging_steps", "-2"), lambda c: ["--logging_steps must be"]),
    "train unknown flag": (lambda c: _train(c, "--bogus", "1"), lambda c: ["unknown flag", "--bogus"]),
    "train near miss": (lambda c: _train(c, "--model_max_len", "64"), lambda c: ["--model_max_len", "did you mean --model_max_length"]),
    "train bad int": (lambda c: _train(c, "--lora_r", "abc"), lambda c: ["--lora_r", "invalid int value"]),
    "train not utf8": (lambda c: _train(c, data=c.not_utf8), lambda c: [str(c.not_utf8), "not UTF-8", "offset 18"]),
    "train data is a dir": (lambda c: _train(c, data=c.adapter), lambda c: [str(c.adapter), "is a directory"]),
    "train missing model": (lambda c: _train(c, model=c.tmp / "no-model"), lambda c: ["--model_name_or_path", "no such folder"]),
    "train model not a model": (lambda c: _train(c, model=c.tmp / "x"), lambda c: ["--model_name_or_path", "cannot load a tokenizer"]),
    "train output is model": (
        lambda c: [*_train(c)[:5], "--output_dir", str(c.base), *_train(c)[7:]], lambda c: ["--output_dir", "--model_name_or_path"]
    ),
    "train output is a file": (
        lambda c: [*_train(c)[:5], "--output_dir", str(c.a_file), *_train(c)[7:]], lambda c: ["--output_dir", "existing file"]
    ),
    # the training-data stand-in
    "smoke data 0": (lambda c: ["make-smoke-data", str(c.out), "--train", "0"], lambda c: ["--train must be >= 1"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(ctx: Ctx, case: str, capsys) -> None:
    argv_of, needles_of = CASES[case]
    (ctx.tmp / "x").mkdir()  # an empty folder: neither a model nor data
    argv = argv_of(ctx)
    before = {p: _snapshot(p) for p in (ctx.base, ctx.adapter, ctx.cutoff, ctx.nomarker, ctx.records, ctx.hotpot,
                                        ctx.not_utf8, ctx.a_file)}  # fmt: skip
    entries = sorted(p.name for p in ctx.tmp.iterdir())
    rc = cli(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 2, (rc, captured.err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err[-2000:]
    for needle in needles_of(ctx):
        assert needle in lines[0], (needle, lines[0])
    for path, snap in before.items():
        assert _snapshot(path) == snap, f"{path} changed"
    assert sorted(p.name for p in ctx.tmp.iterdir()) == entries, "something was created beside the inputs"


@pytest.mark.parametrize(
    "argv_of",
    [
        lambda c: _train(c, "--bogus", "1"),
        lambda c: _merge(c, c.base),
        lambda c: ["convert-hotpot", str(c.hotpot), str(c.hotpot)],
    ],
    ids=["train --bogus", "merge into base", "convert IN IN"],
)
@pytest.mark.slow
def test_real_command_line_has_no_traceback(ctx: Ctx, argv_of) -> None:
    proc = subprocess.run([sys.executable, "-m", "qa_train", *argv_of(ctx)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and not ctx.out.exists()


@pytest.mark.slow
def test_interrupted_final_save_leaves_no_marker_and_no_stale_summary(ctx: Ctx, monkeypatch) -> None:
    """A finished run marks output_dir and its checkpoint; a re-run cut off in its final save leaves neither
    the old summary nor any marker (so merge refuses the folder), and no half-assembled save."""
    from qa_train.train import FINAL_TMP_PREFIX
    from qa_train.trainer import QATrainer

    args = [*_train(ctx, "--use_lora", "True", "--save_steps", "1", "--model_max_length", "256", "--use_cpu",
                    "True", "--disable_tqdm", "True")][1:]  # fmt: skip
    assert cli(["train", *args]) == 0
    out = ctx.out
    assert read_marker(out)["producer"] == "train" and (out / "train_summary.json").is_file()
    assert read_marker(out / "checkpoint-1") is not None  # a checkpoint is mergeable too
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["global_step"] == 1

    save_model = QATrainer.save_model

    def cut_off(self, output_dir=None, _internal_call=False):
        if FINAL_TMP_PREFIX not in str(output_dir):  # the Trainer's own checkpoint saves go through
            return save_model(self, output_dir, _internal_call)
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "adapter_model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt  # Ctrl-C / SIGTERM half way through the final save

    monkeypatch.setattr(QATrainer, "save_model", cut_off)
    with pytest.raises(KeyboardInterrupt):
        cli(["train", *args])
    assert not (out / MARKER).exists() and not (out / "train_summary.json").exists()
    assert not list(out.glob(FINAL_TMP_PREFIX + "*"))
    assert (
        out / "adapter_model.safetensors"
    ).read_bytes() != b"half"  # the half save never reached output_dir
    monkeypatch.undo()
    assert cli(_merge(ctx, ctx.tmp / "merged", checkpoint=out)) == 2  # the cut-off folder is refused
    assert not (ctx.tmp / "merged").exists()


def test_merge_publishes_with_marker_and_replaces_only_its_own_output(ctx: Ctx, capsys) -> None:
    merged = ctx.tmp / "merged"
    assert cli(_merge(ctx, merged)) == 0
    first = read_marker(merged)
    assert first["producer"] == "merge" and (merged / "model.safetensors").is_file()
    assert cli(_merge(ctx, merged)) == 0  # a finished merge output may be replaced by a new merge
    assert read_marker(merged) is not None
    assert not [p for p in ctx.tmp.iterdir() if p.name.startswith(".")], "temporary folders left behind"
    # eval accepts what merge wrote, and a model folder that qa_train did not produce (a downloaded base)
    assert cli(_eval(ctx, "--limit", "1", "--max_new_tokens", "2", "--max_hops", "1", model=merged)) == 0
    foreign = ctx.tmp / "downloaded"
    shutil.copytree(ctx.base, foreign, ignore=shutil.ignore_patterns(MARKER))
    assert cli(_eval(ctx, "--limit", "1", "--max_new_tokens", "2", "--max_hops", "1", model=foreign)) == 0


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    target.write_text("old")

    def chunks():
        yield "new, half"
        raise OSError("disk full")

    from qa_train.fsutil import atomic_write_lines

    with pytest.raises(OSError):
        atomic_write_lines(target, chunks())
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["f.json"]
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["f.json"]


def test_publish_dir_keeps_the_old_folder_when_writing_fails(tmp_path: Path) -> None:
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "w").write_text("old")
    with pytest.raises(RuntimeError), publish_dir(dest) as tmp:
        (tmp / "w").write_text("new")
        raise RuntimeError("killed")
    assert (dest / "w").read_text() == "old" and os.listdir(tmp_path) == ["model"]
    with publish_dir(dest) as tmp:
        (tmp / "w").write_text("new")
    assert (dest / "w").read_text() == "new" and os.listdir(tmp_path) == ["model"]
