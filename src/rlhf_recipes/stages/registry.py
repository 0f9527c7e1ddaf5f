"""The table of stages by name: `register`, `get`, `names`. Nothing else in the project keeps a list of stage names.

The entries themselves are in `catalog.py` (one `register(Stage(...))` each, `stage.py` says what a Stage holds);
plugins outside the package add theirs through $RLHF_RECIPES_STAGES (`load_plugins`).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from ..config import read_yaml
from ..errors import UserError, suggest

_REGISTRY: dict = {}  # name -> Stage, in the order registered (the pipeline's, --help's, the docs')


def register(stage):
    if stage.name in _REGISTRY:
        raise ValueError(f"stage '{stage.name}' is registered twice")
    _REGISTRY[stage.name] = stage
    return stage


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def get(name: str):
    """The Stage called `name`; an unknown name is one sentence with the valid ones."""
    if name not in _REGISTRY:
        raise UserError(
            f"unknown stage '{name}'{suggest(name, list(_REGISTRY))} The stages are: {', '.join(_REGISTRY)}."
        )
    return _REGISTRY[name]


def names(*roles: str) -> list[str]:
    return [s.name for s in _REGISTRY.values() if not roles or s.role in roles]


def all_stages() -> list:
    return list(_REGISTRY.values())


def for_config(path: str | Path):
    """The stage a YAML configures: its file name (`sft.yaml`, `ppo-long.yaml`, `all-formats.data.yaml`), else a
    pipeline when it lists `stages:`."""
    path = Path(path)
    candidates = [path.stem, path.stem.split(".")[-1], path.stem.split("-")[-1], path.stem.split("-")[0]]
    for candidate in candidates:
        if candidate in _REGISTRY:
            return _REGISTRY[candidate]
    if "stages" in read_yaml(path):
        return _REGISTRY["pipeline"]
    raise UserError(
        f"cannot tell which stage {path} configures: name it after one ({', '.join(_REGISTRY)}), e.g. sft.yaml."
    )


def producing_stage_hint(path: str) -> str:
    """ "run the sft stage first" when a missing folder is named like a stage's output."""
    name = Path(path).name
    if name in _REGISTRY:
        recipe = _REGISTRY[name].recipe_path.name
        return f"; run the {name} stage first (python recipes/{recipe} --config ...) or fix the path"
    return "; check the path"


def load_plugins() -> None:
    """Stages defined outside the package: every module named in $RLHF_RECIPES_STAGES (comma-separated, importable)
    is imported and registers its stages; the pipeline's subprocesses inherit the variable, so they see them too."""
    for module in filter(None, (m.strip() for m in os.environ.get("RLHF_RECIPES_STAGES", "").split(","))):
        importlib.import_module(module)
