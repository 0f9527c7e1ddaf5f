"""The stages layer: every stage of the project by name, one parse of its command line, one way to run its recipe.

    registry.py    the table by name: register, get, names, for_config (which stage a YAML configures)
    stage.py       what a Stage holds, as data (config classes, model kinds, columns, planner hook, targets)
    catalog.py     the entries, one `register(Stage(...))` per stage
    parse.py       a stage's command line -> its configs, the rules of validation.py applied
    validation.py  ranges, secrets, trackers, input models and the output folder, before any model loads
    run.py         the one runner: in this process (`run`), as `python RECIPE` (`run_file`), a recipe's entry point

Everything outside reads this package (`from rlhf_recipes import stages`; `stages.get("sft").parse_args(argv)`).
"""

from .registry import all_stages, for_config, get, names, register, unregister
from .run import run_file, run_recipe
from .stage import CONFIGS, EXAMPLES, RECIPES, Stage

from .catalog import RL_TARGETS, TRL_MODEL, TRL_SCRIPT  # isort: skip  (the entries register themselves)
from .registry import load_plugins  # isort: skip

load_plugins()

__all__ = [
    "CONFIGS", "EXAMPLES", "RECIPES", "RL_TARGETS", "TRL_MODEL", "TRL_SCRIPT", "Stage", "all_stages", "for_config",
    "get", "names", "register", "run_file", "run_recipe", "unregister",
]  # fmt: skip
