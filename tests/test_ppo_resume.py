"""PPO resumes: killed with SIGKILL mid-run, rerun, and its final policy and value adapters equal an uninterrupted
run's; and the refusals in front of an RL run (reward-model gate, half-precision full fine-tuning)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import CONFIGS, REPO
from safetensors.torch import load_file

from rlhf_recipes import stages
from rlhf_recipes.errors import UserError

# 8 updates of 4 episodes, a checkpoint every 2 updates
PPO_ARGS = ["--total_episodes", "32", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
            "--local_rollout_forward_batch_size", "4", "--response_length", "8", "--num_ppo_epochs", "1",
            "--learning_rate", "1e-3", "--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "10",
            "--min_reward_accuracy", "0", "--logging_steps", "1"]  # fmt: skip
TOLERANCE = dict(
    atol=1e-5, rtol=1e-4
)  # same data order, RNG and optimizer state: only float summation order may differ


def _command(sft, reward, output_dir):
    return [sys.executable, "recipes/ppo.py", "--config", str(CONFIGS / "ppo.yaml"), "--model_name_or_path", str(sft),
            "--reward_model_path", str(reward), "--output_dir", str(output_dir), *PPO_ARGS]  # fmt: skip


def test_sigkill_mid_ppo_then_rerun_resumes_to_the_same_adapters(tmp_path, sft_and_reward):
    sft, reward = sft_and_reward
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(_command(sft, reward, tmp_path / "straight"), cwd=REPO, env=env, check=True, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_command(sft, reward, killed), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.time() + 300
    while not (killed / "checkpoint-4" / "trainer_state.json").exists() and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "lineage.json").exists(), "the run must be killed before it finished"
    assert not (killed / "checkpoint-8").exists()
    checkpoint = killed / "checkpoint-4"
    assert {"adapter_model.safetensors", "value_model.safetensors", "optimizer.pt", "scheduler.pt",
            "rng_state.pth", "trainer_state.json"} <= {p.name for p in checkpoint.iterdir()}  # fmt: skip
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 4

    rerun = subprocess.run(_command(sft, reward, killed), cwd=REPO, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "Resuming PPO after update 4 of 8" in rerun.stderr + rerun.stdout
    for name in ("adapter_model.safetensors", "checkpoint-8/value_model.safetensors"):
        straight, resumed = load_file(str(tmp_path / "straight" / name)), load_file(str(killed / name))
        assert straight.keys() == resumed.keys() and straight
        for key in straight:
            torch.testing.assert_close(resumed[key], straight[key], **TOLERANCE)
    policy = load_file(str(killed / "adapter_model.safetensors"))
    assert any(w.norm() > 0 for k, w in policy.items() if "lora_B" in k), "the policy adapter trained"
    state = json.loads((killed / "trainer_state.json").read_text())
    assert state["global_step"] == 8 and [e["step"] for e in state["log_history"]] == list(range(1, 9))


def _ppo(sft, reward, output_dir, *extra):
    argv = ["--config", str(CONFIGS / "ppo.yaml"), "--model_name_or_path", str(sft), "--reward_model_path", str(reward),
            "--output_dir", str(output_dir), *PPO_ARGS, *extra]  # fmt: skip
    return stages.get("ppo").run(argv)


def test_rl_refuses_a_reward_model_below_the_accuracy_gate(tmp_path, sft_and_reward):
    sft, reward = sft_and_reward
    measured = json.loads((reward / "lineage.json").read_text())["metrics"]["eval_accuracy"]
    with pytest.raises(UserError, match=r"ranks only .* of held-out pairs correctly, below min_reward_accuracy=0.99"):
        _ppo(sft, reward, tmp_path / "ppo", "--min_reward_accuracy", "0.99")
    assert measured < 0.99 and not (tmp_path / "ppo").exists()


def test_full_fine_tuning_with_half_precision_weights_is_refused(tmp_path, sft_and_reward):
    sft, reward = sft_and_reward
    with pytest.raises(UserError, match="use_peft: false with dtype: bfloat16 trains half-precision weights"):
        _ppo(sft, reward, tmp_path / "ppo", "--use_peft", "false", "--dtype", "bfloat16")
    assert not (tmp_path / "ppo").exists()


def test_evaluation_applies_max_rows_everywhere(tmp_path, sft_and_reward, tiny_model_path):
    """`max_rows: 3` evaluates 3 rows of every held-out set (and the report says how many it evaluated)."""
    sft, reward = sft_and_reward
    ppo_dir = tmp_path / "ppo"
    _ppo(sft, reward, ppo_dir, "--total_episodes", "4", "--save_strategy", "no")
    # the RL model named before its baseline: its KL is measured all the same
    models = json.dumps({"ppo": str(ppo_dir), "base": str(tiny_model_path), "sft": str(sft)})
    report = stages.get("eval").run(
        ["--config", str(CONFIGS / "eval.yaml"), "--models", models, "--reward_model", str(reward), "--max_rows", "3",
         "--samples_per_prompt", "2", "--max_new_tokens", "4", "--output_dir", str(tmp_path / "eval")]
    )  # fmt: skip
    assert report["rows"] == {"text": 3, "qa": 3, "prompts": 3, "sampled_answers": 6, "pairs": 3}
    counted = {(r["stage"], r["metric"]): r.get("n") for r in report["results"]}
    assert counted[("sft", "accuracy")] == 3 and counted[("ppo", "mean_reward")] == 6
    assert counted[("reward", "accuracy")] == 3 and counted[("ppo", "kl_to_baseline")] == 6
    targets = {t["target"]: t for t in report["targets"]}
    assert all(t["met"] in (True, False, None) for t in targets.values())
    assert (tmp_path / "eval" / "eval.json").is_file() and (tmp_path / "eval" / "report.md").is_file()
