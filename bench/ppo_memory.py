"""Peak memory of PPO: TRL's example setup against recipes/ppo.py, on the embedded SmolLM2-135M-Instruct, on CPU.

    python bench/ppo_memory.py [--total_episodes 16] [--work_dir /tmp/bench-ppo-memory]

Every setup runs in its own subprocess on the same policy (the embedded model), the same reward model (the reward
stage's output, merged into full weights; a 2-step one is trained first if outputs/smollm2-135m/reward is missing),
the same demo prompts, batch and response length, for a few PPO updates (memory peaks at the first update, when the
optimizer state appears). Each child's peak resident set size is its own `ru_maxrss`, read with `os.wait4`.

- `trl-example`: bench/trl_ppo_example.py, TRL's examples/scripts/ppo/ppo.py setup: full fine-tuning, a second full
  policy as reference, full-precision reward model and a fully fine-tuned full-precision value model;
- `trl-example-peft`: the same with `--use_peft` (LoRA policy, adapter-disabled reference);
- `ours-lora-value`: recipes/ppo.py with configs/smollm2-135m/ppo.yaml, float32 weights: LoRA policy and LoRA value
  model, reward and value bases in full precision;
- `ours-4bit-reward-value`: the same with `reward_model_load_in_4bit` and `value_model_load_in_4bit`;
- `ours-bf16-lora-value`, `ours-bf16-4bit-reward-value`: the two above with bfloat16 frozen weights (`dtype`);
- `ours-all-4bit`: bfloat16, 4-bit reward and value models, and the policy in 4-bit too (QLoRA: `load_in_4bit`).

Prints a markdown table (peak RSS, ratios to TRL's example, seconds per PPO update inside `train()`) and writes
bench/results/ppo_memory.json. Other processes on the machine do not change a child's RSS, only its speed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "smollm2-135m" / "ppo.yaml"
RESULTS = REPO / "bench" / "results"
POLICY = "embedded:SmolLM2-135M-Instruct"

FOUR_BIT = ["--reward_model_load_in_4bit", "true", "--value_model_load_in_4bit", "true"]
FULL = ["--reward_model_load_in_4bit", "false", "--value_model_load_in_4bit", "false"]
OURS = {  # every memory setting spelt out, so that a row means the same whatever the shipped YAML's defaults
    "ours-lora-value": ["--dtype", "float32", *FULL],
    "ours-4bit-reward-value": ["--dtype", "float32", *FOUR_BIT],
    "ours-bf16-lora-value": ["--dtype", "bfloat16", *FULL],
    "ours-bf16-4bit-reward-value": ["--dtype", "bfloat16", *FOUR_BIT],
    "ours-all-4bit": ["--dtype", "bfloat16", *FOUR_BIT, "--load_in_4bit", "true"],
}


def run_child(command: list[str], log: Path) -> dict:
    """Run one command to the end; its wall seconds and its own peak RSS (MiB) from the kernel's accounting."""
    started = time.perf_counter()
    with open(log, "w") as handle:
        process = subprocess.Popen(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {process.returncode}; see {log}")
    return {"wall_seconds": round(time.perf_counter() - started, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def train_seconds(output_dir: Path) -> float:
    """Seconds inside `train()`: TRL example's own JSON, or the recipe's lineage (`train_runtime`)."""
    if (output_dir / "result.json").is_file():
        return json.loads((output_dir / "result.json").read_text())["train_seconds"]
    return json.loads((output_dir / "lineage.json").read_text())["metrics"]["train_runtime"]


def full_weights(path: str) -> str:
    from rlhf_recipes.models import resolve_model_path

    return resolve_model_path(path)


def reward_model(work_dir: Path) -> str:
    """The reward stage's output merged into a full checkpoint, or a 2-step one trained here when there is none."""
    shipped = REPO / "outputs" / "smollm2-135m" / "reward"
    if not (shipped / "lineage.json").is_file():
        shipped = work_dir / "reward"
        if not (shipped / "lineage.json").is_file():
            command = [sys.executable, "recipes/reward.py", "--config", "configs/smollm2-135m/reward.yaml"]
            command += ["--output_dir", str(shipped), "--max_steps", "2", "--eval_strategy", "no"]
            subprocess.run(command + ["--save_strategy", "no"], cwd=REPO, check=True)
    # merged (and cached) in a separate process, so that no child measures the merge
    code = f"from rlhf_recipes.models import resolve_model_path; print(resolve_model_path({str(shipped)!r}))"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.split()[-1]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total_episodes", type=int, default=16, help="16 = 2 PPO updates of 4 x 2 episodes")
    parser.add_argument("--per_device_train_batch_size", type=int, default=4)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=2)
    parser.add_argument("--response_length", type=int, default=48)
    parser.add_argument("--setups", default="trl-example,trl-example-peft," + ",".join(OURS))
    parser.add_argument("--work_dir", default="/tmp/bench-ppo-memory")
    parser.add_argument(
        "--launcher",
        default="",
        help="command prefix for every child, e.g. 'flock /tmp/heavy.lock' to take turns on a shared machine "
        "(the prefix's own RSS is tiny; wait4 reports the largest of the process tree)",
    )
    args = parser.parse_args(argv)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    batch = [
        "--total_episodes",
        str(args.total_episodes),
        "--per_device_train_batch_size",
        str(args.per_device_train_batch_size),
        "--gradient_accumulation_steps",
        str(args.gradient_accumulation_steps),
        "--response_length",
        str(args.response_length),
    ]
    updates = -(-args.total_episodes // (args.per_device_train_batch_size * args.gradient_accumulation_steps))
    policy = full_weights(POLICY)
    reward = reward_model(work)
    rows = {}
    for setup in args.setups.split(","):
        output_dir = Path(tempfile.mkdtemp(prefix=f"{setup}-", dir=work))
        if setup.startswith("trl-example"):
            command = [sys.executable, "bench/trl_ppo_example.py", "--policy", policy, "--reward", reward]
            command += ["--dataset", "data/demo/prompts", "--num_sample_generations", "0", "--num_ppo_epochs", "2"]
            command += ["--output_dir", str(output_dir), "--json", str(output_dir / "result.json"), *batch]
            command += ["--use_peft"] if setup.endswith("-peft") else ["--no-use_peft"]
        else:
            command = [sys.executable, "recipes/ppo.py", "--config", str(CONFIG), "--model_name_or_path", POLICY]
            command += ["--reward_model_path", reward, "--output_dir", str(output_dir), *batch, *OURS[setup]]
            command += ["--save_strategy", "no", "--report_to", "none"]
        print(f"running {setup} ...", flush=True)
        rows[setup] = run_child(shlex.split(args.launcher) + command, output_dir / "log.txt")
        rows[setup]["seconds_per_update"] = round(train_seconds(output_dir) / updates, 1)
        print(f"  {rows[setup]}", flush=True)

    reference = {name: rows[name]["peak_rss_mib"] for name in ("trl-example", "trl-example-peft") if name in rows}
    header = "".join(f" vs {name} |" for name in reference)
    lines = [f"| setup | peak RSS MiB |{header} s/update |", "|---|---|" + "---|" * len(reference) + "---|"]
    for setup, row in rows.items():
        ratios = "".join(f" {row['peak_rss_mib'] / peak:.2f} |" for peak in reference.values())
        lines.append(f"| {setup} | {row['peak_rss_mib']:.0f} |{ratios} {row['seconds_per_update']} |")
    table = "\n".join(lines)
    print(table)
    result = {
        "model": POLICY,
        "reward_model": reward,
        "batch": {k.lstrip("-"): int(v) for k, v in zip(batch[::2], batch[1::2])},
        "setups": rows,
        "table": table,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ppo_memory.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
