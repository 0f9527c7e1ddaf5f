"""Every stage runs a few steps from its real YAML on the tiny model, and its output trains, chains and loads back."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from conftest import CONFIGS
from safetensors.torch import load_file

from rlhf_recipes import stages
from rlhf_recipes.errors import UserError
from rlhf_recipes.models import read_lineage, resolve_model_path


def run_stage(stage: str, tiny_model_path, output_dir, *overrides: str):
    """Run a stage's recipe in-process through the registry: its YAML, the tiny model, the demo data, 2 steps, plus
    `overrides`."""
    args = ["--config", str(CONFIGS / f"{stage}.yaml"), "--output_dir", str(output_dir), "--logging_steps", "1"]
    if stage != "ppo":
        args += [
            "--model_name_or_path",
            str(tiny_model_path),
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "2",
            "--save_steps",
            "1",
        ]
    return stages.get(stage).run(args + list(overrides))


# A PPO run small enough for a test: 8 episodes = 2 updates of 2 prompts x 2 accumulation steps, 8-token answers
PPO_RUN = ["--total_episodes", "8", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2"]
PPO_RUN += ["--local_rollout_forward_batch_size", "4", "--response_length", "8", "--num_ppo_epochs", "1"]
PPO_RUN += ["--learning_rate", "1e-3"]
PPO_RUN += [
    "--min_reward_accuracy",
    "0",
]  # a 2-step tiny reward model ranks pairs near chance: the gate would refuse it


def lora_b_norms(folder) -> list[float]:
    """LoRA's B matrices start at zero, so a non-zero norm proves the adapter trained."""
    weights = load_file(str(folder / "adapter_model.safetensors"))
    return [w.norm().item() for name, w in weights.items() if "lora_B" in name]


def assert_base_frozen(output_dir, tiny_model_path):
    """The base weights after merging minus the adapter's delta equal the original: only the adapter trained."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path), output_dir)
    original = AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()
    for name, param in model.get_base_model().named_parameters():
        if "lora_" in name:
            continue
        key = name.replace(".base_layer", "")
        assert torch.equal(param, original[key]), f"base weight {key} changed"


@pytest.fixture(scope="module")
def sft_output(tmp_path_factory, tiny_model_path):
    output_dir = tmp_path_factory.mktemp("sft")
    metrics = run_stage("sft", tiny_model_path, output_dir)
    return output_dir, metrics


@pytest.fixture(scope="module")
def reward_output(tmp_path_factory, sft_output, tiny_model_path):
    output_dir = tmp_path_factory.mktemp("reward")
    metrics = run_stage("reward", tiny_model_path, output_dir, "--model_name_or_path", str(sft_output[0]))
    return output_dir, metrics


def test_cpt_lora_trains_adapter_and_keeps_base_frozen(tmp_path, tiny_model_path):
    metrics = run_stage("cpt", tiny_model_path, tmp_path)
    assert min(lora_b_norms(tmp_path)) > 0
    assert_base_frozen(tmp_path, tiny_model_path)
    lineage = read_lineage(tmp_path)
    assert lineage["stage"] == "cpt" and lineage["model_kind"] == "causal_lm"
    assert lineage["data"]["dataset_name"] == "data/demo/cpt" and lineage["data"]["train_rows"] > 0
    assert lineage["adapter"]["method"] == "lora" and metrics["train_loss"] > 0


def test_sft_adapter_loads_back_and_generates(sft_output, tiny_model_path):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    output_dir, metrics = sft_output
    assert min(lora_b_norms(output_dir)) > 0
    assert_base_frozen(output_dir, tiny_model_path)
    model = AutoPeftModelForCausalLM.from_pretrained(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    generated = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]
    assert read_lineage(output_dir)["config"]["assistant_only_loss"] is True


def test_sft_full_fine_tune_changes_weights(tmp_path, tiny_model_path):
    from transformers import AutoModelForCausalLM

    run_stage("sft", tiny_model_path, tmp_path, "--use_peft", "false", "--learning_rate", "1e-3")
    before = AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()
    after = AutoModelForCausalLM.from_pretrained(tmp_path).state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2
    assert read_lineage(tmp_path)["adapter"] is None


@pytest.mark.parametrize("stage", ["cpt", "reward"])
def test_qlora_4bit_trains(stage, tmp_path, tiny_model_path):
    run_stage(
        stage,
        tiny_model_path,
        tmp_path,
        "--load_in_4bit",
        "true",
        "--dtype",
        "bfloat16",
        "--bnb_4bit_quant_type",
        "nf4",
    )
    assert min(lora_b_norms(tmp_path)) > 0
    assert read_lineage(tmp_path)["adapter"]["method"] == "qlora"


def test_qlora_with_float32_is_refused_with_one_sentence(tmp_path, tiny_model_path):
    with pytest.raises(UserError, match="load_in_4bit: true needs dtype: bfloat16"):
        run_stage("cpt", tiny_model_path, tmp_path, "--load_in_4bit", "true")


def test_reward_model_scores_and_chains_from_sft(reward_output, sft_output):
    from transformers import AutoModelForSequenceClassification

    output_dir, metrics = reward_output
    assert "eval_accuracy" in metrics
    lineage = read_lineage(output_dir)
    assert lineage["model_kind"] == "reward_model"
    assert [step["stage"] for step in lineage["chain"]] == ["sft", "reward"]
    weights = load_file(str(output_dir / "adapter_model.safetensors"))
    assert any(name.endswith("score.weight") for name in weights), "the new score head must be saved"
    merged = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(str(output_dir)))
    score = {k: v for k, v in weights.items() if k.endswith("score.weight")}.popitem()[1]
    assert torch.equal(merged.score.weight, score)


def test_ppo_trains_policy_adapter_against_reward_model(tmp_path, sft_output, reward_output):
    metrics = run_stage(
        "ppo",
        None,
        tmp_path,
        "--model_name_or_path",
        str(sft_output[0]),
        "--reward_model_path",
        str(reward_output[0]),
        *PPO_RUN,
    )
    assert min(lora_b_norms(tmp_path)) > 0
    assert {"objective/kl", "objective/scores"} <= set(metrics)
    lineage = read_lineage(tmp_path)
    assert [step["stage"] for step in lineage["chain"]] == ["sft", "ppo"]
    shipped = yaml.safe_load((CONFIGS / "ppo.yaml").read_text())["kl_coef"]  # the YAML's value reached the trainer
    assert lineage["config"]["kl_coef"] == shipped and lineage["config"]["reward_model_path"] == str(reward_output[0])


def test_merged_adapter_matches_base_plus_adapter(sft_output, tiny_model_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    output_dir, _ = sft_output
    merged = AutoModelForCausalLM.from_pretrained(resolve_model_path(str(output_dir)))
    unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path), output_dir)
    inputs = torch.randint(0, 1000, (2, 12))
    with torch.no_grad():
        difference = (merged(inputs).logits - unmerged(inputs).logits).abs().max().item()
    assert difference < 1e-4


def test_stage_refuses_a_model_of_the_wrong_kind(tmp_path, reward_output, sft_output):
    with pytest.raises(UserError, match="is a reward model, but this stage needs a causal language model"):
        run_stage("sft", reward_output[0], tmp_path / "sft", "--model_name_or_path", str(reward_output[0]))
    with pytest.raises(UserError, match="reward_model_path=.* is a causal lm, but this stage needs a reward model"):
        run_stage(
            "ppo",
            None,
            tmp_path / "ppo",
            "--model_name_or_path",
            str(sft_output[0]),
            "--reward_model_path",
            str(sft_output[0]),
        )


def test_sft_rejects_a_conversation_without_assistant_turn(tmp_path, tiny_model_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"messages": [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Hi."}]}] * 3
    rows.append({"messages": [{"role": "user", "content": "Only a question"}]})
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match="1 of 4 training conversations .* keep no assistant token"):
        run_stage("sft", tiny_model_path, tmp_path / "out", "--dataset_name", str(data), "--eval_strategy", "no")
    assert not (tmp_path / "out" / "lineage.json").exists()
