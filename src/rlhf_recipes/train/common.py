"""Steps every training recipe shares: resolve the input model, load data, resume, save the output with its lineage."""

from __future__ import annotations

import inspect
import logging
import resource
import time
from pathlib import Path

from .. import fs
from ..errors import UserError
from ..lineage import build_lineage, config_dict, write_lineage
from ..models import require_kind, resolve_model_path
from ..progress import StepTimer

logger = logging.getLogger(__name__)


def prepare_model(model_name_or_path: str | None, stage, key: str = "model_name_or_path") -> str:
    """Check the input is the kind this stage needs (the registry says which), then resolve it to full weights."""
    if not model_name_or_path:
        raise UserError(f"`{key}` is not set; give a Hub id, a folder, or embedded:SmolLM2-135M-Instruct.")
    require_kind(model_name_or_path, stage.model_keys[key], key)
    return resolve_model_path(model_name_or_path, key)


def model_init_kwargs(model_args) -> dict:
    """`from_pretrained` keyword arguments from TRL's ModelConfig: dtype, attention, revision and 4/8-bit loading."""
    import torch
    from accelerate import PartialState
    from trl import get_quantization_config

    kwargs = {"revision": model_args.model_revision, "dtype": model_args.dtype or "auto"}
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    quantization_config = get_quantization_config(model_args)
    if model_args.load_in_4bit and model_args.dtype != "bfloat16":
        raise UserError(
            f"load_in_4bit: true needs dtype: bfloat16 (got {model_args.dtype}): TRL keeps QLoRA adapters and new heads "
            "in bfloat16; add `--dtype bfloat16` or set it in the YAML."
        )
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        # bitsandbytes quantizes on the device the weights land on: each process's own GPU, else the CPU.
        kwargs["device_map"] = {"": PartialState().local_process_index} if torch.cuda.is_available() else None
    return kwargs


def _columns(stage, training_args) -> tuple[str, ...]:
    text_field = getattr(training_args, "dataset_text_field", "text")
    return tuple(text_field if c == "text" else c for c in stage.columns)


def load_splits(script_args, training_args, stage):
    """The train split and, when evaluation is on, the test split of `dataset_name`, checked for the stage's columns.

    A folder is read as `datasets.load_dataset(folder)` reads it: a Hub snapshot's `data/train-*.parquet` and
    `data/test-*.parquet` (or its README.md card's `configs`) are two splits, so test rows never reach training; a Hub
    id that cannot be fetched (offline, no network) is one sentence."""
    from datasets import load_dataset

    from .. import offline

    name = script_args.dataset_name
    if not name:
        raise UserError(
            "`dataset_name` is not set; point it at a data folder (e.g. data/demo/sft) or a Hub dataset id."
        )
    if Path(name).exists() and not Path(name).is_dir():
        raise UserError(f"dataset_name={name} is a file; give the folder that holds train.jsonl (and test.jsonl).")
    empty = sorted(p.name for p in Path(name).glob("*.json*") if p.is_file() and p.stat().st_size == 0)
    if empty:
        raise UserError(f"dataset_name={name}: {empty[0]} is empty; put the split's rows in it (or remove the file).")
    if offline.looks_like_hub_id(name):
        offline.check(name, "dataset", "dataset_name")
    try:
        dataset = load_dataset(name, name=script_args.dataset_config, streaming=script_args.dataset_streaming)
    except Exception as error:  # datasets raises many kinds for unreadable data; all are the user's to fix
        if offline.looks_like_hub_id(name) and offline.unreachable(error):
            raise offline.refuse(name, "dataset", "dataset_name") from None
        raise UserError(f"cannot load dataset_name={name}: {' '.join(str(error).split())[:300]}") from None
    splits = {script_args.dataset_train_split}
    if training_args.eval_strategy != "no":
        splits.add(script_args.dataset_test_split)
    columns = _columns(stage, training_args)
    for split in sorted(splits):
        if split not in dataset:
            train = split == script_args.dataset_train_split
            key = "dataset_train_split" if train else "dataset_test_split"
            others = [s for s in dataset if s not in splits]
            hint = f"set {key} to {' or '.join(others)}" if others else f"add the split or set {key}"
            hint += "" if train else ", or set eval_strategy: no"
            raise UserError(f"dataset {name} has no '{split}' split (it has {', '.join(dataset)}); {hint}.")
        missing = [c for c in columns if c not in (dataset[split].column_names or [])]
        if missing:
            raise UserError(
                f"dataset {name} split '{split}' lacks column(s) {', '.join(missing)} (it has "
                f"{', '.join(dataset[split].column_names or [])}); convert it with recipes/prepare_data.py first."
            )
        if hasattr(dataset[split], "__len__") and len(dataset[split]) == 0:
            raise UserError(f"dataset {name} split '{split}' has no rows; check the data folder.")
    train = dataset[script_args.dataset_train_split]
    test = dataset[script_args.dataset_test_split] if training_args.eval_strategy != "no" else None
    return train, test


def last_checkpoint(output_dir: str) -> str | None:
    """The newest complete `checkpoint-*` in `output_dir`, to resume an interrupted run.

    Trainer writes `trainer_state.json` last, so a checkpoint without it was cut off while saving (a SIGKILL, a full
    disk) and is passed over; transformers' `get_last_checkpoint` would pick it by its number alone.
    """
    complete = [p for p in Path(output_dir).glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return str(max(complete, key=lambda p: int(p.name.rsplit("-", 1)[-1]))) if complete else None


def _data_summary(script_args, trainer) -> dict:
    def rows(dataset):
        return len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None

    return {
        "dataset_name": script_args.dataset_name,
        "train_split": script_args.dataset_train_split,
        "train_rows": rows(trainer.train_dataset),
        "eval_split": script_args.dataset_test_split if trainer.eval_dataset is not None else None,
        "eval_rows": rows(trainer.eval_dataset),
    }


def check_learned(trainer, stage_name: str) -> None:
    """A run that took no optimizer step, or whose every logged loss is exactly 0, learned nothing: not finished."""
    if trainer.state.global_step == 0:
        raise UserError(
            f"{stage_name} trained no optimizer step (no batch was formed from the data); it is not marked finished. "
            "Check the data size against the batch size, max_steps and num_train_epochs."
        )
    # a zero loss with a gradient is learning: RLOO's and GRPO's policy loss is exactly 0 at the ratio 1 when a group's
    # answers have equal lengths (advantages sum to 0 per group), while the gradient of that loss is not
    logged = [e for e in trainer.state.log_history if "loss" in e]
    if logged and all(e["loss"] == 0 and not e.get("grad_norm") for e in logged):
        raise UserError(
            f"{stage_name}'s training loss was exactly 0 at every step: no token carried a loss (check max_length and "
            "the data); it is not marked finished."
        )


def train_and_save(trainer, stage, model_args, script_args, training_args, metrics_fn=None, extra=None) -> dict:
    """Train (resuming from the last checkpoint if any), evaluate, save the model and write `lineage.json` last.

    `lineage.json` is written after everything else, so its presence marks a finished stage. `metrics_fn(trainer)`
    adds stage-specific metrics (PPO's trainer returns none from `train`); `extra` goes into the lineage as is (the
    RL algorithm and its key settings).
    """
    output_dir = training_args.output_dir
    if trainer.accelerator.is_main_process:
        fs.claim(output_dir, stage.name)
    finished_before = (Path(output_dir) / "lineage.json").is_file()
    checkpoint = None if finished_before else last_checkpoint(output_dir)  # resume only an unfinished run
    if checkpoint:
        logger.info("Resuming %s from %s", stage.name, checkpoint)
    resumable = "resume_from_checkpoint" in inspect.signature(trainer.train).parameters
    if hasattr(trainer, "create_model_card"):  # TRL writes its card at every checkpoint: none for an unfinished run
        trainer.create_model_card = lambda *args, **kwargs: None  # (the stage's card is written last, below)
    trainer.add_callback(StepTimer(stage.name))  # measured s/step and time left after the first steps
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint) if checkpoint and resumable else trainer.train()
    metrics = dict(getattr(result, "metrics", None) or {})
    metrics.setdefault("train_runtime", round(time.perf_counter() - started, 3))  # PPOTrainer reports none
    accelerator, steps = trainer.accelerator, trainer.state.global_step
    per_step = trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps  # on each rank
    logger.info(  # one line per process, so a multi-GPU run shows that every rank trained
        "rank %d/%d: trained %d optimizer steps on %d examples",
        accelerator.process_index,
        accelerator.num_processes,
        steps,
        steps * per_step,
    )
    check_learned(trainer, stage.name)
    if metrics_fn is not None:
        metrics.update(metrics_fn(trainer))
    elif trainer.eval_dataset is not None:  # reuse an evaluation already logged at the last step (eval_strategy)
        step = trainer.state.global_step
        logged = [e for e in trainer.state.log_history if e.get("step") == step and "eval_loss" in e]
        metrics.update(
            {k: v for k, v in logged[-1].items() if k.startswith("eval_")} if logged else trainer.evaluate()
        )
    metrics["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    logged_tokens = [entry["num_tokens"] for entry in trainer.state.log_history if "num_tokens" in entry]
    if logged_tokens and metrics.get("train_runtime"):
        metrics["num_tokens"] = logged_tokens[-1]
        metrics["train_tokens_per_second"] = logged_tokens[-1] / metrics["train_runtime"]
    push_to_hub, trainer.args.push_to_hub = trainer.args.push_to_hub, False  # Trainer's push off: ours is below
    trainer.save_model(output_dir)
    trainer.args.push_to_hub = push_to_hub
    if trainer.accelerator.is_main_process:
        trainer.state.save_to_json(str(Path(output_dir) / "trainer_state.json"))  # loss curves for the report
        precision = getattr(training_args, "precision", None)
        lineage = build_lineage(
            stage=stage.name,
            model_kind=stage.makes,
            model_name_or_path=model_args.model_name_or_path,
            model_args=model_args,
            data=_data_summary(script_args, trainer),
            config={**config_dict(script_args, model_args, training_args), "world_size": accelerator.num_processes},
            metrics=metrics,
            output_dir=output_dir,
            extra={**({"precision": precision.to_dict()} if precision else {}), **(extra or {})},
        )
        write_lineage(output_dir, lineage)
        logger.info(
            "%s finished: %s", stage.name, {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
        )
        from ..publish.hub import publish_stage_output  # README.md = the card of recipes/publish.py

        publish_stage_output(trainer, training_args)
    return metrics
