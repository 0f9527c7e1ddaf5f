"""`make bench-memory`: planned vs measured peak memory of every training stage on the embedded SmolLM2-135M-Instruct,
on CPU, and the planner's calibration fitted from it.

    python -m bench.memory [--stages cpt,sft,reward,ppo] [--held_out] [--steps 3] [--work_dir /tmp/bench-memory]

Every training stage of the registry that has a YAML in configs/smollm2-135m/ runs from it for a few optimizer
steps, in a fresh process started through the registry (harness.run_stage), with saving and evaluation off; its
peak resident set size is the child's own. The plan is `python recipes/plan.py --json` on the same config and
overrides, made before anything is loaded.

The planner estimates the worst batch a config allows (`max_length` tokens per row), so the runs get rows of that
length from synthetic.py, of the kind the registry says each stage trains on (`columns`): texts and conversations a
little longer than `max_length` (cut to it), preference pairs just under it (RewardTrainer drops longer pairs). An
RL stage keeps its shipped prompts (the planner measures their length from the data); its policy and reward model
are this bench's own outputs of the stages before it, merged into full checkpoints by a separate process first, so
that merging is not measured as training. Seconds per step and real tokens per second come with every row (on these
full-length batches).

Calibration: each stage's fitted CPU_STEP_MEMORY_FACTOR is (measured peak - the plan's fixed memory) / the plan's
per-step bytes; when every stage ran, their median is written into the planner's calibration file through
`rlhf_recipes.plan.calibration.write` (held-out variants only check it). Writes bench/results/memory.json (every
run with its plan; tests/test_plan.py plans them again) and memory.md. Run it alone: other processes do not change
a child's RSS, but they slow it down.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
from pathlib import Path

from bench import harness, synthetic
from bench.harness import CONFIGS, REPO, RESULTS

# Held-out checks: settings the constant is not fitted on, run the same way (--held_out, or name them in --stages)
VARIANTS = {
    "sft-full": ("sft", ["--use_peft", "false"]),  # every weight trains: gradients + AdamW states
    "sft-batch2": ("sft", ["--per_device_train_batch_size", "2"]),
    "cpt-512": ("cpt", ["--per_device_train_batch_size", "2", "--max_length", "512"]),
    "reward-batch2": ("reward", ["--per_device_train_batch_size", "2"]),
    "reward-checkpointing": ("reward", ["--gradient_checkpointing", "true"]),
}
FACTOR = "CPU_STEP_MEMORY_FACTOR"
OVERHEAD = "allocator overhead"  # the plan item that applies the factor to per-step memory
GIB = 2**30


def training_stages() -> list[str]:
    """The registry's training stages that have a config here, in registry order (an RL stage after its inputs)."""
    from rlhf_recipes import stages

    return [s.name for s in stages.all_stages() if s.trains and (CONFIGS / f"{s.name}.yaml").is_file()]


def fitted_factor(plan: dict, peak_gib: float, factor: float) -> float | None:
    """The step-memory factor that would have planned `peak_gib` exactly, from a plan made with `factor`.

    The plan is fixed + factor x step, its overhead item (factor - 1) x step; so step = overhead / (factor - 1)."""
    overhead = sum(item["gib"] for item in plan["items"] if item["component"].startswith(OVERHEAD))
    if factor <= 1 or overhead <= 0:
        return None
    step = overhead / (factor - 1)
    fixed = plan["total_gib"] - factor * step
    return (peak_gib - fixed) / step


def data_overrides(stage, generator, rows: int, work: Path) -> list[str]:
    """Full-length rows of the stage's kind (see the module docstring); none for an RL stage."""
    from rlhf_recipes.config import read_yaml

    if stage.role == "rl":
        return []
    max_length = read_yaml(CONFIGS / f"{stage.name}.yaml")["max_length"]
    target = max_length - 8 if "chosen" in stage.columns else max_length + 32
    made = generator.for_columns(stage.columns, rows, target)
    return ["--dataset_name", synthetic.write_split(work / "data" / stage.name, made)]


def input_overrides(stage, work: Path) -> list[str]:
    """An RL stage's models: its baseline's output as policy, the reward stage's output as reward model."""
    from rlhf_recipes import stages

    if stage.role != "rl":
        return []
    argv = []
    for key, kind in stage.model_keys.items():
        makers = [s.name for s in stages.all_stages() if s.makes == kind and s.role == "train"]
        source = stage.baseline if key == "model_name_or_path" else makers[0]
        folder = work / source
        if not (folder / "lineage.json").is_file():
            raise harness.BenchError(f"{stage.name} needs {folder}: run the bench with --stages {source},{stage.name}")
        argv += [f"--{key}", str(folder)]
    # the 3-step reward model has no held-out accuracy; the gate is for training, not for a measurement
    return argv + ["--min_reward_accuracy", "0"]


def run_overrides(stage, folder: Path, steps: int, data: list[str], work: Path) -> list[str]:
    from rlhf_recipes.config import read_yaml

    common = ["--output_dir", str(folder), "--logging_steps", "1"]
    if stage.role == "rl":
        config = read_yaml(CONFIGS / f"{stage.name}.yaml")
        per_update = config["per_device_train_batch_size"] * config["gradient_accumulation_steps"]
        # two updates: the second one runs with the optimizer state allocated
        return [*common, *input_overrides(stage, work), "--total_episodes", str(2 * per_update)]
    return [*common, "--max_steps", str(steps), "--save_strategy", "no", "--eval_strategy", "no", *data]


def measure(name: str, stage, extra: list[str], args, data: dict, work: Path) -> dict:
    config = (CONFIGS / f"{stage.name}.yaml").relative_to(REPO)
    overrides = run_overrides(stage, work / name, args.steps, data.get(stage.name, []), work) + extra
    if args.model and stage.role != "rl":
        overrides += ["--model_name_or_path", args.model]
    if stage.role == "rl":  # merge its input adapters now, in a process that is not measured
        folders = [overrides[i + 1] for i, token in enumerate(overrides) if token.endswith(("_path", "_or_path"))]
        warm = "import sys; from rlhf_recipes.models import resolve_model_path as r; [r(p) for p in sys.argv[1:]]"
        harness.run_process([sys.executable, "-c", warm, *folders], work / "logs" / f"{name}-merge.log")
    plan = harness.plan([str(config)], overrides, device="cpu")[0]
    print(f"[{name}] {stage.name} {' '.join(overrides)}", flush=True)
    record = harness.run_stage(stage.name, ["--config", str(config), *overrides], work / "logs" / f"{name}.log")
    peak = record["peak_rss_mib"] / 1024
    steps = record["global_step"] or 1
    row = {
        "stage": name,
        "held_out": name != stage.name,
        "planned_gib": round(plan["total_gib"], 3),
        "measured_peak_rss_gib": round(peak, 3),
        "error_percent": round(100 * (plan["total_gib"] - peak) / peak, 1),
        "fitted_step_factor": None,
        "seconds": record["wall_seconds"],
        "seconds_per_step": round(record["train_seconds"] / steps, 2),
        "tokens_per_second": round(record["train_tokens"] / record["train_seconds"], 1)
        if record["train_tokens"]
        else None,
        "compute_dtype": record["compute_dtype"],
        "plan": plan,
        "command": f"python recipes/{stage.name}.py --config {config} {' '.join(overrides)}",
        "overrides": overrides,
        "config_sha256": hashlib.sha256((REPO / config).read_bytes()).hexdigest(),  # tests skip stale rows
    }
    print(f"[{name}] planned {row['planned_gib']:.2f} GiB, measured {peak:.2f} GiB, {row['error_percent']:+.1f}%")
    return row


def calibrate(rows: list[dict], names: list[str], factor: float) -> dict | None:
    """The median fitted factor over the stages (not the variants), written when every stage ran in this bench."""
    from rlhf_recipes.plan import calibration

    for row in rows:
        fitted = fitted_factor(row["plan"], row["measured_peak_rss_gib"], factor)
        row["fitted_step_factor"] = round(fitted, 2) if fitted is not None else None
    fitted = {r["stage"]: r["fitted_step_factor"] for r in rows if not r["held_out"] and r["fitted_step_factor"]}
    missing = [name for name in names if name not in fitted]
    if missing:
        print(f"calibration not written: {', '.join(missing)} did not run (run every stage to fit {FACTOR}).")
        return None
    value = round(statistics.median(fitted.values()), 2)
    machine = harness.machine()
    source = (
        f"bench/memory.py at {harness.commit()}, {machine['cpu']} ({machine['capability']}), "
        f"{rows[0]['compute_dtype']} compute: (peak RSS - fixed) / per-step bytes per stage: "
        + ", ".join(f"{name} {f:.2f}" for name, f in fitted.items())
        + f"; median {value}"
    )
    path = calibration.write({FACTOR: value}, source)
    print(f"calibration: {FACTOR} = {value} (was {factor}) written to {path}")
    return {"name": FACTOR, "value": value, "was": factor, "source": source}


def main(argv: list[str] | None = None) -> list[dict]:
    stage_names = training_stages()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", default=",".join(stage_names), help="from " + ",".join([*stage_names, *VARIANTS]))
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per stage (RL stages: 2 updates)")
    parser.add_argument("--work_dir", default="/tmp/bench-memory", help="data, outputs and logs of the runs")
    parser.add_argument("--out", default=str(RESULTS), help="folder for memory.json and memory.md")
    parser.add_argument("--model", default=None, help="model for the non-RL stages (default: each config's)")
    parser.add_argument(
        "--held_out", action="store_true", help="also run the held-out variants: " + ", ".join(VARIANTS)
    )
    args = parser.parse_args(argv)
    names = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [n for n in names if n not in stage_names and n not in VARIANTS]
    if unknown:
        parser.error(f"unknown stage or variant {unknown[0]}; choose from {', '.join([*stage_names, *VARIANTS])}")
    if args.held_out:
        names += [name for name, (stage, _) in VARIANTS.items() if stage in names and name not in names]

    from rlhf_recipes import stages
    from rlhf_recipes.models import DEFAULT_MODEL, load_tokenizer, resolve_model_path
    from rlhf_recipes.plan import calibration

    runs = [(name, *VARIANTS[name]) if name in VARIANTS else (name, name, []) for name in names]
    work = Path(args.work_dir)
    generator = synthetic.Synthetic(load_tokenizer(resolve_model_path(DEFAULT_MODEL)))  # the tokenizer only
    rows_per_stage = 8 * (args.steps + 1)
    data = {
        stage: data_overrides(stages.get(stage), generator, rows_per_stage, work) for stage in {s for _, s, _ in runs}
    }
    factor = calibration.value(FACTOR)  # the value the plans below are made with
    rows = [measure(name, stages.get(stage), extra, args, data, work) for name, stage, extra in runs]
    fit = calibrate(rows, stage_names, factor)
    write_report(rows, fit, Path(args.out))
    return rows


def write_report(rows: list[dict], fit: dict | None, out: Path) -> None:
    """Merge `rows` into `out`/memory.json (by stage name) and rewrite memory.md from it."""
    previous = harness.read_json(out / "memory.json")
    by_stage = {row["stage"]: row for row in previous.get("rows", [])}
    by_stage.update({row["stage"]: row for row in rows})
    order = [*training_stages(), *VARIANTS]
    rows = [by_stage[name] for name in order if name in by_stage]
    lines = [
        "| stage | planned GiB | measured peak RSS GiB | error | fitted step factor | s/step | tokens/s | run s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = r["stage"] + (" (held out)" if r.get("held_out") else "")
        factor = f"{r['fitted_step_factor']:.2f}" if r.get("fitted_step_factor") else "-"
        speed = f"{r['tokens_per_second']:.0f}" if r.get("tokens_per_second") else "-"
        lines.append(
            f"| {name} | {r['planned_gib']:.2f} | {r['measured_peak_rss_gib']:.2f} | {r['error_percent']:+.1f}% | "
            f"{factor} | {r.get('seconds_per_step', '-')} | {speed} | {r['seconds']:.0f} |"
        )
    worst = max(abs(r["error_percent"]) for r in rows)
    text = "\n".join(lines) + f"\n\nLargest error: {worst:.1f}% (target: within 25%)."
    if fit:
        text += f"\n\nCalibration written: {fit['name']} = {fit['value']} (was {fit['was']}); {fit['source']}."
    print("\n" + text)
    commands = "\n".join(f"- {r['stage']}: `{r['command']}`" for r in rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.md").write_text(
        "# Planned vs measured peak memory, CPU, embedded SmolLM2-135M-Instruct\n\n"
        "Made by `python -m bench.memory [--held_out]` (`make bench-memory`). Planned by `python recipes/plan.py "
        "--json` with each run's config and overrides; measured as each stage child's own peak RSS (`ru_maxrss` "
        "from `os.wait4`). Every run sees full-length rows (see bench/memory.py), the batch the plan is for. The "
        f"planner's {FACTOR} is fitted on the stages; the held-out rows only check it.\n\n"
        + text
        + "\n\nRuns (each in its own process, one at a time; through the stage registry, as these commands do):\n\n"
        + commands
        + "\n"
    )
    harness.write_json(out / "memory.json", {"rows": rows, "calibration": fit})


if __name__ == "__main__":
    harness.main(main)
