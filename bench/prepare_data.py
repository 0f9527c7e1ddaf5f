"""`make bench-data`: rows per second of data preparation's cleaning and dedup on generated records.

    python -m bench.prepare_data                                  # 100k SFT conversations, num_proc: all cores
    python -m bench.prepare_data --rows 20000 --kind text --num_proc 1

Records are random sentences of real words (single tokens of the SmolLM2 vocabulary), with what cleaning is for
(synthetic.Synthetic.records_to_clean): 5% exact duplicates (case and spacing changed), 5% near duplicates (one word
changed), 1% empty answers, 1% too long, and 1% that repeat a held-out question. They are written as JSONL and run
through the data stage, in a fresh process started through the registry (harness.run_stage("data", ...)), as
`python recipes/prepare_data.py --config ...` runs it: normalise, token-length filter with the SmolLM2 tokenizer and
chat-template check, exact dedup, MinHash LSH near-dedup, decontamination against 1,000 held-out records, mixture,
write, report. Writes bench/results/prepare_data.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import yaml

from bench import harness, synthetic
from bench.harness import RESULTS


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--kind", choices=("messages", "text"), default="messages")
    parser.add_argument("--num_proc", type=int, default=None, help="datasets.map workers (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS), help="folder for prepare_data.json")
    args = parser.parse_args(argv)

    from rlhf_recipes.models import DEFAULT_MODEL, load_tokenizer, resolve_model_path

    tokenizer = load_tokenizer(resolve_model_path(DEFAULT_MODEL))
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as folder:
        root = Path(folder)
        started = time.perf_counter()
        train, held_out = synthetic.Synthetic(tokenizer, args.seed).records_to_clean(args.rows, args.kind)
        for name, records in (("train", train), ("test", held_out)):
            with open(root / f"{name}.jsonl", "w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(r) + "\n" for r in records)
        generated = time.perf_counter() - started
        config = {
            "output_root": str(root / "out"),
            "num_proc": args.num_proc or os.cpu_count(),
            "cleaning": {"min_tokens": 8, "max_tokens": 1024},
            "datasets": {
                "bench": {
                    "kind": args.kind,
                    "sources": [str(root / "train.jsonl")],
                    "eval_sources": [str(root / "test.jsonl")],
                }
            },
        }
        (root / "data.yaml").write_text(yaml.safe_dump(config))
        record = harness.run_stage("data", ["--config", str(root / "data.yaml")], root / "prepare.log")
    report = record["result"][0]
    train_split = report["splits"]["train"]
    rows_in = args.rows + len(held_out)
    summary = {
        "rows": args.rows,
        "kind": args.kind,
        "num_proc": config["num_proc"],
        "cpu_count": os.cpu_count(),
        "generate_s": round(generated, 1),
        "load_convert_s": round(record["run_seconds"] - report["elapsed_s"], 1),  # the stage's run, less cleaning
        "clean_dedup_write_s": report["elapsed_s"],
        "total_s": round(record["run_seconds"], 1),
        "process_s": record["wall_seconds"],  # with the interpreter's start and imports
        "peak_rss_mib": record["peak_rss_mib"],
        "rows_out": train_split["rows_out"],
        "dropped": {reason: info["count"] for reason, info in train_split["dropped"].items()},
        "clean_dedup_rows_per_s": round(rows_in / report["elapsed_s"]),
        "end_to_end_rows_per_s": round(rows_in / record["run_seconds"]),
        "commit": harness.commit(),
    }
    print(json.dumps(summary, indent=2))
    print(
        f"cleaning + dedup: {rows_in:,} rows in {report['elapsed_s']:.1f} s = {summary['clean_dedup_rows_per_s']:,} "
        f"rows/s ({summary['end_to_end_rows_per_s']:,} rows/s with loading; peak RSS {record['peak_rss_mib']:.0f} MiB)"
    )
    harness.write_json(Path(args.out) / "prepare_data.json", summary)
    return summary


if __name__ == "__main__":
    harness.main(main)
