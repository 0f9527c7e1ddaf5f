"""PPO that fits: 4-bit reward and value models, a LoRA value model and real gradient checkpointing, on the tiny model."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file
from test_stages import PPO_RUN, lora_b_norms, run_stage

from rlhf_recipes.errors import UserError


@pytest.fixture(scope="module")
def tiny_reward_path(tmp_path_factory, tiny_model_path):
    """A one-output sequence-classification folder made from the tiny policy: PPO only needs a reward model's shape."""
    from transformers import AutoModelForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-reward")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_path, num_labels=1)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tiny_model_path / name).is_file():
            shutil.copy(tiny_model_path / name, folder / name)
    return folder


@pytest.fixture
def trainers(monkeypatch):
    """Every PPOTrainer the recipe builds, with a copy of its value model's parameters from before training.

    The recipe is run from its file (never imported), and takes `PPOTrainer` from `rlhf_recipes.train.ppo` each time:
    patched there, the recipe builds the recording subclass."""
    from rlhf_recipes.train import ppo

    created = []

    class Recording(ppo.PPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.value_before = {n: p.detach().clone() for n, p in self.value_model.named_parameters()}
            created.append(self)

    monkeypatch.setattr(ppo, "PPOTrainer", Recording)
    return created


def run_ppo(tiny_model_path, reward_path, output_dir, *overrides):
    args = ["--model_name_or_path", str(tiny_model_path), "--reward_model_path", str(reward_path), *PPO_RUN]
    return run_stage("ppo", None, output_dir, *args, *overrides)


def count_4bit(model) -> int:
    import bitsandbytes as bnb

    return sum(isinstance(module, bnb.nn.Linear4bit) for module in model.modules())


FOUR_BIT_OFF = ("--reward_model_load_in_4bit", "false", "--value_model_load_in_4bit", "false")
FOUR_BIT_ON = ("--reward_model_load_in_4bit", "true", "--value_model_load_in_4bit", "true")


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(("--dtype", "float32", *FOUR_BIT_OFF), id="float32-lora-value"),
        pytest.param(("--dtype", "float32", *FOUR_BIT_ON), id="float32-4bit-reward-value"),
        # dtype: compute (frozen weights in this machine's compute precision), full-precision reward and value bases
        pytest.param((), id="shipped-config"),
        pytest.param(("--dtype", "bfloat16", *FOUR_BIT_ON), id="bf16-4bit-reward-value"),
        pytest.param(("--dtype", "bfloat16", "--load_in_4bit", "true", *FOUR_BIT_ON), id="all-4bit"),
    ],
)
def test_value_model_trains_through_lora_with_frozen_base(
    overrides, tmp_path, tiny_model_path, tiny_reward_path, trainers
):
    metrics = run_ppo(tiny_model_path, tiny_reward_path, tmp_path, *overrides)
    (trainer,) = trainers
    four_bit = FOUR_BIT_ON[-1] in overrides
    assert (count_4bit(trainer.reward_model) > 0) == trainer.args.reward_model_load_in_4bit == four_bit
    assert (count_4bit(trainer.value_model) > 0) == trainer.args.value_model_load_in_4bit == four_bit
    assert (count_4bit(trainer.policy_model) > 0) == ("--load_in_4bit" in overrides)
    assert trainer.ref_model is None  # the reference is the policy with its adapter disabled

    # The value model is still a *ForSequenceClassification with LoRA inside: LoRA and score trained, base frozen
    after = dict(trainer.value_model.named_parameters())
    lora = [n for n in after if "lora_" in n]
    assert lora and all(after[n].requires_grad for n in lora) and after["score.weight"].requires_grad
    assert all(not after[n].requires_grad for n in after if "lora_" not in n and n != "score.weight")
    assert all(after[n].dtype == torch.float32 for n in [*lora, "score.weight"])  # bf16 would round 1e-5 steps away
    assert any(not torch.equal(after[n], trainer.value_before[n]) for n in lora if "lora_B" in n)
    assert not torch.equal(after["score.weight"], trainer.value_before["score.weight"])
    for name, param in after.items():
        if "lora_" not in name and name != "score.weight":
            assert torch.equal(param, trainer.value_before[name]), f"value base weight {name} changed"

    # One adapter saved: the policy's; nothing of the value model
    assert min(lora_b_norms(tmp_path)) > 0 and "objective/scores" in metrics
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert not any("score" in name for name in saved)
    assert not list(tmp_path.glob("*value*")) and len(list(tmp_path.glob("adapter_model*"))) == 1


def test_gradient_checkpointing_is_on_and_generation_keeps_its_cache(
    tmp_path, tiny_model_path, tiny_reward_path, trainers
):
    # float32, so that cached and cache-free logits can be compared tightly
    run_ppo(tiny_model_path, tiny_reward_path, tmp_path, "--gradient_checkpointing", "true", "--dtype", "float32")
    (trainer,) = trainers
    policy = trainer.policy_model
    assert all(layer.gradient_checkpointing for layer in policy.get_base_model().model.layers)
    assert all(layer.gradient_checkpointing for layer in trainer.value_model.model.layers)

    # Checkpointed layers in training mode drop the KV cache: PPO generates with checkpointing off (TRL's
    # unwrap_model_for_generation), and each generation step's logits equal one full, cache-free forward pass
    trainer.model.train()
    prompt = torch.tensor([[1, 42, 77, 9, 123]])
    with torch.no_grad(), trainer.generation_context() as unwrapped:
        assert not unwrapped.is_gradient_checkpointing
        out = unwrapped.policy.generate(
            input_ids=prompt,
            max_new_tokens=6,
            min_new_tokens=6,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            use_cache=True,
        )
    with torch.no_grad():
        full = policy(input_ids=out.sequences).logits[0, prompt.shape[1] - 1 : -1]
    assert torch.allclose(torch.stack(out.logits, 1)[0], full, atol=1e-4)
    assert trainer.unwrapped.is_gradient_checkpointing  # on again for the update
    assert all(layer.gradient_checkpointing for layer in policy.get_base_model().model.layers)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ("--use_peft", "false", "--value_model_load_in_4bit", "true"),
            "value_model_load_in_4bit: true needs use_peft",
        ),
        (
            ("--use_peft", "false", "--load_in_4bit", "true", "--dtype", "bfloat16"),
            "load_in_4bit: true needs use_peft",
        ),
        (("--reward_model_load_in_4bit", "true", "--dtype", "auto"), "needs an explicit dtype for the 4-bit compute"),
    ],
)
def test_bad_combinations_are_one_sentence(overrides, message, tmp_path, tiny_model_path, tiny_reward_path):
    with pytest.raises(UserError, match=message):
        run_ppo(tiny_model_path, tiny_reward_path, tmp_path, *overrides)
    assert not (tmp_path / "lineage.json").exists()
