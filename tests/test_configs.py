"""Every YAML under configs/ parses strictly with the pinned TRL, and a misspelt key fails with one clear sentence."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml
from conftest import CONFIGS, REPO

from rlhf_recipes import stages
from rlhf_recipes.errors import UserError

ALL_YAML = sorted(p for p in (REPO / "configs").rglob("*.yaml"))


def parser_for(path):
    """How a config is parsed: accelerate's YAMLs by accelerate's loader, every other one strictly by the registry
    stage it configures (`stages.for_config`), exactly as that stage's recipe parses it. A YAML the registry cannot
    place fails the test."""
    if path.parent.name == "accelerate":
        from accelerate.commands.config.config_args import load_config_from_file

        return lambda: load_config_from_file(str(path))
    stage = stages.for_config(path)
    args = ["--config", str(path)]
    if yaml.safe_load(path.read_text()).get("use_cpu") is False and not torch.cuda.is_available():
        args += ["--use_cpu", "true"]  # a GPU recipe: TrainingArguments refuses bf16 without a GPU; keys still checked
    elif stage.name == "pipeline" and path.parent.name.startswith("qwen") and not torch.cuda.is_available():
        args += ["--precision", "float32"]  # a GPU pipeline: its stages' bf16 likewise
    return lambda: stage.parse_args(args, check_paths=False)  # earlier stages' outputs need not exist yet


def parse_sft(argv):
    """The SFT stage's configs, parsed as recipes/sft.py parses them (input models and output folder not checked)."""
    return stages.get("sft").parse_args(argv, check_paths=False)


def test_configs_are_found():
    assert len(ALL_YAML) >= 4


GPU_YAML = [p for p in ALL_YAML if p.parent.name.startswith("qwen") and stages.for_config(p).trains]


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
def test_every_config_parses_strictly(path, monkeypatch):
    monkeypatch.chdir(REPO)  # a pipeline's stage configs and a data config's sources are relative to the repo root
    parsed = parser_for(path)()
    assert parsed is not None


def test_config_keys_reach_the_dataclasses():
    script_args, training_args, model_args = parse_sft(
        ["--config", str(CONFIGS / "sft.yaml"), "--learning_rate", "0.01"]
    )
    assert training_args.assistant_only_loss is True and model_args.lora_r == 16
    assert training_args.learning_rate == 0.01  # the command line overrides the YAML
    assert script_args.dataset_name == "data/demo/sft"


def test_misspelt_yaml_key_names_the_key_and_the_file(tmp_path):
    config = tmp_path / "sft.yaml"
    config.write_text((CONFIGS / "sft.yaml").read_text() + "learning_rat: 1.0e-4\n")
    with pytest.raises(UserError) as error:
        parse_sft(["--config", str(config)])
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
    with pytest.raises(UserError, match="unknown key 'max_stpes' on the command line; did you mean 'max_steps'"):
        parse_sft(["--config", str(CONFIGS / "sft.yaml"), "--max_stpes", "5"])


def test_missing_config_file_is_one_sentence(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        parse_sft(["--config", str(tmp_path / "nope.yaml")])


def test_a_hub_token_in_the_config_is_refused(tmp_path):
    with pytest.raises(UserError, match="hub_token is refused in configs and flags; set HF_TOKEN"):
        parse_sft(["--config", str(CONFIGS / "sft.yaml"), "--hub_token", "hf_x"])


def test_push_to_hub_without_a_way_to_push_fails_before_training(monkeypatch):
    args = ["--config", str(CONFIGS / "sft.yaml"), "--push_to_hub", "true", "--hub_model_id", "me/model"]
    with pytest.raises(UserError, match="cannot push while HF_HUB_OFFLINE is set"):  # the tests run offline
        parse_sft(args)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(UserError, match="push_to_hub: true needs a Hub token"):
        parse_sft(args)
