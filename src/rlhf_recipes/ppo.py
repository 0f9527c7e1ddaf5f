"""PPO, from TRL 1.12's `trl.experimental.ppo`: the only module that imports it (TRL 1.13 removed PPOTrainer).

Policy: the SFT model with a fresh LoRA adapter; reference: the same weights with that adapter disabled (no second
copy in memory); reward model: the reward stage's output; value model: initialised from the reward model.
"""

from __future__ import annotations

import torch
from trl.experimental.ppo import PPOConfig
from trl.experimental.ppo import PPOTrainer as _TRLPPOTrainer

from .cli import UserError

__all__ = ["PPOConfig", "PPOTrainer", "tokenize_prompts", "final_metrics"]


class PPOTrainer(_TRLPPOTrainer):
    """TRL's PPOTrainer, whose whole loop (generation, reward, reference and value passes, updates) runs under bf16
    autocast on CPU when `bf16: true`: its own Accelerator never enables mixed precision. Weights stay float32."""

    def train(self):
        enabled = bool(self.args.bf16) and self.accelerator.device.type == "cpu"
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            return super().train()


def tokenize_prompts(dataset, tokenizer, num_proc: int | None = None):
    """`{"prompt": [messages] | str}` rows -> `{"input_ids"}` ending with the assistant generation prompt."""
    if "prompt" not in dataset.column_names:
        raise UserError(f"PPO prompts need a 'prompt' column; this dataset has {', '.join(dataset.column_names)}.")

    def tokenize(row):
        prompt = row["prompt"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
        return {"input_ids": ids["input_ids"]}

    return dataset.map(tokenize, remove_columns=dataset.column_names, num_proc=num_proc, desc="Tokenizing prompts")


def final_metrics(trainer) -> dict:
    """The last logged PPO statistics (reward, KL, losses) plus the run's time; PPOTrainer.train returns nothing."""
    logged = [entry for entry in trainer.state.log_history if "objective/scores" in entry]
    return dict(logged[-1]) if logged else {}
