"""Perplexity from per-document negative log-likelihoods: exp(total NLL / total predicted tokens), so that long and
short documents weigh by their token counts (the model's forward pass is done by the caller, once per model)."""

import math

import datasets
import evaluate


class TokenPerplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="nll_sums: summed token NLL per document; token_counts: predicted tokens per document.",
            features=datasets.Features(
                {"nll_sums": datasets.Value("float64"), "token_counts": datasets.Value("int64")}
            ),
        )

    def _compute(self, nll_sums, token_counts):
        return {"perplexity": math.exp(sum(nll_sums) / max(sum(token_counts), 1))}
