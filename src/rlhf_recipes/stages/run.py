"""The one way to run a stage's recipe. A stage is found by name (`registry.get`); its recipe is executed from its
file (`runpy`), never imported, so the file stays the readable script users run and edit.

- `run(stage, argv)`: in this process, as a function: the recipe's `main` called with the parsed configs, its result
  returned, a UserError raised to the caller (tests, the bench harness, `stage.run(argv)`).
- `run_file(recipe, argv)`: exactly as `python RECIPE ARGV` (its `__main__` block runs, errors become one line and
  an exit code): the console command (`rlhf-recipes STAGE`) and the pipeline's warm launcher.
- `run_recipe(stage, main)`: a recipe's own entry point (`stages.run_recipe(STAGE, main)`).
"""

from __future__ import annotations

import os
import runpy
import sys
from collections.abc import Callable
from pathlib import Path

from .. import cli
from .parse import parse


def run(stage, argv: list[str]):
    """Run `stage`'s recipe in this process, as `python recipes/<name>.py ARGV` would, and return its result."""
    namespace = runpy.run_path(str(stage.recipe_path), run_name=f"rlhf_recipe_{stage.name}")
    saved, sys.argv = sys.argv, [str(stage.recipe_path), *argv]
    try:
        return namespace["main"](*parse(stage, argv))
    finally:
        sys.argv = saved


def run_file(recipe: str | Path, argv: list[str]) -> None:
    """Run a recipe file as `python RECIPE ARGV` does: its folder first on sys.path, its `__main__` block run (a
    SystemExit is the caller's to catch)."""
    sys.argv = [str(recipe), *argv]
    sys.path.insert(0, os.path.dirname(os.path.abspath(recipe)))
    runpy.run_path(str(recipe), run_name="__main__")


def run_recipe(stage, main: Callable) -> None:
    """A recipe's entry point: its command line parsed into the configs the registry names for `stage`, then
    `main(*configs)`; user errors and machine faults are one line and an exit code (`cli.run`)."""
    cli.run(lambda: main(*parse(stage, sys.argv[1:])))
