"""Held-out pairwise accuracy of the reward model (and of a reward-model judge), with a 95% bootstrap interval.

The reward stage counts its held-out pairs one by one (`train/reward.py`: `eval_accuracy`, `eval_pairs` and the
interval in its lineage). When it measured exactly the evaluation's pairs (same data folder, split and row count) the
evaluation takes its numbers; otherwise it scores every pair through the one scoring path. A reward-model judge's
own held-out accuracy comes from its lineage, named with the data it was measured on, so a reader can see how far
the judge agrees with people.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..models import read_lineage
from .probes import mean_interval

logger = logging.getLogger(__name__)


def from_lineage(model: str, dataset: str | None, split: str, rows: int | None) -> dict | None:
    """{accuracy, low, high, n} from a reward stage's lineage when it measured `rows` pairs of `dataset`'s `split`
    (any pairs, when `dataset` is None); None when it did not."""
    lineage = read_lineage(model) if model and Path(model).is_dir() else None
    data, metrics = (lineage or {}).get("data") or {}, (lineage or {}).get("metrics") or {}
    if metrics.get("eval_accuracy") is None:
        return None
    if dataset is not None:
        same = (
            data.get("dataset_name")
            and Path(data["dataset_name"]).resolve() == Path(dataset).resolve()
            and data.get("eval_split") == split
            and metrics.get("eval_pairs", data.get("eval_rows")) == rows
        )
        if not same:
            return None
    return {
        "accuracy": float(metrics["eval_accuracy"]),
        "low": metrics.get("eval_accuracy_low"),
        "high": metrics.get("eval_accuracy_high"),
        "n": metrics.get("eval_pairs", data.get("eval_rows")),
        "dataset": data.get("dataset_name"),
    }


def scored(scorer, pairs, samples: int, seed: int) -> dict:
    """Every pair scored (chosen and rejected) through `scorer`; ties count as wrong, as RewardTrainer counts them."""
    import evaluate

    chosen = scorer.score(pairs["prompt"], pairs["chosen"])
    rejected = scorer.score(pairs["prompt"], pairs["rejected"])
    metric = evaluate.load(str(Path(__file__).parent / "metrics" / "pairwise_accuracy"))  # shipped: works offline
    accuracy = metric.compute(chosen_rewards=chosen, rejected_rewards=rejected)["accuracy"]
    _, low, high = mean_interval([float(c > r) for c, r in zip(chosen, rejected)], samples, seed)
    return {"accuracy": accuracy, "low": low, "high": high, "n": len(chosen)}


def reward_accuracy(args, scorer, pairs) -> dict:
    """The reward model's held-out accuracy on the evaluation's pairs: from its lineage when it measured them."""
    found = None
    if args.reward_accuracy_from_lineage:
        found = from_lineage(args.reward_model, args.preference_dataset, args.eval_split, len(pairs))
    if found is not None:
        logger.info("reward model accuracy on %s (%d pairs): %.4f, from its lineage", args.preference_dataset,
                    len(pairs), found["accuracy"])  # fmt: skip
        return found
    return scored(scorer, pairs, args.bootstrap_samples, args.seed)


def judge_accuracy(judge_spec: str) -> dict | None:
    """A reward-model judge's own held-out accuracy, from its lineage (None for other judges)."""
    kind, _, target = judge_spec.partition(":")
    return from_lineage(target, None, "", None) if kind == "reward" and target else None
