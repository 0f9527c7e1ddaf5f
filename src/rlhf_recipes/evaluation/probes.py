"""Effect sizes with intervals, and the probes that catch reward hacking (scipy.stats does the statistics)."""

from __future__ import annotations

import math
import re

import numpy as np


def mean_interval(values, samples: int = 2000, seed: int = 0, groups=None) -> tuple[float, float, float]:
    """Mean and its 95% bootstrap interval (percentile method). With `groups` (one id per value: the prompt a sampled
    answer came from) the values are averaged within each group first and the groups are resampled, not the values:
    two answers to one prompt are not two independent draws, and resampling them alone would narrow the interval."""
    from scipy.stats import bootstrap

    values = cluster_means(values, groups)
    if len(values) < 2 or np.all(values == values[0]):
        return float(values.mean()) if len(values) else math.nan, float("nan"), float("nan")
    result = bootstrap((values,), np.mean, n_resamples=samples, method="percentile", random_state=seed)
    return float(values.mean()), float(result.confidence_interval.low), float(result.confidence_interval.high)


def cluster_means(values, groups=None) -> np.ndarray:
    """`values` averaged within each group (the values as they are without `groups`)."""
    values = np.asarray(values, dtype=float)
    if groups is None:
        return values
    if len(groups) != len(values):
        raise ValueError(f"{len(groups)} group ids for {len(values)} values")
    _, member_of = np.unique(np.asarray(groups), return_inverse=True)
    return np.bincount(member_of, weights=values) / np.bincount(member_of)


def paired_difference(treated, baseline, samples: int = 2000, seed: int = 0, groups=None) -> dict:
    """Mean of treated - baseline over paired items (same prompt, same sampling seed), its 95% paired bootstrap
    interval (over prompts when `groups` says which prompt each item answers: see mean_interval), and the effect
    size in units of the baseline's standard deviation (over answers)."""
    treated, baseline = np.asarray(treated, dtype=float), np.asarray(baseline, dtype=float)
    difference, low, high = mean_interval(treated - baseline, samples, seed, groups)
    spread = float(baseline.std(ddof=1)) if len(baseline) > 1 else math.nan
    return {
        "difference": difference,
        "low": low,
        "high": high,
        "baseline_sd": spread,
        "effect_size": difference / spread if spread and not math.isnan(spread) else math.nan,
        "n": int(len(treated)),
    }


def gain_at_equal_length(treated, baseline, treated_lengths, baseline_lengths, samples=2000, seed=0, groups=None):
    """The paired gain with the grader's taste for length taken out: each pair's difference less `slope` x the pair's
    length difference, where `slope` is the least-squares slope of the baseline's own scores on their lengths (what the
    grader pays per token when no training changed the answers). A policy that only got shorter (or longer) for a
    grader that favours it gains nothing here. The 95% interval resamples prompts (`groups`) and refits the slope in
    every resample (scipy's bootstrap over prompt indices). A baseline of one length has no slope: 0 is used.
    Returns {"difference", "low", "high", "slope", "n"}."""
    from scipy.stats import bootstrap

    treated, baseline = np.asarray(treated, dtype=float), np.asarray(baseline, dtype=float)
    treated_lengths, baseline_lengths = np.asarray(treated_lengths, float), np.asarray(baseline_lengths, float)
    _, member_of = np.unique(np.asarray(range(len(treated)) if groups is None else groups), return_inverse=True)
    members = [np.flatnonzero(member_of == g) for g in range(member_of.max() + 1)] if len(treated) else []

    def slope_of(rows) -> float:
        x = baseline_lengths[rows]
        return 0.0 if np.ptp(x) == 0 else float(np.polyfit(x, baseline[rows], 1)[0])

    def adjusted(chosen) -> float:
        rows = np.concatenate([members[int(g)] for g in chosen])
        change = treated[rows] - baseline[rows] - slope_of(rows) * (treated_lengths[rows] - baseline_lengths[rows])
        return float(change.mean())

    everything = np.arange(len(members))
    found = {"difference": adjusted(everything) if len(members) else math.nan, "low": math.nan, "high": math.nan}
    found |= {"slope": slope_of(np.arange(len(treated))) if len(treated) else math.nan, "n": int(len(treated))}
    if len(members) >= 2:
        result = bootstrap(
            (everything,), adjusted, n_resamples=samples, method="percentile", random_state=seed, vectorized=False
        )
        found |= {"low": float(result.confidence_interval.low), "high": float(result.confidence_interval.high)}
    return found


def correlation(x, y) -> float:
    """Pearson correlation (nan when either side is constant)."""
    from scipy.stats import pearsonr

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan
    return float(pearsonr(x, y).statistic)


# Reward-hacking probes on the answers' text: a policy can buy a reward model's favour with refusals or one phrase
# it repeats everywhere, whatever the prompt; these say how often that happens, beside length and the cut share.
REFUSAL = re.compile(
    r"\b(I'?m sorry|I am sorry|I apologi[sz]e|I can'?not|I can'?t|I won'?t|I'?m (?:not able|unable)|I am (?:not able|"
    r"unable)|as an AI|not appropriate|I'?d rather not|I do not feel comfortable|I'?m not comfortable)\b",
    re.IGNORECASE,
)


def refusal_share(texts: list[str]) -> float:
    """Share of answers with a refusal or apology phrase (REFUSAL)."""
    return sum(bool(REFUSAL.search(t)) for t in texts) / max(len(texts), 1)


def common_phrase(texts: list[str], words: int = 4) -> tuple[str, float]:
    """The run of `words` words found in the most answers (the first seen among equals), and the share of answers
    that contain it."""
    from collections import Counter

    counts = Counter()
    for text in texts:
        tokens = re.findall(r"[\w']+", text.lower())
        counts.update(list(dict.fromkeys(" ".join(tokens[i : i + words]) for i in range(len(tokens) - words + 1))))
    if not counts:
        return "", 0.0
    phrase, found = counts.most_common(1)[0]
    return phrase, found / max(len(texts), 1)
