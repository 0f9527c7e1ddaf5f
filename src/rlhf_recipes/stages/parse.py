"""One parse of a stage's command line into its configs: `parse(stage, argv)`, what its recipe, the pipeline, the
planner and the bench all call (`stage.parse_args(argv)` is the same).

The YAML and the `--key VALUE` overrides are read by the one loader (`config.py`); `--help` prints the stage's help
(`usage.py`); then the stage's rules (`validation.py`) run, in this order: ranges of the given values (before the
dataclasses are built: TRL's `__post_init__` divides by some), `bf16: auto` resolved for this machine, secrets and
trackers, ranges of every parsed value, and, for a run (not a check), the input models and the output folder.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from .. import precision as precision_module
from .. import usage
from ..config import coerce, flat_hints, load_flat
from ..errors import UserError
from . import validation


def parse(stage, argv: list[str] | None = None, check_paths: bool = True) -> tuple:
    """The configs of `stage` from a command line (None: this process's); a stage with a parser of its own (nested
    configs: data preparation, the pipeline) uses it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if stage.parse is not None:
        return stage.parse(argv)
    return parse_config(stage.config_types(), argv, stage=stage, check_paths=check_paths)


def parse_config(
    dataclass_types: Iterable[type], argv: list[str] | None = None, stage=None, check_paths: bool = True
) -> tuple:
    """Parse `--config FILE.yaml` plus command-line overrides into TRL-style dataclasses (`config.load_flat`).

    Unknown keys and mistyped values are one sentence naming the file or the command line; `bf16: auto` (also the
    default when the key is absent) and `dtype: compute` are resolved for this machine (`precision.py`) and the
    choice is logged and kept on the parsed training arguments as `precision` (lineage.json records it); an absent
    `use_cpu` is true on a machine with no GPU, as in the shipped YAMLs.
    """
    dataclass_types = tuple(dataclass_types)
    argv = list(sys.argv[1:] if argv is None else argv)
    if usage.requested(argv):
        usage.print_and_exit(stage, dataclass_types, argv)
    hints = flat_hints(dataclass_types)
    chosen = {}

    def resolve(values: dict, where) -> dict:
        validation.check_given(values, hints, where)  # ranges first: TRL's __post_init__ divides by some values
        if "bf16" not in hints:
            return values
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

    parsed, where = load_flat(dataclass_types, argv, resolve=resolve)
    if "precision" in chosen:
        if check_paths:  # a run, not a check of a config (the pipeline and the planner parse without running)
            precision_module.log_choice(chosen["precision"])
        for config in parsed:
            if hasattr(config, "bf16"):
                config.precision = chosen["precision"]
    validation.check_secrets(parsed)  # hub_token refused; push_to_hub needs a token, before hours of training
    for config in parsed:
        if getattr(config, "report_to", None):
            validation.check_trackers(config.report_to, where)
    validation.check_values(parsed, where)  # ranges: positive batch sizes, learning rate > 0, ...
    if stage is not None and check_paths:  # input models exist and are of the right kind; the output is writable
        validation.check_paths(stage, parsed, where)
    return parsed
