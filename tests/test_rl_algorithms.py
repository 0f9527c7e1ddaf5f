"""GRPO, RLOO, online DPO and DPO beside PPO: each trains from its real YAML on the tiny model (trained parameters
change, LoRA base weights do not, the output loads back and generates), the online ones score completions exactly
as the reward model was trained, each online one resumes after SIGKILL to the adapter of an uninterrupted run, and
the pipeline's `rl:` choice expands into one stage per algorithm."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from conftest import CONFIGS, REPO
from safetensors.torch import load_file

from rlhf_recipes import stages
from rlhf_recipes.scoring import RewardScorer, training_ids
from rlhf_recipes.train import online

ONLINE = ("grpo", "rloo", "online_dpo")
TINY = {  # a few short completions per step, whatever the YAML's demo sizes
    "grpo": ["--per_device_train_batch_size", "4", "--num_generations", "2", "--max_completion_length", "8"],
    "rloo": ["--per_device_train_batch_size", "4", "--num_generations", "2", "--max_completion_length", "8"],
    "online_dpo": ["--per_device_train_batch_size", "2", "--max_new_tokens", "8"],
    "dpo": ["--per_device_train_batch_size", "2", "--max_length", "256"],
}
TOLERANCE = dict(atol=1e-5, rtol=1e-4)  # same data order, RNG and optimizer state: only float summation order differs


def _argv(algorithm, sft, reward, output_dir, *extra):
    argv = ["--config", str(CONFIGS / f"{algorithm}.yaml"), "--model_name_or_path", str(sft),
            "--output_dir", str(output_dir), "--learning_rate", "1e-3", "--logging_steps", "1", *TINY[algorithm]]  # fmt: skip
    if algorithm != "dpo":
        argv += ["--reward_model_path", str(reward), "--min_reward_accuracy", "0"]
    return argv + list(extra)


@pytest.mark.parametrize("algorithm", [*ONLINE, "dpo"])
def test_each_algorithm_trains_two_steps_from_its_yaml(algorithm, tmp_path, sft_and_reward, monkeypatch):
    sft, reward = sft_and_reward
    scored = []  # what the trainer asked the reward model, and what it got back
    original = online.RewardModelReward.__call__

    def record(self, prompts, completions, completion_ids=None, **kwargs):
        scores = original(self, prompts, completions, completion_ids, **kwargs)
        scored.append((self, prompts, completions, completion_ids, scores))
        return scores

    monkeypatch.setattr(online.RewardModelReward, "__call__", record)
    out = tmp_path / algorithm
    stages.get(algorithm).run(_argv(algorithm, sft, reward, out, "--max_steps", "2", "--save_strategy", "no"))

    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["stage"] == algorithm and lineage["algorithm"]["name"] == algorithm
    assert [s["stage"] for s in lineage["chain"]] == ["sft", algorithm]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert adapter and all("lora_" in key for key in adapter), "only LoRA weights are trained and saved"
    assert min(w.norm() for k, w in adapter.items() if "lora_B" in k) > 0, "LoRA's B matrices start at 0: trained"

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rlhf_recipes.models import load_tokenizer, resolve_model_path

    base_path = resolve_model_path(str(sft))  # the SFT model, its own adapter merged: the frozen base
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), out).eval()
    tokenizer = load_tokenizer(base_path)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Who keeps the lighthouse?"}], add_generation_prompt=True, return_tensors="pt",
        return_dict=True,
    )  # fmt: skip
    with torch.no_grad():
        tuned = model(**inputs).logits
        with model.disable_adapter():
            frozen = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert (tuned - frozen).abs().max() > 1e-4, "the adapter changes the output"
    assert generated.shape[1] > inputs["input_ids"].shape[1]

    if algorithm == "dpo":
        assert not scored, "DPO reads no reward model"
        return
    assert scored, f"{algorithm} never called the reward function"
    for function, prompts, completions, completion_ids, scores in scored:  # the one scoring path, as trained
        scorer = function.scorer
        expected = scorer.score_ids([training_ids(scorer.tokenizer, p, c) for p, c in zip(prompts, completions)])
        ended = torch.tensor([scorer.tokenizer.eos_token_id in list(ids) for ids in completion_ids])
        penalty = 0.0 if algorithm == "online_dpo" else 1.0  # online DPO's trainer applies its own penalty
        expected = expected - penalty * (~ended).float()
        torch.testing.assert_close(torch.tensor(scores), expected, atol=1e-5, rtol=0)


def test_the_reward_function_scores_as_reward_trainer_rendered_its_pairs(sft_and_reward):
    """A completion in TRL's conversational form ([{role: assistant}]) is scored on the exact training rendering."""
    from rlhf_recipes.models import load_tokenizer

    _, reward = sft_and_reward
    scorer = RewardScorer.from_path(str(reward))
    function = online.RewardModelReward(scorer, scorer.tokenizer.eos_token_id, missing_eos_penalty=1.0)
    prompts = [[{"role": "user", "content": "Who keeps the lighthouse?"}], [{"role": "user", "content": "Ferry?"}]]
    completions = [[{"role": "assistant", "content": "Corwin Tallish."}], [{"role": "assistant", "content": "The"}]]
    eos = scorer.tokenizer.eos_token_id
    scores = function(prompts, completions, completion_ids=[[5, 6, eos], [5, 6]])
    tokenizer = load_tokenizer(str(reward))
    from trl.data_utils import maybe_apply_chat_template  # RewardTrainer's own rendering of a training pair

    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        rendered = maybe_apply_chat_template(
            {"prompt": prompt, "chosen": completion, "rejected": completion}, tokenizer
        )
        ids = tokenizer(rendered["prompt"] + rendered["chosen"], add_special_tokens=False)["input_ids"]
        assert ids == training_ids(tokenizer, prompt, completion)
        expected = scorer.score_ids([ids]).item() - (1.0 if i == 1 else 0.0)  # the cut one is penalised
        assert abs(scores[i] - expected) < 1e-5


def _command(algorithm, sft, reward, output_dir):
    argv = _argv(algorithm, sft, reward, output_dir, "--max_steps", "6", "--save_strategy", "steps", "--save_steps",
                 "2", "--save_total_limit", "10")  # fmt: skip
    return [sys.executable, f"recipes/{algorithm}.py", *argv]


@pytest.mark.parametrize("algorithm", ONLINE)
def test_sigkill_mid_run_then_rerun_resumes_to_the_same_adapter(algorithm, tmp_path, sft_and_reward):
    sft, reward = sft_and_reward
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    straight = subprocess.run(_command(algorithm, sft, reward, tmp_path / "straight"), cwd=REPO, env=env,
                              capture_output=True, text=True)  # fmt: skip
    assert straight.returncode == 0, straight.stderr[-2000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_command(algorithm, sft, reward, killed), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.time() + 300
    while not (killed / "checkpoint-2" / "trainer_state.json").exists() and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "lineage.json").exists(), "the run must be killed before it finished"
    # TRL writes its model card (a "Quick start" loading this folder) at every checkpoint: none for an unfinished run
    # (a checkpoint keeps peft's own card of the adapter it holds)
    assert not (killed / "README.md").exists()
    assert "Quick start" not in (killed / "checkpoint-2" / "README.md").read_text()

    rerun = subprocess.run(_command(algorithm, sft, reward, killed), cwd=REPO, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"Resuming {algorithm} from" in rerun.stderr + rerun.stdout
    first, resumed = (
        load_file(str(tmp_path / "straight" / "adapter_model.safetensors")),
        load_file(str(killed / "adapter_model.safetensors")),
    )
    assert first.keys() == resumed.keys() and first
    for key in first:
        torch.testing.assert_close(resumed[key], first[key], **TOLERANCE)
    state = json.loads((killed / "trainer_state.json").read_text())
    assert state["global_step"] == 6


def test_pipeline_rl_choice_expands_into_one_stage_per_algorithm(tmp_path):
    """`rl: [...]` makes one stage per algorithm from the `stage: rl` entry: DPO trains on the preference pairs and is
    not given the reward model it does not read; the evaluation gets every algorithm's output as a model."""
    from rlhf_recipes.pipeline import parse_argv, stage_args

    config, _ = parse_argv(["--config", str(REPO / "configs" / "smollm2-135m" / "compare-rl.yaml"),
                            "--output_dir", str(tmp_path / "run")])  # fmt: skip
    names = [run.name for run in config.stages]
    assert names == ["data", "cpt", "sft", "reward", "ppo", "grpo", "rloo", "online_dpo", "dpo", "kto", "compare",
                     "compare-card"]  # fmt: skip
    by_name = {run.name: run for run in config.stages}
    assert by_name["dpo"].args["dataset_name"] == f"{tmp_path}/run/data/preferences"
    assert "reward_model_path" not in by_name["dpo"].args
    assert by_name["grpo"].args["dataset_name"] == f"{tmp_path}/run/data/prompts"
    assert by_name["grpo"].config.endswith("configs/smollm2-135m/grpo.yaml")
    models = by_name["compare"].args["models"]
    assert list(models) == ["sft", "ppo", "grpo", "rloo", "online_dpo", "dpo", "kto"]
    assert by_name["compare-card"].args["model_path"] == f"{tmp_path}/run/ppo"
    assert "--reward_model_path" in stage_args(config, by_name["rloo"])

    demo, _ = parse_argv(["--config", str(CONFIGS / "pipeline.yaml"), "--rl", "grpo,dpo"])
    assert [run.name for run in demo.stages if run.spec.role == "rl"] == ["grpo", "dpo"]

    from rlhf_recipes.errors import UserError

    with pytest.raises(UserError, match="rl names 'ppp'; the RL algorithms are ppo, grpo, rloo, online_dpo, dpo"):
        parse_argv(["--config", str(CONFIGS / "pipeline.yaml"), "--rl", "ppp"])
    plain = tmp_path / "plain.yaml"
    plain.write_text("output_dir: out\nstages:\n  - stage: sft\n    config: " + str(CONFIGS / "sft.yaml") + "\n")
    with pytest.raises(UserError, match="sets rl: but has no `stage: rl` entry"):
        parse_argv(["--config", str(plain), "--rl", "grpo"])


def test_evaluation_reads_the_reward_accuracy_the_reward_stage_measured_and_they_agree(tmp_path, sft_and_reward):
    """The reward stage's held-out accuracy (RewardTrainer's eval) and the evaluation's own measurement of it (the
    scoring path) are the same number on the same pairs; the evaluation reuses the former unless told not to."""
    sft, reward = sft_and_reward
    lineage = json.loads((reward / "lineage.json").read_text())
    assert lineage["data"]["eval_rows"] == 80 and lineage["data"]["eval_split"] == "test"

    def accuracy(from_lineage: bool, folder):
        report = stages.get("eval").run(
            ["--config", str(CONFIGS / "eval.yaml"), "--models", json.dumps({"sft": str(sft)}), "--reward_model",
             str(reward), "--preference_dataset", lineage["data"]["dataset_name"], "--skip", "sft.domain-qa",
             "--reward_accuracy_from_lineage", str(from_lineage).lower(), "--output_dir", str(folder)]
        )  # fmt: skip
        return next(r for r in report["results"] if r["task"] == "preference-pairs")

    measured, reused = accuracy(False, tmp_path / "measured"), accuracy(True, tmp_path / "reused")
    assert measured["n"] == reused["n"] == 80
    assert measured["value"] == pytest.approx(lineage["metrics"]["eval_accuracy"], abs=1e-4)
    assert reused["value"] == pytest.approx(lineage["metrics"]["eval_accuracy"], abs=1e-4)

    from rlhf_recipes.errors import UserError

    with pytest.raises(
        UserError, match=r"skip: 'ppp.domain-qa' must be MODEL.TASK with MODEL a model \(sft\), a stage"
    ):
        stages.get("eval").run(
            ["--config", str(CONFIGS / "eval.yaml"), "--models", json.dumps({"sft": str(sft)}), "--skip",
             "ppp.domain-qa", "--reward_model", str(reward), "--output_dir", str(tmp_path / "bad")]
        )  # fmt: skip


def test_prompts_too_long_for_the_context_are_dropped_and_counted_or_refused(tokenizer_path, caplog):
    """Every RL stage fits its prompts to the context left after the answer (rl.fit_prompts): a few long ones are
    dropped and counted; more than max_dropped_share of them is one sentence before any model loads."""
    from datasets import Dataset

    from rlhf_recipes.errors import UserError
    from rlhf_recipes.models import load_tokenizer
    from rlhf_recipes.train.online import prompt_room
    from rlhf_recipes.train.rl import fit_prompts

    tokenizer = load_tokenizer(str(tokenizer_path))
    short = [[{"role": "user", "content": f"Question {i}?"}] for i in range(19)]
    long = [[{"role": "user", "content": "word " * 400}]]
    caplog.set_level("INFO")
    kept = fit_prompts(Dataset.from_dict({"prompt": short + long}), tokenizer, 100, 0.1, "GRPO")
    assert len(kept) == 19 and kept["prompt"] == short
    assert "GRPO prompts: 20, 1 longer than 100 tokens dropped (5.0%)" in caplog.text
    with pytest.raises(UserError, match=r"2 of 3 GRPO prompts \(67%\) are longer than 100 tokens.*max_dropped_share"):
        fit_prompts(Dataset.from_dict({"prompt": short[:1] + long * 2}), tokenizer, 100, 0.1, "GRPO")
    with pytest.raises(UserError, match="leaves no room for a prompt"):
        fit_prompts(Dataset.from_dict({"prompt": short}), tokenizer, 0, 0.1, "PPO")
    # the room: context less the answer; online DPO's max_length caps it (TRL cuts the prompt's start past it)
    assert prompt_room(SimpleNamespace(max_completion_length=64), 2048) == 1984
    assert prompt_room(SimpleNamespace(max_new_tokens=64, max_length=512, max_completion_length=None), 2048) == 448


def test_vllm_is_refused_in_one_sentence_on_a_cpu(tmp_path, sft_and_reward):
    """The GPU configs generate with vLLM (`use_vllm: true`); on a CPU that is one sentence before any model loads."""
    from rlhf_recipes import stages
    from rlhf_recipes.errors import UserError

    sft, reward = sft_and_reward
    argv = ["--config", str(CONFIGS / "grpo.yaml"), "--model_name_or_path", str(sft), "--reward_model_path", str(reward),
            "--output_dir", str(tmp_path / "grpo"), "--use_vllm", "true"]  # fmt: skip
    with pytest.raises(UserError, match="use_vllm: true generates with vLLM, which needs a CUDA GPU"):
        stages.get("grpo").run(argv)
    assert not (tmp_path / "grpo" / "lineage.json").exists()


def test_a_zero_loss_with_a_gradient_is_learning_and_without_one_is_refused():
    """RLOO's logged loss is exactly 0 at every step when each group's answers have equal lengths (the bf16 tiny
    model always runs to the length limit): its gradient is not, so the run is finished. No gradient at all is not."""
    from rlhf_recipes.errors import UserError
    from rlhf_recipes.train.common import check_learned

    def trainer(*logs):
        return SimpleNamespace(state=SimpleNamespace(global_step=len(logs), log_history=list(logs)))

    check_learned(trainer({"loss": 0.0, "grad_norm": 0.24}, {"loss": 0.0, "grad_norm": 0.05}), "rloo")
    with pytest.raises(UserError, match="sft's training loss was exactly 0 at every step"):
        check_learned(trainer({"loss": 0.0, "grad_norm": 0.0}, {"loss": 0.0}), "sft")
