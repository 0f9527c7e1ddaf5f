"""Command-line plumbing shared by every recipe: strict config parsing and one-sentence user errors."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable

from .errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, RESUMES, UserError, environment_error, suggest

logger = logging.getLogger("rlhf_recipes")


# Notices libraries log at import that say nothing about a run: bitsandbytes on a CPU with AVX512-BF16 logs a warning
# that an optional kernel package is missing, as the first line of every command (`--help` included)
_NOTICES = {"bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward from kernels-community",)}


def quiet_library_notices() -> None:
    """Drop the import-time notices of `_NOTICES` (only those: the libraries' other warnings still show)."""
    for name, starts in _NOTICES.items():
        library = logging.getLogger(name)
        if not any(getattr(f, "rlhf_recipes", False) for f in library.filters):
            notice = logging.Filter()
            notice.filter = lambda record, starts=starts: not str(record.msg).startswith(starts)
            notice.rlhf_recipes = True
            library.filters.append(notice)


def run(main: Callable[[], object]) -> None:
    """Run a recipe's entry point: user errors and machine faults (full disk, read-only folder, Ctrl-C) become one line
    on stderr and a non-zero exit code (2, or 130 for Ctrl-C); bugs keep their traceback."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print(f"error: interrupted (Ctrl-C); nothing unfinished was marked done; {RESUMES}.", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as error:  # a machine fault says so in many forms (environment_error); anything else is a bug
        message = environment_error(error)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def parse_config(
    dataclass_types: Iterable[type], args: list[str] | None = None, stage=None, check_paths: bool = True
) -> tuple:
    """Parse `--config FILE.yaml` plus command-line overrides into TRL-style dataclasses (`config.load_flat`).

    Unknown keys and mistyped values are one sentence naming the file or the command line; `bf16: auto` (also the
    default when the key is absent) and `dtype: compute` are resolved for this machine (`precision.py`) and the
    choice is logged and kept on the parsed training arguments as `precision` (lineage.json records it); an absent
    `use_cpu` is true on a machine with no GPU, as in the shipped YAMLs.
    """
    from . import precision as precision_module
    from .config import flat_hints, load_flat

    chosen = {}

    def resolve(values: dict, where) -> dict:
        from . import validation

        validation.check_given(values, hints, where)  # ranges first: TRL's __post_init__ divides by some values
        if "bf16" not in hints:
            return values
        from .config import coerce

        use_cpu = coerce(bool, values.get("use_cpu", False), "use_cpu", where)
        try:
            chosen["precision"] = precision_module.resolve(values.get("bf16", precision_module.AUTO), use_cpu)
        except ValueError as error:
            raise UserError(f"key 'bf16' {where('bf16')}: {error}.") from None
        values = {**values, "bf16": chosen["precision"].bf16}
        if "use_cpu" not in values and "use_cpu" in hints and chosen["precision"].device == "cpu":
            values["use_cpu"] = True  # no GPU: as the shipped YAMLs say (TrainingArguments refuses bf16 otherwise)
        if values.get("dtype") == precision_module.COMPUTE_DTYPE:
            values["dtype"] = chosen["precision"].dtype
        return values

    dataclass_types = tuple(dataclass_types)
    hints = flat_hints(dataclass_types)
    parsed, where = load_flat(dataclass_types, args, resolve=resolve, stage=stage)
    if "precision" in chosen:
        if check_paths:  # a run, not a check of a config (the pipeline and the planner parse without running)
            precision_module.log_choice(chosen["precision"])
        for config in parsed:
            if hasattr(config, "bf16"):
                config.precision = chosen["precision"]
    if any(getattr(config, "hub_token", None) for config in parsed):
        # Trainer would pickle it into training_args.bin and every checkpoint; the environment keeps it out of files
        raise UserError("hub_token is refused in configs and flags; set HF_TOKEN or run `hf auth login` instead.")
    if any(getattr(config, "push_to_hub", False) for config in parsed):
        # Checked here, before hours of training: Trainer itself fails on a missing token with a traceback
        from huggingface_hub import constants, get_token

        if constants.HF_HUB_OFFLINE:
            raise UserError(
                "push_to_hub: true cannot push while HF_HUB_OFFLINE is set; unset it or set push_to_hub: false."
            )
        if not get_token():
            raise UserError("push_to_hub: true needs a Hub token; set HF_TOKEN or run `hf auth login` first.")
    for config in parsed:
        if getattr(config, "report_to", None):
            check_trackers(config.report_to, where)
    from . import validation

    validation.check_values(parsed, where)  # ranges: positive batch sizes, learning rate > 0, ...
    if stage is not None and check_paths:  # input models exist and are of the right kind; the output is writable
        validation.check_paths(stage, parsed, where)
    return parsed


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
