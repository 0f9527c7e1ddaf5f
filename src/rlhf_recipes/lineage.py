"""`lineage.json`: what every stage output folder says about where it came from.

Schema (one JSON object):
    stage               "cpt" | "sft" | "reward" | "ppo"
    model_kind          "causal_lm" | "reward_model"
    model_name_or_path  the input model exactly as configured (embedded name, Hub id, or a previous output folder)
    base_model          the root of the chain (e.g. "embedded:SmolLM2-135M-Instruct" or a Hub id)
    adapter             {"method": "lora" | "qlora", "r", "alpha", "target_modules", "task_type"} or null (full)
    chain               earlier stages, oldest first: [{"stage", "output_dir", "data"}], this stage last
    data                {"dataset_name", "train_split", "train_rows", "eval_split", "eval_rows"}
    config              every training/model/script argument of the run (JSON-serialisable values)
    metrics             final train/eval metrics of the run
    precision           the compute precision chosen for the machine and why ({"bf16", "dtype", "reason", ...})
    algorithm           RL stages: {"name", and its key settings} (KL coefficient, group size, loss type, ...)
    command             the command line that reproduces the run
    versions            the pinned library versions that produced it
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import re
import shlex
import sys
from pathlib import Path

from .models import read_lineage

LIBRARIES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes")


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def config_dict(*configs) -> dict:
    """All fields of the run's argument dataclasses, merged, as plain JSON values (secrets dropped)."""
    merged = {}
    for config in configs:
        merged.update(dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config))
    return {k: _jsonable(v) for k, v in sorted(merged.items()) if "token" not in k.lower()}


_SECRETS = re.compile(r"(--(?:hub_)?token[= ])\S+|\bhf_[A-Za-z0-9]{30,}")


def redact(text: str, token: str | None = None) -> str:
    """`text` with `--hub_token X` / `--token X` values, `hf_...` strings and `token` itself replaced by `***`."""
    text = _SECRETS.sub(lambda m: (m.group(1) or "") + "***", text)
    return text.replace(token, "***") if token else text


def command_line() -> str:
    """The command that reproduces this run, with any token value hidden."""
    return redact(" ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]))


def build_lineage(
    *,
    stage: str,
    model_kind: str,
    model_name_or_path: str,
    model_args,
    data: dict,
    config: dict,
    metrics: dict,
    output_dir: str,
    extra: dict | None = None,
) -> dict:
    parent = read_lineage(model_name_or_path) if Path(model_name_or_path).is_dir() else None
    adapter = None
    if getattr(model_args, "use_peft", False):
        adapter = {
            "method": "qlora" if model_args.load_in_4bit else "lora",
            "r": model_args.lora_r,
            "alpha": model_args.lora_alpha,
            "target_modules": model_args.lora_target_modules,
            "task_type": model_args.lora_task_type,
        }
    entry = {"stage": stage, "output_dir": str(Path(output_dir).resolve()), "data": data.get("dataset_name")}
    return {
        "stage": stage,
        "model_kind": model_kind,
        "model_name_or_path": str(Path(model_name_or_path).resolve()) if parent else model_name_or_path,
        "base_model": parent["base_model"] if parent else model_name_or_path,
        "adapter": adapter,
        "chain": (parent["chain"] if parent else []) + [entry],
        "data": data,
        "config": config,
        "metrics": _jsonable(metrics),
        "command": command_line(),
        "versions": {lib: importlib.metadata.version(lib) for lib in LIBRARIES},
        **_jsonable(extra or {}),
    }


def write_lineage(output_dir: str, lineage: dict) -> Path:
    from .fs import atomic_write_json

    return atomic_write_json(Path(output_dir) / "lineage.json", lineage)
