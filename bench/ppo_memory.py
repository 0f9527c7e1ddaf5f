"""`make bench-ppo-memory`: peak memory of PPO, TRL's example setup against this project's, on the embedded
SmolLM2-135M-Instruct, on CPU.

    python -m bench.ppo_memory [--total_episodes 16] [--setups trl-example,ours-lora-value,...]

Every setup runs in a fresh process (harness.py) on the same policy (the embedded model), the same reward model (the
embedded model with a seeded score head, synthetic.reward_model), the same demo prompts, batch and response length,
for a few PPO updates (memory peaks once the optimizer state exists, from the second update on). Each child's peak
resident set size is its own `ru_maxrss`.

- `trl-example`: bench/trl_ppo_example.py, TRL's examples/scripts/ppo/ppo.py setup: full fine-tuning, a second full
  policy as reference, full-precision reward model and a fully fine-tuned full-precision value model;
- `trl-example-peft`: the same with `--use_peft` (LoRA policy of ppo.yaml's shape, adapter-disabled reference);
- `ours-lora-value`: the ppo stage with configs/smollm2-135m/ppo.yaml, float32 weights: LoRA policy and LoRA value
  model, reward and value bases in full precision;
- `ours-4bit-reward-value`: the same with `reward_model_load_in_4bit` and `value_model_load_in_4bit`;
- `ours-checkpointed`: `ours-lora-value` with `gradient_checkpointing: true` on the policy and value models (the
  update pass keeps each layer's input only and recomputes the rest in the backward pass);
- `ours-bf16-lora-value`, `ours-bf16-4bit-reward-value`, `ours-bf16-checkpointed`: the three above with bfloat16
  frozen weights (`dtype`);
- `ours-all-4bit`: bfloat16, 4-bit reward and value models, and the policy in 4-bit too (QLoRA: `load_in_4bit`).

The bfloat16 setups compute in bf16, which a CPU without native bf16 emulates ~100x slower: there they are left out
unless named in `--setups`. Prints a markdown table (peak RSS, ratios to TRL's example, seconds per PPO update
inside `train()`) and writes bench/results/ppo_memory.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench import harness, synthetic
from bench.harness import CONFIGS, RESULTS

FOUR_BIT = ["--reward_model_load_in_4bit", "true", "--value_model_load_in_4bit", "true"]
FULL = ["--reward_model_load_in_4bit", "false", "--value_model_load_in_4bit", "false"]
# every memory and precision setting spelt out, so that a row means the same whatever the YAML's defaults or the CPU
OURS = {
    "ours-lora-value": ["--dtype", "float32", "--bf16", "false", *FULL],
    "ours-4bit-reward-value": ["--dtype", "float32", "--bf16", "false", *FOUR_BIT],
    "ours-checkpointed": ["--dtype", "float32", "--bf16", "false", *FULL, "--gradient_checkpointing", "true"],
    "ours-bf16-lora-value": ["--dtype", "bfloat16", "--bf16", "true", *FULL],
    "ours-bf16-4bit-reward-value": ["--dtype", "bfloat16", "--bf16", "true", *FOUR_BIT],
    "ours-bf16-checkpointed": ["--dtype", "bfloat16", "--bf16", "true", *FULL, "--gradient_checkpointing", "true"],
    "ours-all-4bit": ["--dtype", "bfloat16", "--bf16", "true", *FOUR_BIT, "--load_in_4bit", "true"],
}
TRL = ("trl-example", "trl-example-peft")
SETUPS = (*TRL, *OURS)
BF16 = {setup for setup, argv in OURS.items() if "bfloat16" in argv}  # computed in bf16: emulated without native


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total_episodes", type=int, default=16, help="16 = 2 PPO updates of 4 x 2 episodes")
    parser.add_argument("--per_device_train_batch_size", type=int, default=4)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=2)
    parser.add_argument("--response_length", type=int, default=48)
    parser.add_argument("--setups", default=None, help="comma-separated, from " + ",".join(SETUPS))
    parser.add_argument("--work_dir", default="/tmp/bench-ppo-memory")
    parser.add_argument("--out", default=str(RESULTS), help="folder for ppo_memory.json")
    args = parser.parse_args(argv)
    machine = harness.machine()
    setups = args.setups.split(",") if args.setups else [s for s in SETUPS if machine["native_bf16"] or s not in BF16]
    unknown = [s for s in setups if s not in SETUPS]
    if unknown:
        parser.error(f"unknown setup {unknown[0]}; choose from {', '.join(SETUPS)}")

    from rlhf_recipes.models import DEFAULT_MODEL, resolve_model_path

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    batch = {
        "total_episodes": args.total_episodes,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "response_length": args.response_length,
    }
    shared = [item for key, value in batch.items() for item in (f"--{key}", str(value))]
    updates = -(-args.total_episodes // (args.per_device_train_batch_size * args.gradient_accumulation_steps))
    policy = resolve_model_path(DEFAULT_MODEL)
    reward = synthetic.reward_model(policy, work / "reward-model")
    rows = {}
    for setup in setups:
        output_dir = Path(tempfile.mkdtemp(prefix=f"{setup}-", dir=work))
        print(f"running {setup} ...", flush=True)
        if setup in TRL:
            argv = ["--policy", policy, "--reward", reward, "--dataset", "data/demo/prompts"]
            argv += ["--num_sample_generations", "0", "--num_ppo_epochs", "2", "--output_dir", str(output_dir)]
            peft = setup.endswith("-peft")
            argv += [
                *shared,
                *(["--use_peft", *harness.lora_argv(CONFIGS / "ppo.yaml")] if peft else ["--no-use_peft"]),
            ]
            record = harness.run_baseline("trl-ppo-example", argv, work / "logs" / f"{setup}.log")
        else:
            argv = ["--config", str(CONFIGS / "ppo.yaml"), "--model_name_or_path", DEFAULT_MODEL]
            argv += ["--reward_model_path", reward, "--output_dir", str(output_dir), *shared, *OURS[setup]]
            # the random-head reward model has no held-out accuracy: the gate is for training, not a measurement
            argv += ["--save_strategy", "no", "--min_reward_accuracy", "0"]
            record = harness.run_stage("ppo", argv, work / "logs" / f"{setup}.log")
        rows[setup] = {
            "wall_seconds": record["wall_seconds"],
            "peak_rss_mib": record["peak_rss_mib"],
            "seconds_per_update": round(record["train_seconds"] / updates, 1),
            "compute_dtype": record["compute_dtype"],
        }
        print(f"  {rows[setup]}", flush=True)

    reference = {name: rows[name]["peak_rss_mib"] for name in TRL if name in rows}
    header = "".join(f" vs {name} |" for name in reference)
    lines = [
        f"| setup | compute | peak RSS MiB |{header} s/update |",
        "|---|---|---|" + "---|" * len(reference) + "---|",
    ]
    for setup, row in rows.items():
        ratios = "".join(f" {row['peak_rss_mib'] / peak:.2f} |" for peak in reference.values())
        lines.append(
            f"| {setup} | {row['compute_dtype']} | {row['peak_rss_mib']:.0f} |{ratios} {row['seconds_per_update']} |"
        )
    table = "\n".join(lines)
    print(table)
    result = {
        "model": DEFAULT_MODEL,
        "reward_model": "the embedded model with a seeded one-output score head (synthetic.reward_model)",
        "machine": machine,
        "commit": harness.commit(),
        "batch": batch,
        "setups": rows,
        "table": table,
    }
    harness.write_json(Path(args.out) / "ppo_memory.json", result)
    return result


if __name__ == "__main__":
    harness.main(main)
