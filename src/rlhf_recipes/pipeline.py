"""The whole pipeline as one command: each stage is its own recipe run in a subprocess, exactly as a user would type it.

A pipeline YAML lists stages by their registry name (`stage: sft`, see stages.py), each with its YAML and the
overrides (`args`) that chain it to the stage before. Before anything runs, every stage's full command line is
parsed the way its recipe will parse it: an unknown stage, key or placeholder is one sentence, not an hour later.

A manifest (`pipeline_manifest.json` in the output folder) records each stage's hash: its recipe, parsed config,
overrides, input files and the previous stage's hash. On a rerun a finished stage whose hash is unchanged is
skipped; a changed one reruns with every stage after it; a stage that was interrupted (even by SIGKILL) reruns and
its recipe resumes from the last checkpoint in its output folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import fs, stages
from .config import Origin, Text, build, read_yaml, split_argv
from .errors import UserError, suggest
from .models import DEFAULT_MODEL

MANIFEST = "pipeline_manifest.json"
OPTIONS = """\
options of a run (beside the keys below):
  --STAGE.KEY VALUE      one key of one stage's YAML, by its name (--sft.learning_rate 1e-4); or --set STAGE.KEY=VALUE
  --stages a,b           run only these stages; --force reruns them even when unchanged
  --rl ALGO[,ALGO]       the RL algorithm(s) a `stage: rl` entry runs (ppo, grpo, rloo, online_dpo, dpo)
  --continue true        go on with the rankings saved so far (feedback rounds)
A stage's `config:` is relative to the pipeline YAML's own folder."""
PLACEHOLDERS = ("output_dir", "model")
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
            "help": "the RL algorithms a `stage: rl` entry runs, one stage each, in order (any of "
            + "ppo, grpo, rloo, online_dpo, dpo); `--rl grpo,dpo` on the command line"
        },
    )
    rounds: int = field(
        default=0,
        metadata={
            "help": "feedback rounds run where a `stage: rounds` entry stands (feedback/rounds.py); `--rounds 3`"
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


def _fill(text, variables: dict, where: str):
    """`{output_dir}`, `{model}` and `{rl}` filled in (inside lists and mappings too); a mapping key with `{rl}` (outside
    an rl entry) becomes one key per algorithm of `rl:`; any other placeholder is one sentence."""
    if isinstance(text, dict):
        out = {}
        for key, value in text.items():
            names = variables["_rl_all"] if "{rl}" in str(key) and "_rl_all" in variables else [None]
            numbers = range(1, variables.get("_rounds", 0) + 1) if "{round}" in str(key) else [None]
            for name in names:
                for number in numbers:
                    scoped = {**variables, "rl": name} if name else dict(variables)
                    if number is not None:
                        scoped.update(round=str(number), prev_round=str(number - 1))
                    out[_fill(key, scoped, where)] = _fill(value, scoped, f"{where}.{key}")
        return out
    if isinstance(text, list):
        return [_fill(v, variables, where) for v in text]
    if not isinstance(text, str):
        return text
    for _, name, _, _ in string.Formatter().parse(text):
        if name is not None and name not in variables:
            raise UserError(
                f"{where} uses the placeholder {{{name}}}; the known ones are {{output_dir}}, {{model}}, {{rl}} "
                "(an RL algorithm of `rl:`), in a `stage: rl` entry {rl_data} (the data folder it trains on), and in "
                "`each_round:` {round}, {prev_round}, {round_dir}, {prev_policy}, {prev_reward}."
            )
    return text.format(**{k: v for k, v in variables.items() if not k.startswith("_")})


def expand_rl(config: PipelineConfig, path: str) -> None:
    """Each `stage: rl` entry becomes one stage per algorithm of `rl:`, `{rl}` and `{rl_data}` filled in; an argument
    naming a model an algorithm does not read (DPO has no reward model) is left out of that algorithm's command."""
    for name in config.rl:
        if name not in stages.names("rl"):
            raise UserError(f"{path}: rl names '{name}'; the RL algorithms are {', '.join(stages.names('rl'))}.")
    model_keys = {key for name in stages.names("rl") for key in stages.get(name).model_keys}
    expanded = []
    for run in config.stages:
        if run.stage != "rl":
            expanded.append(run)
            continue
        for name in config.rl:
            spec = stages.get(name)
            # {output_dir} and {model} stay placeholders here: parse_argv fills them in with every other stage's
            variables = {
                "rl": name,
                "rl_data": stages.data_folder(spec),
                "output_dir": "{output_dir}",
                "model": "{model}",
            }
            args = {k: v for k, v in run.args.items() if k not in model_keys or k in spec.model_keys}
            expanded.append(
                StageRun(
                    stage=name,
                    config=_fill(run.config, variables, path),
                    name=_fill(run.name or "{rl}", variables, path),
                    output=_fill(run.output, variables, path),
                    args=_fill(args, variables, path),
                    inputs=list(run.inputs),
                    expected_seconds=run.expected_seconds,
                )
            )
    config.stages = expanded


def parse_argv(argv: list[str] | None = None) -> tuple[PipelineConfig, dict]:
    """The pipeline config from `--config FILE` and overrides: `--output_dir`, `--model`, `--precision` for the
    pipeline, `--STAGE.KEY VALUE` (or `--set STAGE.KEY=VALUE`) for one key of one stage, plus the run options
    `--stages a,b` and `--force`. Every stage's command is then parsed as its recipe will parse it."""
    from . import usage

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
    from .feedback.rounds import expand_rounds

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
        run.config = _stage_config(_fill(run.config, variables, label), path, label)
        run.output = _fill(run.output or "{output_dir}/" + run.name, variables, label)
        run.args = {k: _fill(v, variables, f"{label}, args.{k}") for k, v in run.args.items()}
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
        check_command(config, run)
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
    from .config import flat_hints

    return set(flat_hints(spec.config_types()))


def _yaml_value(run: StageRun, key: str):
    return read_yaml(run.config).get(key) if run.config else None


def command(config: PipelineConfig, run: StageRun) -> list[str]:
    return [sys.executable, str(run.spec.recipe_path), *stage_args(config, run)]


def check_command(config: PipelineConfig, run: StageRun) -> None:
    """Parse a stage's command as its recipe will (keys, types, ranges), without requiring earlier outputs."""
    spec = run.spec
    try:
        spec.parse_args(stage_args(config, run), check_paths=False)
    except UserError as error:
        raise UserError(f"stage '{run.name}' of the pipeline: {error}") from None


def _hash_path(digest, path: Path) -> None:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file).encode())
        digest.update(file.read_bytes())


def stage_hash(config: PipelineConfig, run: StageRun, previous: str) -> str:
    digest = hashlib.sha256(previous.encode())
    argv = stage_args(config, run)
    if "--wait" in argv:  # `--continue` (stop waiting for people) changes how a label stage runs, not what it makes
        at = argv.index("--wait")
        argv = argv[:at] + argv[at + 2 :]
    digest.update(json.dumps([str(run.spec.recipe_path), run.output, argv], default=str).encode())
    if run.config:  # the parsed settings, so that editing a comment does not rerun a stage
        digest.update(json.dumps(read_yaml(run.config), sort_keys=True, default=str).encode())
    for item in run.inputs:
        if Path(item).exists():
            _hash_path(digest, Path(item))
    return digest.hexdigest()[:16]


class Manifest:
    def __init__(self, output_dir: Path):
        self.path = output_dir / MANIFEST
        self.stages = json.loads(self.path.read_text())["stages"] if self.path.is_file() else {}

    def record(self, name: str, **entry) -> None:
        self.stages[name] = entry
        fs.atomic_write_json(self.path, {"stages": self.stages})


def set_aside(output: Path) -> None:
    """Move a stale stage output (made by this pipeline with other settings) to `<name>.stale`, replacing an older one."""
    stale = output.with_name(output.name + ".stale")
    if stale.exists():
        shutil.rmtree(stale)
    output.rename(stale)
    print(f"   {output} was made with other settings: moved to {stale}")


def run_pipeline(config: PipelineConfig, only: list[str] | None = None, force: bool = False) -> list[dict]:
    """Run (or skip) every stage in order; return one summary row per stage."""
    from .progress import PipelineClock

    output_dir = Path(config.output_dir)
    if output_dir.exists():
        fs.check_output_folder(output_dir, "output_dir", "of the pipeline", what="pipeline")
    run_id = os.environ[fs.RUN_ENV] = fs.pipeline_run(output_dir)  # every stage's marker names this run (fs.py)
    fs.claim(output_dir, "pipeline", run_id)
    manifest = Manifest(output_dir)
    clock = PipelineClock(config, only, manifest)
    from .launcher import StageProcesses, warm_launcher_usable

    processes = StageProcesses(warm_launcher_usable())
    try:
        return _run_stages(config, only, force, manifest, clock, processes)
    finally:
        processes.close()
        os.environ.pop(fs.RUN_ENV, None)


def _run_stages(config, only, force, manifest, clock, processes) -> list[dict]:
    output_dir = Path(config.output_dir)
    previous, rows = "", []
    for number, run in enumerate(config.stages, 1):
        digest = stage_hash(config, run, previous)
        previous = digest
        entry = manifest.stages.get(run.name, {})
        output = Path(run.output)
        banner = f"━━ [{number}/{len(config.stages)}] {run.name} ━━ elapsed {clock.elapsed():,.0f} s"
        done = entry.get("hash") == digest and entry.get("status") == "done" and output.exists()
        if (done and not force) or (only and run.name not in only):
            print(f"{banner} · skipped ({'unchanged' if done else 'not selected'})", flush=True)
            rows.append({"stage": run.name, "status": "skipped", "seconds": entry.get("seconds")})
            clock.skipped(run)
            continue
        print(f"{banner} · {clock.forecast(run)}\n   {' '.join(command(config, run))}", flush=True)
        if output.exists() and entry.get("hash") != digest:
            if not entry:
                raise UserError(
                    f"{output} exists but this pipeline did not make it; move it away or change output_dir."
                )
            set_aside(output)
        manifest.record(run.name, hash=digest, status="running")
        clock.start(run)
        try:
            code = processes.run(command(config, run), output_dir / "logs" / f"{run.name}.log", clock.progress)
        except KeyboardInterrupt:
            manifest.record(run.name, hash=digest, status="interrupted")
            raise UserError(
                f"interrupted during stage '{run.name}'; rerun the same command to resume it from its last "
                "checkpoint (finished stages are skipped)."
            ) from None
        seconds = clock.stop(run)
        if code != 0:
            manifest.record(run.name, hash=digest, status="failed", seconds=seconds)
            raise UserError(
                f"stage '{run.name}' failed (exit code {code}); its log is {output_dir}/logs/{run.name}.log."
            )
        manifest.record(run.name, hash=digest, status="done", seconds=seconds)
        rows.append({"stage": run.name, "status": "ran", "seconds": seconds})
    return rows


def stage_metrics(run: StageRun) -> str:
    """A few headline numbers of a finished stage, from its lineage.json or eval.json."""
    folder = Path(run.output)
    lineage = folder / "lineage.json"
    keys = ("train_loss", "eval_loss", "eval_accuracy", "objective/scores", "objective/kl", "train_tokens_per_second")
    if lineage.is_file():
        metrics = json.loads(lineage.read_text()).get("metrics", {})
        return ", ".join(f"{k}={metrics[k]:.4g}" for k in keys if isinstance(metrics.get(k), int | float))
    if (folder / "report.json").is_file():
        return "data report: " + str(folder / "report.json")
    if (folder / "eval.json").is_file():
        targets = json.loads((folder / "eval.json").read_text())["targets"]
        return f"targets met: {sum(t['met'] is True for t in targets)}/{len(targets)}"
    return ""


def summary(config: PipelineConfig, rows: list[dict]) -> str:
    by_name = {run.name: run for run in config.stages}
    lines = ["| stage | status | seconds | headline |", "|---|---|---|---|"]
    for row in rows:
        seconds = f"{row['seconds']:.0f}" if row.get("seconds") is not None else ""
        lines.append(f"| {row['stage']} | {row['status']} | {seconds} | {stage_metrics(by_name[row['stage']])} |")
    total = sum(r["seconds"] for r in rows if r["status"] == "ran" and r.get("seconds"))
    lines.append(f"\nWall time of the stages run now: {total:,.0f} s ({total / 60:.1f} min)")
    return "\n".join(lines)
