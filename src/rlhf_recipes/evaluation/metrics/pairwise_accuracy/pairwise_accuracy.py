"""Pairwise accuracy of a reward model: the share of preference pairs where the chosen answer outscores the rejected
one, with the mean margin between them."""

import datasets
import evaluate


class PairwiseAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="chosen_rewards, rejected_rewards: the reward model's scores for each pair.",
            features=datasets.Features(
                {"chosen_rewards": datasets.Value("float32"), "rejected_rewards": datasets.Value("float32")}
            ),
        )

    def _compute(self, chosen_rewards, rejected_rewards):
        margins = [c - r for c, r in zip(chosen_rewards, rejected_rewards)]
        return {
            "accuracy": sum(m > 0 for m in margins) / max(len(margins), 1),
            "mean_margin": sum(margins) / max(len(margins), 1),
        }
