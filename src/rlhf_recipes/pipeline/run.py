"""Running a pipeline: every stage in order, each its own recipe in a fresh process (forked from the warm launcher
where it can be, `launcher.py`), its output shown live and kept in `<output_dir>/logs/<name>.log`, finished or
unchanged stages skipped (`manifest.py`), and a summary table at the end.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .. import fs
from ..errors import UserError
from .manifest import Manifest, adopt, set_aside, stage_hash
from .spec import PipelineConfig, StageRun, command


def run_pipeline(config: PipelineConfig, only: list[str] | None = None, force: bool = False) -> list[dict]:
    """Run (or skip) every stage in order; return one summary row per stage."""
    from ..progress import PipelineClock

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
        if entry:
            adopt(output, run.stage)  # this pipeline made it, perhaps before stages got its run id
        if output.exists() and entry.get("hash") != digest:
            if not entry:
                raise UserError(
                    f"{output} exists but this pipeline did not make it; move it away or change output_dir."
                )
            set_aside(output, run.stage)
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
