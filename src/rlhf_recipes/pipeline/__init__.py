"""The pipeline layer: every stage in order as one command (`recipes/pipeline.py`), each its own recipe in a fresh
process, exactly as a user would type it. It knows stages (the registry), not trainers.

    spec.py      PipelineConfig and StageRun: the YAML, its command-line overrides, every stage's command parsed once
    expand.py    `rl:` (one stage per RL algorithm) and `rounds:` (the feedback rounds), placeholders
    manifest.py  change detection: which stages are finished and unchanged, stale outputs set aside
    run.py       running the stages in order, their logs, the summary
    launcher.py  the warm process the stages fork from on a CPU machine (imports torch, transformers, TRL once)
"""

from .manifest import MANIFEST, Manifest, set_aside, stage_hash
from .run import run_pipeline, stage_metrics, summary
from .spec import OPTIONS, RUN_OPTIONS, PipelineConfig, StageRun, command, parse_argv, parse_command, stage_args

__all__ = [
    "MANIFEST", "OPTIONS", "RUN_OPTIONS", "Manifest", "PipelineConfig", "StageRun", "command", "parse_argv",
    "parse_command", "run_pipeline", "set_aside", "stage_args", "stage_hash", "stage_metrics", "summary",
]  # fmt: skip
