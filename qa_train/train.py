"""``python -m qa_train train …``: fine-tune QA Expert (full / LoRA / QLoRA), packed or padded, with DeepSpeed.

Flags are the original README's, or one ``ARGS.json`` file of the same names (what ``qa_train run`` writes from
a job spec, ``qa_train/train_config.py``) with flags after it overriding it; see ``qa_train/args.py``. Every input problem is found before the model is
loaded, so a bad file costs seconds and leaves no checkpoint behind.

Outputs: a new run first removes the previous ``train_summary.json`` and completion marker from output_dir;
the final model is assembled in ``output_dir/.final.tmp-<pid>/`` and its files moved into output_dir at the
end; ``train_summary.json`` and then the marker (``qa_train.fsutil.MARKER``) are written last. Trainer
checkpoints stay in ``checkpoint-N/`` (resume needs them) and get the marker once the Trainer has finished them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
from functools import partial
from pathlib import Path
from typing import Any

from qa_train.contract import TRAIN_SUMMARY_NAME, ExitCode, TrainSummary
from qa_train.fsutil import UsageError

logger = logging.getLogger("qa_train.train")


# Where the final save is assembled before its files move into output_dir (a hidden sibling of the
# checkpoints, skipped by sync's top-level upload and by the Trainer's checkpoint search).
FINAL_TMP_PREFIX = ".final.tmp-"


class ConfigError(UsageError):
    """Incompatible flags."""


class Preempted(Exception):
    """SIGTERM handled (checkpoint saved and committed, or deliberately not): exit 143, no final save."""


def _install_sigterm(guard: Any) -> None:
    """SIGTERM before training: exit at once (nothing to keep). During training: only note the time, the
    guard acts at the end of the current step. After training (final save): carry on within the grace."""

    def handler(signum: int, _frame: object) -> None:
        if guard.phase == "training":
            if guard.term_at is None:
                logger.warning("SIGTERM: finishing the current step (grace %.0fs)", guard.grace_s)
            guard.signal_received(signum)
            return
        if guard.phase == "final":
            logger.warning("SIGTERM during the final save: carrying on within the grace period")
            return
        print("SIGTERM before training started: exiting now", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def _finish_preempted(guard: Any, session: Any, trainer: Any) -> str:
    """Wait (within the grace) for the commit of what the guard saved, and say what happened in one line."""
    o = guard.outcome
    deadline = o.received_at + guard.grace_s - 0.5
    uploader = session.uploader
    name = f"checkpoint-{o.step}"
    line = ""
    if trainer.is_world_process_zero():
        if uploader is not None:  # earlier checkpoints still uploading are worth their commit too
            uploader.wait(timeout=max(0.0, deadline - guard.clock()))
        elapsed = guard.clock() - o.received_at
        if o.action == "save":
            if uploader is None:
                line = f"SIGTERM: saved {name} in {elapsed:.1f}s (no sync target: kept locally)"
            elif name in uploader.committed:
                line = f"SIGTERM: saved and committed {name} in {elapsed:.1f}s"
            else:
                line = (
                    f"SIGTERM: saved {name} but its upload did not commit within the {guard.grace_s:.0f}s grace "
                    f"({elapsed:.1f}s); exiting"
                )
        elif o.action == "skip":
            line = (
                f"SIGTERM: last checkpoint is {o.step - o.last_step} steps old but a save would take "
                f"~{o.estimate_s:.0f}s > grace ({max(o.budget_s, 0):.0f}s left of {guard.grace_s:.0f}s); exiting now"
            )
        else:
            line = (
                f"SIGTERM: last checkpoint (step {o.last_step}) is {o.step - o.last_step} steps / {o.age_s:.0f}s "
                f"old (< --sigterm_min_age_s {guard.min_age_s:.0f}); exiting now"
            )
    trainer.accelerator.wait_for_everyone()  # every rank leaves together (the launcher kills stragglers)
    return line


def _setup_logging(training_args: Any) -> None:
    from qa_train.logs import route_transformers, setup_logging

    level = logging.INFO if training_args.should_log else logging.WARNING
    setup_logging(level, which="stdout")
    route_transformers(level)


def _init_distributed(training_args: Any) -> None:
    """Join the process group before anything else: ZeRO-3 builds the model sharded (``deepspeed.zero.Init``
    inside ``from_pretrained``) and checks the Trainer's batch size against the world it sees, which is 1 until
    DeepSpeed's communication is set up; rank-0-only work (sync, tokenization cache) needs the ranks too.
    ``TrainingArguments.device`` is what sets the group up (DeepSpeed's comm under ``--deepspeed``, else
    torch.distributed for DDP); a single process gets no group."""
    _ = training_args.device
    if training_args.deepspeed and training_args.world_size > 1:
        # Accelerate sets up DeepSpeed's comm only on an accelerator; on CPU (gloo) it makes a plain torch group,
        # which DeepSpeed's comm then wraps (init_distributed reuses an initialized torch.distributed group).
        from deepspeed import comm as ds_comm

        if not ds_comm.is_initialized():
            ds_comm.init_distributed(
                dist_backend=training_args.distributed_state.backend, auto_mpi_discovery=False
            )
    if training_args.world_size > 1:
        logger.info(
            "Distributed: rank %d of %d (local rank %d, backend %s)",
            training_args.process_index,
            training_args.world_size,
            training_args.local_process_index,
            training_args.distributed_state.backend if training_args.distributed_state else "-",
        )


def _check_flags(model_args: Any, data_args: Any, training_args: Any) -> None:
    from qa_train.fsutil import check_output
    from qa_train.modeling import MODEL_TYPES, check_model_path

    check_model_path(model_args.model_name_or_path, "--model_name_or_path")
    inputs = {
        "--model_name_or_path": model_args.model_name_or_path,
        "--train_path": data_args.train_path,
        "--validation_path": data_args.validation_path,
    }
    # The final save lands in output_dir beside the checkpoints (not replacing the folder as a whole).
    check_output(training_args.output_dir, "--output_dir", inputs, kind="folder", replaced=False)

    if training_args.qlora and not training_args.use_lora:
        raise ConfigError("--qlora True needs --use_lora True (QLoRA trains LoRA adapters on a 4-bit base)")
    if training_args.qlora and training_args.deepspeed:
        cfg = training_args.deepspeed
        if isinstance(cfg, str):
            try:
                cfg = json.loads(Path(cfg).read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ConfigError(
                    f"--deepspeed {training_args.deepspeed}: cannot read config ({exc})"
                ) from exc
        if int(cfg.get("zero_optimization", {}).get("stage", 0)) == 3:
            raise ConfigError(
                "QLoRA (4-bit base) cannot be sharded with DeepSpeed ZeRO-3; use ZeRO-2 or no DeepSpeed"
            )
    if model_args.model_type and model_args.model_type not in MODEL_TYPES:
        logger.warning(
            "--model_type %s is not one the original supported (%s); continuing with the config's type",
            model_args.model_type,
            ", ".join(MODEL_TYPES),
        )
    if data_args.packing_strategy not in ("bfd", "ffd", "next_fit"):
        raise ConfigError(
            f"--packing_strategy must be bfd, ffd or next_fit, got {data_args.packing_strategy!r}"
        )
    if data_args.padding not in ("longest", "max_length"):
        raise ConfigError(f"--padding must be longest or max_length, got {data_args.padding!r}")
    if training_args.do_train and not data_args.train_path:
        raise ConfigError("--train_path is required for training (or pass --do_train False)")
    if training_args.do_eval and not data_args.validation_path:
        raise ConfigError("--do_eval needs --validation_path")


def _load_data(
    path: str, tokenizer: Any, data_args: Any, training_args: Any, what: str, remote: Any = None
) -> Any:
    """Tokenized data from the local cache, the run's remote cache (``remote``: rank 0 with --sync_to; a
    relaunch on a fresh machine downloads instead of re-tokenizing), or tokenized now."""
    import time

    from qa_train.data.loading import DataError
    from qa_train.data.tokenize import load_tokenized

    started = time.monotonic()
    data = load_tokenized(
        path,
        tokenizer,
        training_args.model_max_length,
        data_args.data_cache_dir,
        data_args.truncation,
        data_args.skip_invalid_records,
        training_args.main_process_first,
        training_args.process_index == 0,
        remote=remote,
    )
    s = data.stats
    logger.info(
        "%s data %s (%s, %.2fs): %d records, %d kept, %d truncated, %d dropped (all labels masked), "
        "%d invalid skipped, %d tokens (%d with loss)",
        what,
        path,
        {"local": "local cache", "remote": "remote cache", "built": "tokenized"}[data.origin],
        time.monotonic() - started,
        s.records,
        s.kept,
        s.truncated,
        s.dropped_all_masked,
        s.skipped_invalid,
        s.tokens,
        s.label_tokens,
    )
    if len(data) == 0:
        raise DataError(
            f"{path}: no usable {what} records ({s.records} read, {s.dropped_all_masked} without any "
            f"loss token after truncation, {s.skipped_invalid} invalid)"
        )
    return data


def _as_dataset(data: Any, packing: bool, max_length: int, strategy: str) -> tuple[list[Any], Any]:
    from qa_train.data.packing import plan_packs

    samples = [{"input_ids": x, "labels": y} for x, y in zip(data.input_ids, data.labels, strict=True)]
    if not packing:
        return samples, None
    groups, stats = plan_packs(data.lengths, max_length, strategy)
    return [[samples[i] for i in g] for g in groups], stats


def _collator(packing: bool, tokenizer: Any, data_args: Any, max_length: int) -> Any:
    from qa_train.data.packing import collate_packed, collate_padded

    if packing:
        return collate_packed
    pad_to = max_length if data_args.padding == "max_length" else None
    return partial(collate_padded, pad_token_id=tokenizer.pad_token_id, pad_to=pad_to)


def _torch_dtype(training_args: Any) -> Any:
    import torch

    if training_args.bf16:
        return torch.bfloat16
    if training_args.fp16:
        return torch.float16
    return torch.float32


def load_model(model_args: Any, data_args: Any, training_args: Any, tokenizer: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    from qa_train.modeling import load_config, resize_embeddings, resolve_attn_implementation

    config = load_config(model_args.model_name_or_path, training_args.model_max_length)
    detected = config.model_type
    if model_args.model_type and model_args.model_type != detected:
        logger.warning(
            "--model_type %s but the checkpoint is a %s model; using %s",
            model_args.model_type,
            detected,
            detected,
        )
    attn = resolve_attn_implementation(model_args.attn_implementation, data_args.packing)
    dtype = _torch_dtype(training_args)
    kwargs: dict[str, Any] = {"config": config, "dtype": dtype, "attn_implementation": attn}
    if training_args.qlora:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype if dtype != torch.float16 else torch.float32,
        )
        if torch.cuda.is_available():
            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    logger.info(
        "Loading %s (%s, attn=%s, dtype=%s%s)",
        model_args.model_name_or_path,
        detected,
        attn,
        dtype,
        ", 4-bit nf4" if training_args.qlora else "",
    )
    # Every random start (LoRA's A matrices, the new token rows) from the run's seed, whatever consumed the RNG
    # before (process-group setup, tokenization): k ranks and one rank must start from the same adapter.
    from transformers import set_seed

    set_seed(training_args.seed)
    model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, **kwargs)
    resize_embeddings(model, tokenizer, training_args.new_token_init)
    model.config.use_cache = False
    if training_args.use_lora:
        model = _wrap_lora(model, training_args, tokenizer)
    return model


def _wrap_lora(model: Any, training_args: Any, tokenizer: Any) -> Any:
    from peft import get_peft_model, prepare_model_for_kbit_training

    from qa_train.modeling import lora_config, save_token_rows_only, special_token_ids
    from qa_train.trainer import new_token_lr

    if training_args.qlora:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=training_args.gradient_checkpointing
        )
    elif training_args.gradient_checkpointing:
        model.enable_input_require_grads()
    config = lora_config(
        model, tokenizer, training_args.lora_r, training_args.lora_alpha, training_args.lora_dropout
    )
    model = get_peft_model(model, config)
    save_token_rows_only(model)
    trainable, total = model.get_nb_trainable_parameters()
    logger.info(
        "LoRA r=%d alpha=%d: %d trainable / %d parameters (%.2f%%; rows %s of %s trained at lr %g)",
        config.r,
        config.lora_alpha,
        trainable,
        total,
        100 * trainable / total,
        special_token_ids(tokenizer),
        " + ".join(config.trainable_token_indices),
        new_token_lr(training_args),
    )
    return model


def _load_tokenizer(model_args: Any, training_args: Any) -> Any:
    """The base's tokenizer, or one ConfigError line naming the flag (a folder that is not a model, an
    unreachable Hub id) instead of the Hub client's traceback."""
    from qa_train.modeling import load_tokenizer

    try:
        return load_tokenizer(model_args.model_name_or_path, training_args.model_max_length)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"--model_name_or_path {model_args.model_name_or_path}: cannot load a tokenizer ({first})"
        ) from None


def _marker_callback() -> Any:
    """Marks each Trainer checkpoint complete once the Trainer has written all of it (``on_save`` runs after
    ``checkpoint-N/`` is finished), so merge can take a checkpoint as well as the final adapter. Listed before
    the sync callback, so the uploaded copy carries the marker too."""
    from transformers import TrainerCallback

    from qa_train.fsutil import write_marker

    class CheckpointMarker(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            # Every rank writes its own RNG state (rng_state_<rank>.pth) after the collective model save, with
            # no barrier before on_save: rank 0 must not mark (and sync upload) the folder until all have.
            _barrier()
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and ckpt.is_dir():
                write_marker(ckpt, "train", kind="checkpoint", global_step=state.global_step)
            return control

    return CheckpointMarker()


def _barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _clear_stale_outputs(output_dir: Path, training: bool) -> None:
    """A previous run's summary (and, when this run saves a model, its marker and any half-assembled final
    save) must not vouch for files this run is about to replace."""
    import shutil

    from qa_train.fsutil import remove_marker

    (output_dir / "train_summary.json").unlink(missing_ok=True)
    if training:
        remove_marker(output_dir)
        for leftover in output_dir.glob(FINAL_TMP_PREFIX + "*"):
            shutil.rmtree(leftover, ignore_errors=True)


def _final_tmp_dir(output_dir: Path) -> Path:
    """``output_dir/.final.tmp-<pid of rank 0>``: every rank must name the same folder for save_model."""
    import torch

    name = [f"{FINAL_TMP_PREFIX}{os.getpid()}"]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.broadcast_object_list(name, src=0)
    return output_dir / name[0]


def _save_final(trainer: Any, tokenizer: Any, output_dir: Path) -> None:
    """Assemble the final model (or adapter) + tokenizer + trainer_state.json in a hidden sibling, then move
    the files into output_dir: a save cut off half way leaves no model-looking files and no marker."""
    import shutil

    from qa_train.fsutil import move_into

    tmp = _final_tmp_dir(output_dir)
    try:
        trainer.save_model(str(tmp))
        trainer.accelerator.wait_for_everyone()  # every rank's share is on disk before rank 0 moves it
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(str(tmp))
            trainer.state.save_to_json(str(tmp / "trainer_state.json"))  # loss history for users and tests
            move_into(tmp, output_dir)
    except BaseException:
        if trainer.is_world_process_zero():
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def run(argv: list[str]) -> dict[str, Any]:
    import torch

    from qa_train.args import parse_train_args
    from qa_train.fsutil import atomic_write_json, write_marker
    from qa_train.spec import training_mode
    from qa_train.sync import start_sync
    from qa_train.sync.callback import dir_bytes
    from qa_train.trainer import PreemptionGuard, QATrainer, model_state_bytes

    model_args, data_args, training_args, sync_args = parse_train_args(argv)
    training_args.report_to = split_trackers(training_args.report_to)
    _tensorboard_logging_dir(training_args)
    _setup_logging(training_args)
    _init_distributed(training_args)
    guard = PreemptionGuard(
        save_every_minutes=training_args.save_every_minutes,
        grace_s=training_args.sigterm_grace_s,
        min_age_s=training_args.sigterm_min_age_s,
    )
    _install_sigterm(guard)
    _check_flags(model_args, data_args, training_args)
    # Storage credentials and the resume point are settled first: a typo in a key fails in seconds, not after
    # tokenizing the data set.
    from qa_train.fingerprint import input_paths, summary_fields  # the run is bound to its data (issue 23)

    session = start_sync(sync_args, training_args, input_paths(model_args, data_args), data_args.restart_data)
    tokenizer = _load_tokenizer(model_args, training_args)
    max_len = training_args.model_max_length
    train_data = eval_data = None
    remote_tokens = session.tokenized_cache(progress=not training_args.disable_tqdm)
    if training_args.do_train:
        train_data = _load_data(
            data_args.train_path, tokenizer, data_args, training_args, "train", remote_tokens
        )
    if training_args.do_eval:
        eval_data = _load_data(
            data_args.validation_path, tokenizer, data_args, training_args, "validation", remote_tokens
        )
    if session.inputs is not None:  # the data read and usable: now the run is bound to it
        session.inputs.record()
    train_ds, pack_stats = (None, None)
    if train_data is not None:
        train_ds, pack_stats = _as_dataset(train_data, data_args.packing, max_len, data_args.packing_strategy)
    eval_ds = (
        _as_dataset(eval_data, data_args.packing, max_len, data_args.packing_strategy)[0]
        if eval_data
        else None
    )

    model = load_model(model_args, data_args, training_args, tokenizer)
    guard.uploader = session.uploader
    guard.estimated_bytes = (
        dir_bytes(session.resume_from) if session.resume_from else 0
    ) or model_state_bytes(model)
    trainer = QATrainer(
        model=model,
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=_collator(data_args.packing, tokenizer, data_args, max_len),
        processing_class=tokenizer,
        callbacks=[_marker_callback(), guard, *session.callbacks],
    )
    output_dir = Path(training_args.output_dir)
    if trainer.is_world_process_zero():
        _clear_stale_outputs(output_dir, training_args.do_train)
    from qa_train.metrics import attach_live_metrics  # metrics.json (live, also to <run>/) + packing.json

    attach_live_metrics(trainer, session, training_args, train_data, train_ds, bool(pack_stats))
    summary = TrainSummary(
        model=model_args.model_name_or_path,
        mode=training_mode(training_args.use_lora, training_args.qlora),
        packing=data_args.packing,
        num_samples=len(train_data) if train_data is not None else 0,
        num_packs=pack_stats.packs if pack_stats else None,
        lower_bound_packs=pack_stats.lower_bound if pack_stats else None,
        packing_efficiency=pack_stats.efficiency if pack_stats else None,
        world_size=training_args.world_size,  # data-parallel ranks (all nodes)
        resumed_from=session.resumed_from,
        tokenized_from=train_data.origin if train_data is not None else None,  # local | remote | built
        **summary_fields(session.inputs),  # inputs (fingerprints), restarted_data (--restart_data)
    )
    final_done = None
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=session.resume_from)
        if guard.stopping:
            line = _finish_preempted(guard, session, trainer)
            raise Preempted(line)
        if trainer.finished_on_resume:
            final_done = session.committed_final() if trainer.is_world_process_zero() else None
        _save_final(trainer, tokenizer, output_dir)
        tokens = torch.tensor(float(trainer.real_tokens_seen), device=training_args.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(tokens)
        runtime = result.metrics.get("train_runtime") or float("nan")
        summary.train_tokens = int(tokens.item())
        summary.tokens_per_second = tokens.item() / runtime if runtime else None
        summary.train_loss = None if trainer.finished_on_resume else result.training_loss
        summary.global_step = trainer.state.global_step
    if training_args.do_eval:
        metrics = trainer.evaluate()
        summary.eval_loss, summary.eval_tokens = metrics.get("eval_loss"), metrics.get("eval_tokens")
    for key, value in (("train_loss", summary.train_loss), ("eval_loss", summary.eval_loss)):
        if value is not None and not math.isfinite(value):
            logger.warning("%s is not finite: %s", key, value)
    if trainer.is_world_process_zero():
        atomic_write_json(output_dir / TRAIN_SUMMARY_NAME, summary.to_dict())
        logger.info("Wrote %s", output_dir / "train_summary.json")
        if training_args.do_train:  # last: the folder now holds a finished model (uploaded with it by finish)
            write_marker(output_dir, "train", mode=summary.mode, global_step=summary.global_step)
        if final_done is not None:
            logger.info(
                "%s is already committed (%d files, every size as in its manifest): not uploaded again",
                final_done.uri,
                final_done.num_files,
            )
        session.finish(
            output_dir, summary.to_dict(), upload_final=final_done is None, tb_dir=_tensorboard_dir(trainer)
        )
    else:  # another node's local rank 0 of a group: its checkpoint parts (qa_train.sync.group)
        session.finish_part()
    return summary.to_dict()


def split_trackers(report_to: list[str] | None) -> list[str]:
    """HF's parser takes one ``--report_to`` value: several trackers come comma-joined (as ``qa_train run``
    passes them); the Trainer wants a list."""
    return [n.strip() for r in report_to or [] for n in r.split(",") if n.strip() and n.strip() != "none"]


def _tensorboard_logging_dir(args: Any) -> None:
    """A fixed TensorBoard folder (``--logging_dir``, else ``<output_dir>/tb``) so sync knows what to push:
    transformers 5 takes it from ``TENSORBOARD_LOGGING_DIR``, else a time-and-host-named folder of its own."""
    if "tensorboard" not in (args.report_to or []):
        return
    from qa_train.contract import TB

    args.logging_dir = str(args.logging_dir or Path(args.output_dir) / TB)
    os.environ["TENSORBOARD_LOGGING_DIR"] = args.logging_dir


def _tensorboard_dir(trainer: Any) -> Path | None:
    """The TensorBoard logging dir when ``--report_to`` has tensorboard, its writers closed first: an eval
    after training reopens a writer whose last scalars sit in a buffer until it is closed."""
    args = trainer.args
    if "tensorboard" not in (args.report_to or []):  # else _tensorboard_logging_dir set logging_dir
        return None
    for cb in trainer.callback_handler.callbacks:
        writer = getattr(cb, "tb_writer", None)
        if writer is not None:
            writer.close()
            cb.tb_writer = None
    return Path(args.logging_dir)


def _log_error(exc: BaseException) -> None:
    """Into the run's log too, once logging is set up; before that Python's last-resort handler would print
    the message a second time on stderr."""
    if logging.getLogger().handlers:
        logger.error("%s", exc)


def _as_flags(argv: list[str]) -> list[str]:
    """``ARGS.json [--flag …]`` as one flag list (``--output_dir`` may be in the file)."""
    from qa_train.args import read_config
    from qa_train.train_config import as_flags

    try:
        config, rest, _ = read_config(argv)
    except UsageError:
        return argv
    return [*as_flags(config), *rest]


def main(argv: list[str]) -> int:
    """Exit 0 on success; 2 with one ``error:`` line for bad input/flags; 3 when object storage fails; 143
    after a SIGTERM (with a ``SIGTERM: …`` line saying whether a checkpoint was saved and committed)."""
    from qa_train.sync import StorageError

    try:
        run(argv)
    except UsageError as exc:  # flags, numbers, paths, data files (DataError, RecordError, … are UsageErrors)
        _log_error(exc)
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except StorageError as exc:
        _log_error(exc)
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.STORAGE
    except Preempted as exc:
        if str(exc):
            logger.warning("%s", exc)
            print(str(exc), file=sys.stderr, flush=True)
        return ExitCode.SIGTERM
    except Exception as exc:  # a full disk (any writer's wording): one line naming folder and space, exit 1
        from qa_train.disk_full import EXIT_DISK_FULL, disk_full_line

        line = disk_full_line(exc, _as_flags(argv))
        if line is None:
            raise
        _log_error(line)
        print(f"error: {line}", file=sys.stderr)
        return EXIT_DISK_FULL
    return 0


if __name__ == "__main__":  # `deepspeed --module qa_train.train …` and `torchrun -m qa_train.train …`
    sys.exit(main(sys.argv[1:]))
