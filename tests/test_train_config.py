"""Training configuration written once (issue 21 item 4): the spec's ``training:`` section, validated once,
reaches the train arguments through one generic mapping and one JSON file; one range table serves the spec and
the flags. Real parts: the real HfArgumentParser dataclasses of ``python -m qa_train train``."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field

from qa_train.args import FIELD_ALIASES, parse_train_args
from qa_train.bounds import BOUNDS, Bound, spec_bounds
from qa_train.fsutil import UsageError
from qa_train.spec import JobSpec, LoraSpec, SpecError, TrainingSpec, load_job, parse_job, training_mode
from qa_train.train import split_trackers
from qa_train.train_config import FROM_PLAN, LORA_RENAMED, as_flags, train_args, write_train_args


def _job(tmp_path: Path, **kw: Any) -> JobSpec:
    data = {
        "train_path": "/data/t.json",
        "validation_path": "/data/v.json",
        "hotpot_qa_dev_path": "/data/h.json",
    }
    return parse_job({"run_name": "r", "model": {"name_or_path": "m"}, "data": data,
                      "output_root": str(tmp_path / "runs"), **kw})  # fmt: skip


def _plan(job: JobSpec) -> Any:
    from qa_train.entrypoint.flags import default_plan

    return default_plan(job)


def _parsed(job: JobSpec, *flags: str) -> tuple[Any, ...]:
    return parse_train_args([str(write_train_args(job, _plan(job))), *flags])


def _fields(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def test_the_file_a_job_writes_parses_into_what_the_flags_of_the_same_job_give(tmp_path):
    """Field by field, for a full and a LoRA job with trackers and sync: the JSON file and the same
    arguments as flags (the original README's command form) give the same four dataclasses."""
    for job in (
        _job(tmp_path),
        _job(
            tmp_path,
            use_lora=True,
            qlora=True,
            lora={"r": 8, "alpha": 16, "dropout": 0.0},
            training={"report_to": ["tensorboard", "mlflow"], "max_steps": 7, "save_every_minutes": 5.5},
            sync={"target": "s3://bkt/runs", "endpoint_url": "http://s3:8333"},
        ),  # fmt: skip
    ):
        from_file = _parsed(job)
        from_flags = parse_train_args(as_flags(train_args(job, _plan(job))))
        for a, b in zip(from_file, from_flags, strict=True):
            fa, fb = _fields(a), _fields(b)
            if "report_to" in fa:  # a list in the file, one comma-joined flag value: train splits it
                fa["report_to"], fb["report_to"] = (
                    split_trackers(fa["report_to"]),
                    split_trackers(fb["report_to"]),
                )
            assert fa == fb, type(a).__name__


def test_the_default_job_arrives_with_the_original_readme_values(tmp_path):
    job = load_job("jobs/mistral-qa-full.yaml").model_copy(update={"output_root": str(tmp_path)})
    model, data, train, sync = _parsed(job)
    assert model.model_name_or_path == job.base_model() and data.train_path == job.data.train_path
    assert (train.num_train_epochs, train.per_device_eval_batch_size, train.learning_rate) == (
        job.training.num_train_epochs, job.training.per_device_eval_batch_size, job.training.learning_rate)  # fmt: skip
    assert train.output_dir == job.train_output_dir() and train.run_name == job.run_name
    assert train.do_train and train.remove_unused_columns is False
    assert data.packing == job.packing and train.use_lora is False
    assert (sync.sync_to, sync.resume) == (
        job.sync.target if job.sync else None,
        "auto" if job.sync else None,
    )


def test_every_training_field_arrives_under_its_name_without_a_mapping_entry(tmp_path):
    """Each ``training:`` field set to a non-default value is found in the parsed arguments: the mapping is
    generic (model_dump), only the parser's FIELD_ALIASES (the README's evaluation_strategy) and FROM_PLAN differ. A new spec field that no argument takes fails
    here (the train parser refuses an unknown key)."""
    changed = {"num_train_epochs": 3.5, "per_device_train_batch_size": 5, "per_device_eval_batch_size": 6,
               "gradient_accumulation_steps": 2, "eval_accumulation_steps": 3, "evaluation_strategy": "epoch",
               "eval_steps": 11, "save_strategy": "steps", "save_steps": 13, "save_total_limit": 2,
               "learning_rate": 3e-4, "lr_scheduler_type": "linear", "logging_steps": 4, "model_max_length": 512,
               "gradient_checkpointing": False, "max_steps": 9, "save_every_minutes": 12.5, "seed": 7,
               "report_to": ["tensorboard"]}  # fmt: skip
    untestable_on_cpu = {"bf16", "tf32"}  # tf32 is dropped without an Ampere GPU; bf16 needs one too
    assert set(changed) | untestable_on_cpu == set(TrainingSpec.model_fields), "a new field: add it here"
    job = _job(tmp_path, training=changed)
    _, _, train, _ = _parsed(job)
    for name, value in changed.items():
        got = getattr(train, FIELD_ALIASES.get(name, name))
        got = [got] if name == "report_to" and isinstance(got, str) else got
        assert got == value or str(got) == f"IntervalStrategy.{value.upper()}" or str(got) == value, name
    lora = _parsed(_job(tmp_path, use_lora=True, lora={"r": 4, "alpha": 8, "dropout": 0.2}))[2]
    assert {LORA_RENAMED[k]: getattr(lora, LORA_RENAMED[k]) for k in LoraSpec.model_fields} == {
        "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.2}  # fmt: skip
    assert set(FROM_PLAN) <= set(type(_plan(job)).model_fields)


def test_a_field_added_to_the_spec_reaches_training_arguments_with_no_other_edit(tmp_path):
    """A new hyperparameter is one edit: the spec field (its range from the one table). No mapping, no flag,
    no second check — it arrives in TrainingArguments, and its bound refuses a bad value in the spec."""

    class Training(TrainingSpec):
        weight_decay: float = Field(default=0.25, **spec_bounds("weight_decay"))

    class Job(JobSpec):
        training: Training = Training()

    base = _job(tmp_path).model_dump()
    job = Job.model_validate({**base, "training": {"weight_decay": 0.125}})
    assert json.loads(write_train_args(job, _plan(job)).read_text())["weight_decay"] == 0.125
    assert _parsed(job)[2].weight_decay == 0.125
    assert _parsed(_job(tmp_path))[2].weight_decay == 0.0  # without the field: TrainingArguments' default
    with pytest.raises(ValueError, match=r"training\.weight_decay"):
        Job.model_validate({**base, "training": {"weight_decay": -0.5}})


def _outside(b: Bound) -> float:
    """A value just outside the bound's range."""
    if b.gt is not None:
        return b.gt if b.unset != b.gt else b.gt - 1
    if b.ge is not None:
        return b.ge - 1 if b.unset != b.ge - 1 else b.ge - 2
    return b.lt if b.lt is not None else b.le + 1  # type: ignore[operator]


SPEC_BOUNDED = sorted(set(TrainingSpec.model_fields) & set(BOUNDS))


@pytest.mark.parametrize("name", SPEC_BOUNDED)
def test_one_table_bounds_the_spec_field_and_the_flag_alike(tmp_path, name):
    """Out of range in the spec: one SpecError naming training.<field>, nothing reaches train; the same value
    as a flag: one ``--<field> must be …`` line, from the same table."""
    bad = _outside(BOUNDS[name])
    with pytest.raises(SpecError, match=rf"training\.{name}:"):
        _job(tmp_path, training={name: bad})
    flags = as_flags(train_args(_job(tmp_path), _plan(_job(tmp_path))))
    with pytest.raises(UsageError, match="^" + re.escape(f"--{name} must be {BOUNDS[name].rule()} (got ")):
        parse_train_args([*flags, f"--{name}", str(bad)])
    if BOUNDS[name].lt is not None:  # the upper edge too (learning_rate < 1)
        with pytest.raises(SpecError, match=rf"training\.{name}:"):
            _job(tmp_path, training={name: BOUNDS[name].lt})
        with pytest.raises(UsageError, match=rf"^--{name} must be"):
            parse_train_args([*flags, f"--{name}", str(BOUNDS[name].lt)])


def test_lora_fields_are_bounded_by_the_same_table(tmp_path):
    for spec_name, arg in LORA_RENAMED.items():
        bad = _outside(BOUNDS[arg])
        with pytest.raises(SpecError, match=rf"lora\.{spec_name}:"):
            _job(tmp_path, use_lora=True, lora={spec_name: bad})
        job = _job(tmp_path, use_lora=True)
        with pytest.raises(UsageError, match="^" + re.escape(f"--{arg} must be {BOUNDS[arg].rule()} (got ")):
            parse_train_args([*as_flags(train_args(job, _plan(job))), f"--{arg}", str(bad)])


def test_flags_after_the_file_override_it_and_a_bad_file_is_one_clear_line(tmp_path):
    job = _job(tmp_path)
    path = write_train_args(job, _plan(job))
    _, _, train, _ = parse_train_args([str(path), "--max_steps", "3", "--learning_rate", "0.5"])
    assert (train.max_steps, train.learning_rate) == (3, 0.5)
    edited = json.loads(path.read_text())
    edited["learning_rate"] = 0
    path.write_text(json.dumps(edited))
    with pytest.raises(UsageError, match=r"^--learning_rate must be > 0"):
        parse_train_args([str(path)])
    edited.update(learning_rate=1e-4, weight_decy=0.1)
    path.write_text(json.dumps(edited))
    with pytest.raises(
        UsageError, match=r"unknown key\(s\) for train: weight_decy \(did you mean weight_decay\?\)"
    ):
        parse_train_args([str(path)])
    path.write_text("[1, 2]")
    with pytest.raises(UsageError, match="must be a JSON object"):
        parse_train_args([str(path)])
    with pytest.raises(UsageError, match="cannot read the train arguments"):
        parse_train_args([str(tmp_path / "missing.json")])


def test_one_mode_string_and_no_unused_eval_model():
    assert [training_mode(u, q) for u, q in ((False, False), (True, False), (True, True))] == [
        "full", "lora", "qlora"]  # fmt: skip
    assert not hasattr(JobSpec, "eval_model")
    from launch.render import mode_of

    job = load_job("jobs/mistral-qa-qlora.yaml")
    assert mode_of(job) == job.mode() == "qlora"


@pytest.mark.slow  # a real training run (~10 s)
def test_the_train_stage_writes_its_arguments_file_and_train_reads_it(tmp_path, capfd):
    """Through the real stage runner and a real ``python -m qa_train train`` process: the step writes
    ``<run>/train_args.json`` just before it runs and train reads its values from it (here the base model path,
    which it refuses by name before loading anything)."""
    from qa_train.entrypoint.stages import build_stages
    from qa_train.entrypoint.supervisor import run_steps

    job = _job(tmp_path, model={"name_or_path": str(tmp_path / "no-such-model")}, stages=["train"])
    (train,) = build_stages(job, _plan(job))
    path = Path(job.run_dir()) / "train_args.json"
    assert train.commands == [[*train.commands[0][:3], "train", str(path)]]
    assert not path.exists()  # building the stages writes nothing
    assert run_steps(train) == 2
    assert json.loads(path.read_text()) == train_args(job, _plan(job))
    err = capfd.readouterr().err
    assert "error: --model_name_or_path" in err and "no-such-model" in err
