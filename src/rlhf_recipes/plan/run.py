"""Plan YAML files: the stage a file configures (`stages.for_config`), parsed as its recipe parses it
(`stage.parse_args(argv, check_paths=False)`: the same keys, types, ranges and resolved precision), estimated by the
hook the registry names for it (`stage.hook("plan")`). A pipeline YAML is planned stage by stage, each with the exact
command line the pipeline gives it (parsed once by the pipeline, `StageRun.configs`), following each output into the
next stage's input.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from .. import stages
from ..config import read_yaml, split_argv
from ..errors import UserError, suggest
from .device import Device
from .estimate import split_configs
from .shapes import quiet
from .table import StagePlan


def _stage(path, name: str | None) -> stages.Stage:
    return stages.get(name) if name else stages.for_config(path)


def plannable() -> list[str]:
    """The registered stages that have a planner hook."""
    return [stage.name for stage in stages.all_stages() if stage.plan]


def _check_plannable(spec: stages.Stage, path) -> None:
    if not spec.plan:
        raise UserError(
            f"{path} configures the {spec.name} stage, which trains nothing to plan; plan a YAML of "
            f"{', '.join(plannable())} or a pipeline YAML."
        )


def _check_lengths(sequence_length: int | None, prompt_tokens: int | None) -> None:
    for flag, value in (("--sequence_length", sequence_length), ("--prompt_length", prompt_tokens)):
        if value is not None and value < 1:
            raise UserError(f"{flag} is {value}, but it must be a positive whole number of tokens; fix it.")


def parse(spec: stages.Stage, argv: list[str]) -> tuple:
    """A stage's configs exactly as its recipe parses them, without requiring its input models to exist yet."""
    with quiet():
        try:
            return spec.parse_args(argv, check_paths=False)
        except UserError as error:
            if "support bf16/gpu" not in str(error):
                raise
        # TrainingArguments refuses `bf16: true` for a GPU run on a machine without a bf16 GPU; planning such a config
        # elsewhere is the point, so parse it as a CPU run and put `use_cpu` back.
        configs = spec.parse_args([*argv, "--use_cpu", "true"], check_paths=False)
    split_configs(configs)[1].use_cpu = False
    return configs


def _input_model(spec: stages.Stage, values) -> str | None:
    """The model a stage starts from (its first model key), from parsed configs or a raw YAML mapping."""
    key = next(iter(spec.model_keys), "model_name_or_path")
    if isinstance(values, dict):
        return values.get(key)
    return next((getattr(c, key) for c in values if hasattr(c, key)), None)


def sibling_outputs(config_path: str | Path) -> dict[str, str]:
    """Output folder -> starting model of the plannable stage YAMLs next to a config, so that a stage whose input is
    an earlier stage's output folder (not written yet) is planned with the model that stage starts from."""
    outputs = {}
    for path in sorted(Path(config_path).parent.glob("*.yaml")):
        try:
            spec = stages.for_config(path)
            values = read_yaml(path) if spec.plan else {}
        except UserError:  # a sibling that is no stage's YAML, or broken: not this plan's business
            continue
        output, model = values.get(spec.output_key), _input_model(spec, values)
        if output and model:
            outputs[os.path.normpath(str(output))] = str(model)
    return outputs


def _precision(training_args, model_args, device: Device) -> tuple[str, list[str]]:
    """The table's precision line (the compute precision the loader resolved, and why) and its notes."""
    compute = "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "float32"
    chosen = getattr(training_args, "precision", None)
    elsewhere = chosen is not None and chosen.device != device.kind  # resolved for this machine, planned for another
    if chosen is None or (elsewhere and chosen.requested != "auto"):
        reason = f"bf16: {str(training_args.bf16).lower()} as configured"
    else:
        reason = chosen.reason
    line = f"{compute} compute, dtype {model_args.dtype or 'auto'}: {reason}"
    notes = []
    if elsewhere and chosen.requested == "auto":
        notes.append(
            f"the precision was resolved for this machine's {chosen.device} ({chosen.capability}), not the planned "
            f"{device.kind}; `bf16: auto` may resolve differently there: plan on that machine or set bf16 explicitly"
        )
    elif chosen is not None and chosen.bf16 and device.kind == "cpu" and not chosen.native_bf16:
        notes.append("bf16 on a CPU without native bf16 runs many times slower than float32; set bf16: auto")
    return line, notes


def plan_parsed(
    spec: stages.Stage,
    configs: tuple,
    device: Device | str | None = None,
    *,
    config_path: str | None = None,
    outputs: dict[str, str] | None = None,
    sequence_length: int | None = None,
    prompt_tokens: int | None = None,
) -> StagePlan:
    """Plan one stage from its parsed configs with the hook its registry entry names."""
    _check_plannable(spec, config_path or spec.name)
    _, training_args, model_args = split_configs(configs)
    if not isinstance(device, Device):
        device = Device.parse(device, use_cpu=bool(training_args.use_cpu))
    hook = spec.hook("plan")
    with quiet():
        plan = hook(
            spec, configs, device, outputs=outputs, sequence_length=sequence_length, prompt_tokens=prompt_tokens
        )
    plan.config_path = config_path
    plan.precision, notes = _precision(training_args, model_args, device)
    plan.notes += notes
    if device.kind == "cpu" and not training_args.use_cpu:
        plan.notes.append("planned for CPU, but the config does not set use_cpu: true; a GPU would be used if present")
    return plan


def plan_config(
    config_path: str | Path, overrides=(), device: Device | str | None = None, stage: str | None = None, **kwargs
) -> StagePlan:
    """Plan one stage YAML, with recipe-style `--key value` overrides; `stage` when its file name does not say;
    `kwargs`: `plan_parsed`'s (outputs, sequence_length, prompt_tokens)."""
    _check_lengths(kwargs.get("sequence_length"), kwargs.get("prompt_tokens"))
    spec = _stage(config_path, stage)
    if spec.role == "pipeline":
        raise UserError(f"{config_path} is a pipeline config; plan it with plan_file or recipes/plan.py.")
    _check_plannable(spec, config_path)
    configs = parse(spec, ["--config", str(config_path), *overrides])
    outputs = {**sibling_outputs(config_path), **(kwargs.pop("outputs", None) or {})}
    return plan_parsed(spec, configs, device, config_path=str(config_path), outputs=outputs, **kwargs)


def _groups(overrides) -> list[tuple[str, list[str]]]:
    """`--key value...` overrides as (key, its tokens), in order; a stray word is one sentence (`split_argv`)."""
    overrides = list(overrides)
    split_argv(overrides)
    groups = []
    for token in overrides:
        if token.startswith("--"):
            groups.append((token[2:].split("=", 1)[0].replace("-", "_"), [token]))
        else:
            groups[-1][1].append(token)
    return groups


def plan_pipeline(pipeline_path: str | Path, overrides=(), device: Device | str | None = None, **kwargs):
    """Plan every plannable stage of a pipeline YAML, each with the command line the pipeline gives it.

    Overrides the pipeline itself takes (`--output_dir`, `--model`, `--precision`, `--STAGE.KEY VALUE`, `--set`,
    `--stages`) mean what they mean to the pipeline; any other `--key value` goes to every planned stage that has
    that key (`max_length` is no PPO key, for example), and a key no planned stage has is one sentence."""
    from .. import pipeline
    from ..config import flat_hints

    _check_lengths(kwargs.get("sequence_length"), kwargs.get("prompt_tokens"))
    own = {f.name for f in dataclasses.fields(pipeline.PipelineConfig)} | {"set", *pipeline.RUN_OPTIONS}
    groups = _groups(overrides)
    theirs = [token for key, tokens in groups if key in own or "." in key for token in tokens]
    flat = [(key, tokens) for key, tokens in groups if key not in own and "." not in key]
    with quiet():
        config, options = pipeline.parse_argv(["--config", str(pipeline_path), *theirs])
    outputs: dict[str, str] = {}
    plans, used, known = [], set(), set()
    for run in config.stages:
        spec = run.spec
        if not spec.plan:
            continue
        keys = set(flat_hints(spec.config_types()))
        known |= keys
        mine = [token for key, tokens in flat if key in keys for token in tokens]
        used |= {key for key, _ in flat if key in keys}
        try:  # the pipeline parsed this stage's command once (StageRun.configs); flags of the planner's own: again
            configs = parse(spec, [*pipeline.stage_args(config, run), *mine]) if mine else run.configs
        except UserError as error:
            raise UserError(f"stage '{run.name}' of {pipeline_path}: {error}") from None
        if not options["only"] or run.name in options["only"]:
            plan = plan_parsed(spec, configs, device, config_path=run.config, outputs=dict(outputs), **kwargs)
            plan.stage = run.name
            plans.append(plan)
        model = _input_model(spec, configs)
        if model:
            outputs[os.path.normpath(run.output)] = model
    unused = [key for key, _ in flat if key not in used]
    if unused:
        raise UserError(
            f"no stage of {pipeline_path} that the planner plans has the key '{unused[0]}'{suggest(unused[0], sorted(known))}"
        )
    return plans


def plan_file(path: str | Path, overrides=(), device: Device | str | None = None, stage: str | None = None, **kwargs):
    """A list of plans for a stage YAML (one) or a pipeline YAML (one per plannable stage)."""
    spec = _stage(path, stage)
    if spec.role == "pipeline":
        return plan_pipeline(path, overrides, device, **kwargs)
    return [plan_config(path, overrides, device, stage=spec.name, **kwargs)]
