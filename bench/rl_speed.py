"""`make bench-rl`: this project's GRPO and RLOO beside TRL's own `trl grpo` / `trl rloo`, on this machine.

    python -m bench.rl_speed [--runs 3] [--steps 4] [--tasks grpo,rloo] [--setups trl-defaults,trl,ours]

Same embedded model (SmolLM2-135M-Instruct), same generated prompts (synthetic.py), the same random-head reward
model (a sequence-classification copy of the model: what the reward is does not change the work), same LoRA (r16,
alpha 32, all linear layers), 8 completions per step in groups of 4, 48 completion tokens at most, the same number
of optimizer steps. Each run a fresh process (harness.py), setups interleaved round by round; figures are medians of
`--runs` with the spread, in completions per second of training (`Trainer.train`'s own seconds).

- `trl-defaults`: `trl grpo` / `trl rloo` with TRL's defaults for everything not listed above, as a user typing the
  command gets them: `bf16` true, so on a CPU without native bf16 it computes in emulated bf16 (capped at
  `--capped_steps` steps, and the table says so); TRL's GRPO also defaults `beta` to 0 (no reference pass).
- `trl`: the same command with the precision the recipes choose for this machine and the shipped YAML's `beta`: the
  fair comparison (where bf16 is native, `trl-defaults` differs from it by `beta` only).
- `ours`: the shipped config (configs/smollm2-135m/<task>.yaml) with the shared sizes, started through the registry;
  its reward is read through the scoring path (scoring.py).

Writes `<out>/rl_speed.json` and `<out>/rl_speed.md`. Needs a quiet machine.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench import harness, synthetic
from bench.harness import CONFIGS, RESULTS

TASKS = ("grpo", "rloo")
SETUPS = ("trl-defaults", "trl", "ours")
COMPLETIONS = 8  # per optimizer step, in every setup
SHARED = ["--per_device_train_batch_size", str(COMPLETIONS), "--gradient_accumulation_steps", "1",
          "--num_generations", "4", "--max_completion_length", "48", "--temperature", "0.7", "--learning_rate", "3e-4",
          "--save_strategy", "no", "--logging_steps", "1000", "--report_to", "none", "--seed", "42"]  # fmt: skip


def argv(task: str, setup: str, steps: int, data: str, model: str, reward: str, out: Path, bf16: bool) -> list[str]:
    from rlhf_recipes.config import read_yaml

    shared = [*SHARED, "--max_steps", str(steps), "--output_dir", str(out), "--dataset_name", data]
    if setup == "ours":
        return ["--config", str(CONFIGS / f"{task}.yaml"), "--model_name_or_path", model, "--reward_model_path",
                reward, "--min_reward_accuracy", "0", *shared]  # fmt: skip
    lora = ["--use_peft", "--lora_dropout", "0.0", *harness.lora_argv(CONFIGS / f"{task}.yaml")]  # the same adapter
    command = ["--model_name_or_path", model, "--reward_model_name_or_path", reward, *lora, *shared]
    if setup == "trl":  # the fair run: the recipes' precision and the shipped KL coefficient
        command += ["--bf16", str(bf16).lower(), "--beta", str(read_yaml(CONFIGS / f"{task}.yaml")["beta"])]
    return command + ["--use_cpu", "true"]


def run(args) -> dict:
    from rlhf_recipes.models import DEFAULT_MODEL, load_tokenizer, resolve_model_path

    model = resolve_model_path(args.model or DEFAULT_MODEL)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="rlhf-bench-rl-"))
    prompts, _ = synthetic.Synthetic(load_tokenizer(model), seed=args.seed).prompts(64, target=40)
    data = synthetic.write_split(work / "prompts", prompts)
    reward = synthetic.reward_model(model, work / "reward-model")
    machine = harness.machine()
    capped = set() if machine["native_bf16"] else {"trl-defaults"}
    print(f"bench: data, outputs and logs in {work}", flush=True)
    results = {"machine": machine}
    for task in args.tasks:
        runs = {setup: 1 if setup in capped else args.runs for setup in args.setups}
        records = {setup: [] for setup in runs}
        for turn, setup in harness.schedule(runs):
            steps = args.capped_steps if setup in capped else args.steps
            bf16 = machine["chosen"]["bf16"]
            command = argv(task, setup, steps, data, model, reward, work / f"{task}-{setup}-{turn}", bf16)
            log = work / "logs" / f"{task}-{setup}-{turn}.log"
            if setup == "ours":
                record = harness.run_stage(task, command, log)
            else:
                record = harness.run_baseline(f"trl-{task}", command, log)
            record["speed"] = record["global_step"] * COMPLETIONS / record["train_seconds"]
            records[setup].append(record)
            print(
                f"bench: {task} {setup} run {turn + 1}/{runs[setup]}: {record['speed']:.3f} completions/s", flush=True
            )
        entry = {
            setup: {
                "speed": harness.summarise([r["speed"] for r in done]),
                "compute_dtype": done[0]["compute_dtype"],
                "optimizer_steps": done[0]["global_step"],
                "capped": setup in capped,
                "peak_rss_mib": harness.summarise([r["peak_rss_mib"] for r in done]),
            }
            for setup, done in records.items()
        }
        for base in ("trl-defaults", "trl"):
            if "ours" in entry and base in entry:
                entry[f"ours_vs_{base}"] = entry["ours"]["speed"]["median"] / entry[base]["speed"]["median"]
        results[task] = {"setups": entry, "commit": harness.commit()}
    return results


def markdown(results: dict) -> str:
    machine = results["machine"]
    lines = [
        f"Machine: {machine.get('cpu', '')}; capability {machine.get('capability', '')}; native bf16: "
        f"{machine.get('native_bf16')}; chosen precision: {machine['chosen'].get('dtype', '')}.",
        "",
        "| task | setup | completions/s, median (min-max) | compute dtype | steps | peak RSS MiB | ours / this |",
        "|---|---|---|---|---|---|---|",
    ]
    for task in TASKS:
        if task not in results:
            continue
        setups = results[task]["setups"]
        for setup, entry in ((s, setups[s]) for s in SETUPS if s in setups):
            ratio = setups.get(f"ours_vs_{setup}")
            steps = f"{entry['optimizer_steps']}" + (" (capped)" if entry["capped"] else "")
            lines.append(
                f"| {task} | {setup} | {harness.fmt(entry['speed'], 3)} | {entry['compute_dtype']} | {steps} | "
                f"{harness.fmt(entry['peak_rss_mib'], 0)} | {f'{ratio:.2f}x' if ratio else ''} |"
            )
    commits = ", ".join(f"{t} at {results[t]['commit']}" for t in TASKS if t in results)
    lines += [
        "",
        f"Each run a fresh process; completions per second of `Trainer.train`. Measured on commit: {commits}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv_: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per setup; figures are medians (default 3)")
    parser.add_argument(
        "--steps", type=int, default=4, help=f"optimizer steps per run ({COMPLETIONS} completions each)"
    )
    parser.add_argument("--capped_steps", type=int, default=1, help="steps of a TRL-defaults run in emulated bf16")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of " + ",".join(TASKS))
    parser.add_argument("--setups", default=",".join(SETUPS), help="comma-separated subset of " + ",".join(SETUPS))
    parser.add_argument("--seed", type=int, default=0, help="of the generated prompts")
    parser.add_argument("--model", default=None, help="model folder (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--out", default=str(RESULTS), help="folder for rl_speed.json and rl_speed.md")
    parser.add_argument("--work_dir", default=None, help="data, outputs and logs of the runs (default: a new temp)")
    args = parser.parse_args(argv_)
    args.tasks = [t for t in args.tasks.split(",") if t]
    args.setups = [s for s in args.setups.split(",") if s]
    for chosen, known in ((args.tasks, TASKS), (args.setups, SETUPS)):
        if set(chosen) - set(known) or not chosen:
            parser.error(f"choose from {', '.join(known)} (got {', '.join(chosen) or 'nothing'})")
    results = run(args)
    out = Path(args.out)
    harness.write_json(out / "rl_speed.json", results)
    table = markdown(results)
    (out / "rl_speed.md").write_text(table)
    print(table)
    return results


if __name__ == "__main__":
    harness.main(main)
