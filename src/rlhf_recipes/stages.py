"""THE stage registry: every stage of the project is named here once, with everything the rest of the code needs.

A stage is: its name; its recipe (the readable script users run, `recipes/<name>.py`); the dataclasses its YAML is
parsed with; the model kinds it reads (by config key) and the kind it writes; the dataset columns it needs; how the
planner estimates it; and how the evaluation treats its output. The pipeline, the evaluation, the planner, bench,
the config tests and the bad-input catalogue all read this registry instead of repeating stage names.

Adding a stage (CONTRIBUTING.md has the steps): one `register(Stage(...))` below, its recipe, its YAML.
"""

from __future__ import annotations

import importlib
import runpy
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError, suggest
from .models import CAUSAL_LM, REWARD_MODEL

_CHECKOUT = Path(__file__).resolve().parents[2]
# A source checkout's recipes/ and configs/ (what users read and run); an installed wheel carries the same files in
# assets/recipes and assets/configs (`rlhf-recipes init DIR` copies the configs out)
RECIPES = _CHECKOUT / "recipes" if (_CHECKOUT / "recipes").is_dir() else Path(__file__).parent / "assets" / "recipes"
CONFIGS = _CHECKOUT / "configs" if (_CHECKOUT / "configs").is_dir() else Path(__file__).parent / "assets" / "configs"
EXAMPLES = "smollm2-135m"  # the configs folder whose YAMLs are every stage's example (--help, init's default)


def _types(*dotted: str) -> Callable[[], tuple]:
    """Config classes by dotted name, imported only when a stage is parsed (TRL is slow to import)."""

    def load() -> tuple:
        out = []
        for name in dotted:
            module, _, attr = name.rpartition(".")
            out.append(getattr(importlib.import_module(module), attr))
        return tuple(out)

    return load


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str
    config_types: Callable[[], tuple]  # the dataclasses its YAML and flags are parsed into (flat, TRL style)
    role: str = "train"  # train | rl | data | feedback | eval | publish | pipeline | tool
    recipe: str | None = None  # default: recipes/<name>.py
    model_keys: dict = field(default_factory=dict)  # config key -> model kind it must hold
    makes: str | None = None  # model kind of its output folder
    columns: tuple[str, ...] = ()  # dataset columns it trains on
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
        """The stage's example YAML shipped with the project (configs/smollm2-135m/<name>.yaml), None if it has none."""
        path = CONFIGS / EXAMPLES / f"{self.name}.yaml"
        return path if path.is_file() else None

    @property
    def trains(self) -> bool:
        return self.role in ("train", "rl")

    def parse_args(self, argv: list[str] | None = None, check_paths: bool = True) -> tuple:
        """The stage's configs from `--config FILE` and `--key VALUE` flags, exactly as its recipe parses them.

        `check_paths=False` (the planner) checks keys, types and ranges but not that input models exist yet."""
        if self.parse is not None:
            return self.parse(argv)
        from .cli import parse_config

        return parse_config(self.config_types(), argv, stage=self, check_paths=check_paths)

    def run(self, argv: list[str]):
        """Run the stage's recipe in this process, as `python recipes/<name>.py ARGV` would, and return its result.

        The recipe is executed from its file (never imported as a module), its `main` called with the parsed configs:
        a UserError propagates to the caller instead of exiting.
        """
        namespace = runpy.run_path(str(self.recipe_path), run_name=f"rlhf_recipe_{self.name}")
        saved, sys.argv = sys.argv, [str(self.recipe_path), *argv]
        try:
            return namespace["main"](*self.parse_args(argv))
        finally:
            sys.argv = saved

    def hook(self, attribute: str = "plan"):
        target = getattr(self, attribute)
        if not target:
            return None
        module, _, function = target.partition(":")
        return getattr(importlib.import_module(module), function)


_REGISTRY: dict[str, Stage] = {}


def register(stage: Stage) -> Stage:
    if stage.name in _REGISTRY:
        raise ValueError(f"stage '{stage.name}' is registered twice")
    _REGISTRY[stage.name] = stage
    return stage


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def get(name: str) -> Stage:
    """The stage called `name`; an unknown name is one sentence with the valid ones."""
    if name not in _REGISTRY:
        raise UserError(
            f"unknown stage '{name}'{suggest(name, list(_REGISTRY))} The stages are: {', '.join(_REGISTRY)}."
        )
    return _REGISTRY[name]


def names(*roles: str) -> list[str]:
    return [s.name for s in _REGISTRY.values() if not roles or s.role in roles]


def all_stages() -> list[Stage]:
    return list(_REGISTRY.values())


def run_recipe(stage: Stage, main: Callable) -> None:
    """A recipe's entry point (`stages.run_recipe(STAGE, main)`): its command line parsed into the configs the
    registry names for `stage`, then `main(*configs)`; user errors and machine faults are one line (`cli.run`)."""
    from .cli import run

    run(lambda: main(*stage.parse_args(sys.argv[1:])))


def for_config(path: str | Path) -> Stage:
    """The stage a YAML configures: its file name (`sft.yaml`, `ppo-long.yaml`, `all-formats.data.yaml`), else a
    pipeline when it lists `stages:`."""
    path = Path(path)
    candidates = [path.stem, path.stem.split(".")[-1], path.stem.split("-")[-1], path.stem.split("-")[0]]
    for candidate in candidates:
        if candidate in _REGISTRY:
            return _REGISTRY[candidate]
    from .config import read_yaml

    if "stages" in read_yaml(path):
        return _REGISTRY["pipeline"]
    raise UserError(
        f"cannot tell which stage {path} configures: name it after one ({', '.join(_REGISTRY)}), e.g. sft.yaml."
    )


DATA_FOLDERS = {
    ("text",): "cpt",
    ("messages",): "sft",
    ("chosen", "rejected"): "preferences",
    ("prompt",): "prompts",
    ("prompt", "completion", "label"): "unpaired",  # TRL's unpaired preference: a KTO stage's data
}


def data_folder(stage: Stage) -> str:
    """The folder of the data stage's output that a stage trains on (recipes/prepare_data.py writes one per format)."""
    if stage.columns not in DATA_FOLDERS:
        raise UserError(
            f"stage '{stage.name}' trains on columns {stage.columns}, which no prepared data folder holds."
        )
    return DATA_FOLDERS[stage.columns]


def _nested(module_function: str) -> Callable:
    def parse(argv):
        module, _, function = module_function.partition(":")
        return getattr(importlib.import_module(module), function)(argv)

    return parse


TRL_SCRIPT, TRL_MODEL = "trl.ScriptArguments", "trl.ModelConfig"
RL_TARGETS = ("reward_gain", "judge_gain", "accuracy_kept", "kl_bound")

# ---------------------------------------------------------------------------------------------------------- stages
register(
    Stage(
        "data",
        "clean, deduplicate and decontaminate sources into the training formats (TRL's dataset types)",
        _types("rlhf_recipes.data.config.DataConfig"),
        role="data",
        recipe=str(RECIPES / "prepare_data.py"),
        output_key="output_root",
        parse=_nested("rlhf_recipes.data.config:parse_argv"),
    )
)
register(
    Stage(
        "cpt",
        "continued pretraining: next-token loss on raw domain text, packed",
        _types(TRL_SCRIPT, "rlhf_recipes.train.sft.SFTConfig", TRL_MODEL),
        model_keys={"model_name_or_path": CAUSAL_LM},
        makes=CAUSAL_LM,
        columns=("text",),
        plan="rlhf_recipes.plan.estimate:plan_lm_stage",
        targets=("perplexity_vs_base",),
    )
)
register(
    Stage(
        "sft",
        "supervised fine-tuning: conversations, loss on assistant tokens only",
        _types(TRL_SCRIPT, "rlhf_recipes.train.sft.SFTConfig", TRL_MODEL),
        model_keys={"model_name_or_path": CAUSAL_LM},
        makes=CAUSAL_LM,
        columns=("messages",),
        plan="rlhf_recipes.plan.estimate:plan_lm_stage",
        targets=("accuracy_vs_base",),
    )
)
register(
    Stage(
        "reward",
        "reward model: a score head trained on (prompt, chosen, rejected) pairs with the pairwise loss",
        _types(TRL_SCRIPT, "rlhf_recipes.train.reward.RewardConfig", TRL_MODEL),
        # a causal LM (a new score head), or an earlier reward model trained further (the feedback rounds)
        model_keys={"model_name_or_path": (CAUSAL_LM, REWARD_MODEL)},
        makes=REWARD_MODEL,
        columns=("chosen", "rejected"),
        plan="rlhf_recipes.plan.estimate:plan_lm_stage",
        targets=("pairwise_accuracy",),
    )
)
register(
    Stage(
        "ppo",
        "PPO: the SFT policy against the reward model, with a value model and a KL penalty",
        _types(TRL_SCRIPT, "rlhf_recipes.train.ppo.PPOConfig", TRL_MODEL),
        role="rl",
        model_keys={"model_name_or_path": CAUSAL_LM, "reward_model_path": REWARD_MODEL},
        makes=CAUSAL_LM,
        columns=("prompt",),
        plan="rlhf_recipes.plan.estimate:plan_ppo_stage",
        baseline="sft",
        targets=RL_TARGETS,
    )
)
ONLINE_RL = dict(
    role="rl",
    model_keys={"model_name_or_path": CAUSAL_LM, "reward_model_path": REWARD_MODEL},
    makes=CAUSAL_LM,
    columns=("prompt",),
    plan="rlhf_recipes.plan.estimate:plan_online_stage",
    baseline="sft",
    targets=RL_TARGETS,
)
register(
    Stage(
        "grpo",
        "GRPO: groups of sampled answers per prompt, each scored by the reward model against its group's mean",
        _types(TRL_SCRIPT, "rlhf_recipes.train.online.GRPOConfig", TRL_MODEL),
        **ONLINE_RL,
    )
)
register(
    Stage(
        "rloo",
        "RLOO: REINFORCE with the other answers to the same prompt as each answer's baseline",
        _types(TRL_SCRIPT, "rlhf_recipes.train.online.RLOOConfig", TRL_MODEL),
        **ONLINE_RL,
    )
)
register(
    Stage(
        "online_dpo",
        "online DPO: two sampled answers per prompt, ranked by the reward model, and the DPO loss on the pair",
        _types(TRL_SCRIPT, "rlhf_recipes.train.online_dpo.OnlineDPOConfig", TRL_MODEL),
        **ONLINE_RL,
    )
)
register(
    Stage(
        "dpo",
        "DPO: the SFT policy trained on the preference pairs directly, against itself as reference",
        _types(TRL_SCRIPT, "trl.DPOConfig", TRL_MODEL),
        role="rl",
        model_keys={"model_name_or_path": CAUSAL_LM},
        makes=CAUSAL_LM,
        columns=("chosen", "rejected"),
        plan="rlhf_recipes.plan.estimate:plan_lm_stage",
        baseline="sft",
        targets=RL_TARGETS,
    )
)
register(
    Stage(
        "collect",
        "K sampled answers per prompt from a stage's model (or rankings imported) into the comparison store",
        _types("rlhf_recipes.feedback.config.CollectArguments"),
        role="feedback",
        model_keys={"model": CAUSAL_LM},
    )
)
register(
    Stage(
        "label",
        "the answers ranked by people in a web page or by a model, exported as preference pairs grouped by prompt",
        _types("rlhf_recipes.feedback.config.LabelArguments"),
        role="feedback",
    )
)
register(
    Stage(
        "eval",
        "evaluation of every stage against the one before it, on held-out data",
        _types("rlhf_recipes.evaluation.config.EvaluationArguments"),
        role="eval",
    )
)
register(
    Stage(
        "publish",
        "merge, check, card and push a finished stage's output",
        _types("rlhf_recipes.publish.hub.PublishArguments"),
        role="publish",
    )
)
register(
    Stage(
        "pipeline",
        "every stage in order, each its own recipe in a subprocess",
        _types("rlhf_recipes.pipeline.PipelineConfig"),
        role="pipeline",
        parse=_nested("rlhf_recipes.pipeline:parse_argv"),
    )
)


def _load_plugins() -> None:
    """Stages defined outside this file: every module named in $RLHF_RECIPES_STAGES (comma-separated, importable)
    is imported and registers its stages; the pipeline's subprocesses inherit the variable, so they see them too."""
    import os

    for module in filter(None, (m.strip() for m in os.environ.get("RLHF_RECIPES_STAGES", "").split(","))):
        importlib.import_module(module)


_load_plugins()
