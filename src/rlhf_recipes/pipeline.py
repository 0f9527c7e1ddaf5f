"""The whole pipeline as one command: each stage is its own recipe run in a subprocess, exactly as a user would type it.

A manifest (`pipeline_manifest.json` in the output folder) records each stage's hash: its recipe, config file,
overrides, input files and the previous stage's hash. On a rerun a finished stage whose hash is unchanged is
skipped; a changed one reruns with every stage after it; a stage that was interrupted (even by SIGKILL) reruns and
its recipe resumes from the last checkpoint in its output folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from .cli import UserError, suggest

MANIFEST = "pipeline_manifest.json"


@dataclass
class Stage:
    name: str
    recipe: str
    config: str | None = None
    output: str | None = None  # the stage's output folder, passed as --<output_arg>
    output_arg: str = "output_dir"
    args: dict = field(default_factory=dict)  # command-line overrides of the stage's YAML
    inputs: list = field(default_factory=list)  # files or folders whose content changes the stage's hash


@dataclass
class PipelineConfig:
    output_dir: str
    stages: list[Stage]
    model: str = "embedded:SmolLM2-135M-Instruct"  # the base model: `{model}` in stage arguments


def _strict(cls, raw: dict, where: str):
    if not isinstance(raw, dict):
        raise UserError(f"{where} must be a mapping of keys to values.")
    known = [f.name for f in fields(cls)]
    for key in raw:
        if key not in known:
            raise UserError(f"unknown key '{key}' in {where}{suggest(key, known)}")
    return raw


def load_pipeline_config(path: str | Path, overrides: dict | None = None) -> PipelineConfig:
    """Read a pipeline YAML strictly: unknown keys fail, `{output_dir}` and `{model}` are filled in."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"pipeline config {path} does not exist.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise UserError(f"{path} is not valid YAML ({' '.join(str(error).split())}).") from None
    raw = {**_strict(PipelineConfig, raw, str(path)), **{k: v for k, v in (overrides or {}).items() if v is not None}}
    if "output_dir" not in raw or not raw.get("stages"):
        raise UserError(f"{path} needs `output_dir` and a non-empty `stages` list.")
    variables = {"output_dir": raw["output_dir"], "model": raw.get("model", PipelineConfig.model)}
    stages = []
    for index, item in enumerate(raw["stages"]):
        where = f"{path}, stage {index + 1}"
        stage = Stage(**_strict(Stage, item, where))
        if not Path(stage.recipe).is_file() or (stage.config and not Path(stage.config).is_file()):
            raise UserError(f"{where} names a recipe or config that does not exist ({stage.recipe}, {stage.config}).")
        stage.output = stage.output.format(**variables) if stage.output else None
        stage.args = {k: str(v).format(**variables) for k, v in stage.args.items()}
        stages.append(stage)
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise UserError(f"{path} has two stages with the same name; names must be unique: {names}.")
    return PipelineConfig(output_dir=raw["output_dir"], stages=stages, model=variables["model"])


def _hash_path(digest, path: Path) -> None:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file).encode())
        digest.update(file.read_bytes())


def stage_hash(stage: Stage, previous: str) -> str:
    digest = hashlib.sha256(previous.encode())
    digest.update(json.dumps([stage.recipe, stage.output, stage.args], sort_keys=True).encode())
    if stage.config:  # the parsed settings, so that editing a comment does not rerun a stage
        digest.update(json.dumps(yaml.safe_load(Path(stage.config).read_text()), sort_keys=True, default=str).encode())
    for item in stage.inputs:
        if Path(item).exists():
            _hash_path(digest, Path(item))
    return digest.hexdigest()[:16]


def command(stage: Stage) -> list[str]:
    argv = [sys.executable, stage.recipe] + (["--config", stage.config] if stage.config else [])
    if stage.output:
        argv += [f"--{stage.output_arg}", stage.output]
    for key, value in stage.args.items():
        argv += [f"--{key}", value]
    return argv


class Manifest:
    def __init__(self, output_dir: Path):
        self.path = output_dir / MANIFEST
        self.stages = json.loads(self.path.read_text())["stages"] if self.path.is_file() else {}

    def record(self, name: str, **entry) -> None:
        self.stages[name] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"stages": self.stages}, indent=2) + "\n")
        tmp.replace(self.path)


def _run_logged(argv: list[str], log_path: Path) -> int:
    """Run a stage with its output shown live (progress bars included) and kept in a log file."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with (
        open(log_path, "wb") as log,
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) as proc,
    ):
        for chunk in iter(lambda: proc.stdout.read1(4096), b""):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
            log.write(chunk)
        return proc.wait()


def _set_aside(output: Path) -> None:
    """Move a stale stage output (made by this pipeline with other settings) to `<name>.stale`, replacing an older one."""
    stale = output.with_name(output.name + ".stale")
    if stale.exists():
        shutil.rmtree(stale)
    output.rename(stale)
    print(f"   {output} was made with other settings: moved to {stale}")


def run_pipeline(config: PipelineConfig, only: list[str] | None = None, force: bool = False) -> list[dict]:
    """Run (or skip) every stage in order; return one summary row per stage."""
    output_dir = Path(config.output_dir)
    manifest = Manifest(output_dir)
    previous, rows, started = "", [], time.time()
    for number, stage in enumerate(config.stages, 1):
        digest = stage_hash(stage, previous)
        previous = digest
        entry = manifest.stages.get(stage.name, {})
        output = Path(stage.output) if stage.output else None
        banner = f"━━ [{number}/{len(config.stages)}] {stage.name} ━━ elapsed {time.time() - started:,.0f} s"
        done = entry.get("hash") == digest and entry.get("status") == "done" and (output is None or output.exists())
        if (done and not force) or (only and stage.name not in only):
            print(f"{banner} · skipped ({'unchanged' if done else 'not selected'})", flush=True)
            rows.append({"stage": stage.name, "status": "skipped", "seconds": entry.get("seconds")})
            continue
        print(f"{banner}\n   {' '.join(command(stage))}", flush=True)
        if output is not None and output.exists() and entry.get("hash") != digest:
            if not entry:
                raise UserError(
                    f"{output} exists but this pipeline did not make it; move it away or change output_dir."
                )
            _set_aside(output)
        manifest.record(stage.name, hash=digest, status="running")
        stage_started = time.time()
        code = _run_logged(command(stage), output_dir / "logs" / f"{stage.name}.log")
        seconds = round(time.time() - stage_started, 1)
        if code != 0:
            manifest.record(stage.name, hash=digest, status="failed", seconds=seconds)
            raise UserError(
                f"stage '{stage.name}' failed (exit code {code}); its log is {output_dir}/logs/{stage.name}.log."
            )
        manifest.record(stage.name, hash=digest, status="done", seconds=seconds)
        rows.append({"stage": stage.name, "status": "ran", "seconds": seconds})
    return rows


def stage_metrics(stage: Stage) -> str:
    """A few headline numbers of a finished stage, from its lineage.json or eval.json."""
    if not stage.output:
        return ""
    folder = Path(stage.output)
    lineage = folder / "lineage.json"
    keys = ("train_loss", "eval_loss", "eval_accuracy", "objective/scores", "objective/kl", "train_tokens_per_second")
    if lineage.is_file():
        metrics = json.loads(lineage.read_text()).get("metrics", {})
        return ", ".join(f"{k}={metrics[k]:.4g}" for k in keys if isinstance(metrics.get(k), int | float))
    report = folder / "report.json"
    if report.is_file():
        return "data report: " + str(report)
    if (folder / "eval.json").is_file():
        targets = json.loads((folder / "eval.json").read_text())["targets"]
        return f"targets met: {sum(t['met'] is True for t in targets)}/{len(targets)}"
    return ""


def summary(config: PipelineConfig, rows: list[dict]) -> str:
    by_name = {s.name: s for s in config.stages}
    lines = ["| stage | status | seconds | headline |", "|---|---|---|---|"]
    for row in rows:
        seconds = f"{row['seconds']:.0f}" if row.get("seconds") is not None else ""
        lines.append(f"| {row['stage']} | {row['status']} | {seconds} | {stage_metrics(by_name[row['stage']])} |")
    total = sum(r["seconds"] for r in rows if r["status"] == "ran" and r.get("seconds"))
    lines.append(f"\nWall time of the stages run now: {total:,.0f} s ({total / 60:.1f} min)")
    return "\n".join(lines)
