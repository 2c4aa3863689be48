"""``export --to skypilot|dstack|kubeflow --nodes N``: the job as that engine's own file (``launch/export/``),
with the rendered spec uploaded to ``<target>/<run>/spec.json`` so every node reads it by reference."""

from __future__ import annotations

import os

from launch.cli import args as cli_args
from launch.cli.common import DEFAULT_JOB, CliError, Commands, prog
from launch.credentials import CONTAINER_SECRETS, load_secrets, redact

PASSTHROUGH_ENV = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION")


class ExportCommands(Commands):
    def export(
        self,
        to: str,
        nodes: int = 2,
        job: str = DEFAULT_JOB,
        gpu: str = "a100",
        num_gpus: int | None = None,
        offload: str = "auto",
        image: str | None = None,
        out: str | None = None,
        k8s_secret: str = "qa-expert",
        env_file: str | None = None,
        upload: bool = True,
    ) -> None:
        """Write JOB for NODES nodes of GPU (--num_gpus each) as a SkyPilot task YAML, a dstack task or a
        Kubeflow TrainJob (--to), checked with the engine's own schema when its package is installed here.
        Secrets are named, never written: SkyPilot --secret NAME, dstack from your environment, Kubernetes
        Secret --k8s_secret. --noupload: do not upload the rendered spec (it must then be there already)."""
        from launch.export import EngineMissing, ExportError, engine, export_job, to_yaml
        from launch.jobs.plan import run_store, spec_json
        from launch.render import render
        from qa_train.contract import SPEC_NAME, RunReport
        from qa_train.fsutil import atomic_write_text
        from qa_train.spec import load_job

        try:
            eng = engine(str(to))
        except ExportError as e:
            raise cli_args.UsageError(str(e)) from None
        if int(nodes) < 1:
            raise cli_args.UsageError(f"--nodes must be >= 1 (got {nodes})")
        if not k8s_secret or not all(c.isalnum() or c in "-." for c in k8s_secret):
            raise cli_args.UsageError(
                f"--k8s_secret {k8s_secret!r}: a Kubernetes Secret name (a-z, 0-9, '-', '.')"
            )
        spec_job = load_job(job)
        secrets = load_secrets(CONTAINER_SECRETS, env_file=env_file)
        env = {k: os.environ[k] for k in PASSTHROUGH_ENV if os.environ.get(k)}
        rendered = render(spec_job, gpu, num_gpus=num_gpus, offload=offload, image=image, env=env,
                          secret_names=list(secrets))  # fmt: skip
        try:
            ej = export_job(rendered, int(nodes), list(secrets), str(k8s_secret))
        except ExportError as e:
            raise cli_args.UsageError(str(e)) from None
        doc = eng.document(ej)
        checked = "checked with the engine's own schema"
        try:
            eng.validate(doc)
        except EngineMissing as e:
            checked = f"not checked: {e} is not installed here"
        except ExportError as e:
            raise CliError(str(e)) from None
        path = str(out) if out else eng.file_name(rendered.job.run_name)
        launch = eng.launch_command(path, ej)
        if upload:  # before the file: a file whose spec is not in storage would start nodes that fail
            store = run_store(rendered, secrets)
            assert store is not None  # export_job refused a job without sync
            try:
                store.put_text(SPEC_NAME, redact(spec_json(rendered), secrets))
                store.write_report(RunReport(rendered.job.run_name, launch=0, backend=str(to)))
            except Exception as e:  # botocore: no credentials, refused, unreachable
                from qa_train.storage import describe_error

                raise CliError(
                    f"cannot upload {store.layout.spec}: {describe_error(e, store.layout.spec)}"
                ) from None
        header = (
            f"qa-expert trainer: {rendered.job.run_name} on {ej.nodes} node(s) of "
            f"{rendered.gpu.count or 'no'} x {rendered.gpu.name}, written by `{prog()} export --to {to}`.\n"
            f"Every node runs the image's entrypoint; the spec is {ej.env['QA_JOB_SPEC_URI']}.\n"
            f"Secrets are named here, never written. Launch:\n  {launch}"
        )
        try:
            atomic_write_text(path, to_yaml(doc, header))
        except OSError as e:
            raise cli_args.UsageError(f"{path}: cannot write: {e.strerror}") from None
        print(f"wrote {path} ({to}, {ej.nodes} nodes; {checked})")
        print(f"launch it with:\n  {launch}")
