"""Seconds per step and tokens per second of every stage on the embedded SmolLM2-135M-Instruct, on this machine.

    python bench/stage_speed.py [--steps 6] [--output_dir /tmp/stage-speed]

Each stage recipe runs from its real YAML for a few steps with saving and evaluation off; the numbers come from the
trainers' own logs (`train_runtime`, `num_tokens`; PPO: time per update and episodes per second). Not a test.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "smollm2-135m"


def run(stage: str, output_dir: Path, *args: str) -> dict:
    recipe = {"cpt": "cpt", "sft": "sft", "reward": "reward", "ppo": "ppo"}[stage]
    command = [
        sys.executable,
        f"recipes/{recipe}.py",
        "--config",
        str(CONFIGS / f"{stage}.yaml"),
        "--output_dir",
        str(output_dir / stage),
        "--report_to",
        "none",
        *args,
    ]
    started = time.time()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lineage = json.loads((output_dir / stage / "lineage.json").read_text())
    return {"wall_seconds": time.time() - started, **lineage["metrics"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--output_dir", default="/tmp/stage-speed")
    args = parser.parse_args()
    out = Path(args.output_dir)
    common = ["--max_steps", str(args.steps), "--save_strategy", "no", "--eval_strategy", "no", "--logging_steps", "1"]
    rows = []
    for stage in ("cpt", "sft", "reward"):
        metrics = run(stage, out, *common)
        steps = args.steps
        rows.append(
            {
                "stage": stage,
                "seconds_per_step": metrics["train_runtime"] / steps,
                "tokens_per_second": metrics.get("train_tokens_per_second"),
                "tokens_per_step": (metrics.get("num_tokens") or 0) / steps,
            }
        )
    episodes = 8 * args.steps // 2  # per_device 4 x grad_acc 2 = 8 episodes per PPO update
    metrics = run(
        "ppo",
        out,
        "--model_name_or_path",
        str(out / "sft"),
        "--reward_model_path",
        str(out / "reward"),
        "--total_episodes",
        str(episodes),
        "--save_strategy",
        "no",
    )
    updates = episodes // 8
    rows.append(
        {
            "stage": "ppo",
            "seconds_per_step": metrics["train_runtime"] / updates,
            "episodes_per_second": episodes / metrics["train_runtime"],
            "tokens_per_step": None,
        }
    )
    print("| stage | s/step | tokens/s | tokens/step |\n|---|---|---|---|")
    for row in rows:
        tokens = (
            f"{row['tokens_per_second']:.0f}"
            if row.get("tokens_per_second")
            else (f"{row['episodes_per_second']:.3f} episodes/s" if "episodes_per_second" in row else "")
        )
        per_step = f"{row['tokens_per_step']:.0f}" if row.get("tokens_per_step") else ""
        print(f"| {row['stage']} | {row['seconds_per_step']:.1f} | {tokens} | {per_step} |")
    (out / "stage_speed.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
