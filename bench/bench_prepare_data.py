"""Rows per second of recipes/prepare_data.py's cleaning and dedup on generated records (a measurement, not a test).

    python bench/bench_prepare_data.py                          # 100k SFT conversations, num_proc: all cores
    python bench/bench_prepare_data.py --rows 20000 --kind text --num-proc 1

Records are random sentences of real words (single tokens of the SmolLM2 vocabulary). The generated set has what
cleaning is for: 5% exact duplicates (case and spacing changed), 5% near-duplicates (one
word changed), 1% empty answers, 1% too long, and 1% that repeat a held-out question. It is written as JSONL and run
through the real recipe (normalise, token-length filter with the SmolLM2 tokenizer and chat-template check, exact
dedup, MinHash LSH near-dedup, decontamination against 1,000 held-out records, mixture, write, report).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "recipes"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def vocabulary(tokenizer, rng: random.Random, size: int = 5000) -> list[str]:
    """Real words: lower-case alphabetic single tokens of the tokenizer (about one token per word, as in English)."""
    words = sorted(
        {
            t[1:]
            for t in tokenizer.get_vocab()
            if t.startswith("Ġ") and t[1:].isalpha() and t[1:].islower() and 3 <= len(t) <= 10
        }
    )
    return rng.sample(words, size)


def sentence(rng: random.Random, words: list[str], low: int, high: int) -> str:
    return " ".join(rng.choice(words) for _ in range(rng.randint(low, high))).capitalize() + "."


def generate(rows: int, kind: str, seed: int, tokenizer) -> tuple[list[dict], list[dict]]:
    """(training records, held-out records) in the `messages` or `text` format."""
    rng = random.Random(seed)
    words = vocabulary(tokenizer, rng)

    def record(question: str, answer: str) -> dict:
        if kind == "text":
            return {"text": f"{question}\n\n{answer}"}
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}

    held_out = [(sentence(rng, words, 14, 20), sentence(rng, words, 10, 30)) for _ in range(1000)]
    pairs = []
    for _ in range(rows):
        roll = rng.random()
        if roll < 0.05 and pairs:  # exact duplicate up to case and spacing
            question, answer = rng.choice(pairs)
            pairs.append((question.upper(), answer.replace(" ", "  ")))
        elif roll < 0.10 and pairs:  # near duplicate: one word changed
            question, answer = rng.choice(pairs)
            tokens = answer.split() or [""]
            tokens[rng.randrange(len(tokens))] = rng.choice(words)
            pairs.append((question, " ".join(tokens)))
        elif roll < 0.11:
            pairs.append((sentence(rng, words, 5, 15), "   "))
        elif roll < 0.12:
            pairs.append((sentence(rng, words, 5, 15), sentence(rng, words, 1500, 1600)))
        elif roll < 0.13:
            pairs.append((rng.choice(held_out)[0], sentence(rng, words, 20, 60)))
        else:
            pairs.append((sentence(rng, words, 6, 20), " ".join(sentence(rng, words, 8, 20) for _ in range(3))))
    return [record(q, a) for q, a in pairs], [record(q, a) for q, a in held_out]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--kind", choices=("messages", "text"), default="messages")
    parser.add_argument("--num-proc", type=int, default=None, help="datasets.map workers (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import prepare_data

    from rlhf_recipes.models import DEFAULT_MODEL, load_tokenizer, resolve_model_path

    tokenizer = load_tokenizer(resolve_model_path(DEFAULT_MODEL))  # also warms the one-off import of torch
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as folder:
        root = Path(folder)
        started = time.time()
        train, held_out = generate(args.rows, args.kind, args.seed, tokenizer)
        for name, records in (("train", train), ("test", held_out)):
            with open(root / f"{name}.jsonl", "w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(r) + "\n" for r in records)
        generated = time.time() - started
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
        started = time.time()
        report = prepare_data.main(["--config", str(root / "data.yaml")])[0]
        total = time.time() - started
    train_split = report["splits"]["train"]
    summary = {
        "rows": args.rows,
        "kind": args.kind,
        "num_proc": config["num_proc"],
        "cpu_count": os.cpu_count(),
        "generate_s": round(generated, 1),
        "load_convert_s": round(total - report["elapsed_s"], 1),
        "clean_dedup_write_s": report["elapsed_s"],
        "total_s": round(total, 1),
        "rows_out": train_split["rows_out"],
        "dropped": {reason: info["count"] for reason, info in train_split["dropped"].items()},
        "clean_dedup_rows_per_s": round((args.rows + len(held_out)) / report["elapsed_s"]),
        "end_to_end_rows_per_s": round((args.rows + len(held_out)) / total),
    }
    print(json.dumps(summary, indent=2))
    print(
        f"cleaning + dedup: {args.rows + len(held_out):,} rows in {report['elapsed_s']:.1f} s = "
        f"{summary['clean_dedup_rows_per_s']:,} rows/s ({summary['end_to_end_rows_per_s']:,} rows/s with loading)"
    )


if __name__ == "__main__":
    main()
