"""Change detection: a manifest (`pipeline_manifest.json` in the pipeline's output folder) records each stage's hash
(its recipe, output, command line, parsed YAML, input files and the previous stage's hash) and status. On a rerun a
finished stage whose hash is unchanged is skipped; a changed one reruns with every stage after it, its old output set
aside first; a stage that was interrupted (even by SIGKILL) reruns and its recipe resumes from its last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from .. import fs
from ..config import read_yaml
from .spec import PipelineConfig, StageRun, stage_args

MANIFEST = "pipeline_manifest.json"


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


def adopt(output: Path, stage: str) -> None:
    """Give this run's id to the output of a stage the manifest lists (and its `.stale` copy) when its marker names
    no run: before the warm launcher passed the environment on, every stage it forked wrote `run: null`, and the next
    run of the same pipeline refused its own folders (to set aside, or to resume an interrupted stage in)."""
    for folder in (output, output.with_name(output.name + ".stale")):
        found = fs.owner(folder) if folder.is_dir() else None
        if found is not None and not found.legacy and found.run is None and found.stage == fs.stage_name(stage):
            fs.mark(folder, stage, os.environ[fs.RUN_ENV])


def set_aside(output: Path, stage: str) -> None:
    """Move a stale stage output (made by this pipeline with other settings) to `<name>.stale`, replacing an older one.

    Both are checked as every folder a stage replaces is (`fs.check_output_folder`): the `stage` stage's own, made in
    this pipeline run, holding no store and no other stage's output; anything else is refused in one sentence."""
    run = os.environ[fs.RUN_ENV]
    fs.check_output_folder(output, "output", f"of stage '{stage}'", what=stage, replace=True, run=run)
    stale = output.with_name(output.name + ".stale")
    if stale.exists():
        fs.check_output_folder(
            stale, "output", f"(the earlier copy of stage '{stage}')", what=stage, replace=True, run=run
        )
        shutil.rmtree(stale)
    output.rename(stale)
    print(f"   {output} was made with other settings: moved to {stale}")
