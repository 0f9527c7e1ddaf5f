"""Will it fit? Estimate the peak memory of training stages from their configs, before loading anything.

    python recipes/plan.py --config configs/smollm2-135m/sft.yaml
    python recipes/plan.py --config configs/smollm2-135m/pipeline.yaml                 # every training stage
    python recipes/plan.py --config configs/qwen2.5-7b-instruct/sft.yaml --device cuda:24GiB
    python recipes/plan.py --config configs/smollm2-135m/sft.yaml --per_device_train_batch_size 16 --strict

Reads each stage's YAML through the recipe's own dataclasses (same keys, same defaults; `--key value` overrides
work as on the recipes) and the model's config.json (no weights), then prints one table per stage: weights,
trainable state, activations, logits, PPO's four models and generation, and the device's own share. The estimate is
for the largest batch the config allows (`max_length` tokens per row), on one device (DDP: per GPU). Exit code 1
with --strict when a stage does not fit; 2 for a bad config.
"""

import argparse
import json
import logging
import sys

from rlhf_recipes import cli


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
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
    parser.add_argument("--stage", choices=("cpt", "sft", "reward", "ppo"), help="when a YAML's header does not say")
    parser.add_argument(
        "--sequence_length", type=int, help="tokens per row to plan for instead of max_length (your longest batch)"
    )
    parser.add_argument(
        "--prompt_length", type=int, help="PPO: tokens in the longest prompt (default: estimated from local data)"
    )
    parser.add_argument("--strict", action="store_true", help="exit with code 1 when a stage will not fit")
    parser.add_argument("--json", action="store_true", help="print the plans as JSON instead of tables")
    return parser.parse_known_args(argv)


def main(argv=None) -> list:
    args, overrides = parse_args(argv)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its CPU-kernel notice is not part of a plan
    from rlhf_recipes import memory

    plans = []
    for path in args.config:
        plans += memory.plan_file(
            path,
            overrides,
            device=args.device,
            stage=args.stage,
            sequence_length=args.sequence_length,
            prompt_tokens=args.prompt_length,
        )
    if args.json:
        print(json.dumps([plan.to_dict() for plan in plans], indent=2))
    else:
        print("\n\n".join(plan.format() for plan in plans))
    too_big = [plan.stage for plan in plans if plan.fits is False]
    if too_big and args.strict:
        print(f"error: {', '.join(too_big)} will not fit the device (--strict).", file=sys.stderr)
        sys.exit(1)
    return plans


if __name__ == "__main__":
    cli.run(main)
