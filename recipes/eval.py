"""Evaluate models stage against stage on held-out data, with a judge the reward model never saw.

    python recipes/eval.py --config configs/smollm2-135m/eval.yaml
    python recipes/eval.py --config configs/smollm2-135m/eval.yaml --max_rows 8 --output_dir /tmp/eval
    python recipes/eval.py --models '{sft: outputs/smollm2-135m/sft}' --output_dir /tmp/eval   # one model alone

Each model is evaluated as the stage that made it (its lineage.json): perplexity and domain accuracy for every
causal LM; for RL outputs and their baseline, sampled answers to held-out prompts scored by the reward model (mean
with a bootstrap interval), the judge, KL to the baseline, answer length, the share cut without EOS and the
reward-length correlation; the reward model's held-out pairwise accuracy. Writes eval.json, report.md and plots.
"""

from pathlib import Path

from rlhf_recipes import stages
from rlhf_recipes.evaluation.config import EvaluationArguments
from rlhf_recipes.evaluation.report import summary_table
from rlhf_recipes.evaluation.run import run_evaluation

STAGE = stages.get("eval")


def main(args: EvaluationArguments) -> dict:
    report = run_evaluation(args)
    print(summary_table(report))
    print(f"\nReport: {Path(args.output_dir) / 'report.md'}")
    return report


if __name__ == "__main__":
    stages.run_recipe(STAGE, main)
