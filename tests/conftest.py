"""Shared fixtures: the real SmolLM2 tokenizer and a tiny random Llama built from it in the test session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"
CONFIGS = REPO / "configs" / "smollm2-135m"
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the Hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
# the suite's tolerances are float32's: `bf16: auto` computes in float32 on every CPU, AVX512-BF16 ones too
os.environ.setdefault("RLHF_RECIPES_AUTO_BF16", "false")


@pytest.fixture
def auto_from_hardware(monkeypatch):
    """For tests that simulate a machine's bf16 support: `auto` follows the (simulated) hardware, not the pin."""
    monkeypatch.delenv("RLHF_RECIPES_AUTO_BF16", raising=False)


@pytest.fixture(scope="session")
def embedded_model_path() -> Path:
    """The embedded SmolLM2-135M-Instruct converted to safetensors (once per machine; about 40 s the first time)."""
    from rlhf_recipes.models import DEFAULT_MODEL, resolve_model_path

    return Path(resolve_model_path(DEFAULT_MODEL))


@pytest.fixture(scope="session")
def tokenizer_path(embedded_model_path) -> Path:
    """A folder holding only the real SmolLM2 tokenizer files."""
    return embedded_model_path


def build_tiny_model(folder: Path, embedded_model_path: Path) -> Path:
    """A 2-layer randomly initialised Llama with SmolLM2's tokenizer, the same weights on every run (seed 0).

    Hidden size 64 is the smallest that bitsandbytes' CPU 4-bit kernels take (one 64-value quantization block).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(embedded_model_path)
    config.update(
        dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=1024,
        )
    )
    model = AutoModelForCausalLM.from_config(config)
    model.config.name_or_path = "tiny-smollm2"
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (embedded_model_path / name).is_file():
            shutil.copy(embedded_model_path / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory, embedded_model_path) -> Path:
    """A 2-layer randomly initialised Llama with SmolLM2's tokenizer: trains in seconds."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-smollm2"), embedded_model_path)


@pytest.fixture(scope="session")
def sft_and_reward(tmp_path_factory, tiny_model_path):
    """A 2-step SFT model and a 2-step reward model from it (the inputs of every RL stage)."""
    from rlhf_recipes import stages

    root = tmp_path_factory.mktemp("rl-inputs")
    common = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--save_strategy", "no"]
    stages.get("sft").run(
        ["--config", str(CONFIGS / "sft.yaml"), "--model_name_or_path", str(tiny_model_path),
         "--output_dir", str(root / "sft"), *common]
    )  # fmt: skip
    stages.get("reward").run(
        ["--config", str(CONFIGS / "reward.yaml"), "--model_name_or_path", str(root / "sft"),
         "--output_dir", str(root / "reward"), *common]
    )  # fmt: skip
    return root / "sft", root / "reward"
