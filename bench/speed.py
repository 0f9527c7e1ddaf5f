"""`make bench`: this project's SFT, reward-model and PPO training side by side with plain TRL on this machine.

    python -m bench.speed [--runs 3] [--samples 64] [--pairs 32] [--ppo_episodes 24] [--tasks sft,reward,ppo]

Same embedded model (SmolLM2-135M-Instruct), same generated data (synthetic.py: lengths log-uniform in 20-500
tokens), same LoRA (r16, alpha 32, all linear layers), same sequences per optimizer step. Three setups per task,
each run a fresh process (harness.py), interleaved round by round; figures are medians of `--runs` with the spread:

- `trl-defaults`: `trl sft` / `trl reward` as a user typing them gets them. TRL's configs default `bf16` to true, so
  on a CPU without native bf16 (AVX2 only: bf16 matmuls ~0.2 GFLOP/s against ~160 in float32) this run computes in
  emulated bf16, ~100x slower: there it is capped at `--capped_steps` optimizer steps and `--capped_runs` runs, and
  the table says so.
- `trl`: the same command with the precision the recipes choose for this machine (`bf16` as `auto` resolves it):
  the fair comparison. Where bf16 is native the two are the same run, measured once.
- `ours`: the shipped config (configs/smollm2-135m/<task>.yaml), started through the stage registry.

PPO compares episodes per second with TRL's PPO example setup (bench/trl_ppo_example.py); TRL's PPO loop never
autocasts, so its defaults already run in the weights' float32.

SFT and reward report real (non-padding) tokens per second, as the trainers count them, and the fraction of the
roofline of the precision each run computed in: that precision's matmul rate, measured in this run, over the model
FLOPs per token (roofline.py). The table's header gives the CPU, PyTorch's capability string, whether bf16 is native,
and the matmul rate of every precision. Writes `<out>/speed.json` and `<out>/speed.md`; a run of some tasks keeps
the other tasks' figures from an earlier run, each with its commit. Needs a quiet machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench import harness, roofline, synthetic
from bench.harness import CONFIGS, REPO, RESULTS
from bench.speed_table import SETUPS, TASKS, markdown

LORA = ["--use_peft", "--lora_r", "16", "--lora_alpha", "32", "--lora_dropout", "0.0"]
LORA += ["--lora_target_modules", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BATCH = 8  # sequences per optimizer step in every setup
QUIET = ["--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", "1000"]


# ------------------------------------------------------------------------------------------------- arguments


def lm_argv(task: str, setup: str, data: str, model: str, out: Path, bf16: bool, rows: int, config: Path) -> list[str]:
    """The command line of one SFT or reward-model run; `rows`: our packed SFT rows per step; `config`: ours' YAML."""
    common = ["--dataset_name", data, "--num_train_epochs", "1", "--output_dir", str(out)]
    common += ["--per_device_train_batch_size", str(BATCH), "--gradient_accumulation_steps", "1"]
    common += ["--use_cpu", "true"]  # what `trl sft` needs on a machine without a GPU
    if setup.startswith("trl"):  # `trl sft --model_name_or_path M --dataset_name D --use_peft ...`: all else default
        argv = ["--model_name_or_path", model, *common, *LORA, "--save_strategy", "no", "--report_to", "none"]
        argv += ["--lora_task_type", "SEQ_CLS"] if task == "reward" else []  # as TRL's reward-model docs say
        return argv + (["--bf16", str(bf16).lower()] if setup == "trl" else [])
    argv = ["--config", str(config), "--model_name_or_path", model, *common, *QUIET]
    return argv + (["--per_device_train_batch_size", str(rows)] if task == "sft" else [])


def sft_rows(lengths: list[int]) -> int:
    """Packed rows of up to max_length tokens per step that hold the baseline's 8 conversations on average."""
    from rlhf_recipes.config import read_yaml

    return max(1, round(BATCH * statistics.mean(lengths) / read_yaml(CONFIGS / "sft.yaml")["max_length"]))


def ppo_argv(setup: str, data: str, model: str, reward: str, out: Path, episodes: int) -> list[str]:
    """Work per episode matched: response length, PPO epochs, batch; no sample generations."""
    shared = ["--total_episodes", str(episodes), "--per_device_train_batch_size", "4"]
    shared += ["--gradient_accumulation_steps", "2", "--response_length", "53", "--num_ppo_epochs", "1"]
    shared += ["--num_sample_generations", "0"]
    if setup.startswith("trl"):
        lora = harness.lora_argv(CONFIGS / "ppo.yaml")  # the same adapter as ours (TRL's default is q_proj, v_proj)
        return ["--policy", model, "--reward", reward, "--dataset", data, "--use_peft", *lora, *shared]
    argv = ["--config", str(CONFIGS / "ppo.yaml"), "--model_name_or_path", model, "--reward_model_path", reward]
    # the random-head reward model has no held-out accuracy: the gate is for training, not for a timing
    return argv + ["--dataset_name", data, "--output_dir", str(out), "--min_reward_accuracy", "0", *shared]


# ------------------------------------------------------------------------------------------------------ runs


def lora_layers(task: str, config: Path, extra: list[str], model: str) -> tuple[int, int | None]:
    """(LoRA rank, layers it trains: None for all) of ours' config with its `--ours` overrides. A single target is a
    regex over module names (peft's rule): the layers it matches are the ones a backward pass reaches."""
    import re

    from transformers import AutoConfig

    from rlhf_recipes import stages

    model_args = stages.get(task).parse_args(["--config", str(config), *extra], check_paths=False)[-1]
    targets = model_args.lora_target_modules
    if not isinstance(targets, str):
        return model_args.lora_r, None
    layers = AutoConfig.from_pretrained(model).num_hidden_layers
    names = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj")
    names += ("mlp.up_proj", "mlp.down_proj")
    hit = [i for i in range(layers) if any(re.fullmatch(targets, f"model.layers.{i}.{n}") for n in names)]
    return model_args.lora_r, len(hit)


def _setup_result(
    records: list[dict], capped_steps: int | None, examples: int, plan: dict, rates, setup: str = "ours"
) -> dict:
    speeds = [r["speed"] for r in records]
    steps = records[0]["global_step"]
    entry = {
        "speed": harness.summarise(speeds),
        "compute_dtype": records[0]["compute_dtype"],
        "runs": len(records),
        "capped_steps": capped_steps,
        "optimizer_steps": steps,
        "examples_per_step": BATCH if capped_steps else examples / max(1, steps),
        "peak_rss_mib": harness.summarise([r["peak_rss_mib"] for r in records]),
    }
    if plan.get("flops_per_token"):
        flops = plan["flops_per_token"]  # per setup: ours may train fewer layers than TRL's runs
        flops = flops[setup] if isinstance(flops, dict) else flops
        gflops = rates.gflops(entry["compute_dtype"])  # the peak of the precision this run computed in
        entry["flops_per_token"] = flops
        entry["roofline_gflops"] = gflops
        entry["roofline_speed"] = gflops * 1e9 / flops
        entry["roofline_fraction"] = harness.summarise([roofline.fraction(speed, flops, gflops) for speed in speeds])
    return entry


def paired_ratio(setups: dict, base: str, key: str) -> dict | None:
    """Ours over `base` for `key`, run by run (round k of ours against round k of base), summarised."""
    pairs = zip(setups["ours"][key]["runs"], setups[base][key]["runs"])
    return harness.summarise([ours / theirs for ours, theirs in pairs])


def run_task(task: str, args, plan: dict, rates: roofline.Rates, work: Path) -> dict:
    """Every setup of one task, interleaved; per setup the speeds, dtype, steps, peak RSS and roofline fraction."""
    unit = plan["unit"]
    wanted = [plan["same_as"].get(setup, setup) for setup in args.setups]
    runs = {setup: args.capped_runs if setup in plan["capped"] else args.runs for setup in dict.fromkeys(wanted)}
    records: dict[str, list[dict]] = {setup: [] for setup in runs}
    last_round = 0
    for turn, setup in harness.schedule(runs):
        if turn != last_round:
            rates.remeasure_fast()  # the machine's rate now, so that a drift shows in the spread
            last_round = turn
        argv = plan["argv"](setup, work / f"{task}-{setup}-{turn}") + (args.ours if setup == "ours" else [])
        log = work / "logs" / f"{task}-{setup}-{turn}.log"
        if setup == "ours":
            record = harness.run_stage(task, argv, log)
        else:
            record = harness.run_baseline(plan["baseline"], argv, log)
        done = record.get(plan["count_key"]) or plan["per_run"]  # what the trainer counted, else the whole data
        record["speed"] = done / record["train_seconds"]
        records[setup].append(record)
        print(f"bench: {task} {setup} run {turn + 1}/{runs[setup]}: {record['speed']:.3f} {unit}", flush=True)

    setups = {
        setup: _setup_result(
            done, args.capped_steps if setup in plan["capped"] else None, plan["examples"], plan, rates, setup
        )
        for setup, done in records.items()
    }
    for setup, alias in plan["same_as"].items():
        if alias in setups:
            setups[setup] = setups[alias]
    result = {"unit": unit, "per_run": plan["per_run"], "same_as": plan["same_as"], "setups": setups}
    for base in ("trl-defaults", "trl"):
        if "ours" in setups and base in setups:
            result[f"ours_vs_{base}"] = paired_ratio(setups, base, "speed")
            result[f"ours_rss_vs_{base}"] = paired_ratio(setups, base, "peak_rss_mib")
    if plan.get("flops_per_token"):
        result["flops_per_token"] = plan["flops_per_token"]
    return result


def plans(args, made: dict, model: str, reward: str | None, machine: dict, tasks=TASKS) -> dict:
    """What each of `tasks` runs: the arguments of each setup, which setup is capped or the same run as another,
    counts. Only the tasks run are planned: `--ours` holds one stage's keys, which another stage would refuse."""
    chosen_bf16 = machine["chosen"]["bf16"]
    # TRL's default bf16 is emulated on a CPU without native bf16: cap it; where bf16 is native it is the fair run
    capped = set() if machine["native_bf16"] else {"trl-defaults"}
    same_as = {"trl": "trl-defaults"} if chosen_bf16 else {}
    out = {}
    for task in [task for task in ("sft", "reward") if task in tasks]:
        rows, data, lengths = sft_rows(made["sft_lengths"]), made[f"{task}_data"], made[f"{task}_lengths"]
        config = Path(args.reward_config) if task == "reward" else CONFIGS / "sft.yaml"

        def argv(setup, folder, task=task, data=data, rows=rows, config=config):
            extra = ["--max_steps", str(args.capped_steps)] if setup in capped else []
            return lm_argv(task, setup, data, model, folder, chosen_bf16, rows, config) + extra

        def flops_of(rank: int, layers: int | None, lengths=lengths, task=task) -> float:
            total = roofline.training_flops(model, lengths, made["sft_loss_tokens"], rank, task == "sft", layers)
            return total / sum(lengths)

        trl = flops_of(16, None)  # TRL's runs: LoRA r16 on every linear layer (LORA)
        flops = {"trl-defaults": trl, "trl": trl, "ours": flops_of(*lora_layers(task, config, args.ours, model))}
        out[task] = {
            "capped": capped,
            "same_as": same_as,
            "argv": argv,
            "baseline": f"trl-{task}",
            "count_key": "train_tokens",
            "per_run": sum(lengths),
            "unit": "real tokens/s",
            "examples": len(lengths) // (2 if task == "reward" else 1),
            "flops_per_token": flops,
        }
    out["ppo"] = {
        "capped": set(),
        "same_as": {"trl": "trl-defaults"},  # TRL's PPO loop never autocasts: its defaults are the fair run
        "argv": lambda setup, folder: ppo_argv(setup, made["ppo_data"], model, reward, folder, args.ppo_episodes),
        "baseline": "trl-ppo-example",
        "count_key": "episodes",
        "per_run": args.ppo_episodes,
        "unit": "episodes/s",
        "examples": args.ppo_episodes,
    }
    return out


def make_data(folder: Path, args, model: str) -> dict:
    from rlhf_recipes.models import load_tokenizer

    generator = synthetic.Synthetic(load_tokenizer(model), seed=args.seed)
    if args.hh:  # real HH-RLHF pairs, and their chosen conversations for SFT
        pairs, reward_lengths, conversations, sft_lengths, loss_tokens = synthetic.hh_rows(
            args.hh, args.pairs, args.samples, generator.tokenizer
        )
    else:
        conversations, sft_lengths, loss_tokens = generator.conversations(args.samples)
        pairs, reward_lengths = generator.pairs(args.pairs)
    prompts, _ = generator.prompts(args.ppo_episodes)
    return {
        "sft_data": synthetic.write_split(folder / "sft", conversations),
        "reward_data": synthetic.write_split(folder / "reward", pairs),
        "ppo_data": synthetic.write_split(folder / "prompts", prompts),
        "sft_lengths": sft_lengths,
        "sft_loss_tokens": loss_tokens,
        "reward_lengths": reward_lengths,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--runs", type=int, default=3, help="runs per setup; figures are medians (default 3)")
    parser.add_argument("--samples", type=int, default=64, help="SFT conversations per run (8 per step)")
    parser.add_argument("--pairs", type=int, default=32, help="reward-model pairs per run (8 per step)")
    parser.add_argument("--ppo_episodes", type=int, default=24, help="PPO episodes per run (8 per update)")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of " + ",".join(TASKS))
    parser.add_argument("--setups", default=",".join(SETUPS), help="comma-separated subset of " + ",".join(SETUPS))
    parser.add_argument("--capped_steps", type=int, default=1, help="optimizer steps of a capped TRL-defaults run")
    parser.add_argument("--capped_runs", type=int, default=1, help="runs of a capped TRL-defaults setup")
    parser.add_argument("--seed", type=int, default=0, help="of the generated data")
    parser.add_argument("--model", default=None, help="model folder (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--out", default=str(RESULTS), help="folder for speed.json and speed.md")
    parser.add_argument("--work_dir", default=None, help="data, outputs and logs of the runs (default: a new temp)")
    parser.add_argument("--hh", default=None, help="real pairs for the reward and SFT rows: an HH-RLHF .jsonl[.gz]")
    parser.add_argument("--reward_config", default=str(CONFIGS / "reward.yaml"), help="ours' reward YAML")
    parser.add_argument("--ours", nargs=argparse.REMAINDER, default=[], help="extra recipe arguments for our runs")
    args = parser.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    args.setups = [s for s in args.setups.split(",") if s]
    for chosen, known in ((tasks, TASKS), (args.setups, SETUPS)):
        if set(chosen) - set(known) or not chosen:
            parser.error(f"choose from {', '.join(known)} (got {', '.join(chosen) or 'nothing'})")

    from rlhf_recipes.models import DEFAULT_MODEL, resolve_model_path

    model = resolve_model_path(args.model or DEFAULT_MODEL)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="rlhf-bench-"))
    made = make_data(work / "data", args, model)
    reward = synthetic.reward_model(model, work / "reward-model") if "ppo" in tasks else None
    print(f"bench: data, outputs and logs in {work}", flush=True)
    machine = harness.machine()
    rates = roofline.Rates("cpu")
    task_plans = plans(args, made, model, reward, machine, tasks)
    results = {"machine": machine, "data": data_summary(args, made)}
    for task in tasks:
        results[task] = run_task(task, args, task_plans[task], rates, work)
        results[task]["commit"] = harness.commit()
    results["matmul_gflops"] = rates.to_dict()
    for task in tasks:
        results[task] |= {"machine": machine, "matmul_gflops": results["matmul_gflops"]}
    out = Path(args.out)
    earlier = harness.read_json(out / "speed.json")
    kept = {k: v for k, v in earlier.items() if k in TASKS and k not in tasks}
    for entry in kept.values():  # rows of an earlier run keep the machine that file named
        entry.setdefault("machine", earlier.get("machine"))
        entry.setdefault("matmul_gflops", earlier.get("matmul_gflops"))
    results = {**kept, **results}
    harness.write_json(out / "speed.json", results)
    table = markdown(results)
    (out / "speed.md").write_text(table)
    print(table)
    return results


def data_summary(args, made: dict) -> dict:
    lengths = made["sft_lengths"]
    return {
        "sft_conversations": args.samples,
        "reward_pairs": args.pairs,
        "ppo_prompts": args.ppo_episodes,
        "sft_tokens": sum(lengths),
        "sft_length_min_median_max": [min(lengths), statistics.median(lengths), max(lengths)],
        "reward_tokens": sum(made["reward_lengths"]),
        "rows": f"HH-RLHF pairs from {args.hh}" if args.hh else "generated (synthetic.py)",
        "reward_config": str(args.reward_config).replace(f"{REPO}/", ""),
    }


if __name__ == "__main__":
    harness.main(main)
