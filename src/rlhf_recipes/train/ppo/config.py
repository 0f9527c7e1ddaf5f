"""PPO's settings: TRL 1.12's `PPOConfig` keys, names and defaults (YAMLs written for it keep working), on transformers'
`TrainingArguments`, plus the reward-model keys every RL stage shares (`missing_eos_penalty` defaults to 1.0 there, as
in GRPO, RLOO and online DPO; TRL 1.12's PPO had none) and where the value model's base lives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from transformers import TrainingArguments

from ..rl import OnlineRLArguments


@dataclass
class PPOConfig(OnlineRLArguments, TrainingArguments):
    """The PPO stage's YAML keys: the reward model's (`rl.OnlineRLArguments`, as every RL stage that trains against
    one), PPO's own, and TrainingArguments' (learning_rate, seed, save_steps, ...)."""

    # Defaults TRL's PPO config chose differently from TrainingArguments
    learning_rate: float = field(default=3e-6, metadata={"help": "AdamW's initial learning rate."})
    logging_steps: float = field(default=10, metadata={"help": "Log every this many PPO updates."})
    max_grad_norm: float = field(
        default=0.0, metadata={"help": "Clip the gradient norm of each optimizer step to this; 0: no clipping."}
    )

    # Models
    value_model_load_in_4bit: bool = field(
        default=False,
        metadata={"help": "Load the value model's frozen base in 4-bit; it trains through LoRA (needs use_peft)."},
    )

    # Rollouts
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes that tokenize the prompts."})
    total_episodes: int | None = field(
        default=None, metadata={"help": "Prompts answered in all; default num_train_epochs x the prompts."}
    )
    num_mini_batches: int = field(default=1, metadata={"help": "Mini-batches each update's rollouts split into."})
    local_rollout_forward_batch_size: int = field(
        default=64, metadata={"help": "Rows per generation and per no-grad forward pass of a rollout."}
    )
    response_length: int = field(default=53, metadata={"help": "Most tokens generated per answer."})
    stop_token: Literal["eos"] | None = field(
        default=None, metadata={"help": "'eos': an answer ends at the tokenizer's EOS (else at response_length)."}
    )
    stop_token_id: int | None = field(default=None, metadata={"help": "The token an answer ends at (or stop_token)."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature of the rollouts."})
    num_sample_generations: int = field(
        default=10,
        metadata={"help": "How many times in a run to log a few sampled answers with their scores; 0: never."},
    )
    ds3_gather_for_generation: bool = field(
        default=True, metadata={"help": "DeepSpeed ZeRO-3 only: gather the policy's weights to generate (faster)."}
    )

    # PPO
    num_ppo_epochs: int = field(default=4, metadata={"help": "Passes over each update's rollouts."})
    whiten_rewards: bool = field(default=False, metadata={"help": "Whiten the per-token rewards (needs >= 8 rows)."})
    kl_coef: float = field(default=0.05, metadata={"help": "Weight of the KL penalty to the reference, per token."})
    kl_estimator: Literal["k1", "k3"] = field(
        default="k1", metadata={"help": "k1: log p - log p_ref (unbiased); k3: (r - 1) - log r (lower variance)."}
    )
    cliprange: float = field(default=0.2, metadata={"help": "Clip range of the policy ratio."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Clip range of the value prediction."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor."})
    lam: float = field(default=0.95, metadata={"help": "GAE's lambda."})

    def __post_init__(self):
        super().__post_init__()
        local = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if self.num_mini_batches < 1 or local % self.num_mini_batches:
            raise ValueError(
                f"num_mini_batches={self.num_mini_batches} must divide the episodes of one update on each process "
                f"(per_device_train_batch_size x gradient_accumulation_steps = {local}); change one of them"
            )
        if self.whiten_rewards and local // self.num_mini_batches < 8:
            raise ValueError(
                f"whiten_rewards: true needs at least 8 rows per mini-batch (has {local // self.num_mini_batches}); "
                "raise the batch size or set whiten_rewards: false"
            )
