"""The PPO parity cases: tiny models, prompts and settings shared by the recorder (`tests/data/ppo_trl112/record.py`,
run once under TRL 1.12.0) and the test that holds the project's own PPO to what TRL 1.12's loop produced
(`tests/test_ppo_parity.py`). Nothing here imports TRL: the inputs are the same whichever TRL is installed.
"""

from __future__ import annotations

from pathlib import Path

import torch

FIXTURE = Path(__file__).parent / "data" / "ppo_trl112"

# Two cases: the project's default setup (LoRA policy, its reference the adapter disabled, a LoRA value model from the
# reward model) with the k1 estimator and two mini-batches per update; and full fine-tuning (a policy copy as
# reference, a whole value model) with k3, whitened rewards and narrow clip ranges, so that clipping and whitening
# take part. Both use gradient_accumulation_steps: 1: with more, TRL 1.12 stepped its optimizer on every micro-batch
# of an update whose prompts were the last batch of the loader's epoch (accelerate's `accumulate` syncs at the end of
# a dataloader) and every gradient_accumulation_steps micro-batches otherwise; the project steps once per mini-batch.
CASES = {
    "lora": dict(
        peft=True,
        eos_bias=6.0,
        settings=dict(
            total_episodes=12, per_device_train_batch_size=4, gradient_accumulation_steps=1, num_mini_batches=2,
            num_ppo_epochs=2, local_rollout_forward_batch_size=4, response_length=6, temperature=0.7,
            kl_coef=0.05, kl_estimator="k1", learning_rate=1e-3, missing_eos_penalty=1.0, stop_token="eos",
        ),
    ),
    "full": dict(
        peft=False,
        eos_bias=8.5,
        settings=dict(
            total_episodes=16, per_device_train_batch_size=8, gradient_accumulation_steps=1, num_mini_batches=1,
            num_ppo_epochs=2, local_rollout_forward_batch_size=8, response_length=5, temperature=1.0,
            kl_coef=0.1, kl_estimator="k3", whiten_rewards=True, cliprange=0.05, cliprange_value=0.05,
            vf_coef=0.5, learning_rate=3e-4, missing_eos_penalty=0.5, stop_token="eos",
        ),
    ),
}  # fmt: skip
COMMON = dict(
    seed=7, bf16=False, use_cpu=True, gradient_checkpointing=False, num_sample_generations=0, logging_steps=1,
    save_strategy="no", report_to="none", lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0,
)  # fmt: skip
# What TRL logs per update; the test compares each of them
METRICS = (
    "objective/kl", "objective/entropy", "objective/non_score_reward", "objective/rlhf_reward", "objective/scores",
    "policy/approxkl_avg", "policy/clipfrac_avg", "loss/policy_avg", "loss/value_avg", "val/clipfrac_avg",
    "policy/entropy_avg", "val/ratio", "val/num_eos_tokens", "lr",
)  # fmt: skip

USER_TURNS = [
    "Hi",
    "What is the capital of the island?",
    "Tell me a short story about a fox and a crow who argue about cheese near the river.",
    "Name two colours.",
    "Why is the sky blue on most afternoons, and why does it turn red at sunset?",
    "Count to five.",
    "Which boat sails at dawn?",
    "Explain in one sentence what a reward model is and why a policy might learn to game it.",
]


def prompts(tokenizer):
    """`{"input_ids"}` rows of eight chat prompts of different lengths, ending in the assistant's generation prompt."""
    from datasets import Dataset

    rows = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": turn}], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        for turn in USER_TURNS
    ]
    return Dataset.from_dict({"input_ids": [list(row) for row in rows]})


def models(tiny_model_path: Path, case: dict, add_value_adapter):
    """(policy, reference or None, reward model, value model), each from the tiny model and its own seed.

    The LoRA case puts its adapter on the policy here (seeded), not inside the trainer, so that both loops start
    from the same adapter whatever random numbers their set-up draws; `add_value_adapter` is the project's. The policy
    (and its reference) add `eos_bias` to the end-of-turn logit, so that about half the answers stop before
    `response_length` (a random model never would) and the stop-token handling takes part."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    def scoring(seed):
        torch.manual_seed(seed)
        return AutoModelForSequenceClassification.from_pretrained(tiny_model_path, num_labels=1, dtype=torch.float32)

    def causal_lm():
        model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
        eos = model.generation_config.eos_token_id

        def likes_eos(module, inputs, logits):
            return logits + torch.nn.functional.one_hot(torch.tensor(eos), logits.shape[-1]) * case["eos_bias"]

        model.get_output_embeddings().register_forward_hook(likes_eos)
        return model

    reward, value = scoring(1), scoring(2)
    policy, reference = causal_lm(), None
    if case["peft"]:
        lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "up_proj"],
                          task_type="CAUSAL_LM")  # fmt: skip
        torch.manual_seed(3)
        policy = get_peft_model(policy, lora)
        torch.manual_seed(4)
        value = add_value_adapter(value, lora)
    else:
        reference = causal_lm()
    return policy, reference, reward, value


def trained_state(model) -> dict[str, torch.Tensor]:
    """The trained parameters of a model as float32 CPU tensors; large matrices (embeddings, tied LM head) are kept as
    their row sums, enough to tell two trainings apart without a 12 MB fixture."""
    out = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        tensor = param.detach().float().cpu()
        out[name] = tensor.sum(-1) if tensor.numel() > 200_000 else tensor.clone()
    return out
