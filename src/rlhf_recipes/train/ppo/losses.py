"""PPO's arithmetic, each step a short function with its formula: the KL penalty, the shaped rewards, whitening,
generalised advantage estimation (GAE), and the clipped policy and value losses.

Shapes: every per-token tensor is `[rows, answer positions]`. `mask` is True at the positions that count. The
formulas are TRL 1.12's (tests/test_ppo_parity.py holds the whole loop to its recorded numbers); the references are
Schulman et al. 2017 (PPO), Schulman et al. 2016 (GAE), Ziegler et al. 2019 (the KL-shaped reward) and
http://joschu.net/blog/kl-approx.html (the k1 and k3 estimators).
"""

from __future__ import annotations

import torch

INVALID_LOGPROB = 1.0  # the log-prob written at positions after an answer's end (TRL's value; masked everywhere)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """sum(x · m) / sum(m), over `axis` or over everything."""
    if axis is None:
        return (values * mask).sum() / mask.sum()
    return (values * mask).sum(axis) / mask.sum(axis)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """The variance of the masked entries, with Bessel's correction n / (n - 1) when `unbiased`."""
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        count = mask.sum()
        if count == 0:
            raise ValueError("The mask has no entries; a variance needs at least one.")
        if count == 1:
            raise ValueError("The mask has one entry; Bessel's correction would divide by zero.")
        variance = variance * (count / (count - 1))
    return variance


def whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / sqrt(var + 1e-8) over the masked entries; with `shift_mean=False` the mean is added back, so
    only the scale changes (how rewards are whitened)."""
    mean, variance = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    return whitened if shift_mean else whitened + mean


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token KL(policy || reference) estimated from the sampled token's log-probs, with log r = log p_ref - log p:
    k1 = -log r (unbiased; negative for some tokens), k3 = (r - 1) - log r (unbiased, never negative)."""
    log_ratio = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_ratio
    return (log_ratio.exp() - 1) - log_ratio


def shaped_rewards(scores: torch.Tensor, kl: torch.Tensor, kl_coef: float, last: torch.Tensor) -> torch.Tensor:
    """r_t = -kl_coef · KL_t at every answer token, plus the reward model's score on the token after the answer's
    last (`last` + 1; on `last` itself when the answer fills every position)."""
    rewards = -kl_coef * kl
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    end = torch.where(last + 1 < rewards.shape[1], last + 1, last)
    rewards[rows, end] += scores
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation, from the last position back:
    delta_t = r_t + gamma · V_(t+1) - V_t (V after the last position is 0), A_t = delta_t + gamma · lam · A_(t+1);
    the returns the value model learns are R_t = A_t + V_t."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else 0.0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    return advantages, advantages + values


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cliprange: float
) -> dict[str, torch.Tensor]:
    """The clipped surrogate: ratio = exp(log p - log p_old),
    L = mean over answer tokens of max(-A · ratio, -A · clip(ratio, 1 - cliprange, 1 + cliprange)).
    Also returns the share of tokens where clipping took effect, the approximate KL ½ · mean((log p - log p_old)²)
    and the ratio (for the logs)."""
    difference = logprobs - old_logprobs
    ratio = torch.exp(difference)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    return {
        "loss": masked_mean(torch.max(unclipped, clipped), mask),
        "clipfrac": masked_mean((clipped > unclipped).float(), mask),
        "approxkl": 0.5 * (difference**2).mean(),
        "ratio": ratio,
    }


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange_value: float
) -> dict[str, torch.Tensor]:
    """The clipped value loss: V_clip = clip(V, V_old - cliprange_value, V_old + cliprange_value),
    L = ½ · mean over positions of max((V - R)², (V_clip - R)²); also the share of positions where the clip bound."""
    clipped_values = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)
    unclipped, clipped = torch.square(values - returns), torch.square(clipped_values - returns)
    return {
        "loss": 0.5 * masked_mean(torch.max(unclipped, clipped), mask),
        "clipfrac": masked_mean((clipped > unclipped).float(), mask),
    }


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy of softmax(logits): logsumexp(z) - sum(softmax(z) · z)."""
    probabilities = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probabilities * logits).sum(-1)
