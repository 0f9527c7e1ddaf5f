"""Online DPO, from TRL 1.16's `trl.experimental.online_dpo`: the only module of this project that imports it.

Each step the policy answers every prompt twice, the reward model (as a reward function through the one scoring
path, train/online.py) picks the better answer, and the DPO loss pushes the policy towards it against the reference
(the SFT model: with LoRA, the policy with its adapter disabled). TRL applies `missing_eos_penalty` itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from trl.experimental.online_dpo import OnlineDPOConfig as TRLOnlineDPOConfig
from trl.experimental.online_dpo import OnlineDPOTrainer

from .online import OnlineRLArguments

__all__ = ["OnlineDPOConfig", "OnlineDPOTrainer"]


@dataclass
class OnlineDPOConfig(OnlineRLArguments, TRLOnlineDPOConfig):
    """TRL's OnlineDPOConfig plus the reward model it samples pairs against (its `reward_model_path`, 4-bit, gate)."""
