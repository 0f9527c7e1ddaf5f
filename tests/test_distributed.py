"""Several processes: SFT, the reward model and PPO as 2-rank gloo runs on CPU (torchrun, and `accelerate launch` with
configs/accelerate/ddp.yaml): every rank trains, exactly one model is saved, and the caches are built once."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import pytest
from conftest import CONFIGS, DEMO, REPO
from test_stages import lora_b_norms

from rlhf_recipes.fs import MARKER

ACCELERATE_CONFIGS = sorted((REPO / "configs" / "accelerate").glob("*.yaml"))
WORLD_SIZE = 2
STEPS = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def small_data(folder, source, train_rows=16, test_rows=4):
    """The first rows of a demo data set: enough for 2 ranks x 2 steps x 2 examples (SFT packs several per row)."""
    folder.mkdir()
    for split, rows in (("train", train_rows), ("test", test_rows)):
        lines = (source / f"{split}.jsonl").read_text().splitlines(keepends=True)[:rows]
        (folder / f"{split}.jsonl").write_text("".join(lines))
    return folder


def launch(launcher: list[str], stage: str, model, data, output_dir, cache, *overrides: str):
    """Run a recipe from its real YAML under a multi-process launcher; 1 thread per rank (2 ranks share 2 cores)."""
    command = [
        *launcher,
        f"recipes/{stage}.py",
        "--config",
        str(CONFIGS / f"{stage}.yaml"),
        "--model_name_or_path",
        str(model),
        "--dataset_name",
        str(data),
        "--output_dir",
        str(output_dir),
        "--max_steps",
        str(STEPS),
        "--per_device_train_batch_size",
        "2",
        "--eval_strategy",
        "no",
        "--logging_steps",
        "1",
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "RLHF_RECIPES_CACHE": str(cache)}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    return output


def torchrun() -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD_SIZE)]


def assert_every_rank_trained(output: str, steps: int = STEPS, per_step: int = 2):
    for rank in range(WORLD_SIZE):
        line = f"rank {rank}/{WORLD_SIZE}: trained {steps} optimizer steps on {steps * per_step} examples"
        assert line in output, f"rank {rank} did not report training"


def assert_saved_once(output_dir, steps: int = STEPS):
    """One model at the top of output_dir, written by one process: no per-rank copies, no half-written files (the
    ownership marker fs.py writes into every output folder aside)."""
    top = sorted(p.name for p in output_dir.iterdir() if p.name != MARKER)
    assert [n for n in top if n.endswith(".safetensors")] == ["adapter_model.safetensors"], top
    assert "lineage.json" in top and "trainer_state.json" in top
    assert not [n for n in top if re.search(r"rank|_\d+\.\w+$|\.tmp$|^\.", n)], top
    assert [n for n in top if n.startswith("checkpoint-")] == [f"checkpoint-{steps}"]
    # a checkpoint holds one RNG state per rank (resume restores each rank's own); all else once
    checkpoint = sorted(p.name for p in (output_dir / f"checkpoint-{steps}").iterdir())
    assert [n for n in checkpoint if n.startswith("rng_state")] == [f"rng_state_{r}.pth" for r in range(WORLD_SIZE)]
    lineage = json.loads((output_dir / "lineage.json").read_text())
    assert lineage["config"]["world_size"] == WORLD_SIZE
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == steps
    assert min(lora_b_norms(output_dir)) > 0  # LoRA's B matrices start at zero: the adapter trained
    return lineage


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh model cache, so that the 2 ranks of the reward run race to merge the SFT adapter."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def sft_output(tmp_path_factory, tiny_model_path, cache):
    root = tmp_path_factory.mktemp("distributed-sft")
    data = small_data(root / "data", DEMO / "sft", train_rows=64)  # packed into more than 8 rows of max_length
    output = launch(
        torchrun() + ["--master_port", str(free_port())], "sft", tiny_model_path, data, root / "out", cache
    )
    return root / "out", output


def test_torchrun_sft_trains_on_every_rank_and_saves_once(sft_output):
    output_dir, output = sft_output
    assert_every_rank_trained(output)
    lineage = assert_saved_once(output_dir)
    assert lineage["stage"] == "sft" and lineage["data"]["train_rows"] >= WORLD_SIZE * STEPS * 2  # no row twice
    assert output.count("sft finished:") == 1  # the main process alone writes lineage.json and the card


@pytest.fixture(scope="module")
def reward_output(tmp_path_factory, sft_output, cache):
    root = tmp_path_factory.mktemp("distributed-reward")
    data = small_data(root / "data", DEMO / "preferences")
    output = launch(
        torchrun() + ["--master_port", str(free_port())], "reward", sft_output[0], data, root / "out", cache
    )
    return root / "out", output


def test_torchrun_reward_merges_the_sft_adapter_once_and_trains(reward_output, cache):
    output_dir, output = reward_output
    assert_every_rank_trained(output)
    lineage = assert_saved_once(output_dir)
    assert lineage["model_kind"] == "reward_model" and [s["stage"] for s in lineage["chain"]] == ["sft", "reward"]
    assert output.count("Merging the adapter") == 1  # one rank merged it, the other waited and reused it
    assert [p.name for p in (cache / "merged").iterdir() if p.name.startswith(".")] == []  # no lock or temp left


def test_torchrun_ppo_trains_on_every_rank_and_saves_one_adapter(sft_output, reward_output, tmp_path, cache):
    """TRL 1.12's PPOTrainer reads `model.policy` through the DDP wrapper (huggingface/trl#2375); rlhf_recipes.train.ppo
    exposes it. 2 ranks x 2 prompts x 2 accumulation steps = 8 episodes per PPO update, 16 episodes = 2 updates."""
    data = small_data(tmp_path / "data", DEMO / "prompts")
    overrides = ["--reward_model_path", str(reward_output[0]), "--total_episodes", "16", "--response_length", "8"]
    overrides += ["--local_rollout_forward_batch_size", "2", "--num_ppo_epochs", "1", "--learning_rate", "1e-3"]
    overrides += ["--gradient_accumulation_steps", "2"]  # the demo YAML updates in one micro-batch
    overrides += ["--min_reward_accuracy", "0"]  # the 2-step reward model has no held-out accuracy to pass the gate
    output = launch(
        torchrun() + ["--master_port", str(free_port())],
        "ppo",
        sft_output[0],
        data,
        tmp_path / "out",
        cache,
        *overrides,
    )
    assert_every_rank_trained(output, per_step=4)  # per_device_train_batch_size 2 x gradient_accumulation_steps 2
    top = sorted(p.name for p in (tmp_path / "out").iterdir() if p.name != MARKER)
    assert [n for n in top if n.endswith(".safetensors")] == ["adapter_model.safetensors"], top
    assert not [n for n in top if re.search(r"rank|_\d+\.\w+$|\.tmp$|^\.", n)], top
    assert min(lora_b_norms(tmp_path / "out")) > 0
    lineage = json.loads((tmp_path / "out" / "lineage.json").read_text())
    assert lineage["config"]["world_size"] == WORLD_SIZE and [s["stage"] for s in lineage["chain"]] == ["sft", "ppo"]
    assert output.count("ppo finished:") == 1


def test_torchrun_grpo_trains_on_every_rank_and_saves_one_adapter(sft_output, reward_output, tmp_path, cache):
    """GRPO as a 2-rank gloo run: 2 completions per rank per step (one prompt's group of 2, split across ranks)."""
    data = small_data(tmp_path / "data", DEMO / "prompts")
    overrides = [
        "--reward_model_path",
        str(reward_output[0]),
        "--num_generations",
        "2",
        "--max_completion_length",
        "8",
    ]
    overrides += ["--learning_rate", "1e-3", "--min_reward_accuracy", "0", "--save_strategy", "no"]
    output = launch(
        torchrun() + ["--master_port", str(free_port())],
        "grpo",
        sft_output[0],
        data,
        tmp_path / "out",
        cache,
        *overrides,
    )
    assert_every_rank_trained(output)
    top = sorted(p.name for p in (tmp_path / "out").iterdir() if p.name != MARKER)
    assert [n for n in top if n.endswith(".safetensors")] == ["adapter_model.safetensors"], top
    assert not [n for n in top if re.search(r"rank|_\d+\.\w+$|\.tmp$|^\.", n)], top
    assert min(lora_b_norms(tmp_path / "out")) > 0
    lineage = json.loads((tmp_path / "out" / "lineage.json").read_text())
    assert lineage["config"]["world_size"] == WORLD_SIZE and lineage["algorithm"]["name"] == "grpo"
    assert output.count("grpo finished:") == 1


def test_a_cache_built_by_a_rank_other_than_0_is_complete(sft_output, tmp_path, monkeypatch):
    """Whichever rank wins the cache lock builds the cache, but transformers 5's `save_pretrained` writes no weights
    on ranks but 0: the cache must still be a complete checkpoint. (Rank 1 of a 2-rank run, simulated in-process;
    the torchrun tests above run the real race.)"""
    import torch.distributed
    from transformers import AutoModelForCausalLM

    from rlhf_recipes.models import resolve_model_path

    monkeypatch.setenv("RLHF_RECIPES_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 1)
    merged = resolve_model_path(str(sft_output[0]))
    monkeypatch.undo()
    assert {"config.json", "model.safetensors", "tokenizer.json", "lineage.json"} <= set(os.listdir(merged))
    AutoModelForCausalLM.from_pretrained(merged)


def test_accelerate_launch_with_the_ddp_config_runs_two_processes_on_cpu(tmp_path, tiny_model_path, cache):
    """configs/accelerate/ddp.yaml launches through torchrun, so on CPU (the YAML's use_cpu) it is a gloo run."""
    data = small_data(tmp_path / "data", DEMO / "sft", train_rows=64)
    launcher = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "configs" / "accelerate" / "ddp.yaml"),
        "--num_processes",
        str(WORLD_SIZE),
        "--main_process_port",
        str(free_port()),
    ]
    output = launch(launcher, "sft", tiny_model_path, data, tmp_path / "out", cache)
    assert_every_rank_trained(output)
    assert_saved_once(tmp_path / "out")


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_config_keys_are_options_of_accelerate_launch(path):
    """tests/test_configs.py loads each file with accelerate, which checks the top-level keys only; `accelerate
    launch` copies fsdp_config/deepspeed_config keys onto its options without a check, so a misspelt one is ignored."""
    import yaml
    from accelerate.commands.launch import launch_command_parser
    from accelerate.utils.constants import FSDP_AUTO_WRAP_POLICY

    options = {action.dest for action in launch_command_parser()._actions}
    text = path.read_text()
    config = yaml.safe_load(text)
    for section in ("fsdp_config", "deepspeed_config"):
        assert set(config.get(section) or {}) <= options, f"{path.name}: unknown {section} keys"
    assert f"accelerate launch --config_file configs/accelerate/{path.name} recipes/" in text.splitlines()[1]
    assert config["num_processes"] == WORLD_SIZE and config["mixed_precision"] == "bf16"
    if config["distributed_type"] == "FSDP":
        fsdp = config["fsdp_config"]
        assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] in FSDP_AUTO_WRAP_POLICY
        assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # else Trainer.save_model writes no weights
    if config["distributed_type"] == "DEEPSPEED" and config["deepspeed_config"]["zero_stage"] == 3:
        assert config["deepspeed_config"]["zero3_save_16bit_model"] is True  # else save_model writes no weights


def test_a_cache_is_built_with_whole_weights_even_under_zero3(tmp_path):
    """Under zero3.yaml, TrainingArguments registers a ZeRO-3 config and `from_pretrained` would partition the weights
    with collective calls; the one process that builds a cache (the others wait on its lock) must load them whole."""
    from transformers.integrations.deepspeed import (
        is_deepspeed_zero3_enabled,
        set_hf_deepspeed_config,
        unset_hf_deepspeed_config,
    )

    from rlhf_recipes import models

    class ZeroThreeConfig:  # stands in for transformers' HfDeepSpeedConfig, which needs DeepSpeed installed
        def is_zero3(self):
            return True

    config, seen = ZeroThreeConfig(), []
    set_hf_deepspeed_config(config)
    try:
        models._atomic_build(tmp_path / "cache" / "model", lambda folder: seen.append(is_deepspeed_zero3_enabled()))
        assert seen == [False] and is_deepspeed_zero3_enabled()  # off while building, back on for the trainer
    finally:
        unset_hf_deepspeed_config()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["model"]  # no lock file or temporary folder left
