"""The evaluation's targets, by the names the stage registry gives each stage (`Stage.targets`).

A target is met, missed, or "not measured" (met: None) when any number it compares is missing: a target is never
shown as met on inputs that were not measured.
"""

from __future__ import annotations


def value(results: list[dict], model: str, metric: str, key: str = "value"):
    return next((r.get(key) for r in results if r["stage"] == model and r["metric"] == metric), None)


def _target(name, measured, threshold, met) -> dict:
    ok = None if measured is None or threshold is None else bool(met(measured, threshold))
    return {"target": name, "measured": measured, "threshold": threshold, "met": ok}


def perplexity_vs_base(results, name, info, described, args):
    base = value(results, "base", "perplexity") if "base" in described else None
    threshold = round(base * args.target_perplexity_ratio, 4) if base is not None else None
    measured = value(results, name, "perplexity")
    return [
        _target(
            f"{name} perplexity <= {args.target_perplexity_ratio} x base", measured, threshold, lambda m, t: m <= t
        )
    ]


def accuracy_vs_base(results, name, info, described, args):
    base = value(results, "base", "accuracy") if "base" in described else None
    threshold = round(base + args.target_sft_accuracy_gain, 4) if base is not None else None
    measured = value(results, name, "accuracy")
    label = f"{name} accuracy >= base + {args.target_sft_accuracy_gain}"
    return [_target(label, measured, threshold, lambda m, t: m >= t)]


def pairwise_accuracy(results, name, info, described, args):
    measured = value(results, name, "accuracy")
    return [
        _target("reward model held-out pairwise accuracy", measured, args.target_reward_accuracy, lambda m, t: m >= t)
    ]


def reward_gain(results, name, info, described, args):
    baseline = info["baseline"]
    effect = value(results, name, "reward_effect_size")
    low = value(results, name, "reward_gain", "low")
    measured = None if effect is None or low is None else {"effect_size": effect, "interval_low": low}
    label = f"{name} mean reward over {baseline or 'its baseline'}'s by >= {args.target_reward_effect} SD, 95% CI > 0"
    return [
        _target(
            label,
            measured,
            args.target_reward_effect,
            lambda m, t: m["effect_size"] >= t and m["interval_low"] > 0,
        )
    ]


def judge_gain(results, name, info, described, args):
    gain = value(results, name, "judge_gain")
    label = f"{name} judge score over {info['baseline'] or 'its baseline'}'s by >= {args.target_judge_gain} points"
    if not getattr(args, "target_judge_interval", False):
        return [_target(label, gain, args.target_judge_gain, lambda m, t: m >= t)]
    low = value(results, name, "judge_gain", "low")
    measured = None if gain is None or low is None else {"gain": gain, "interval_low": low}
    label = label.replace(" points", ", paired 95% CI > 0")
    return [_target(label, measured, args.target_judge_gain, lambda m, t: m["gain"] >= t and m["interval_low"] > 0)]


def accuracy_kept(results, name, info, described, args):
    baseline = info["baseline"]
    base = value(results, baseline, "accuracy") if baseline else None
    threshold = round(base - args.target_accuracy_drop, 4) if base is not None else None
    label = f"{name} accuracy >= {baseline or 'its baseline'} - {args.target_accuracy_drop}"
    return [_target(label, value(results, name, "accuracy"), threshold, lambda m, t: m >= t)]


def kl_bound(results, name, info, described, args):
    label = f"{name} KL to {info['baseline'] or 'its baseline'} per token <= {args.target_kl_per_token}"
    return [_target(label, value(results, name, "kl_per_token"), args.target_kl_per_token, lambda m, t: m <= t)]


TARGETS = {
    f.__name__: f
    for f in (
        perplexity_vs_base,
        accuracy_vs_base,
        pairwise_accuracy,
        reward_gain,
        judge_gain,
        accuracy_kept,
        kl_bound,
    )
}


def check_targets(results: list[dict], described: dict, args) -> list[dict]:
    """Every target of every evaluated model's stage, plus the reward model's when one was given."""
    out = []
    for name, info in described.items():
        spec = info["spec"]
        for target in spec.targets if spec else ():
            out += TARGETS[target](results, name, info, described, args)
    if args.reward_model:
        from .. import stages
        from ..models import REWARD_MODEL

        for spec in (s for s in stages.all_stages() if s.makes == REWARD_MODEL):
            out += [
                t for name in spec.targets for t in TARGETS[name](results, reward_label(args), {}, described, args)
            ]
    return out


def reward_label(args) -> str:
    """The reward model's name in the results: the stage that made it (its lineage), else `reward_model`."""
    from pathlib import Path

    from ..models import read_lineage

    lineage = read_lineage(args.reward_model) if args.reward_model and Path(args.reward_model).is_dir() else None
    return (lineage or {}).get("stage") or "reward_model"
