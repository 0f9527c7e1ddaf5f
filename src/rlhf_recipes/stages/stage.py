"""What a stage is, as data: its name; its recipe (the readable script users run, `recipes/<name>.py`); the
dataclasses its YAML is parsed into; the model kinds it reads (by config key) and the kind it writes; the dataset
columns it trains on; how the planner estimates it; and how the evaluation treats its output.

Classes and hooks are named by dotted path and imported only when used (TRL is slow to import), so the registry can
be read by `--help` and the pipeline without loading a trainer. `parse_args` and `run` are shorthands for the one
parser (`parse.py`) and the one runner (`run.py`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]
_CHECKOUT = _PACKAGE.parents[1]
# A source checkout's recipes/ and configs/ (what users read and run); an installed wheel carries the same files in
# assets/recipes and assets/configs (`rlhf-recipes init DIR` copies the configs out)
RECIPES = _CHECKOUT / "recipes" if (_CHECKOUT / "recipes").is_dir() else _PACKAGE / "assets" / "recipes"
CONFIGS = _CHECKOUT / "configs" if (_CHECKOUT / "configs").is_dir() else _PACKAGE / "assets" / "configs"
EXAMPLES = "smollm2-135m"  # the configs folder whose YAMLs are every stage's example (--help, init's default)


def _import(dotted: str, separator: str = "."):
    module, _, attribute = dotted.rpartition(separator)
    return getattr(importlib.import_module(module), attribute)


def types(*dotted: str) -> Callable[[], tuple]:
    """Config classes by dotted name (`trl.DPOConfig`), imported when a stage is parsed."""
    return lambda: tuple(_import(name) for name in dotted)


def nested(module_function: str) -> Callable:
    """A stage's own parser `parse(argv)` by "module:function" (nested configs: data preparation, the pipeline)."""
    return lambda argv: _import(module_function, ":")(argv)


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str
    config_types: Callable[[], tuple]  # the dataclasses its YAML and flags are parsed into (flat, TRL style)
    role: str = "train"  # train | rl | data | feedback | eval | publish | pipeline | tool
    recipe: str | None = None  # default: recipes/<name>.py
    model_keys: dict = field(default_factory=dict)  # config key -> model kind it must hold
    makes: str | None = None  # model kind of its output folder
    columns: tuple[str, ...] = ()  # dataset columns it trains on (a kind of data/formats.py)
    plan: str | None = None  # "module:function" that estimates its peak memory (plan/)
    baseline: str | None = None  # the stage its output is evaluated against (RL stages: sft)
    output_key: str = "output_dir"  # the key that names its output folder
    parse: Callable | None = None  # a custom parser `parse(argv) -> tuple` (nested configs)
    targets: tuple[str, ...] = ()  # the evaluation's targets for its output (evaluation/targets.py names them)

    @property
    def recipe_path(self) -> Path:
        return Path(self.recipe) if self.recipe else RECIPES / f"{self.name}.py"

    @property
    def example(self) -> Path | None:
        """The stage's example YAML shipped with the project (configs/smollm2-135m/<name>.yaml), or None."""
        path = CONFIGS / EXAMPLES / f"{self.name}.yaml"
        return path if path.is_file() else None

    @property
    def trains(self) -> bool:
        return self.role in ("train", "rl")

    def hook(self, attribute: str = "plan"):
        target = getattr(self, attribute)
        return _import(target, ":") if target else None

    def parse_args(self, argv: list[str] | None = None, check_paths: bool = True) -> tuple:
        """The stage's configs from `--config FILE` and `--key VALUE` flags, exactly as its recipe parses them
        (`parse.parse`); `check_paths=False` (the planner, the pipeline) does not require input models to exist yet."""
        from .parse import parse

        return parse(self, argv, check_paths=check_paths)

    def run(self, argv: list[str]):
        """Run the stage's recipe in this process and return what its `main` returns (`run.run`)."""
        from .run import run

        return run(self, argv)
