"""Every YAML under configs/ parses strictly with the pinned TRL, and a misspelt key fails with one clear sentence."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml
from conftest import CONFIGS, REPO

from rlhf_recipes.cli import UserError, parse_config

ALL_YAML = sorted(p for p in (REPO / "configs").rglob("*.yaml"))


def parser_for(path):
    """The dataclasses a config is parsed with, chosen by its file name; an unknown kind of config fails the test."""
    from trl import ModelConfig, ScriptArguments, SFTConfig

    from rlhf_recipes.ppo import PPOConfig
    from rlhf_recipes.reward import RewardConfig

    stage = path.stem.split("-")[-1]
    classes = {"cpt": SFTConfig, "sft": SFTConfig, "reward": RewardConfig, "ppo": PPOConfig}
    if stage in classes:
        args = ["--config", str(path)]
        if yaml.safe_load(path.read_text()).get("use_cpu") is False and not torch.cuda.is_available():
            args += [
                "--use_cpu",
                "true",
            ]  # a GPU recipe: TrainingArguments refuses bf16 without a GPU; keys still checked
        return lambda: parse_config((ScriptArguments, classes[stage], ModelConfig), args)
    if path.parent.name == "accelerate":
        from accelerate.commands.config.config_args import load_config_from_file

        return lambda: load_config_from_file(str(path))
    if stage == "data" or path.parent.name == "data-examples":
        from rlhf_recipes.preparation import load_config

        return lambda: load_config(str(path))
    if stage == "evaluate":
        from rlhf_recipes.evaluation import EvaluationArguments

        return lambda: parse_config((EvaluationArguments,), ["--config", str(path)])
    if stage == "publish":
        from rlhf_recipes.hub import load_publish_config

        return lambda: load_publish_config(path)
    if stage == "pipeline":
        from rlhf_recipes.pipeline import load_pipeline_config

        return lambda: load_pipeline_config(path)
    pytest.fail(f"{path.relative_to(REPO)} is a config this test does not know how to parse; teach parser_for.")


def test_configs_are_found():
    assert len(ALL_YAML) >= 4


GPU_YAML = [p for p in ALL_YAML if p.parent.name.startswith("qwen")]


@pytest.mark.parametrize("path", GPU_YAML, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_real_model_recipes_are_qlora_on_one_gpu(path):
    lines = path.read_text().splitlines()
    assert lines[0] == f"#   python recipes/{path.stem}.py --config {path.relative_to(REPO)}"
    assert lines[1].startswith("# Targets one ") and " GB GPU" in lines[1]
    config = yaml.safe_load(path.read_text())
    assert config["load_in_4bit"] and config["bnb_4bit_quant_type"] == "nf4" and config["use_bnb_nested_quant"]
    assert config["dtype"] == "bfloat16" and config["bf16"] and config["use_cpu"] is False
    assert config["output_dir"] == f"outputs/{path.parent.name}/{path.stem}"
    if path.stem == "ppo":
        assert config["reward_model_load_in_4bit"] and config["value_model_load_in_4bit"] and config["use_peft"]


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_config_parses_strictly(path):
    parsed = parser_for(path)()
    assert parsed is not None


def test_config_keys_reach_the_dataclasses():
    from trl import ModelConfig, ScriptArguments, SFTConfig

    script_args, training_args, model_args = parse_config(
        (ScriptArguments, SFTConfig, ModelConfig), ["--config", str(CONFIGS / "sft.yaml"), "--learning_rate", "0.01"]
    )
    assert training_args.assistant_only_loss is True and model_args.lora_r == 16
    assert training_args.learning_rate == 0.01  # the command line overrides the YAML
    assert script_args.dataset_name == "data/demo/sft"


def test_misspelt_yaml_key_names_the_key_and_the_file(tmp_path):
    from trl import ModelConfig, ScriptArguments, SFTConfig

    config = tmp_path / "sft.yaml"
    config.write_text((CONFIGS / "sft.yaml").read_text() + "learning_rat: 1.0e-4\n")
    with pytest.raises(UserError) as error:
        parse_config((ScriptArguments, SFTConfig, ModelConfig), ["--config", str(config)])
    assert str(error.value) == f"unknown key 'learning_rat' in {config}; did you mean 'learning_rate'?"


def test_recipe_cli_exits_2_with_one_line_and_no_traceback(tmp_path):
    config = tmp_path / "reward.yaml"
    config.write_text((CONFIGS / "reward.yaml").read_text() + "lora_alpah: 8\n")
    result = subprocess.run(
        [sys.executable, "recipes/reward.py", "--config", str(config)], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: unknown key 'lora_alpah' in {config}; did you mean 'lora_alpha'?"
    )


def test_misspelt_command_line_flag(tmp_path):
    from trl import ModelConfig, ScriptArguments, SFTConfig

    with pytest.raises(UserError, match="unknown key 'max_stpes' on the command line; did you mean 'max_steps'"):
        parse_config(
            (ScriptArguments, SFTConfig, ModelConfig), ["--config", str(CONFIGS / "sft.yaml"), "--max_stpes", "5"]
        )


def test_missing_config_file_is_one_sentence(tmp_path):
    from trl import ModelConfig, ScriptArguments, SFTConfig

    with pytest.raises(UserError, match="does not exist"):
        parse_config((ScriptArguments, SFTConfig, ModelConfig), ["--config", str(tmp_path / "nope.yaml")])


def test_a_hub_token_in_the_config_is_refused(tmp_path):
    from trl import ModelConfig, ScriptArguments, SFTConfig

    with pytest.raises(UserError, match="hub_token is refused in configs and flags; set HF_TOKEN"):
        parse_config(
            (ScriptArguments, SFTConfig, ModelConfig), ["--config", str(CONFIGS / "sft.yaml"), "--hub_token", "hf_x"]
        )


def test_push_to_hub_without_a_way_to_push_fails_before_training(monkeypatch):
    from trl import ModelConfig, ScriptArguments, SFTConfig

    args = ["--config", str(CONFIGS / "sft.yaml"), "--push_to_hub", "true", "--hub_model_id", "me/model"]
    with pytest.raises(UserError, match="cannot push while HF_HUB_OFFLINE is set"):  # the tests run offline
        parse_config((ScriptArguments, SFTConfig, ModelConfig), args)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(UserError, match="push_to_hub: true needs a Hub token"):
        parse_config((ScriptArguments, SFTConfig, ModelConfig), args)
