"""``export --to skypilot|dstack|kubeflow``: each engine's own file, the spec by reference, secrets by name only,
checked with the engine's own schema or models where its package is installed (kubeflow-trainer-api is in the
dev extra; skypilot and dstack are heavy and their checks skip without them), the spec uploaded to real S3."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from launch.cli import main
from launch.export import EngineMissing, ExportError, engine, export_job
from launch.render import render
from qa_train.spec import parse_job

SECRET = "sEcReT-value-7f3a"
JOB = {
    "run_name": "Mistral_QA.2n",
    "model": {"name_or_path": "mistralai/Mistral-7B-v0.1"},
    "data": {"train_path": "s3://qa-data/train.json"},
    "stages": ["train", "merge"],
    "use_lora": True,
    "sync": {"target": "s3://qa-bucket/runs"},
    "image": "ghcr.io/me/qa-expert:1.0",
}
SPEC_URI = "s3://qa-bucket/runs/Mistral_QA.2n/spec.json"


def _job_file(tmp_path: Path, **over: Any) -> Path:
    p = tmp_path / "job.yaml"
    p.write_text(yaml.safe_dump({**JOB, **over}))
    return p


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("AWS_SESSION_TOKEN", "WANDB_API_KEY", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA" + SECRET)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("HF_TOKEN", "hf_" + SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://s3.example.com")


def _export(tmp_path: Path, engine_name: str, *extra: str) -> tuple[int, str, dict[str, Any]]:
    out = tmp_path / f"out.{engine_name}.yaml"
    code = main(["export", "--to", engine_name, "--nodes", "2", "--job", str(_job_file(tmp_path)), "--gpu", "a100",
                 "--num_gpus", "8", "--out", str(out), "--noupload", *extra])  # fmt: skip
    text = out.read_text() if out.exists() else ""
    return code, text, (yaml.safe_load(text) if text else {})


def test_skypilot_task(tmp_path: Path, secrets_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, text, doc = _export(tmp_path, "skypilot")
    assert code == 0, capsys.readouterr().err
    assert SECRET not in text and SECRET not in capsys.readouterr().out
    assert doc["num_nodes"] == 2 and doc["name"] == "mistral-qa-2n"
    assert doc["resources"] == {"image_id": "docker:ghcr.io/me/qa-expert:1.0", "disk_size": 100,
                                "accelerators": "A100-80GB:8"}  # fmt: skip
    assert (
        doc["envs"]["QA_JOB_SPEC_URI"] == SPEC_URI
        and doc["envs"]["AWS_ENDPOINT_URL"] == "https://s3.example.com"
    )
    assert doc["secrets"] == {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "HF_TOKEN": None}
    assert doc["run"].strip() == "python -m qa_train run"
    assert (
        "sky jobs launch -n mistral-qa-2n --secret AWS_ACCESS_KEY_ID --secret AWS_SECRET_ACCESS_KEY " in text
    )


def test_dstack_task(tmp_path: Path, secrets_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, text, doc = _export(tmp_path, "dstack")
    assert code == 0, capsys.readouterr().err
    assert SECRET not in text
    assert doc["type"] == "task" and doc["nodes"] == 2 and doc["image"] == "ghcr.io/me/qa-expert:1.0"
    assert doc["commands"] == ["python -m qa_train run"]
    assert doc["resources"] == {"disk": "100GB", "gpu": "A100:80GB:8"}
    assert f"QA_JOB_SPEC_URI={SPEC_URI}" in doc["env"]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN"} <= set(doc["env"])  # names: no '='


def test_kubeflow_trainjob(tmp_path: Path, secrets_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, text, doc = _export(tmp_path, "kubeflow", "--k8s_secret", "qa-keys")
    assert code == 0, capsys.readouterr().err
    assert (
        "checked with the engine's own schema" in capsys.readouterr().out
    )  # kubeflow-trainer-api (dev extra)
    assert SECRET not in text
    assert doc["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and doc["kind"] == "TrainJob"
    assert doc["metadata"]["name"] == "mistral-qa-2n"
    assert doc["spec"]["runtimeRef"]["name"] == "torch-distributed"
    t = doc["spec"]["trainer"]
    assert (
        t["command"] == ["python", "-m", "qa_train", "run"]
        and t["numNodes"] == 2
        and t["numProcPerNode"] == 8
    )
    assert t["resourcesPerNode"] == {"limits": {"nvidia.com/gpu": 8}}
    env = {e["name"]: e for e in t["env"]}
    assert env["QA_JOB_SPEC_URI"]["value"] == SPEC_URI
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN"):
        assert env[name] == {"name": name, "valueFrom": {"secretKeyRef": {"name": "qa-keys", "key": name}}}
    assert not any(
        k.startswith("PET_") for k in env
    )  # the runtime's own; Kubeflow refuses them in a TrainJob


def _docs(engine_name: str, gpu: str = "a100") -> dict[str, Any]:
    spec = render(
        parse_job(JOB), gpu, env={"AWS_ENDPOINT_URL": "https://s3.example.com"}, secret_names=["HF_TOKEN"]
    )
    return json.loads(json.dumps(engine(engine_name).document(export_job(spec, 2, ["HF_TOKEN"]))))


def test_kubeflow_models_refuse_what_a_trainjob_has_not() -> None:
    pytest.importorskip("kubeflow_trainer_api")
    kf = engine("kubeflow")
    doc = _docs("kubeflow")
    kf.validate(doc)
    doc["spec"]["trainer"]["nodes"] = 2  # dstack's word, not a TrainJob field
    with pytest.raises(ExportError, match="no field spec.trainer.nodes"):
        kf.validate(doc)
    doc = _docs("kubeflow")
    doc["spec"]["trainer"]["numNodes"] = "two"
    with pytest.raises(ExportError, match="refuses the TrainJob"):
        kf.validate(doc)


@pytest.mark.parametrize("gpu", ["a100", "a100-40gb", "a6000", "h100", "l40s", "rtx4090", "cpu"])
@pytest.mark.parametrize(("engine_name", "package"), [("skypilot", "sky"), ("dstack", "dstack")])
def test_engine_schema_accepts_every_profile(engine_name: str, package: str, gpu: str) -> None:
    """SkyPilot's task schema and dstack's models, where installed (heavy: not in the dev extra)."""
    pytest.importorskip(package)
    mod = engine(engine_name)
    mod.validate(_docs(engine_name, gpu))
    bad = _docs(engine_name, gpu)
    bad["num_nodes" if engine_name == "skypilot" else "nodes"] = "two"
    with pytest.raises(ExportError, match="refuses the task"):
        mod.validate(bad)


def test_missing_engine_package_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    for name in ("sky", "sky.utils"):  # an import of them now fails, installed (and imported) or not
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(EngineMissing):
        engine("skypilot").validate({})


@pytest.mark.parametrize(
    ("args", "job_over", "message"),
    [
        (["--to", "slurm"], {}, "error: --to must be one of skypilot, dstack, kubeflow (got 'slurm')"),
        (["--to", "dstack", "--nodes", "0"], {}, "error: --nodes must be >= 1 (got 0)"),
        (
            ["--to", "kubeflow", "--k8s_secret", "a b"],
            {},
            "error: --k8s_secret 'a b': a Kubernetes Secret name",
        ),
        (
            ["--to", "skypilot"],
            {"sync": None},
            "error: an exported job needs object storage: set sync.target",
        ),
    ],
)
def test_bad_input_is_one_error_and_nothing_written(
    tmp_path: Path, secrets_env: None, capsys: pytest.CaptureFixture[str], args: list[str],
    job_over: dict[str, Any], message: str,
) -> None:  # fmt: skip
    out = tmp_path / "x.yaml"
    job = _job_file(tmp_path, **job_over)
    assert main(["export", *args, "--job", str(job), "--out", str(out), "--noupload"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err
    assert not out.exists()


def test_spec_uploaded_to_real_storage_before_the_file(
    tmp_path: Path, s3: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The nodes read <target>/<run>/spec.json: export puts it there (and a fresh report); no storage → no file."""
    monkeypatch.setenv("HF_TOKEN", "hf_" + SECRET)
    job = _job_file(tmp_path, sync={"target": s3.uri("runs")})
    out = tmp_path / "task.dstack.yml"
    assert main(["export", "--to", "dstack", "--job", str(job), "--gpu", "h100", "--out", str(out)]) == 0
    keys = s3.keys("runs/Mistral_QA.2n/")
    assert set(keys) == {"runs/Mistral_QA.2n/spec.json", "runs/Mistral_QA.2n/report.json"}
    body = (
        s3.client().get_object(Bucket=s3.bucket, Key="runs/Mistral_QA.2n/spec.json")["Body"].read().decode()
    )
    assert SECRET not in body and json.loads(body)["secret_env"] == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                                     "HF_TOKEN"]  # fmt: skip
    assert f"QA_JOB_SPEC_URI={s3.uri('runs')}/Mistral_QA.2n/spec.json" in out.read_text()
    capsys.readouterr()
    # storage that refuses the keys: one error, no file
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    out2 = tmp_path / "task2.dstack.yml"
    assert main(["export", "--to", "dstack", "--job", str(job), "--gpu", "h100", "--out", str(out2)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"error: cannot upload {s3.uri('runs')}/Mistral_QA.2n/spec.json"
    )
    assert not out2.exists()
