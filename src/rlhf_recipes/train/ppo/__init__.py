"""PPO, owned by the project (TRL removed its PPOTrainer in 1.13), on torch, transformers and accelerate.

    config.py       the YAML keys (TRL 1.12's PPOConfig names and defaults)
    prompts.py      prompts tokenized with their messages kept, batched in a seeded order
    rollout.py      one rollout: answers, log-probs of policy and reference, values, scores
    losses.py       KL penalty, shaped rewards, whitening, GAE, clipped policy and value losses: one formula each
    loop.py         PPOTrainer: one update read top to bottom in `ppo_update`; logging and saving
    checkpoints.py  what a checkpoint holds and how a killed run resumes

tests/test_ppo_parity.py holds the loop to the numbers TRL 1.12's PPOTrainer recorded on the same inputs.
"""

from .config import PPOConfig
from .loop import PPOTrainer, final_metrics
from .prompts import tokenize_prompts

__all__ = ["PPOConfig", "PPOTrainer", "final_metrics", "tokenize_prompts"]
