"""Job spec validation: defaults are the README's, unknown keys and bad values are named by their key path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qa_train.spec import JobSpec, SpecError, load_any, load_job, parse_job

REPO = Path(__file__).resolve().parent.parent
BASE = {
    "model": {"name_or_path": "m"},
    "data": {"train_path": "/data/t.json", "hotpot_qa_dev_path": "/data/h.json"},
}


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_are_the_original_readme_command():
    job = parse_job({"run_name": "x", **BASE})
    t = job.training
    assert (t.num_train_epochs, t.per_device_train_batch_size, t.per_device_eval_batch_size) == (2, 3, 4)
    assert (t.gradient_accumulation_steps, t.eval_steps, t.save_strategy, t.save_steps) == (
        10,
        40,
        "epoch",
        80,
    )
    assert (t.save_total_limit, t.learning_rate, t.lr_scheduler_type, t.logging_steps) == (
        3,
        1.2e-5,
        "cosine",
        1,
    )
    assert (t.model_max_length, t.gradient_checkpointing, t.max_steps) == (4096, True, None)
    assert job.stages == ["train", "eval"]
    lora = parse_job({"run_name": "x", **BASE, "use_lora": True})
    assert lora.stages == ["train", "merge", "eval"]


@pytest.mark.parametrize("path", sorted((REPO / "jobs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_jobs_validate(path):
    job = load_job(path)
    assert job.run_name == path.stem
    if job.use_lora:
        assert "merge" in job.stages


def test_unknown_key_is_named_with_its_path(tmp_path):
    p = _write(
        tmp_path,
        "x.yaml",
        "model: {name_or_path: m}\ndata: {train_path: t}\ntraining:\n  learning_rat: 0.1\n",
    )
    with pytest.raises(SpecError) as e:
        load_job(p)
    assert f"{p}: training.learning_rat: unknown key" in str(e.value)


def test_bad_value_is_named_with_its_path(tmp_path):
    p = _write(
        tmp_path, "x.yaml", "model: {name_or_path: m}\ndata: {train_path: t}\ntraining: {learning_rate: -1}\n"
    )
    with pytest.raises(SpecError, match=r"x\.yaml: training\.learning_rate: .*greater than 0"):
        load_job(p)


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"qlora": True}, "qlora: true needs use_lora: true"),
        ({"stages": ["eval", "train"]}, "in the order"),
        ({"stages": ["train", "merge"]}, "'merge' only applies"),
        ({"use_lora": True, "stages": ["train", "eval"]}, "add 'merge' before 'eval'"),
        ({"sync": {"target": "gs://bucket/x"}}, "sync.target: .*s3://bucket/prefix"),
        ({"run_name": "a b/../c"}, "run_name: letters, digits"),
        ({"model": {"make_tiny": {"arch": "llama"}, "name_or_path": "m"}}, "mutually exclusive"),
        ({"model": {}}, "model: .*set model.name_or_path or model.make_tiny"),
        ({"eval": {"inference_type": "tgi"}}, "eval.inference_type"),
    ],
)
def test_inconsistent_specs_are_refused(patch, message):
    with pytest.raises(SpecError, match=message):
        parse_job({"run_name": "x", **BASE, **patch}, "jobs/x.yaml")


def test_eval_needs_the_hotpot_path():
    with pytest.raises(SpecError, match="needs data.hotpot_qa_dev_path"):
        parse_job({"run_name": "x", "model": {"name_or_path": "m"}, "data": {"train_path": "t"}})


def test_malformed_yaml_and_missing_file(tmp_path):
    with pytest.raises(SpecError, match="not valid YAML"):
        load_job(_write(tmp_path, "bad.yaml", "model: [unclosed\n"))
    with pytest.raises(SpecError, match="cannot read job spec"):
        load_job(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="must be a mapping"):
        load_job(_write(tmp_path, "list.yaml", "- 1\n- 2\n"))


def test_load_any_tells_rendered_from_plain():
    from launch.render import render

    job = parse_job({"run_name": "x", **BASE})
    rendered = render(job, "cpu", job_id="j1")
    back = load_any(json.dumps(rendered.model_dump(mode="json")), "$QA_JOB_SPEC")
    assert back == rendered
    plain = load_any(json.dumps({"run_name": "x", **BASE}), "<env>")
    assert isinstance(plain, JobSpec)


def test_spec_module_imports_nothing_heavy():
    import subprocess
    import sys

    code = "import sys, qa_train.spec, qa_train.run; print(sorted(m for m in ('torch','transformers','peft') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"
