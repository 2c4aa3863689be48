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


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"image": "qa expert/train"}, r"image: not a valid Docker image reference 'qa expert/train'"),
        ({"image": "qa-expert/train;id"}, "image: not a valid Docker image reference"),
        ({"image": "qa-expert/Train"}, "image: .*bad path component 'Train'"),
        ({"image": "img@sha256:abc"}, "image: .*bad digest"),
        ({"output_root": "../../../etc"}, "output_root: must be an absolute path"),
        ({"output_root": "/runs/../etc"}, "output_root: must not contain '..'"),
        ({"sync": {"target": "s3://bkt/x", "endpoint_url": "ftp://x"}}, "sync.endpoint_url: must be an http"),
        (
            {"sync": {"target": "s3://bkt/x", "endpoint_url": "http://user:pw@host"}},
            "sync.endpoint_url: .*credentials",
        ),
        (
            {"sync": {"target": "s3://bkt/x", "endpoint_url": "http://host/?x=1"}},
            "sync.endpoint_url: .*query",
        ),
        ({"sync": {"target": "s3://bkt/x", "endpoint_url": "https://"}}, "sync.endpoint_url: has no host"),
        ({"sync": {"target": "s3://a..b/x"}}, "sync.target: bucket 'a..b' is not a valid S3 bucket name"),
        ({"sync": {"target": "s3://10.0.0.1/x"}}, "sync.target: bucket .*not a valid"),
        ({"sync": {"target": "s3://bkt/a/../b"}}, r"sync.target: prefix .* '\.\.' component"),
    ],
)
def test_bad_field_values_are_named(patch, message):
    with pytest.raises(SpecError, match=message) as e:
        parse_job({"run_name": "x", **BASE, **patch}, "jobs/x.yaml")
    assert str(e.value).startswith("jobs/x.yaml: ")
    assert "pw@" not in str(e.value)  # credentials in a URL are never echoed


@pytest.mark.parametrize(
    "image",
    ["qa-expert/train:latest", "ubuntu", "localhost:5000/a/b:1", "ghcr.io/org/img:v1.2-rc",
     "registry.example.com:443/ns/img@sha256:" + "a" * 64, "docker.io/library/python:3.11-slim"],
)  # fmt: skip
def test_valid_image_references(image):
    assert parse_job({"run_name": "x", **BASE, "image": image}).image == image


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

    code = "import sys, qa_train.spec, qa_train.entrypoint.cli; print(sorted(m for m in ('torch','transformers','peft') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"
