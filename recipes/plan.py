"""Will it fit? Estimate the peak memory of training stages from their configs, before loading anything.

    python recipes/plan.py --config configs/smollm2-135m/sft.yaml
    python recipes/plan.py --config configs/smollm2-135m/pipeline.yaml                 # every training stage
    python recipes/plan.py --config configs/qwen2.5-7b-instruct/sft.yaml --device cuda:24GiB
    python recipes/plan.py --config configs/smollm2-135m/sft.yaml --per_device_train_batch_size 16 --strict

Each YAML is parsed exactly as its recipe parses it (the stage registry, src/rlhf_recipes/stages/, says which
stage a file configures and how): the same keys, defaults and range checks, `--key value` overrides as on the
recipes (on a pipeline YAML: as on the pipeline, and a plain `--key value` goes to every stage that has the key), and
the precision resolved for this machine (`bf16: auto`). From the model's config.json (no weights) it prints one
table per stage: weights, trainable state, activations, logits, PPO's four models and generation, and the device's
own share. The estimate is for the largest batch the config allows (`max_length` tokens per row), on one device
(DDP: per GPU). Exit code 1 with --strict when a stage does not fit; 2 for a bad config or flag.
"""

import argparse
import json
import logging
import sys

from rlhf_recipes import cli, errors


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    from rlhf_recipes.plan.run import plannable

    parser = argparse.ArgumentParser(
        usage="%(prog)s --config YAML [--config YAML ...] [--device DEVICE] [--strict] [--json] [--KEY VALUE ...]",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", action="append", required=True, help="stage or pipeline YAML; repeat to plan several"
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (the config's use_cpu, else a visible GPU, else CPU), cpu, cpu:64GiB, cuda or cuda:24GiB",
    )
    parser.add_argument(
        "--stage", choices=plannable(), help="the stage a YAML configures, when its file name does not say"
    )
    parser.add_argument(
        "--sequence_length", type=int, help="tokens per row to plan for instead of max_length (your longest batch)"
    )
    parser.add_argument(
        "--prompt_length", type=int, help="PPO: tokens in the longest prompt (default: estimated from local data)"
    )
    parser.add_argument("--strict", action="store_true", help="exit with code 1 when a stage will not fit")
    parser.add_argument("--json", action="store_true", help="print the plans as JSON instead of tables")
    parser.error = refuse  # a bad flag is one sentence and exit code 2, like every other user error
    return parser.parse_known_args(argv)


def refuse(message: str):
    raise errors.UserError(f"{message}; see python recipes/plan.py --help.")


def main(argv=None) -> list:
    args, overrides = parse_args(argv)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its CPU-kernel notice is not part of a plan
    from rlhf_recipes import plan

    plans = []
    for path in args.config:
        plans += plan.plan_file(
            path,
            overrides,
            device=args.device,
            stage=args.stage,
            sequence_length=args.sequence_length,
            prompt_tokens=args.prompt_length,
        )
    if args.json:
        print(json.dumps([stage_plan.to_dict() for stage_plan in plans], indent=2))
    else:
        print("\n\n".join(stage_plan.format() for stage_plan in plans))
    too_big = [stage_plan.stage for stage_plan in plans if stage_plan.fits is False]
    if too_big and args.strict:
        print(f"error: {', '.join(too_big)} will not fit the device (--strict).", file=sys.stderr)
        sys.exit(1)
    return plans


if __name__ == "__main__":
    cli.run(main)
