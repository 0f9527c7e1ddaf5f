"""Judges and rankers by name: one registry for the evaluation's `judge:` and the label stage's `ranker:` settings.

    demo              judge          the demo world's facts and styles, rule-based (judge.py: DemoJudge)
    simulated         ranker         the demo judge's grades, a share of rankings shuffled (feedback/rankers.py)
    reward:<folder>   judge, ranker  a held-out reward model's score (never the one RL trained against)
    lm:<model>        judge, ranker  a judge LM's 1-10 grade with a rubric
    human             ranker         people, in the ranking page (recipes/label.py serves it)
    none              judge          no judge

A setting is a name, or a name and its target (`reward:outputs/judge`). A name the setting does not take, or a
reward model folder that is not there, is one sentence listing what it takes. Classes are named by dotted path and
imported when built (a judge model loads only once answers exist).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError


@dataclass(frozen=True)
class Grader:
    name: str
    target: str | None  # what follows `name:` ("<folder>", "<model>"), None when the name stands alone
    roles: tuple[str, ...]  # the settings that take it: judge, ranker
    builds: str | None = None  # "module:Class", built with the target (if any) and the options it `takes`
    takes: tuple[str, ...] = ()  # keyword options of its class: device, dtype (judges), noise, seed (simulated)

    @property
    def usage(self) -> str:
        return f"{self.name}:{self.target}" if self.target else self.name


GRADERS = {grader.name: grader for grader in (
    Grader("demo", None, ("judge",), "rlhf_recipes.evaluation.judge:DemoJudge"),
    Grader("simulated", None, ("ranker",), "rlhf_recipes.feedback.rankers:SimulatedLabeller", ("noise", "seed")),
    Grader("reward", "<folder>", ("judge", "ranker"), "rlhf_recipes.evaluation.judge:RewardModelJudge",
           ("device", "dtype")),
    Grader("lm", "<model>", ("judge", "ranker"), "rlhf_recipes.evaluation.judge:LMJudge", ("device", "dtype")),
    Grader("human", None, ("ranker",)),
    Grader("none", None, ("judge",)),
)}  # fmt: skip
# The names each setting lists in its sentence, in that order
LISTED = {"judge": ("demo", "reward", "lm", "none"), "ranker": ("human", "simulated", "lm", "reward")}


def parse(spec: str, role: str) -> tuple[str, str | None]:
    """(name, target) of a `judge:` (an empty one is `none`) or `ranker:` setting."""
    name, colon, target = ("none", "", "") if role == "judge" and spec == "" else spec.partition(":")
    grader = GRADERS.get(name)
    if grader is None or role not in grader.roles or bool(grader.target) != bool(colon and target):
        listed = [GRADERS[n].usage for n in LISTED[role]]
        raise UserError(f"{role}: {spec!r} is not a {role}; use {', '.join(listed[:-1])} or {listed[-1]}.")
    if name == "reward" and not Path(target).is_dir():
        raise UserError(f"{role}: reward:{target} names no folder; give a reward model's output folder.")
    return name, target or None


def build(name: str, target: str | None = None, **options):
    """The judge or ranker `name` names (None for `none` and `human`: nothing to load), given the options its class
    takes (the others are left out: `simulated` takes no device)."""
    grader = GRADERS[name]
    if grader.builds is None:
        return None
    module, _, cls = grader.builds.partition(":")
    kwargs = {key: value for key, value in options.items() if key in grader.takes}
    return getattr(importlib.import_module(module), cls)(*([target] if target else []), **kwargs)
