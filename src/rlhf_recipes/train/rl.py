"""What every RL stage (PPO, GRPO, RLOO, online DPO) shares: the reward-model gate and the algorithm's lineage."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..config import help_field as _help
from ..errors import UserError
from ..models import read_lineage

logger = logging.getLogger(__name__)


@dataclass
class OnlineRLArguments:
    """Keys every RL stage that trains against a reward model adds to its config (PPO, GRPO, RLOO, online DPO)."""

    reward_model_path: str | None = _help("The reward stage's output: scores every sampled completion.", default=None)
    reward_model_load_in_4bit: bool = _help(
        "Load the frozen reward model in 4-bit (bitsandbytes, the policy's bnb_4bit_* settings).", default=False
    )
    min_reward_accuracy: float = _help(
        "Refuse to start when the reward model's held-out pairwise accuracy (its lineage's eval_accuracy) is below "
        "this: RL against a reward model near chance optimises noise. 0 disables.",
        default=0.6,
    )
    missing_eos_penalty: float | None = _help(
        "Subtracted from the reward of a completion cut at its length limit without EOS.", default=1.0
    )
    reward_batch_size: int = _help("Completions per reward-model forward pass.", default=16)
    max_dropped_share: float = _help(
        "Stop before training when more than this share of prompts is too long for the context.", default=0.05
    )


def check_reward_model(reward_model_path: str, min_accuracy: float, key: str = "reward_model_path") -> float | None:
    """Refuse a reward model whose held-out pairwise accuracy is below `min_accuracy` (RL would optimise noise)."""
    lineage = read_lineage(reward_model_path) or {}
    accuracy = (lineage.get("metrics") or {}).get("eval_accuracy")
    if min_accuracy <= 0:
        return accuracy
    if accuracy is None:
        raise UserError(
            f"{key}={reward_model_path} has no held-out accuracy in its lineage.json (trained with eval_strategy: "
            "no, or not by recipes/reward.py), so it cannot pass the min_reward_accuracy gate; retrain it with an "
            "eval split, or set min_reward_accuracy: 0 to skip the gate."
        )
    if accuracy < min_accuracy:
        raise UserError(
            f"the reward model {reward_model_path} ranks only {accuracy:.1%} of held-out pairs correctly, below "
            f"min_reward_accuracy={min_accuracy}; RL against it would optimise noise: train it longer or on more "
            "pairs, or lower min_reward_accuracy."
        )
    logger.info("reward model gate: held-out accuracy %.3f >= %.3f", accuracy, min_accuracy)
    return accuracy


def algorithm(name: str, training_args, keys: tuple[str, ...], reward_accuracy: float | None = None) -> dict:
    """The `algorithm` entry of an RL stage's lineage: its name and the settings that define it."""
    settings = {key: getattr(training_args, key) for key in keys if hasattr(training_args, key)}
    return {"algorithm": {"name": name, **settings, "reward_model_accuracy": reward_accuracy}}


def check_prompts(dataset, label: str, split: str = "train") -> None:
    """Rows of `{"prompt": [messages] | str}`, checked before any work: a bad row is one sentence naming it."""
    if "prompt" not in dataset.column_names:
        raise UserError(f"{label} prompts need a 'prompt' column; this dataset has {', '.join(dataset.column_names)}.")
    for row, prompt in enumerate(dataset["prompt"]):
        well_formed = (isinstance(prompt, str) and prompt.strip()) or (
            isinstance(prompt, list)
            and prompt
            and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt)
            and prompt[-1]["role"] != "assistant"
        )
        if not well_formed:
            raise UserError(
                f"{label} prompt {row} of the {split} split is {str(prompt)[:60]!r}; a prompt is a non-empty string or "
                "a list of {role, content} messages ending in a user turn (fix it with recipes/prepare_data.py)."
            )


def fit_prompts(dataset, tokenizer, room: int | None, max_dropped_share: float, label: str):
    """Drop the prompts longer than `room` tokens (the context left for them once the answer's tokens are reserved),
    counted and logged as the reward stage counts its pairs; stop with one sentence when more than
    `max_dropped_share` of them would go. A prompt is measured as the policy sees it: its chat template up to the
    assistant's turn."""
    if room is None:
        return dataset
    if room < 1:
        raise UserError(
            f"{label} leaves no room for a prompt: the answer's tokens fill the model's context; lower the answer "
            "length (response_length, max_completion_length or max_new_tokens)."
        )

    def measure(row):
        prompt = row["prompt"]
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        return {"_fits": len(ids["input_ids"]) <= room}

    fits = dataset.map(measure, remove_columns=dataset.column_names, desc="Measuring prompts")["_fits"]
    dropped = [row for row, ok in enumerate(fits) if not ok]
    share = len(dropped) / max(len(fits), 1)
    logger.info(
        "%s prompts: %d, %d longer than %d tokens dropped (%.1f%%)", label, len(fits), len(dropped), room, 100 * share
    )
    if share > max_dropped_share:
        raise UserError(
            f"{len(dropped)} of {len(fits)} {label} prompts ({share:.0%}) are longer than {room} tokens, the context "
            f"left once the answer's tokens are reserved (e.g. row {dropped[0]}); use shorter prompts or answers, or "
            f"allow more with max_dropped_share (now {max_dropped_share})."
        )
    return dataset.select([row for row, ok in enumerate(fits) if ok]) if dropped else dataset


def context_length(model_path: str) -> int | None:
    """The positions a model's config allows (max_position_embeddings), read without loading the weights."""
    from transformers import AutoConfig

    return getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", None)


class LengthGroupedBatches:
    """Batches of prompts of similar length, in a random order: `train_sampling_strategy: group_by_length`.

    Every forward pass of an RL update (generation's prefill, reference, value, reward, the update itself) runs over
    the batch's prompts left-padded to its longest one, so the padding is work repeated five times. transformers'
    `get_length_grouped_indices` groups the prompts (a random permutation, sorted by length within mega-batches of up
    to 50 batches); the batches are then shuffled, so that an epoch is no curriculum from long prompts to short ones.
    The `len % batch_size` prompts left over are drawn at random each epoch, as a shuffled `drop_last` loader drops.
    """

    def __init__(self, lengths: list[int], batch_size: int, generator):
        self.lengths, self.batch_size, self.generator = list(lengths), batch_size, generator

    def __len__(self) -> int:
        return len(self.lengths) // self.batch_size

    def __iter__(self):
        import torch
        from transformers.trainer_pt_utils import get_length_grouped_indices

        size = self.batch_size
        if not len(self):  # fewer prompts than one batch: nothing to yield, as a `drop_last` loader yields nothing
            return
        kept = torch.randperm(len(self.lengths), generator=self.generator)[: len(self) * size].tolist()
        grouped = get_length_grouped_indices(
            [self.lengths[i] for i in kept], size, mega_batch_mult=min(50, len(self)), generator=self.generator
        )
        batches = [[kept[i] for i in grouped[start : start + size]] for start in range(0, len(grouped), size)]
        for index in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[index]
