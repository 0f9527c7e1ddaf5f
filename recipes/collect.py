"""Collect: K answers per prompt from any stage's model, sampled into the comparison store for ranking.

    python recipes/collect.py --config configs/smollm2-135m/collect.yaml --model outputs/smollm2-135m/ppo --round 1
    python recipes/collect.py --config configs/smollm2-135m/collect.yaml --import_path 2023-04-12_oasst_ready.trees.jsonl

Round r answers the r-th slice of the prompt split (new prompts every round; the held-out split is never sampled).
The store is one SQLite file (WAL) by default, or a SQLAlchemy URL (`--store postgresql+psycopg://...`); each prompt
is one transaction, so a killed run keeps what it saved and a rerun adds only what is missing. `--import_path`
brings rankings made elsewhere (OpenAssistant trees, a ranking dataset, an Argilla export) into the same store.
Then rank them: recipes/label.py.
"""

from rlhf_recipes import stages
from rlhf_recipes.feedback.collect import run_collect
from rlhf_recipes.feedback.config import CollectArguments

STAGE = stages.get("collect")


def main(args: CollectArguments) -> dict:
    report = run_collect(args)  # LoadedModel.answers: sampled at `temperature`, K per prompt, one transaction each
    print(f"round {args.round}: {report}")
    return report


if __name__ == "__main__":
    stages.run_recipe(STAGE, main)
