"""Steps every stage recipe shares: resolve the input model, load data, resume, save the output with its lineage."""

from __future__ import annotations

import inspect
import logging
import time
from pathlib import Path

from .cli import UserError
from .lineage import build_lineage, config_dict, write_lineage
from .models import require_kind, resolve_model_path

logger = logging.getLogger(__name__)


def prepare_model(model_name_or_path: str | None, expected_kind: str, key: str = "model_name_or_path") -> str:
    """Check the input folder is the kind this stage needs, then resolve it to loadable full weights."""
    if not model_name_or_path:
        raise UserError(f"`{key}` is not set; give a Hub id, a folder, or embedded:SmolLM2-135M-Instruct.")
    require_kind(model_name_or_path, expected_kind, key)
    return resolve_model_path(model_name_or_path)


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


def load_splits(script_args, training_args, columns: tuple[str, ...]):
    """The train split and, when evaluation is on, the test split of `dataset_name`, checked for `columns`."""
    from datasets import load_dataset

    name = script_args.dataset_name
    if not name:
        raise UserError(
            "`dataset_name` is not set; point it at a data folder (e.g. data/demo/sft) or a Hub dataset id."
        )
    try:
        dataset = load_dataset(name, name=script_args.dataset_config, streaming=script_args.dataset_streaming)
    except (FileNotFoundError, ValueError, ConnectionError) as error:
        raise UserError(f"cannot load dataset_name={name}: {' '.join(str(error).split())[:300]}") from None
    splits = {script_args.dataset_train_split}
    if training_args.eval_strategy != "no":
        splits.add(script_args.dataset_test_split)
    for split in sorted(splits):
        if split not in dataset:
            raise UserError(f"dataset {name} has no '{split}' split (it has {', '.join(dataset)}); set the split key.")
        missing = [c for c in columns if c not in (dataset[split].column_names or [])]
        if missing:
            raise UserError(
                f"dataset {name} split '{split}' lacks column(s) {', '.join(missing)} (it has "
                f"{', '.join(dataset[split].column_names or [])}); convert it with recipes/prepare_data.py first."
            )
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


def train_and_save(
    trainer, *, stage: str, model_kind: str, model_args, script_args, training_args, metrics_fn=None
) -> dict:
    """Train (resuming from the last checkpoint if any), evaluate, save the model and write `lineage.json` last.

    `lineage.json` is written after everything else, so its presence marks a finished stage. `metrics_fn(trainer)`
    adds stage-specific metrics (PPO's trainer returns none from `train`).
    """
    output_dir = training_args.output_dir
    finished_before = (Path(output_dir) / "lineage.json").is_file()
    checkpoint = None if finished_before else last_checkpoint(output_dir)  # resume only an unfinished run
    if checkpoint:
        logger.info("Resuming %s from %s", stage, checkpoint)
    resumable = "resume_from_checkpoint" in inspect.signature(trainer.train).parameters  # PPOTrainer's is not
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
    if metrics_fn is not None:
        metrics.update(metrics_fn(trainer))
    elif trainer.eval_dataset is not None:  # reuse an evaluation already logged at the last step (eval_strategy)
        step = trainer.state.global_step
        logged = [e for e in trainer.state.log_history if e.get("step") == step and "eval_loss" in e]
        metrics.update(
            {k: v for k, v in logged[-1].items() if k.startswith("eval_")} if logged else trainer.evaluate()
        )
    logged_tokens = [entry["num_tokens"] for entry in trainer.state.log_history if "num_tokens" in entry]
    if logged_tokens and metrics.get("train_runtime"):
        metrics["num_tokens"] = logged_tokens[-1]
        metrics["train_tokens_per_second"] = logged_tokens[-1] / metrics["train_runtime"]
    push_to_hub, trainer.args.push_to_hub = trainer.args.push_to_hub, False  # Trainer's push off: ours is below
    trainer.save_model(output_dir)
    trainer.args.push_to_hub = push_to_hub
    if trainer.accelerator.is_main_process:
        trainer.state.save_to_json(str(Path(output_dir) / "trainer_state.json"))  # loss curves for the report
        lineage = build_lineage(
            stage=stage,
            model_kind=model_kind,
            model_name_or_path=model_args.model_name_or_path,
            model_args=model_args,
            data=_data_summary(script_args, trainer),
            config={**config_dict(script_args, model_args, training_args), "world_size": accelerator.num_processes},
            metrics=metrics,
            output_dir=output_dir,
        )
        write_lineage(output_dir, lineage)
        logger.info(
            "%s finished: %s", stage, {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
        )
        from .hub import publish_stage_output  # README.md = the card of recipes/publish.py; one push if push_to_hub

        publish_stage_output(trainer, training_args)
    return metrics
