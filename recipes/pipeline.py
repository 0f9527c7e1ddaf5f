"""The main job: data -> continued pretraining -> SFT -> reward model -> PPO -> evaluation, one command.

    python recipes/pipeline.py --config configs/smollm2-135m/pipeline.yaml          # or: make demo
    python recipes/pipeline.py --config configs/smollm2-135m/pipeline.yaml --set sft.learning_rate=1e-4
    python recipes/pipeline.py --config configs/smollm2-135m/pipeline.yaml --model Qwen/Qwen2.5-0.5B-Instruct \
        --output_dir outputs/qwen2.5-0.5b

Each stage runs its own recipe in a subprocess (the command is printed) and logs to <output_dir>/logs/. Rerunning
skips the stages whose config, overrides and inputs are unchanged, reruns what changed and everything after it, and
resumes an interrupted stage from its last checkpoint.
"""

import argparse

from rlhf_recipes import cli
from rlhf_recipes.pipeline import load_pipeline_config, run_pipeline, summary


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="pipeline YAML, e.g. configs/smollm2-135m/pipeline.yaml")
    parser.add_argument("--output_dir", help="override the YAML's output_dir (every stage writes below it)")
    parser.add_argument(
        "--model", help="override the base model: a Hub id, a folder or embedded:SmolLM2-135M-Instruct"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="STAGE.KEY=VALUE",
        help="override one key of one stage's YAML; repeatable",
    )
    parser.add_argument("--stages", help="comma-separated stage names to run (the others are left as they are)")
    parser.add_argument("--force", action="store_true", help="rerun the selected stages even when unchanged")
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    config = load_pipeline_config(args.config, {"output_dir": args.output_dir, "model": args.model})
    stages = {stage.name: stage for stage in config.stages}
    for item in args.set:
        name, _, assignment = item.partition(".")
        key, equals, value = assignment.partition("=")
        if name not in stages or not key or not equals:
            raise cli.UserError(f"--set {item} must look like STAGE.KEY=VALUE with STAGE one of {', '.join(stages)}.")
        stages[name].args[key] = value
    only = [s.strip() for s in args.stages.split(",")] if args.stages else None
    rows = run_pipeline(config, only=only, force=args.force)
    print("\n" + summary(config, rows))
    return rows


if __name__ == "__main__":
    cli.run(main)
