"""`make bench`: this project's SFT, reward-model and PPO training side by side with plain TRL on the same machine.

    python bench/run.py [--runs 3] [--samples 64] [--pairs 32] [--ppo_episodes 24] [--tasks sft,reward,ppo] [--out bench/results]

Every figure is the median of `--runs` runs (each a fresh process, baseline and ours interleaved), with the spread
(min-max). Same embedded model (SmolLM2-135M-Instruct), same data, same LoRA (r16, alpha 32, all linear layers),
same sequences per optimizer step:

- SFT: real (non-padding) tokens per second on generated conversations of 20-500 tokens (log-uniform), against
  `trl sft` with its defaults (no packing); and as a fraction of the roofline = the fp32 matmul rate measured in this
  run / the training FLOPs per token (frozen base: forward 2N + input-gradient backward 2N over the linear layers, 6N
  over the LoRA matrices, causal attention per sample; the LM head only on tokens that carry the loss).
- Reward model: real tokens per second (chosen + rejected) on pairs of the same spread, against `trl reward`.
- PPO: episodes per second against TRL's example setup (bench/trl_ppo_example.py: full value model, settings of
  TRL's examples/scripts/ppo/ppo.py), same policy, reward model, prompts and batch.

Writes `<out>/bench.json` and `<out>/bench.md`. Needs a quiet machine: anything else running skews the timings.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "smollm2-135m"
LORA = ["--use_peft", "--lora_r", "16", "--lora_alpha", "32", "--lora_dropout", "0.0"]
TARGETS = ["--lora_target_modules", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MIN_TOKENS, MAX_TOKENS = 20, 500


# ---------------------------------------------------------------- data


def _text_tokens(tokenizer) -> list[int]:
    """A long stream of demo-domain prose to cut answers from."""
    rows = (REPO / "data" / "demo" / "cpt" / "train.jsonl").read_text().splitlines()
    return tokenizer(" ".join(json.loads(row)["text"] for row in rows), add_special_tokens=False)["input_ids"]


def _questions() -> list[str]:
    rows = (REPO / "data" / "demo" / "sft" / "train.jsonl").read_text().splitlines()
    return [json.loads(row)["messages"][0]["content"] for row in rows]


def _conversation(tokenizer, stream, question: str, target: int, rng: random.Random) -> list[dict]:
    """A system + user + assistant conversation whose rendering is `target` tokens long (within a token or two)."""

    def render(user_ids, answer_ids):
        messages = [
            {"role": "system", "content": "Be helpful."},
            {"role": "user", "content": tokenizer.decode(user_ids)},
            {"role": "assistant", "content": tokenizer.decode(answer_ids)},
        ]
        return messages, len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])

    question_ids = tokenizer(question, add_special_tokens=False)["input_ids"]
    _, overhead = render([], [])
    room = max(2, target - overhead)
    user_ids = question_ids[: max(1, min(len(question_ids), room // 4))]
    start = rng.randrange(len(stream) - MAX_TOKENS)
    answer = max(1, room - len(user_ids))
    messages, length = render(user_ids, stream[start : start + answer])
    while length > target and answer > 1:  # decoding and re-encoding can merge or split a token at the seams
        answer -= 1
        messages, length = render(user_ids, stream[start : start + answer])
    return messages


def make_data(folder: Path, samples: int, pairs_count: int, seed: int = 0) -> dict:
    """Write the SFT conversations and reward pairs of this benchmark; lengths log-uniform in [20, 500] tokens."""
    from rlhf_recipes.models import DEFAULT_MODEL, load_tokenizer, resolve_model_path

    tokenizer = load_tokenizer(resolve_model_path(DEFAULT_MODEL))
    rng = random.Random(seed)
    stream, questions = _text_tokens(tokenizer), _questions()

    def length() -> int:
        return round(math.exp(rng.uniform(math.log(MIN_TOKENS), math.log(MAX_TOKENS))))

    def encode(messages) -> tuple[int, int]:
        rendered = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        return len(rendered["input_ids"]), sum(rendered["assistant_masks"])

    sft, sft_lengths, sft_loss_tokens = [], [], []
    for _ in range(samples):
        messages = _conversation(tokenizer, stream, rng.choice(questions), length(), rng)
        tokens, loss_tokens = encode(messages)
        sft.append({"messages": messages})
        sft_lengths.append(tokens)
        sft_loss_tokens.append(loss_tokens)
    pairs, pair_lengths = [], []
    for _ in range(pairs_count):
        question = rng.choice(questions)
        chosen = _conversation(tokenizer, stream, question, length(), rng)
        rejected = _conversation(tokenizer, stream, question, length(), rng)
        pairs.append({"chosen": chosen, "rejected": rejected})
        pair_lengths += [encode(chosen)[0], encode(rejected)[0]]
    for name, rows in (("sft", sft), ("reward", pairs)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return {
        "sft_lengths": sft_lengths,
        "sft_loss_tokens": sft_loss_tokens,
        "reward_lengths": pair_lengths,
        "tokenizer": tokenizer,
    }


# ---------------------------------------------------------------- the machine's limit


def matmul_rate(dtype: str = "float32", size: int = 2048, repeats: int = 20) -> float:
    """Sustained FLOP/s of one large square matrix multiply on all threads (median of `repeats`)."""
    import torch

    a = torch.randn(size, size, dtype=getattr(torch, dtype))
    b = torch.randn(size, size, dtype=getattr(torch, dtype))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * size**3 / statistics.median(times)


def training_flops(model_path: str, lengths: list[int], loss_tokens: list[int], lora_r: int, lm_head: bool) -> float:
    """Model FLOPs of one LoRA training pass over sequences of `lengths` (frozen base weights, no recomputation)."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_path)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    q, kv = c.num_attention_heads * head_dim, c.num_key_value_heads * head_dim
    shapes = [(c.hidden_size, q), (c.hidden_size, kv), (c.hidden_size, kv), (q, c.hidden_size)]
    shapes += [(c.hidden_size, c.intermediate_size)] * 2 + [(c.intermediate_size, c.hidden_size)]
    linear = c.num_hidden_layers * sum(i * o for i, o in shapes)
    lora = c.num_hidden_layers * sum(lora_r * (i + o) for i, o in shapes)
    per_token = 4 * linear + 6 * lora  # forward 2N; backward 2N (input gradients only: the base is frozen)
    attention_per_pair = 12 * q * c.num_hidden_layers  # QK^T and AV, forward + 2x backward, per (query, key) pair
    total = sum(per_token * n + attention_per_pair * n * (n + 1) / 2 for n in lengths)
    if lm_head:
        total += 4 * c.hidden_size * c.vocab_size * sum(loss_tokens)
    return total


# ---------------------------------------------------------------- runs


def run_worker(task: str, setup: str, argv: list[str], workdir: Path) -> dict:
    out = workdir / f"{task}-{setup}-{time.time_ns()}.json"
    command = [sys.executable, str(REPO / "bench" / "worker.py"), task, setup, str(out), "--", *argv]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = workdir / f"{out.stem}.log"
    with log.open("w") as handle:
        done = subprocess.run(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-25:])
        raise SystemExit(f"bench: {task}/{setup} failed (exit {done.returncode}); last lines of {log}:\n{tail}")
    return json.loads(out.read_text())


def sft_args(setup: str, data: Path, model: str, out: Path, lengths: list[int]) -> list[str]:
    common = ["--dataset_name", str(data / "sft"), "--num_train_epochs", "1", "--output_dir", str(out)]
    common += ["--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1", "--report_to", "none"]
    common += ["--use_cpu", "true"]  # what `trl sft` asks for on a machine without a GPU
    if setup == "trl":  # `trl sft --model_name_or_path M --dataset_name D --use_peft ...`: everything else default
        return ["--model_name_or_path", model, *common, *LORA, *TARGETS, "--save_strategy", "no"]
    # the shipped config packs conversations into rows of up to max_length tokens: as many rows per step as hold
    # the baseline's 8 conversations on average
    rows = max(
        1, round(8 * statistics.mean(lengths) / yaml.safe_load((CONFIGS / "sft.yaml").read_text())["max_length"])
    )
    return [
        "--config",
        str(CONFIGS / "sft.yaml"),
        "--model_name_or_path",
        model,
        *common,
        *_no_eval_save(),
        "--per_device_train_batch_size",
        str(rows),
    ]


def reward_args(setup: str, data: Path, model: str, out: Path, lengths: list[int]) -> list[str]:
    common = ["--dataset_name", str(data / "reward"), "--num_train_epochs", "1", "--output_dir", str(out)]
    common += ["--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1", "--report_to", "none"]
    common += ["--use_cpu", "true"]  # what `trl sft` asks for on a machine without a GPU
    if setup == "trl":  # `trl reward ... --use_peft --lora_task_type SEQ_CLS`, as TRL's reward-model docs say
        return ["--model_name_or_path", model, *common, *LORA, *TARGETS, "--lora_task_type", "SEQ_CLS"]
    return ["--config", str(CONFIGS / "reward.yaml"), "--model_name_or_path", model, *common, *_no_eval_save()]


def _no_eval_save() -> list[str]:
    return ["--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", "1000"]


def summarise(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def fmt(stat: dict | None, digits: int = 1) -> str:
    if stat is None:
        return "-"
    return f"{stat['median']:.{digits}f} ({stat['min']:.{digits}f}-{stat['max']:.{digits}f})"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--runs", type=int, default=3, help="runs per setup; figures are medians (default 3)")
    parser.add_argument("--samples", type=int, default=64, help="SFT conversations per run (8 per step)")
    parser.add_argument("--pairs", type=int, default=32, help="reward-model pairs per run (8 per step)")
    parser.add_argument("--tasks", default="sft,reward,ppo", help="comma-separated subset of sft,reward,ppo")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"), help="folder for bench.json, bench.md")
    parser.add_argument("--ppo_episodes", type=int, default=24, help="PPO episodes per run (8 per update)")
    parser.add_argument("--setups", default="trl,ours", help="comma-separated subset of trl,ours")
    parser.add_argument(
        "--ours", nargs=argparse.REMAINDER, default=[], help="extra recipe arguments for our runs, to try a setting"
    )
    args = parser.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    setups = [s for s in args.setups.split(",") if s]
    unknown = set(tasks) - {"sft", "reward", "ppo"}
    if unknown:
        parser.error(f"unknown task(s) {', '.join(sorted(unknown))}; choose from sft, reward, ppo")

    from rlhf_recipes.models import DEFAULT_MODEL, resolve_model_path

    model = resolve_model_path(DEFAULT_MODEL)
    workdir = Path(tempfile.mkdtemp(prefix="rlhf-bench-"))
    data = workdir / "data"
    made = make_data(data, args.samples, args.pairs)
    print(f"bench: data in {data}; logs and outputs in {workdir}", flush=True)
    rates = [matmul_rate()]
    results: dict = {"machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()}}
    results["data"] = {
        "sft_conversations": args.samples,
        "reward_pairs": args.pairs,
        "sft_tokens": sum(made["sft_lengths"]),
        "sft_length_min_median_max": [
            min(made["sft_lengths"]),
            statistics.median(made["sft_lengths"]),
            max(made["sft_lengths"]),
        ],
        "reward_tokens": sum(made["reward_lengths"]),
    }
    builders = {"sft": sft_args, "reward": reward_args}
    for task in (t for t in tasks if t in builders):
        real_tokens = sum(made[f"{task}_lengths"])
        flops = training_flops(
            model,
            made[f"{task}_lengths"],
            made.get("sft_loss_tokens", []),
            lora_r=16,
            lm_head=task == "sft",
        )
        speeds: dict[str, list[float]] = {"trl": [], "ours": []}
        steps: dict[str, int] = {}
        for run in range(args.runs):
            for setup in setups:
                extra = args.ours if setup == "ours" else []
                argv = builders[task](setup, data, model, workdir / f"{task}-{setup}", made[f"{task}_lengths"]) + extra
                record = run_worker(task, setup, argv, workdir)
                speeds[setup].append(real_tokens / record["train_seconds"])
                steps[setup] = record["global_step"]
                print(
                    f"bench: {task} {setup} run {run + 1}/{args.runs}: {speeds[setup][-1]:.1f} real tokens/s",
                    flush=True,
                )
            rates.append(matmul_rate())
        results[task] = {
            "real_tokens_per_run": real_tokens,
            "flops_per_real_token": flops / real_tokens,
            **{f"{setup}_tokens_per_second": summarise(v) for setup, v in speeds.items()},
            "speedup": summarise([o / t for o, t in zip(speeds["ours"], speeds["trl"])]),
            "optimizer_steps": steps,
            "examples_per_step": {k: (args.samples if task == "sft" else args.pairs) / v for k, v in steps.items()},
        }
    if "ppo" in tasks:
        results["ppo"] = bench_ppo(args, model, workdir)
    rate = statistics.median(rates)
    results["fp32_matmul_flops"] = summarise(rates)
    for task in (t for t in tasks if t in builders):
        results[task]["fp32_matmul_flops"] = rate
        per_token = results[task]["flops_per_real_token"]
        results[task]["roofline_tokens_per_second"] = rate / per_token
        for setup in ("trl", "ours"):
            speeds = (results[task][f"{setup}_tokens_per_second"] or {"runs": []})["runs"]
            results[task][f"{setup}_roofline_fraction"] = summarise([s * per_token / rate for s in speeds])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    for task in tasks:
        results[task]["commit"] = commit.strip() or "unknown"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    earlier = out / "bench.json"
    if earlier.is_file():  # a run of some tasks keeps the others' figures, each with the commit it was measured on
        kept = json.loads(earlier.read_text())
        results = {**{k: v for k, v in kept.items() if k in ("sft", "reward", "ppo") and k not in tasks}, **results}
    (out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (out / "bench.md").write_text(table)
    print(table)
    return results


def reward_model_folder(model: str, folder: Path) -> str:
    """A full-weight reward model for the PPO runs: the embedded model with a seeded one-output score head."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from rlhf_recipes.models import load_tokenizer

    torch.manual_seed(0)
    reward = AutoModelForSequenceClassification.from_pretrained(model, num_labels=1, dtype=torch.float32)
    tokenizer = load_tokenizer(model)
    reward.config.pad_token_id = tokenizer.pad_token_id
    reward.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def bench_ppo(args, model: str, workdir: Path) -> dict:
    """Episodes per second; the work per episode matched: response length, PPO epochs, batch, no sample generations."""
    reward = reward_model_folder(model, workdir / "reward-model")
    episodes, batch, accumulation = args.ppo_episodes, 4, 2
    shared = ["--total_episodes", str(episodes), "--per_device_train_batch_size", str(batch)]
    shared += ["--gradient_accumulation_steps", str(accumulation), "--response_length", "53", "--num_ppo_epochs", "1"]
    shared += ["--num_sample_generations", "0"]
    argv = {
        "trl": ["--policy", model, "--reward", reward, "--use_peft", *shared],
        "ours": [
            "--config",
            str(CONFIGS / "ppo.yaml"),
            "--model_name_or_path",
            model,
            "--reward_model_path",
            reward,
            "--output_dir",
            str(workdir / "ppo-ours"),
            *shared,
        ],
    }
    speeds: dict[str, list[float]] = {"trl": [], "ours": []}
    peaks: dict[str, list[float]] = {"trl": [], "ours": []}
    for run in range(args.runs):
        for setup in args.setups.split(","):
            record = run_worker("ppo", setup, argv[setup] + (args.ours if setup == "ours" else []), workdir)
            speeds[setup].append(episodes / record["train_seconds"])
            peaks[setup].append(record["peak_rss_mib"])
            print(f"bench: ppo {setup} run {run + 1}/{args.runs}: {speeds[setup][-1]:.3f} episodes/s", flush=True)
    return {
        "episodes_per_run": episodes,
        "episodes_per_update": batch * accumulation,
        "response_length": 53,
        **{f"{setup}_episodes_per_second": summarise(v) for setup, v in speeds.items()},
        **{f"{setup}_peak_rss_mib": summarise(v) for setup, v in peaks.items()},
        "speedup": summarise([o / t for o, t in zip(speeds["ours"], speeds["trl"])]),
    }


def markdown(results: dict) -> str:
    rate = results["fp32_matmul_flops"]
    lines = [
        f"fp32 matmul rate (2048x2048, all threads): {rate['median'] / 1e9:.0f} GFLOP/s "
        f"({rate['min'] / 1e9:.0f}-{rate['max'] / 1e9:.0f}); medians of {len(rate['runs'])} samples",
        "",
        "| task | metric | plain TRL | rlhf-recipes | ratio | target |",
        "|---|---|---|---|---|---|",
    ]
    for task, target in (("sft", "1.5x, roofline >= 0.6"), ("reward", "1.3x")):
        if task not in results:
            continue
        r = results[task]
        lines.append(
            f"| {task} | real tokens/s | {fmt(r['trl_tokens_per_second'])} | {fmt(r['ours_tokens_per_second'])} | "
            f"{fmt(r['speedup'], 2)} | {target.split(',')[0]} |"
        )
        lines.append(
            f"| {task} | fraction of fp32 roofline ({r['roofline_tokens_per_second']:.0f} tokens/s) | "
            f"{fmt(r['trl_roofline_fraction'], 2)} | {fmt(r['ours_roofline_fraction'], 2)} | | "
            f"{target.split(', ')[1] if ', ' in target else ''} |"
        )
    for task in ("sft", "reward"):
        if task in results:
            per_step = results[task]["examples_per_step"]
            lines.append(
                f"| {task} | examples per optimizer step | {per_step.get('trl', 0):.1f} | {per_step.get('ours', 0):.1f} | | "
                "matched |"
            )
    if "ppo" in results:
        r = results["ppo"]
        lines.append(
            f"| ppo | peak RSS, MiB | {fmt(r['trl_peak_rss_mib'], 0)} | {fmt(r['ours_peak_rss_mib'], 0)} | | |"
        )
        lines.append(
            f"| ppo | episodes/s | {fmt(r['trl_episodes_per_second'], 3)} | {fmt(r['ours_episodes_per_second'], 3)} | "
            f"{fmt(r['speedup'], 2)} | 1.0x |"
        )
    lines.append("")
    lines.append("Median (min-max) of the runs; each run a fresh process. Data: " + json.dumps(results["data"]))
    commits = ", ".join(f"{t} at {results[t].get('commit', '?')}" for t in ("sft", "reward", "ppo") if t in results)
    lines.append(f"Measured on commit: {commits}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
