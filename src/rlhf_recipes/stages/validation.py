"""One validation pass per stage, before any model loads: ranges of the values, and the paths the run will touch.

Types were already checked by the loader (`config.py`); here the rules the types cannot say (a batch size of 0, a
negative learning rate, zero epochs), secrets kept out of configs, trackers that are installed, and, when the stage
is about to run, that its input models exist and are of the kind it needs and that its output folder is new, empty
or this project's, and writable. `parse.py` runs them in order.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError, suggest
from ..fs import read_json
from .registry import producing_stage_hint

# field -> (test, what the value must be); checked on whichever parsed dataclass has the field
_POSITIVE = "must be a positive whole number"
RULES = {
    **{
        key: (lambda v: v is None or v >= 1, _POSITIVE)
        for key in (
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
            "lora_r",
            "max_length",
            "response_length",
            "num_ppo_epochs",
            "num_mini_batches",
            "total_episodes",
            "local_rollout_forward_batch_size",
            "num_generations",
            "max_completion_length",
            "max_new_tokens",
            "qa_max_new_tokens",
            "batch_size",
            "length_buckets",
            "parity_samples",
            "parity_max_new_tokens",
            "save_total_limit",
            "num_iterations",
            "max_rows",
            "samples_per_prompt",
            "num_side_by_side",
            "bootstrap_samples",
            "k",  # collect: answers per prompt
            "prompts_per_round",
            "round",  # collect and label: rounds count from 1
            "per_prompt",  # label: people who rank each prompt
        )
    },
    "port": (lambda v: 1 <= v <= 65535, "must be a port number from 1 to 65535"),
    "noise": (lambda v: 0 <= v <= 1, "must be a share between 0 and 1"),
    "export_rounds": (lambda v: all(r >= 1 for r in v), "must list rounds numbered from 1"),
    "lora_alpha": (lambda v: v > 0, "must be a positive number"),
    "max_steps": (lambda v: v == -1 or v >= 1, "must be -1 (train by epochs) or a positive number of steps"),
    "num_train_epochs": (lambda v: v > 0, "must be above 0 (a stage that trains no step learns nothing)"),
    "learning_rate": (lambda v: v > 0, "must be above 0 (with 0 nothing is learned)"),
    "warmup_steps": (lambda v: v >= 0, "must be 0 or more"),
    "warmup_ratio": (lambda v: 0 <= v <= 1, "must be between 0 and 1"),
    "weight_decay": (lambda v: v >= 0, "must be 0 or more"),
    "lora_dropout": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "kl_coef": (lambda v: v >= 0, "must be 0 or more"),
    "beta": (lambda v: v >= 0, "must be 0 or more"),
    "temperature": (lambda v: v > 0, "must be above 0"),
    "cliprange": (lambda v: v > 0, "must be above 0"),
    "cliprange_value": (lambda v: v > 0, "must be above 0"),
    "vf_coef": (lambda v: v >= 0, "must be 0 or more"),
    "gamma": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "lam": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "logging_steps": (lambda v: v > 0, "must be above 0"),
    "save_steps": (lambda v: v > 0, "must be above 0"),
    "eval_steps": (lambda v: v is None or v > 0, "must be above 0"),
    "max_grad_norm": (lambda v: v >= 0, "must be 0 or more"),
    "merge_tolerance": (lambda v: v > 0, "must be above 0"),
    "min_reward_accuracy": (lambda v: 0 <= v <= 1, "must be between 0 and 1"),
    "max_truncated_share": (lambda v: 0 <= v <= 1, "must be between 0 and 1"),
}


def _where(config, key: str) -> str:
    source = getattr(config, "_config_origin", None)
    return source(key) if source else "in the config"


def _check(key: str, value, where: str) -> None:
    ok, must = RULES[key]
    if value is None and key not in ("lora_alpha", "learning_rate"):
        return
    try:  # a list (online DPO's `beta: [0.1]`, one per epoch) is checked item by item
        good = all(ok(v) for v in value) if isinstance(value, list) and key != "export_rounds" else bool(ok(value))
    except TypeError:
        good = False
    if not good:
        raise UserError(f"key '{key}' {where} is {value!r}, but it {must}; fix it.")


def check_given(values: dict, hints: dict, origin) -> None:
    """The values given in the YAML or on the command line, before the dataclasses are built: TRL's `__post_init__`
    divides by some of them (`num_generations: 0` is a ZeroDivisionError there, not a sentence)."""
    from ..config import coerce

    for key in RULES.keys() & values.keys():
        if key in hints:
            _check(key, coerce(hints[key], values[key], key, origin, lenient=True), origin(key))


def check_values(parsed: tuple, origin=None) -> None:
    """Every value a rule in RULES covers, on every parsed dataclass of the stage."""
    for config in parsed:
        for key in RULES:
            if hasattr(config, key):
                _check(key, getattr(config, key), origin(key) if origin else "in the config")
        full_ft = getattr(config, "use_peft", True) is False and not getattr(config, "load_in_4bit", False)
        if full_ft and getattr(config, "dtype", None) in (
            "bfloat16",
            "float16",
        ):  # (4-bit without LoRA: its own error)
            # full fine-tuning updates the weights themselves: in half precision an AdamW step of 1e-5 rounds away
            raise UserError(
                f"use_peft: false with dtype: {config.dtype} trains half-precision weights, whose small updates round "
                "away; set dtype: float32 (autocast still computes in bf16 where the hardware has it) or use_peft: true."
            )


def check_model(value: str | None, key: str, kind: str | tuple[str, ...], where: str) -> None:
    """A model key names something loadable of the right kind: the embedded model, an existing folder, or (online) a
    Hub id. A missing local folder says which stage makes it."""
    from huggingface_hub import constants

    from ..models import CAUSAL_LM, EMBEDDED_PREFIX, require_kind

    if not value:
        raise UserError(f"`{key}` is not set {where}; give a Hub id, a folder, or embedded:SmolLM2-135M-Instruct.")
    if value.startswith(EMBEDDED_PREFIX):  # the embedded models are causal LMs: never a reward model
        accepted = (kind,) if isinstance(kind, str) else tuple(kind)
        if CAUSAL_LM not in accepted:
            raise UserError(
                f"{key}={value} {where} is a causal language model, but this stage needs a reward model (the output "
                "folder of recipes/reward.py)."
            )
        return
    path = Path(value).expanduser()
    if path.exists():
        if path.is_dir() and not any(path.iterdir()):
            raise UserError(f"{key}={value} {where} is an empty folder{producing_stage_hint(value)}.")
        for name, what in (
            ("lineage.json", "its lineage"),
            ("adapter_config.json", "its adapter"),
            ("config.json", "its configuration"),
        ):
            if (path / name).is_file():  # what tells the model's kind: damaged, it is one sentence here
                read_json(path / name, f"{key}'s {what}")
        require_kind(str(path), kind, key)
        return
    from .. import offline

    if not offline.is_hub_id(value):
        raise UserError(f"{key}={value} {where} does not exist{producing_stage_hint(value)}.")
    if constants.HF_HUB_OFFLINE:
        from ..models import cached_on_hub

        if not cached_on_hub(value):  # the sentence every Hub id that cannot be fetched gets (offline.py)
            raise offline.refuse(value, "model", key, where)


def check_paths(stage, parsed: tuple, origin=None) -> None:
    """The stage's input models and its output folder, before anything loads."""
    from .. import fs

    for key, kind in stage.model_keys.items():
        config = next((c for c in parsed if hasattr(c, key)), None)
        if config is not None and not getattr(config, "import_path", None):  # collect imports: it reads no model
            check_model(getattr(config, key), key, kind, origin(key) if origin else "")
    config = next((c for c in parsed if hasattr(c, stage.output_key)), None)
    if config is not None and getattr(config, stage.output_key):
        key = stage.output_key
        output = fs.check_output_folder(getattr(config, key), key, origin(key) if origin else "", what=stage.name)
        store = getattr(config, "store", None)  # the feedback loop's comparison store: never inside a replaced folder
        if store and "://" not in store and Path(store).expanduser().resolve().is_relative_to(output.resolve()):
            raise UserError(
                f"store={store} lies inside {key}={output}, which this stage replaces when it finishes; keep the "
                f"store outside it (e.g. {output.parent / 'feedback.sqlite'})."
            )


def check_secrets(parsed: tuple) -> None:
    """No token in a config (Trainer would pickle it into training_args.bin and every checkpoint; the environment
    keeps it out of files), and `push_to_hub` with a token to push with, checked before hours of training (Trainer
    itself fails on a missing token with a traceback)."""
    if any(getattr(config, "hub_token", None) for config in parsed):
        raise UserError("hub_token is refused in configs and flags; set HF_TOKEN or run `hf auth login` instead.")
    if any(getattr(config, "push_to_hub", False) for config in parsed):
        from huggingface_hub import constants, get_token

        if constants.HF_HUB_OFFLINE:
            raise UserError(
                "push_to_hub: true cannot push while HF_HUB_OFFLINE is set; unset it or set push_to_hub: false."
            )
        if not get_token():
            raise UserError("push_to_hub: true needs a Hub token; set HF_TOKEN or run `hf auth login` first.")


# report_to names -> the package that provides them (pip names), for the sentence when one is not installed
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "comet_ml": "comet-ml", "azure_ml": "azureml-core",
                    "dvclive": "dvclive", "flyte": "flytekit", "codecarbon": "codecarbon"}  # fmt: skip


def check_trackers(report_to, where) -> None:
    """Every `report_to` integration is installed (Trainer would fail with a traceback once the model is loaded)."""
    from transformers.integrations import get_available_reporting_integrations
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    names = [report_to] if isinstance(report_to, str) else list(report_to)
    available = get_available_reporting_integrations()
    for name in names:
        if name not in ("none", "all", *INTEGRATION_TO_CALLBACK):
            raise UserError(
                f"report_to {where('report_to')} names {name}, which is no integration transformers knows"
                f"{suggest(name, list(INTEGRATION_TO_CALLBACK))} They are: none, {', '.join(INTEGRATION_TO_CALLBACK)}."
            )
        if name not in ("none", "all") and name not in available:
            raise UserError(
                f"report_to {where('report_to')} names {name}, which is not installed; `pip install "
                f"{TRACKER_PACKAGES.get(name, name)}`, or set report_to: trackio (the project's tracker) or none."
            )
