"""Data preparation: collect, clean and format the data every later stage trains on.

    python recipes/prepare_data.py --config configs/smollm2-135m/data.yaml
    python recipes/prepare_data.py --config configs/smollm2-135m/data.yaml --only sft --datasets.sft.cleaning.max_tokens 512

One YAML names the datasets to build (CPT text, SFT conversations, reward-model preference pairs, PPO prompts), each
from local files or Hub ids in any supported format. Every dataset is normalised, filtered by token length, deduplicated
(exactly and with MinHash LSH), decontaminated against its held-out sets, mixed by source weight, and written as
`train.jsonl` (+ `test.jsonl`) in TRL's standard format with `report.md`, `report.json` and token-length histograms.
Each output folder appears only once every dataset is done. Run with --help for the config schema.
"""

from __future__ import annotations

import argparse
import logging

from rlhf_recipes.cli import run
from rlhf_recipes.preparation import load_config, prepare, schema_help

logger = logging.getLogger("rlhf_recipes.prepare_data")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="prepare_data.py",
        description=__doc__.split("\n\n")[0],
        epilog=schema_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="the data YAML, e.g. configs/smollm2-135m/data.yaml")
    parser.add_argument("--only", help="comma-separated names of the datasets to prepare (default: all of them)")
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args, overrides = parse_args(argv)
    config, origin = load_config(args.config, overrides)
    only = [name.strip() for name in args.only.split(",") if name.strip()] if args.only else None

    # Load, convert, clean, mix and write every dataset (all outputs appear together at the end)
    reports = prepare(config, origin, only)

    # Summary
    for report in reports:
        splits = ", ".join(
            f"{split} {data['rows_in']} -> {data['rows_out']} rows" for split, data in report["splits"].items()
        )
        logger.info(
            "%s (%s): %s; report in %s/report.md", report["name"], report["kind"], splits, report["output_dir"]
        )
    return reports


if __name__ == "__main__":
    run(main)
