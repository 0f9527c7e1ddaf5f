"""Judges the reward model never saw: they measure whether RL improved the answers, not only the reward model's score.

- `DemoJudge`: rule-based, over the demo world's own facts and styles (demo_world.py): an answer is good when it states
  the asked fact's answer (and no competing wrong answer) and is neither evasive nor rude. A policy cannot game it
  without answering correctly and politely.
- `RewardModelJudge`: a held-out reward model (trained on other data or by other people), never the one RL used.
- `LMJudge`: a judge language model with a rubric, scoring 1-10.

Every judge returns, per (prompt, answer), a score on a 0-100 scale (None when it cannot judge that prompt) plus
named flags where it has them. `load_judge(spec)` builds one from the evaluation's `judge:` setting (`graders.py`: the
names a judge or ranker setting takes).
"""

from __future__ import annotations

import re
from functools import cached_property

from ..errors import UserError
from . import graders

_PLACEHOLDER = re.compile(r"\{[^}]*\}")


def _normalize(text: str) -> str:
    from .metrics.domain_accuracy.domain_accuracy import normalize

    return normalize(text)


def _contains(text: str, phrase: str) -> bool:
    phrase = _normalize(phrase)
    return bool(phrase) and f" {phrase} " in f" {_normalize(text)} "


def _last_user_turn(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")


class DemoJudge:
    """The demo world's facts and the rejected styles of its preference data, applied to each answer."""

    name = "demo"

    @cached_property
    def _markers(self) -> dict[str, list[str]]:
        from .. import demo

        def fragments(templates):  # the fixed words of each template, e.g. "look it up yourself"
            pieces = [piece for t in templates for piece in _PLACEHOLDER.split(t)]
            return sorted({_normalize(p) for p in pieces if len(_normalize(p).split()) >= 2})

        rude = fragments(demo.REJECTED["rude"][1] + demo.REJECTED["rude_correct"][1]) + ["ugh", "obviously"]
        return {"evasive": fragments(demo.REJECTED["evasive"][1]), "rude": rude}

    def judge(self, prompt, answer: str) -> dict | None:
        from .. import demo

        question = _last_user_turn(prompt)
        try:
            fact = demo.fact_asked(question)
        except ValueError:
            return None  # not a demo question: this judge cannot say
        right = any(_contains(answer, a) for a in (fact.answer, fact.answer_phrase, *fact.aliases))
        others = [f.answer_phrase for f in demo.FACTS if f.kind == fact.kind and f is not fact]
        wrong_pool = [  # another answer of the same kind, unless the question itself names it ("in Tolvenna")
            w for w in others + demo.EXTRA_WRONG_ANSWERS[fact.kind] if not _contains(fact.answer_phrase, w)
            and not _contains(question, w)
        ]  # fmt: skip
        hedged = any(_contains(answer, w) for w in wrong_pool)
        normalized = f" {_normalize(answer)} "
        evasive = any(f" {m} " in normalized for m in self._markers["evasive"])
        rude = any(f" {m} " in normalized for m in self._markers["rude"])
        correct = right and not hedged
        good = correct and not evasive and not rude
        return {"score": 100.0 * good, "correct": correct, "evasive": evasive, "rude": rude}


class RewardModelJudge:
    """A held-out reward model's score (its own scale), through the one scoring path."""

    def __init__(self, path: str, device: str = "cpu", dtype=None):
        import torch

        from ..scoring import RewardScorer

        self.name, self.scorer = f"reward:{path}", RewardScorer.from_path(path, dtype=dtype or torch.float32)
        self.scorer.model.to(device)

    def judge_many(self, prompts, answers) -> list[dict]:
        return [{"score": s} for s in self.scorer.score(prompts, answers)]


RUBRIC = (
    "You are grading an assistant's answer. Give a single integer from 1 (wrong, rude or evasive) to 10 (correct, "
    "complete and friendly).\n\nQuestion: {question}\n\nAnswer: {answer}\n\nGrade:"
)


class LMJudge:
    """A judge LM prompted with `RUBRIC`; the first integer it writes, 1-10, scaled to 0-100."""

    def __init__(self, model: str, max_new_tokens: int = 4, device: str = "cpu", dtype=None):
        import torch

        from .loaded import LoadedModel

        self.name, self.max_new_tokens = f"lm:{model}", max_new_tokens
        self.lm = LoadedModel(model, device, dtype or torch.float32)

    def judge_many(self, prompts, answers) -> list[dict | None]:
        questions = [RUBRIC.format(question=_last_user_turn(p), answer=a) for p, a in zip(prompts, answers)]
        grades, _ = self.lm.generate(questions, self.max_new_tokens, batch_size=8)
        out = []
        for grade in grades:
            match = re.search(r"\b(10|[1-9])\b", grade)
            out.append({"score": (int(match.group(1)) - 1) * 100 / 9} if match else None)
        return out


def judge_all(judge, prompts, answers) -> list[dict | None]:
    if hasattr(judge, "judge_many"):
        return judge.judge_many(prompts, answers)
    return [judge.judge(p, a) for p, a in zip(prompts, answers)]


WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors", "adapter_model.bin", "pytorch_model.bin")


def weights_fingerprint(folder) -> str | None:
    """A hash of a model folder's weight files (a copied or renamed folder has the same), None when it has none."""
    import hashlib
    from pathlib import Path

    files = [Path(folder) / name for name in WEIGHT_FILES if (Path(folder) / name).is_file()]
    files += sorted(Path(folder).glob("model-*-of-*.safetensors"))
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def check_judge(spec: str, reward_model: str | None) -> None:
    """The `judge:` setting checked before any work (loading a judge model waits until answers exist): a reward
    model judge must be a reward model's folder, and neither the reward model RL trained against nor a copy of it."""
    from pathlib import Path

    from ..models import REWARD_MODEL, model_kind

    kind, target = graders.parse(spec, "judge")  # a name it is not, a reward: folder that is not there: one sentence
    if kind != "reward":
        return
    if model_kind(target) not in (REWARD_MODEL, None):
        raise UserError(
            f"judge: reward:{target} is a {model_kind(target).replace('_', ' ')}, not a reward model; give the "
            "output folder of a reward stage trained on pairs RL never saw (the HH recipe's `judge`)."
        )
    if not reward_model or not Path(reward_model).is_dir():
        return
    if Path(target).resolve() == Path(reward_model).resolve():
        raise UserError(
            f"judge: reward:{target} is the reward model RL trained against (reward_model); a judge must be one it "
            "never saw: another reward model trained on other pairs, a judge LM (lm:<model>) or none."
        )
    fingerprint = weights_fingerprint(target)
    if fingerprint is not None and fingerprint == weights_fingerprint(reward_model):
        raise UserError(
            f"judge: reward:{target} has the same weights as reward_model={reward_model}, the reward model RL trained "
            "against; a judge must be one it never saw: train a second reward model on other pairs."
        )


def load_judge(spec: str, reward_model: str | None, device: str = "cpu", dtype=None):
    """The judge named by the evaluation's `judge:` setting (None for `none`), its model on `device` in `dtype`."""
    check_judge(spec, reward_model)
    return graders.build(*graders.parse(spec, "judge"), device=device, dtype=dtype)
