"""Data preparation: collect, clean and format the data every later stage trains on.

    python recipes/prepare_data.py --config configs/smollm2-135m/data.yaml
    python recipes/prepare_data.py --config configs/smollm2-135m/data.yaml --only sft --datasets.sft.cleaning.max_tokens 512
    python recipes/prepare_data.py --help      # the config schema

One YAML names the datasets to build (CPT text, SFT conversations, reward-model preference pairs, PPO prompts), each
from local files (JSONL/JSON, also .gz/.bz2/.xz/.zst; CSV; Parquet shards; plain text) or Hub ids in any supported
format. Every dataset is normalised, filtered by token length, deduplicated (exactly and with MinHash LSH),
decontaminated against its held-out sets, mixed by source weight, and written as `train.jsonl` (+ `test.jsonl`) in
TRL's standard format with `report.md`, `report.json` and token-length histograms. Each output folder appears only once
every dataset is done. The command line is parsed by `rlhf_recipes.data.config.parse_argv` (the stage "data").
"""

from __future__ import annotations

import logging

from rlhf_recipes import stages
from rlhf_recipes.config import Origin
from rlhf_recipes.data.config import DataConfig
from rlhf_recipes.data.prepare import prepare

STAGE = stages.get("data")

logger = logging.getLogger("rlhf_recipes.prepare_data")


def main(config: DataConfig, where: Origin, only: list[str] | None = None) -> list[dict]:
    # Load, convert, clean, mix and write every dataset (all outputs appear together at the end)
    reports = prepare(config, where, only)

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
    stages.run_recipe(STAGE, main)
