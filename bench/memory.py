"""Planned vs measured peak memory of every training stage on the embedded SmolLM2-135M-Instruct, on CPU.

    python bench/memory.py [--stages cpt,sft,reward,ppo] [--steps 3] [--work_dir /tmp/bench-memory]

Each stage recipe runs from its shipped YAML (configs/smollm2-135m/) in its own subprocess for a few steps, with
saving and evaluation off; its peak resident set size is the child's own `ru_maxrss` from `os.wait4`. The plan is
`rlhf_recipes.memory` on the same config and overrides, made before anything is loaded.

The planner estimates the worst batch a config allows (`max_length` tokens per row), so the measured runs are fed
batches of that length: CPT packs documents into full `max_length` rows already; SFT and reward get full-length
versions of the demo data built here (demo conversations joined into long multi-turn ones; the shipped demo rows are
~60 tokens and would measure a much smaller run than the config permits). PPO uses the shipped prompts; its policy
and reward model are this bench's own SFT and reward outputs (merged into full checkpoints by a separate process
first, so that merging is not measured as training).

Writes bench/results/memory.json and bench/results/memory.md. Run it alone on the machine: other processes do not
change a child's RSS, but they do slow it down.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "smollm2-135m"
RESULTS = REPO / "bench" / "results"
STAGES = ("cpt", "sft", "reward", "ppo")
# Held-out checks: settings the constants were not fitted on, run the same way (--held_out, or name them in --stages)
VARIANTS = {
    "sft-full": ("sft", ["--use_peft", "false"]),  # every weight trains: gradients + AdamW states
    "sft-batch2": ("sft", ["--per_device_train_batch_size", "2"]),
    "cpt-512": ("cpt", ["--per_device_train_batch_size", "2", "--max_length", "512"]),
    "reward-batch2": ("reward", ["--per_device_train_batch_size", "2"]),
    "reward-checkpointing": ("reward", ["--gradient_checkpointing", "true"]),
}
GIB = 2**30


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_split(folder: Path, rows: list[dict]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(folder)


def _length(tokenizer, messages: list[dict]) -> int:
    return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


def build_long_sft(tokenizer, max_length: int, rows: int, out: Path) -> str:
    """Demo conversations joined into multi-turn ones of more than `max_length` tokens (SFT truncates them)."""
    conversations = _read_jsonl(REPO / "data" / "demo" / "sft" / "train.jsonl")
    built, index = [], 0
    while len(built) < rows:
        messages = []
        while not messages or _length(tokenizer, messages) <= max_length + 32:
            messages += conversations[index % len(conversations)]["messages"]
            index += 1
        built.append({"messages": messages})
    return _write_split(out, built)


def build_long_preferences(tokenizer, max_length: int, rows: int, out: Path) -> str:
    """Preference pairs whose prompt carries demo conversation history, so that chosen and rejected are each just
    under `max_length` tokens (RewardTrainer drops pairs over it; the collator pads to the longest in the batch)."""
    pairs = _read_jsonl(REPO / "data" / "demo" / "preferences" / "train.jsonl")
    history = _read_jsonl(REPO / "data" / "demo" / "sft" / "train.jsonl")
    built, index = [], 0

    def length(pair, extra):
        return max(_length(tokenizer, extra + pair["prompt"] + pair[key]) for key in ("chosen", "rejected"))

    for pair in pairs:
        if len(built) == rows:
            break
        extra = []
        while True:
            turn = history[index % len(history)]["messages"]
            index += 1
            if length(pair, extra + turn) > max_length:
                break
            extra += turn
        if length(pair, extra) >= max_length - 48:  # within 48 tokens of the limit: a full-length batch
            built.append({**pair, "prompt": extra + pair["prompt"]})
    return _write_split(out, built)


def measure(argv: list[str], log_path: Path) -> tuple[float, float]:
    """Run one child; return (peak RSS in GiB from its own rusage, wall seconds). Raises if it fails."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    started = time.time()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not the max over all children
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed with exit code {proc.returncode}; see {log_path}")
    return usage.ru_maxrss * 1024 / GIB, time.time() - started  # Linux reports ru_maxrss in KiB


def stage_overrides(stage: str, work: Path, steps: int, data: dict[str, str], name: str | None = None) -> list[str]:
    folder = work / (name or stage)
    common = ["--output_dir", str(folder), "--report_to", "none", "--logging_steps", "1"]
    if stage == "ppo":
        config = __import__("yaml").safe_load((CONFIGS / "ppo.yaml").read_text())
        per_update = config["per_device_train_batch_size"] * config["gradient_accumulation_steps"]
        return common + [
            "--model_name_or_path",
            str(work / "sft"),
            "--reward_model_path",
            str(work / "reward"),
            "--total_episodes",
            str(2 * per_update),  # two PPO updates: the second one runs with the optimizer state allocated
        ]
    overrides = common + ["--max_steps", str(steps), "--save_strategy", "no", "--eval_strategy", "no"]
    if stage in data:
        overrides += ["--dataset_name", data[stage]]
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--stages", default=",".join(STAGES), help="comma-separated, from " + ",".join([*STAGES, *VARIANTS])
    )
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per stage (PPO: always 2 updates)")
    parser.add_argument("--work_dir", default="/tmp/bench-memory", help="data, outputs and logs of the runs")
    parser.add_argument(
        "--held_out", action="store_true", help="also run the held-out variants: " + ", ".join(VARIANTS)
    )
    args = parser.parse_args()
    names = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [n for n in names if n not in STAGES and n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown stage or variant {unknown[0]}; choose from {', '.join([*STAGES, *VARIANTS])}")
    if args.held_out:
        names += [name for name, (stage, _) in VARIANTS.items() if stage in names and name not in names]
    runs = [(name, *VARIANTS[name]) if name in VARIANTS else (name, name, []) for name in names]
    stages = {stage for _, stage, _ in runs}
    work = Path(args.work_dir)
    sys.path.insert(0, str(REPO / "src"))
    import yaml

    from rlhf_recipes import memory
    from rlhf_recipes.models import DEFAULT_MODEL, load_tokenizer, resolve_model_path

    # Full-length data for SFT and reward (the tokenizer only: no weights in this process)
    tokenizer = load_tokenizer(resolve_model_path(DEFAULT_MODEL))
    data = {}
    if "sft" in stages:
        max_length = yaml.safe_load((CONFIGS / "sft.yaml").read_text())["max_length"]
        data["sft"] = build_long_sft(tokenizer, max_length, rows=8 * (args.steps + 1), out=work / "data" / "sft")
    if "reward" in stages:
        max_length = yaml.safe_load((CONFIGS / "reward.yaml").read_text())["max_length"]
        data["reward"] = build_long_preferences(
            tokenizer, max_length, rows=8 * (args.steps + 1), out=work / "data" / "preferences"
        )

    device = memory.Device.cpu()
    rows = []
    for name, stage, extra in runs:
        config = (CONFIGS / f"{stage}.yaml").relative_to(REPO)
        overrides = stage_overrides(stage, work, args.steps, data, name) + extra
        if stage == "ppo":  # merge the SFT and reward adapters now, in a process that is not measured
            for folder in (work / "sft", work / "reward"):
                if not (folder / "lineage.json").is_file():
                    raise SystemExit(f"PPO needs {folder}: run the bench with --stages sft,reward,ppo first.")
            warm = "from rlhf_recipes.models import resolve_model_path as r; import sys; [r(p) for p in sys.argv[1:]]"
            measure([sys.executable, "-c", warm, str(work / "sft"), str(work / "reward")], work / "logs" / "merge.log")
        plan = memory.plan_config(str(config), overrides, device=device)
        argv = [sys.executable, f"recipes/{stage}.py", "--config", str(config), *overrides]
        print(f"[{name}] {' '.join(argv[1:])}", flush=True)
        peak, seconds = measure(argv, Path(overrides[1]).with_suffix(".log"))
        planned = plan.total / GIB
        rows.append(
            {
                "stage": name,
                "held_out": name != stage,
                "planned_gib": round(planned, 3),
                "measured_peak_rss_gib": round(peak, 3),
                "error_percent": round(100 * (planned - peak) / peak, 1),
                "seconds": round(seconds, 1),
                "plan": plan.to_dict(),
                "command": "python " + " ".join(argv[1:]),
                "overrides": overrides,
                "config_sha256": hashlib.sha256((REPO / config).read_bytes()).hexdigest(),  # tests skip stale rows
            }
        )
        print(f"[{name}] planned {planned:.2f} GiB, measured {peak:.2f} GiB, error {rows[-1]['error_percent']:+.1f}%")

    write_report(rows)


def write_report(rows: list[dict]) -> None:
    """Merge `rows` into bench/results/memory.json (by stage name) and rewrite memory.md from it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    previous = json.loads((RESULTS / "memory.json").read_text()) if (RESULTS / "memory.json").is_file() else {}
    by_stage = {row["stage"]: row for row in previous.get("rows", [])}
    by_stage.update({row["stage"]: row for row in rows})
    rows = [by_stage[name] for name in [*STAGES, *VARIANTS] if name in by_stage]
    lines = ["| stage | planned GiB | measured peak RSS GiB | error | run seconds |", "|---|---|---|---|---|"]
    for r in rows:
        name = r["stage"] + (" (held out)" if r.get("held_out") else "")
        error, measured = f"{r['error_percent']:+.1f}%", r["measured_peak_rss_gib"]
        lines.append(f"| {name} | {r['planned_gib']:.2f} | {measured:.2f} | {error} | {r['seconds']:.0f} |")
    worst = max(abs(r["error_percent"]) for r in rows)
    text = "\n".join(lines) + f"\n\nLargest error: {worst:.1f}% (target: within 25%)."
    print("\n" + text)
    commands = "\n".join(f"- {r['stage']}: `{r['command']}`" for r in rows)
    (RESULTS / "memory.md").write_text(
        "# Planned vs measured peak memory, CPU, embedded SmolLM2-135M-Instruct\n\n"
        "Made by `python bench/memory.py [--held_out]`. Planned by `rlhf_recipes.memory` (what `python "
        "recipes/plan.py` prints) with each run's config and overrides; measured as each recipe child's own peak RSS "
        "(`ru_maxrss` from `os.wait4`). SFT and reward run on full-length data built by the bench (see its "
        "docstring), so that the run sees the batch the plan is for. The CPU constants of rlhf_recipes/memory.py were "
        "fitted on cpt, sft and reward; the held-out rows were not used.\n\n"
        + text
        + "\n\nRuns (each in its own process, one at a time):\n\n"
        + commands
        + "\n"
    )
    (RESULTS / "memory.json").write_text(json.dumps({"rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
