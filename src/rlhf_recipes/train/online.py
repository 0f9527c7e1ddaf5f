"""What the online RL stages beside PPO share (GRPO, RLOO, online DPO): the reward model as a reward function read
through the one scoring path, the settings every one of them adds to TRL's config, and the policy they start from.

TRL's GRPO, RLOO and online DPO trainers accept a reward model in `reward_funcs`, but score it their own way: they
render `prompt + completion` with the chat template as text, tokenize it again and read the head at the last token.
Here the reward model is a plain reward function that scores each decoded completion with `scoring.RewardScorer`,
exactly as RewardTrainer rendered its training pairs (the same path PPO and the evaluation use; tests hold the scores
equal), and subtracts `missing_eos_penalty` from an answer that never reached its end-of-turn token (PPO's rule).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from trl import GRPOConfig as TRLGRPOConfig
from trl import RLOOConfig as TRLRLOOConfig

from ..errors import UserError
from ..scoring import RewardScorer
from .rl import OnlineRLArguments

logger = logging.getLogger(__name__)


@dataclass
class GRPOConfig(OnlineRLArguments, TRLGRPOConfig):
    """TRL's GRPOConfig plus the reward model it trains against."""


@dataclass
class RLOOConfig(OnlineRLArguments, TRLRLOOConfig):
    """TRL's RLOOConfig plus the reward model it trains against."""


class RewardModelReward:
    """A TRL reward function (`reward_funcs=[...]`): scores of decoded completions by the reward model, as trained."""

    def __init__(self, scorer: RewardScorer, eos_token_id: int, missing_eos_penalty: float | None):
        self.scorer, self.eos_token_id, self.penalty = scorer, eos_token_id, missing_eos_penalty
        self.__name__ = "reward_model"  # TRL logs each reward function's mean under its name

    def __call__(self, prompts, completions, completion_ids=None, **_) -> list[float]:
        scores = self.scorer.score(prompts, completions)
        if self.penalty and completion_ids is not None:
            ended = [self.eos_token_id in list(ids) for ids in completion_ids]
            scores = [s if end else s - self.penalty for s, end in zip(scores, ended)]
        return scores


def reward_function(training_args, model_args, init_kwargs: dict, stage, penalty: float | None = None):
    """The reward stage's output as a reward function; 4-bit when `reward_model_load_in_4bit`."""
    from ..models import load_tokenizer
    from . import common
    from .scoring_models import load_scoring_model

    path = common.prepare_model(training_args.reward_model_path, stage, key="reward_model_path")
    model = load_scoring_model(path, init_kwargs, model_args, training_args.reward_model_load_in_4bit).eval()
    model.requires_grad_(False)
    if torch.cuda.is_available() and not getattr(training_args, "use_cpu", False) and model.device.type == "cpu":
        from accelerate import PartialState

        model = model.to(PartialState().device)
    tokenizer = load_tokenizer(path)
    scorer = RewardScorer(model, tokenizer, training_args.reward_batch_size)
    return RewardModelReward(scorer, tokenizer.eos_token_id, penalty)


def prompt_room(training_args, context: int | None) -> int | None:
    """The tokens a prompt may take: the model's context (and online DPO's `max_length`, past which TRL cuts the
    prompt's start) less the answer's (`max_completion_length`, or online DPO's `max_new_tokens`)."""
    answer = getattr(training_args, "max_completion_length", None) or getattr(training_args, "max_new_tokens", 0)
    limits = [n for n in (context, getattr(training_args, "max_length", None)) if n]
    return min(limits) - (answer or 0) if limits else None


def check_vllm(training_args) -> None:
    """`use_vllm: true` (TRL generates with vLLM, colocated by default) needs a CUDA GPU and the `vllm` extra."""
    if not getattr(training_args, "use_vllm", False):
        return
    if training_args.use_cpu or not torch.cuda.is_available():
        raise UserError(
            "use_vllm: true generates with vLLM, which needs a CUDA GPU; set use_vllm: false to generate with "
            "transformers on this machine."
        )
    from trl.import_utils import is_vllm_available

    if not is_vllm_available():
        raise UserError(
            "use_vllm: true needs vLLM, which is not installed; run `pip install -e .[vllm]` (GPU machines; it pins "
            "the vLLM that TRL 1.16 supports) or set use_vllm: false."
        )


def load_policy(path: str, init_kwargs: dict, tokenizer):
    """The SFT model to train, sampling with only the settings the trainer passes (models.clean_generation_config)."""
    from transformers import AutoModelForCausalLM

    from ..models import clean_generation_config

    policy = AutoModelForCausalLM.from_pretrained(path, **init_kwargs)
    clean_generation_config(policy, tokenizer)
    return policy


@dataclass
class OnlineRun:
    """What an online RL recipe hands its trainer."""

    policy: object
    tokenizer: object
    reward: RewardModelReward
    train_dataset: object
    eval_dataset: object
    reward_accuracy: float | None


def prepare(stage, script_args, training_args, model_args, label: str, penalty: bool = True) -> OnlineRun:
    """Gate the reward model, load the SFT policy and the reward function, load and check the prompts.

    `penalty=False` leaves the missing-EOS penalty to the trainer (online DPO applies `missing_eos_penalty` itself)."""
    from transformers import set_seed

    from ..models import load_tokenizer
    from . import common, rl

    set_seed(training_args.seed)  # LoRA's A matrices start random
    check_vllm(training_args)
    accuracy = rl.check_reward_model(training_args.reward_model_path, training_args.min_reward_accuracy)
    policy_path = common.prepare_model(model_args.model_name_or_path, stage)
    tokenizer = load_tokenizer(policy_path, padding_side="left")

    # The prompts, checked and fitted to the context before any model loads
    train_dataset, eval_dataset = common.load_splits(script_args, training_args, stage)
    rl.check_prompts(train_dataset, label)
    room = prompt_room(training_args, rl.context_length(policy_path))
    train_dataset = rl.fit_prompts(train_dataset, tokenizer, room, training_args.max_dropped_share, label)
    if eval_dataset is not None:
        rl.check_prompts(eval_dataset, label, split=script_args.dataset_test_split)
        eval_dataset = rl.fit_prompts(eval_dataset, tokenizer, room, 1.0, f"{label} held-out")

    init_kwargs = common.model_init_kwargs(model_args)
    policy = load_policy(policy_path, init_kwargs, tokenizer)
    eos_penalty = training_args.missing_eos_penalty if penalty else None
    reward = reward_function(training_args, model_args, init_kwargs, stage, eos_penalty)
    return OnlineRun(policy, tokenizer, reward, train_dataset, eval_dataset, accuracy)


def train_and_save(trainer, stage, run: OnlineRun, key_settings, script_args, training_args, model_args) -> dict:
    """common.train_and_save with the algorithm and its key settings in the lineage."""
    from . import common, rl

    extra = rl.algorithm(stage.name, training_args, key_settings, run.reward_accuracy)
    return common.train_and_save(trainer, stage, model_args, script_args, training_args, final_metrics, extra)


def final_metrics(trainer) -> dict:
    """The last logged reward and KL of the run (TRL's names) beside its time."""
    logged = [entry for entry in trainer.state.log_history if "reward" in entry or "rewards/chosen" in entry]
    return {k: v for k, v in (logged[-1] if logged else {}).items() if isinstance(v, int | float)}
