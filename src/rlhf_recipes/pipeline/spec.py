"""What a pipeline is: a YAML that lists stages by their registry name (`stage: sft`), each with its YAML and the
overrides (`args`) that chain it to the stage before, read into a `PipelineConfig` of `StageRun`s.

`parse_argv` reads it, expands `rl:` and `rounds:` (`expand.py`), fills in the placeholders, and parses every stage's
full command line once, the way its recipe will parse it (`StageRun.configs`): an unknown stage, key or placeholder
is one sentence before the first stage starts, not an hour later. The runner (`run.py`) gives each stage that command
(`command`); the planner estimates from the parsed configs. The pipeline knows stages, not trainers.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .. import stages, usage
from ..config import Origin, Text, build, flat_hints, read_yaml, split_argv
from ..errors import UserError, suggest
from ..models import DEFAULT_MODEL
from .expand import expand_rl, expand_rounds, fill

RL_ALGORITHMS = ", ".join(stages.names("rl"))  # the registry's, for --help (plugins loaded)
OPTIONS = f"""\
options of a run (beside the keys below):
  --STAGE.KEY VALUE      one key of one stage's YAML, by its name (--sft.learning_rate 1e-4); or --set STAGE.KEY=VALUE
  --stages a,b           run only these stages; --force reruns them even when unchanged
  --rl ALGO[,ALGO]       the RL algorithm(s) a `stage: rl` entry runs ({RL_ALGORITHMS})
  --continue true        go on with the rankings saved so far (feedback rounds)
A stage's `config:` is relative to the pipeline YAML's own folder."""

RUN_OPTIONS = ("stages", "force", "continue")  # command-line options of a run, not config keys


@dataclass
class StageRun:
    """One stage of a pipeline: which registered stage, with which YAML and overrides."""

    stage: str = field(metadata={"help": "the registry name of the stage (sft, reward, ppo, ...)"})
    config: str | None = field(default=None, metadata={"help": "the stage's YAML"})
    name: str | None = field(default=None, metadata={"help": "this run's name (default: the stage's)"})
    output: str | None = field(default=None, metadata={"help": "its output folder (default: {output_dir}/<name>)"})
    args: dict[str, Any] = field(default_factory=dict, metadata={"help": "overrides of single keys of its YAML"})
    inputs: list[str] = field(default_factory=list, metadata={"help": "files whose content changes its hash"})
    expected_seconds: float | None = field(default=None, metadata={"help": "its wall time where it was measured"})
    # its command parsed as its recipe parses it (`parse_argv`, once): what the planner estimates from
    configs: tuple | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def spec(self) -> stages.Stage:
        return stages.get(self.stage)


@dataclass
class PipelineConfig:
    output_dir: str = field(metadata={"help": "every stage writes below it"})
    stages: list[StageRun] = field(metadata={"help": "the stages, in order"})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "the base model: {model} in stage arguments"})
    precision: Literal["auto", "bf16", "float32"] = field(
        default="auto", metadata={"help": "auto: each stage's own bf16 setting; bf16 / float32: forced on every stage"}
    )
    expected_at_gflops: float | None = field(
        default=None, metadata={"help": "float32 matmul GFLOP/s of the machine where expected_seconds were measured"}
    )
    rl: list[str] = field(
        default_factory=lambda: ["ppo"],
        metadata={
            "help": f"the RL algorithms a `stage: rl` entry runs, one stage each, in order (any of {RL_ALGORITHMS}); "
            "`--rl grpo,dpo` on the command line"
        },
    )
    rounds: int = field(
        default=0,
        metadata={
            "help": "feedback rounds run where a `stage: rounds` entry stands (pipeline/expand.py); `--rounds 3`"
        },
    )
    each_round: list[StageRun] = field(
        default_factory=list,
        metadata={
            "help": "the stages of one round: collect, label, reward, RL; {round}, {prev_policy}, ... filled in"
        },
    )
    first_policy: str = field(
        default="{output_dir}/{rl}", metadata={"help": "the policy round 1 samples from and starts its RL stage from"}
    )
    first_reward: str = field(default="{output_dir}/reward", metadata={"help": "the reward model round 1 retrains"})


def parse_argv(argv: list[str] | None = None) -> tuple[PipelineConfig, dict]:
    """The pipeline config from `--config FILE` and overrides: `--output_dir`, `--model`, `--precision` for the
    pipeline, `--STAGE.KEY VALUE` (or `--set STAGE.KEY=VALUE`) for one key of one stage, plus the run options
    `--stages a,b` and `--force`. Every stage's command is then parsed as its recipe will parse it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if usage.requested(argv):
        usage.print_and_exit(stages.get("pipeline"), (PipelineConfig,), argv, OPTIONS)
    path, overrides = split_argv(argv)
    if path is None:
        raise UserError(
            "--config is required: pass a pipeline YAML, e.g. --config configs/smollm2-135m/pipeline.yaml."
        )
    raw = read_yaml(path)
    options, stage_overrides, top = {"stages": None, "force": False, "continue": False}, [], {}
    for key, value in overrides:
        if key == "set":
            for item in value if isinstance(value, list) else [value]:
                dotted, equals, text = str(item).partition("=")
                if not equals or "." not in dotted:
                    raise UserError(f"--set {item} must look like STAGE.KEY=VALUE.")
                stage_overrides.append((dotted, Text(text)))
        elif key in RUN_OPTIONS:
            options[key] = value
        elif "." in key:
            stage_overrides.append((key, value))
        else:
            top[key] = value
    where = Origin(path, set(top))
    if isinstance(top.get("rl"), str):
        top["rl"] = [name.strip() for name in top["rl"].split(",") if name.strip()]
    config = build(PipelineConfig, {**raw, **top}, "", where)
    has_rl = any(run.stage == "rl" for run in config.stages + config.each_round)
    if ("rl" in raw or "rl" in top) and not has_rl:
        raise UserError(f"{path} sets rl: but has no `stage: rl` entry to run it; add one (see pipeline.yaml).")
    if has_rl and not config.rl:  # `--rl ,` or `rl: []`: the `stage: rl` entry would run nothing, silently
        raise UserError(
            f"rl {where('rl')} names no RL algorithm; name one or more of {', '.join(stages.names('rl'))}."
        )
    expand_rounds(config, path)
    expand_rl(config, path)
    variables = {"output_dir": config.output_dir, "model": config.model, "rl": config.rl[0] if config.rl else None,
                 "_rl_all": config.rl, "_rounds": config.rounds, "rounds": str(config.rounds)}  # fmt: skip
    by_name = {}
    for index, run in enumerate(config.stages):
        label = f"{path}, stage {index + 1} ({run.stage})"
        stages.get(run.stage)  # an unknown stage name: one sentence with the valid ones
        run.name = run.name or run.stage
        if run.name in by_name:
            raise UserError(f"{path} has two stages named '{run.name}'; give one a `name:`.")
        by_name[run.name] = run
        run.config = _stage_config(fill(run.config, variables, label), path, label)
        run.output = fill(run.output or "{output_dir}/" + run.name, variables, label)
        run.args = {k: fill(v, variables, f"{label}, args.{k}") for k, v in run.args.items()}
    for dotted, value in stage_overrides:
        name, _, key = dotted.partition(".")
        if name not in by_name:
            raise UserError(f"--{dotted}: there is no stage '{name}' in {path}{suggest(name, list(by_name))}")
        by_name[name].args[key] = value
    only = options["stages"]
    only = [s.strip() for s in (only if isinstance(only, list) else str(only).split(",")) if s.strip()] if only else []
    for name in only:
        if name not in by_name:
            raise UserError(f"--stages names '{name}', which is not a stage of {path}{suggest(name, list(by_name))}")
    if _true(options["continue"]):  # people are not done ranking: go on with the rankings saved so far
        for run in config.stages:
            if run.stage == "label":
                run.args["wait"] = "false"
    for run in config.stages:
        run.configs = parse_command(config, run)
    return config, {"only": only or None, "force": _true(options["force"])}


def _stage_config(config: str | None, pipeline_path: str, label: str) -> str | None:
    """A stage's YAML as the pipeline names it, relative to the pipeline YAML's own folder (so a copied folder of
    configs runs from anywhere); an absolute path as it is."""
    if config is None:
        return None
    resolved = Path(pipeline_path).parent / Path(config).expanduser()
    if not resolved.is_file():
        hint = ""
        if Path(config).is_file():  # relative to the current folder: the old way, said rather than guessed
            hint = f"; stage configs are relative to the pipeline YAML's folder, so write {Path(config).name}"
        raise UserError(f"{label} names config {config}, which does not exist in {resolved.parent}{hint}.")
    return str(resolved)


def _true(value) -> bool:
    return value is True or str(value) == "true"


def _value_text(value) -> list[str]:
    if isinstance(value, dict):
        return [json.dumps(value)]
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, bool):
        return ["true" if value else "false"]
    return [str(value)]


def stage_args(config: PipelineConfig, run: StageRun) -> list[str]:
    """The command-line arguments of one stage: its YAML, its output folder, its overrides, the forced precision."""
    argv = ["--config", run.config] if run.config else []
    spec = run.spec
    argv += [f"--{spec.output_key}", run.output]
    args = dict(run.args)
    if config.precision != "auto" and spec.parse is None and "bf16" in _keys(spec) and "bf16" not in args:
        args["bf16"] = config.precision == "bf16"
        if "dtype" in _keys(spec) and "dtype" not in args and _yaml_value(run, "dtype") == "compute":
            args["dtype"] = "bfloat16" if config.precision == "bf16" else "float32"
    for key, value in args.items():
        argv += [f"--{key}", *_value_text(value)]
    return argv


def _keys(spec) -> set[str]:
    return set(flat_hints(spec.config_types()))


def _yaml_value(run: StageRun, key: str):
    return read_yaml(run.config).get(key) if run.config else None


def command(config: PipelineConfig, run: StageRun) -> list[str]:
    return [sys.executable, str(run.spec.recipe_path), *stage_args(config, run)]


def parse_command(config: PipelineConfig, run: StageRun) -> tuple:
    """A stage's command parsed as its recipe will parse it (keys, types, ranges); earlier outputs need not exist."""
    spec = run.spec
    try:
        return spec.parse_args(stage_args(config, run), check_paths=False)
    except UserError as error:
        raise UserError(f"stage '{run.name}' of the pipeline: {error}") from None
