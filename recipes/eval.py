"""Evaluate any model, folder or adapter against the demo's held-out data, stage against stage.

    python recipes/evaluate.py --config configs/smollm2-135m/evaluate.yaml
    python recipes/evaluate.py --sft_model outputs/smollm2-135m/sft --output_dir /tmp/eval   # one model alone

Writes eval.json (results, targets, side-by-side answers), report.md and PNG plots into `output_dir`.
"""

import sys
from pathlib import Path

# This file is named like the `evaluate` library: keep its folder off the import path so `import evaluate` finds it.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from rlhf_recipes import cli  # noqa: E402
from rlhf_recipes.evaluation import EvaluationArguments, run_evaluation, summary_table  # noqa: E402


def main(args: EvaluationArguments) -> dict:
    report = run_evaluation(args)
    print(summary_table(report))
    print(f"\nReport: {Path(args.output_dir) / 'report.md'}")
    return report


if __name__ == "__main__":
    cli.run(lambda: main(*cli.parse_config((EvaluationArguments,))))
