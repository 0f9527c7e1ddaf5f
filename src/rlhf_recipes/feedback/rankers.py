"""Rankers without people, for unattended rounds. Each is recorded as the `ranker` of the rankings it makes, so
that human and machine rankings can always be told apart in the store and in the export.

- `SimulatedLabeller` (`simulated`, the demo's): the demo world's own facts and styles (the demo judge's checks)
  grade each answer, right beats wrong, polite beats rude, an answer beats an evasion; equal grades are ties. With
  probability `noise` a ranking is replaced by a uniformly random order, the way AlpacaFarm's simulated annotators
  flip a share of their labels, so the loop is measured against a labeller that makes mistakes.
- `ScoreRanker`: any judge that scores answers: a judge LM with a rubric (`lm:<model>`), or a reward model other
  than the one being retrained (`reward:<folder>`). A reward model ranking for its own retraining adds no
  information: that is refused with one sentence.

The names a `ranker:` setting takes are the judges' registry's (`evaluation/graders.py`).
"""

from __future__ import annotations

import random
from pathlib import Path

from ..errors import UserError


def tiers_from_scores(scores: list[float]) -> list[list[int]]:
    """Answer indices grouped by equal score, best first."""
    return [[i for i, s in enumerate(scores) if s == level] for level in sorted(set(scores), reverse=True)]


class SimulatedLabeller:
    def __init__(self, noise: float = 0.1, seed: int = 0):
        from ..evaluation.judge import DemoJudge

        if not 0 <= noise <= 1:
            raise UserError(f"noise={noise} must be a share between 0 and 1.")
        self.judge, self.noise, self.random = DemoJudge(), noise, random.Random(seed)
        self.name = f"simulated(noise={noise:g})"

    def grade(self, messages, answer: str) -> int | None:
        verdict = self.judge.judge(messages, answer)
        if verdict is None:
            return None
        return 4 * verdict["correct"] + 2 * (not verdict["rude"]) + (not verdict["evasive"])

    def rank(self, messages, answers: list[str]) -> list[list[int]] | None:
        """Tiers of answer indices, best first; None when the demo world cannot grade this prompt."""
        grades = [self.grade(messages, a) for a in answers]
        if any(g is None for g in grades):
            return None
        if self.random.random() < self.noise:
            order = list(range(len(answers)))
            self.random.shuffle(order)
            return [[i] for i in order]
        return tiers_from_scores(grades)


class ScoreRanker:
    def __init__(self, judge, name: str):
        self.judge, self.name = judge, name

    def rank(self, messages, answers: list[str]) -> list[list[int]] | None:
        from ..evaluation.judge import judge_all

        verdicts = judge_all(self.judge, [messages] * len(answers), answers)
        if any(v is None for v in verdicts):
            return None
        return tiers_from_scores([round(float(v["score"]), 6) for v in verdicts])


def load_ranker(spec: str, noise: float, seed: int, reward_model_in_training: str | None):
    """The ranker a `ranker:` setting names (`evaluation/graders.py`; not `human`: people rank in the page,
    recipes/label.py serves it): the simulated labeller, or a judge that scores answers, ranking by its scores."""
    from ..evaluation import graders

    name, target = graders.parse(spec, "ranker")
    if name == "reward" and reward_model_in_training:
        if Path(target).resolve() == Path(reward_model_in_training).resolve():
            raise UserError(
                f"ranker: reward:{target} is the reward model these rankings retrain; a reward model ranking for its "
                "own retraining adds no information, so rank with another reward model, a judge LM or people."
            )
    ranker = graders.build(name, target, noise=noise, seed=seed)
    return ranker if name == "simulated" else ScoreRanker(ranker, spec)


def rank_round(store, ranker, round: int) -> dict:
    """Rank every prompt of `round` that this ranker has not ranked yet, one transaction each (a kill loses
    nothing saved; a rerun continues). Returns counts."""
    from tqdm.auto import tqdm

    done = {(r["prompt_id"]) for r in store.rankings([round], ranker.name)}
    counts = {"ranked": 0, "skipped": 0, "already": len(done)}
    for prompt_id in tqdm(store.prompt_ids(round), desc=f"Ranking round {round} ({ranker.name})", unit="prompt"):
        if prompt_id in done:
            continue
        rows = store.candidates(prompt_id, round)
        tiers = ranker.rank(store.messages(prompt_id), [r["text"] for r in rows])
        if tiers is None:  # recorded as a skip, with the reason counted: nothing dropped silently
            store.record(prompt_id, round, ranker.name, ranker.name, None, status="skipped")
            counts["skipped"] += 1
            continue
        store.record(prompt_id, round, ranker.name, ranker.name, [[rows[i]["id"] for i in t] for t in tiers])
        counts["ranked"] += 1
    return counts
