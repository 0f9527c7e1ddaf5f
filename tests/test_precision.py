"""The compute precision is chosen for the machine (issue 11): each answer of the hardware detection forced in turn.

torch's own probes are replaced (monkeypatch) because this machine is one answer only (AVX2, no GPU); the choice,
its reason, the warning for a forced bf16 and what the recipes hand to TRL are the real code.
"""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import CONFIGS

from rlhf_recipes import precision

pytestmark = pytest.mark.usefixtures("auto_from_hardware")  # these tests set the machine's flags themselves


def _cpu(monkeypatch, capability: str, flags: dict):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: flags)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)


def _gpu(monkeypatch, name: str, sm: tuple[int, int], bf16: bool):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: sm)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: name)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)


@pytest.mark.parametrize(
    "capability, flags, native",
    [
        ("AVX2", {"avx2": True}, False),  # this project's CI machine: bf16 emulated, ~700x slower
        ("AVX512", {"avx512": True, "avx512_bf16": True}, True),  # Cooper Lake, Zen 4
        ("AVX512", {"avx512": True, "amx_bf16": True}, True),  # Sapphire Rapids AMX
        ("AVX512", {"avx512": True}, False),  # Skylake-X: AVX-512 without its bf16 extension
    ],
)
def test_auto_picks_bf16_only_on_a_cpu_with_native_bf16(monkeypatch, capability, flags, native):
    _cpu(monkeypatch, capability, flags)
    chosen = precision.resolve("auto")
    assert chosen.bf16 is native and chosen.device == "cpu" and chosen.capability == capability
    assert chosen.dtype == ("bfloat16" if native else "float32")
    assert chosen.reason == f"auto -> {'bf16' if native else 'float32'} (cpu {capability}: " + (
        "native bf16)" if native else "no native bf16)"
    )


@pytest.mark.parametrize("sm, bf16", [((8, 0), True), ((7, 5), False)])  # A100; T4 has no bf16
def test_auto_on_a_gpu_follows_its_bf16_support(monkeypatch, sm, bf16):
    _gpu(monkeypatch, "NVIDIA TEST", sm, bf16)
    chosen = precision.resolve("auto")
    assert chosen.device == "cuda" and chosen.bf16 is bf16
    assert f"sm_{sm[0]}{sm[1]}" in chosen.capability
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    on_cpu = precision.resolve("auto", use_cpu=True)  # use_cpu: the CPU decides, not the GPU
    assert on_cpu.device == "cpu" and on_cpu.bf16 is True


def test_an_explicit_setting_is_honoured_and_a_forced_bf16_warns_with_its_cost(monkeypatch, caplog):
    _cpu(monkeypatch, "AVX2", {"avx2": True})
    forced = precision.resolve(True)
    assert forced.bf16 and forced.requested == "true" and "as configured" in forced.reason
    monkeypatch.setattr(precision, "matmul_rate", lambda dtype, **k: 160.0 if dtype == "float32" else 0.25)
    with caplog.at_level(logging.INFO, logger="rlhf_recipes.precision"):
        precision.log_choice(forced)
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "640x slower than float32" in warning[0] and "bf16: auto (or false)" in warning[0]
    _cpu(monkeypatch, "AVX512", {"amx_bf16": True})
    assert precision.resolve("false").bf16 is False  # native, but turned off: honoured
    with pytest.raises(ValueError, match="bf16 must be auto, true or false"):
        precision.resolve("sometimes")


@pytest.mark.parametrize("native", [False, True])
def test_the_shipped_configs_reach_trl_resolved(monkeypatch, native):
    """`bf16: auto` and PPO's `dtype: compute` are resolved before TRL's config classes see them."""
    from rlhf_recipes import stages

    _cpu(monkeypatch, "AVX512" if native else "AVX2", {"amx_bf16": native})
    configs = CONFIGS
    _, sft_args, _ = stages.get("sft").parse_args(["--config", str(configs / "sft.yaml")], check_paths=False)
    assert sft_args.bf16 is native and sft_args.precision.reason.startswith("auto ->")
    _, ppo_args, ppo_model = stages.get("ppo").parse_args(["--config", str(configs / "ppo.yaml")], check_paths=False)
    assert ppo_args.bf16 is native and ppo_model.dtype == ("bfloat16" if native else "float32")
    _, off, _ = stages.get("sft").parse_args(["--config", str(configs / "sft.yaml"), "--bf16", "false"], False)
    assert off.bf16 is False and off.precision.requested == "false"


def test_the_auto_override_sets_what_auto_chooses_and_keeps_the_hardware_true(monkeypatch):
    """RLHF_RECIPES_AUTO_BF16 (the suite sets false) measures the float32 path on a CPU with native bf16."""
    _cpu(monkeypatch, "AVX512", {"avx512_bf16": True})
    monkeypatch.setenv(precision.AUTO_ENV, "false")
    chosen = precision.resolve("auto")
    assert chosen.bf16 is False and chosen.native_bf16 is True
    assert chosen.reason == "auto -> float32 (RLHF_RECIPES_AUTO_BF16=false; cpu AVX512: native bf16)"
    assert precision.resolve("true").bf16 is True  # an explicit setting still wins
    monkeypatch.setenv(precision.AUTO_ENV, "maybe")
    with pytest.raises(ValueError, match="RLHF_RECIPES_AUTO_BF16 must be true or false \\(got 'maybe'\\)"):
        precision.resolve("auto")


def test_a_reward_model_on_bf16_weights_trains_and_saves_its_score_head_in_float32(tmp_path, tiny_model_path):
    """`dtype: compute` puts the frozen weights in bf16 where bf16 is chosen; peft copies the new `score` head in the
    base's bf16, where AdamW's small steps round away. The trainer keeps it in float32, and its inputs are cast to it,
    so the run works without autocast too (`--bf16 false` here: bf16 weights, float32 head)."""
    from safetensors import safe_open

    from rlhf_recipes import stages

    out = tmp_path / "reward"
    stages.get("reward").run(
        ["--config", str(CONFIGS / "reward.yaml"), "--model_name_or_path", str(tiny_model_path),
         "--output_dir", str(out), "--dtype", "bfloat16", "--bf16", "false", "--max_steps", "2",
         "--per_device_train_batch_size", "2", "--save_strategy", "no", "--eval_strategy", "no"]
    )  # fmt: skip
    with safe_open(out / "adapter_model.safetensors", "pt") as saved:
        dtypes = {name: saved.get_tensor(name).dtype for name in saved.keys()}
    assert any(name.endswith("score.weight") for name in dtypes) and set(dtypes.values()) == {torch.float32}


def test_only_trained_non_lora_modules_of_a_bf16_base_are_put_in_float32(tiny_model_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, TrainingArguments

    from rlhf_recipes.train.reward import float32_trained_heads

    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_path, num_labels=1, dtype=torch.bfloat16)
    model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["q_proj"]))
    cast = float32_trained_heads(model, TrainingArguments(output_dir="unused", use_cpu=True))
    assert cast == ["base_model.model.score.modules_to_save.default"]
    trained = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert set(trained.values()) == {torch.float32} and frozen == {torch.bfloat16}
    hidden = torch.randn(1, 3, base.config.hidden_size, dtype=torch.bfloat16)
    assert model.base_model.model.score(hidden).dtype == torch.float32  # bf16 inputs meet the float32 head
