"""Host minimums a job sends to every cloud (launch/gpus.py): RAM from the GPUs and the offload plan, vCPUs
per GPU, CUDA from the image label; and which clouds ``--backend cheapest`` means."""

from __future__ import annotations

import pytest

from launch.backends import configured_clouds, get_compute
from launch.backends.base import CloudError
from launch.gpus import DEFAULT_MIN_CUDA, host_requirements, image_min_cuda
from launch.render import render
from qa_train.spec import parse_job

DATA = {"train_path": "/data/t.json", "hotpot_qa_dev_path": "/data/h.json"}


def _render(profile: str, **job):
    base = {"run_name": "r", "model": {"name_or_path": "mistralai/Mistral-7B-v0.1"}, "data": DATA, **job}
    return render(parse_job(base), profile, job_id="h1")


class _Images:
    def __init__(self, labels):
        self.labels = labels

    def get(self, image):
        if self.labels is None:
            raise LookupError(image)
        return type("Img", (), {"labels": self.labels})()


class _Client:
    def __init__(self, labels):
        self.images = _Images(labels)


def test_offload_plan_needs_its_offloaded_states_in_host_ram():
    spec = _render("a6000")  # full fine-tune of 7B on 48 GB: ZeRO-3 with CPU offload
    cpu_gb = spec.memory["cpu_gb"]
    assert cpu_gb > 48
    req = host_requirements(spec, docker_client=_Client({"qa-expert.cuda": "12.8"}))
    ram, vcpus = req
    assert ram >= cpu_gb * 1.25 and vcpus == 4 * spec.gpu.count and req.min_cuda == "12.8"


def test_no_offload_plan_needs_ram_as_large_as_gpu_memory():
    spec = _render("a100", use_lora=True)
    ram, vcpus = host_requirements(spec, docker_client=_Client({}))
    assert ram == 80 * spec.gpu.count and vcpus == 4 * spec.gpu.count


def test_cpu_job_needs_nothing():
    spec = render(parse_job({"run_name": "c", "model": {"make_tiny": {"arch": "llama"}}, "data": DATA}), "cpu",
                  job_id="c1")  # fmt: skip
    assert tuple(host_requirements(spec)) == (0, 0)


def test_image_cuda_label_or_default():
    assert image_min_cuda("x", _Client({"qa-expert.cuda": "12.4"})) == "12.4"
    assert image_min_cuda("x", _Client(None)) == DEFAULT_MIN_CUDA


def test_configured_clouds(monkeypatch):
    monkeypatch.delenv("VAST_API_KEY", raising=False)
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    with pytest.raises(CloudError, match="VAST_API_KEY and/or RUNPOD_API_KEY"):
        configured_clouds()
    monkeypatch.setenv("RUNPOD_API_KEY", "k")
    assert list(configured_clouds()) == ["runpod"]
    assert sorted(configured_clouds(vast={"api_key": "v"})) == ["runpod", "vast"]
    assert get_compute("vast", api_key="v").name == "vast"
    with pytest.raises(ValueError, match="unknown backend"):
        get_compute("aws")
