"""Domain accuracy: a generated answer is right when it contains the reference answer or one of its aliases after
normalisation (lower case, punctuation, articles and extra spaces removed, as in SQuAD's answer matching)."""

import re
import string

import datasets
import evaluate

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())


class DomainAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions: generated answers; references: accepted answers per question.",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
        )

    def _compute(self, predictions, references):
        hits = [
            any(normalize(answer) and f" {normalize(answer)} " in f" {normalize(prediction)} " for answer in answers)
            for prediction, answers in zip(predictions, references)
        ]
        return {"accuracy": sum(hits) / max(len(hits), 1), "correct": hits}
