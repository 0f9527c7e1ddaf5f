"""TRL's RewardTrainer with length-bucketed forward passes: less padding, same loss and metrics.

RewardTrainer pads every batch's chosen and rejected sequences to the batch's longest and runs them in one forward
pass. With a realistic length spread most of that batch is padding (measured: about 60% on 20-500 token pairs).
With `length_buckets: k` the sequences are sorted by length and run in k passes, each padded only to its own
longest; the rewards are put back in their original order and TRL's own loss and metrics take them from there.

RewardTrainer also drops every pair longer than `max_length` without a word; `check_pair_lengths` counts them first
(rendered by `scoring.training_ids`, the one rendering of a scored conversation) and stops above `max_dropped_share`.

Held-out accuracy is counted pair by pair: `eval_accuracy` is the share of held-out pairs whose chosen answer
outscores the rejected one (TRL averages per-batch shares, which differ when the last batch is short), with
`eval_pairs` and a 95% bootstrap interval (`eval_accuracy_low`, `eval_accuracy_high`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from transformers.modeling_outputs import SequenceClassifierOutputWithPast
from transformers.trainer_pt_utils import BatchRebalanceSampler
from trl import RewardConfig as _TRLRewardConfig
from trl import RewardTrainer as _TRLRewardTrainer

from ..errors import UserError

__all__ = ["PromptGroupedBatchSampler", "RewardConfig", "RewardTrainer", "check_pair_lengths"]
logger = logging.getLogger(__name__)


@dataclass
class RewardConfig(_TRLRewardConfig):
    length_buckets: int = field(
        default=1,
        metadata={
            "help": "Forward passes per batch: its 2 x batch chosen and rejected sequences, sorted by length, are "
            "split into this many passes, each padded only to its own longest sequence. 1 = TRL's single pass."
        },
    )

    group_by_prompt: bool = field(
        default=True,
        metadata={
            "help": "When the training data has a `group` column (pairs exported from K-wise rankings), every pair "
            "of one group (one prompt's ranking) lands in the same batch, as InstructGPT trains a prompt's C(K,2) "
            "comparisons together; groups are shuffled, pairs are not split across batches."
        },
    )

    max_dropped_share: float = field(
        default=0.05,
        metadata={
            "help": "Stop before training when more than this share of training pairs is longer than max_length "
            "(RewardTrainer would drop them)."
        },
    )


def check_pair_lengths(dataset, tokenizer, training_args, dataset_name: str) -> dict:
    """Count the pairs RewardTrainer will drop for `max_length`; stop with one sentence above `max_dropped_share`."""
    from ..scoring import training_ids

    limit = training_args.max_length
    if limit is None:
        return {}

    def measure(batch):
        prompts = batch["prompt"] if "prompt" in batch else [None] * len(batch["chosen"])
        return {
            "_longest": [
                max(len(training_ids(tokenizer, p, c)), len(training_ids(tokenizer, p, r)))
                for p, c, r in zip(prompts, batch["chosen"], batch["rejected"])
            ]
        }

    longest = dataset.map(measure, batched=True, remove_columns=dataset.column_names, desc="Measuring pairs")[
        "_longest"
    ]
    dropped = [i for i, n in enumerate(longest) if n > limit]
    share = len(dropped) / max(len(longest), 1)
    logger.info(
        "reward data %s: %d pairs, %d longer than max_length %d (dropped by RewardTrainer, %.1f%%)",
        dataset_name, len(longest), len(dropped), limit, 100 * share,
    )  # fmt: skip
    if share > training_args.max_dropped_share:
        raise UserError(
            f"{len(dropped)} of {len(longest)} training pairs in {dataset_name} ({share:.0%}) are longer than "
            f"max_length={limit} tokens (e.g. row {dropped[0]}, {longest[dropped[0]]} tokens) and would be dropped; "
            f"raise max_length, or allow more with max_dropped_share (now {training_args.max_dropped_share})."
        )
    return {"pairs": len(longest), "dropped_for_length": len(dropped)}


def check_lora_targets(model_path: str, model_args) -> None:
    """A single `lora_target_modules` entry is a regex over module names (peft's rule; the HH recipe trains the top
    layers only this way): one that matches no linear module of the model is one sentence, not peft's traceback."""
    import re

    from transformers import AutoConfig, AutoModelForSequenceClassification

    target = model_args.lora_target_modules
    if not model_args.use_peft or not isinstance(target, str) or target == "all-linear":
        return
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(model_path, num_labels=1))
    linear = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    if not any(re.fullmatch(target, name) for name in linear):
        raise UserError(
            f"lora_target_modules '{target}' (one entry: a regex over module names) matches no linear module of "
            f"{model_args.model_name_or_path}, whose {len(linear)} are named like {linear[0]} to {linear[-1]}; fix "
            "the regex (its layer numbers), or list module names (q_proj, v_proj, ...) for every layer."
        )


class _LengthBucketed:
    """Calls a sequence-classification model on length-sorted slices of a right-padded batch."""

    def __init__(self, model, buckets: int):
        self.model, self.buckets = model, buckets

    def __call__(self, input_ids, attention_mask, **kwargs):
        lengths = attention_mask.sum(dim=1)
        order = torch.argsort(lengths)
        logits = []
        for part in torch.tensor_split(order, min(self.buckets, len(order))):
            width = int(lengths[part].max())
            logits.append(self.model(input_ids[part, :width], attention_mask[part, :width], **kwargs).logits)
        restore = torch.empty_like(order)
        restore[order] = torch.arange(len(order), device=order.device)
        return SequenceClassifierOutputWithPast(logits=torch.cat(logits)[restore])


class PromptGroupedBatchSampler(BatchRebalanceSampler):
    """Batches of whole groups: groups shuffled each epoch (seeded), packed in order into batches of at most
    `batch_size` pairs without splitting a group (a group larger than a batch is cut into full batches). Each rank
    takes every `world`-th batch; the last batches are repeated so every rank runs the same number of steps.

    It subclasses transformers' BatchRebalanceSampler only so that Trainer passes it as a batch sampler and
    accelerate leaves the sharding to it; none of that class's rebalancing is used."""

    def __init__(self, groups: list, batch_size: int, seed: int = 42, rank: int = 0, world: int = 1):
        self.order: dict = {}
        for index, group in enumerate(groups):
            self.order.setdefault(group, []).append(index)
        self.batch_size, self.seed, self.rank, self.world, self.epoch = batch_size, seed, rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        keys = list(self.order)
        out, current = [], []
        for position in torch.randperm(len(keys), generator=generator).tolist():
            members = self.order[keys[position]]
            for start in range(0, len(members), self.batch_size):
                part = members[start : start + self.batch_size]
                if len(current) + len(part) > self.batch_size:
                    out.append(current)
                    current = []
                current = current + part
        if current:
            out.append(current)
        short = -len(out) % self.world
        return out + out[:short]  # every rank the same number of batches

    def __iter__(self):
        yield from self.batches()[self.rank :: self.world]

    def __len__(self) -> int:
        return len(self.batches()) // self.world


class RewardTrainer(_TRLRewardTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        float32_trained_heads(self.model, self.args)

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset  # the prepared one: TRL's length filter already applied, `group` still there
        if self.args.group_by_prompt and "group" in getattr(dataset, "column_names", ()):
            return PromptGroupedBatchSampler(
                dataset["group"], self.args.per_device_train_batch_size, self.args.seed,
                self.args.process_index, self.args.world_size,
            )  # fmt: skip
        return super()._get_train_sampler(train_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.args.length_buckets > 1:  # TRL's DataCollatorForPreference pads on the right
            model = _LengthBucketed(model, self.args.length_buckets)
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        if not self.model.training:  # evaluation: each held-out pair's outcome, for the count and the interval
            chosen, rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
            self._eval_outcomes = getattr(self, "_eval_outcomes", [])
            self._eval_outcomes.append(self.accelerator.gather_for_metrics(chosen > rejected).cpu())
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict, start_time: float | None = None) -> None:
        outcomes = getattr(self, "_eval_outcomes", None)
        if outcomes and any(key.startswith("eval_") for key in logs):
            self._metrics["eval"].pop("accuracy", None)  # TRL's mean of per-batch shares: counted pair by pair here
            super().log(logs | held_out_accuracy(torch.cat(outcomes).float().numpy()), start_time)
            self._eval_outcomes = []
            return
        super().log(logs, start_time)


def float32_trained_heads(model, args) -> list[str]:
    """With frozen weights in bfloat16 (`dtype: compute` where bf16 is chosen) peft keeps the LoRA matrices in
    float32 but copies the new `score` head in the base's bfloat16, where AdamW's small updates round away; every
    trained module that is not a LoRA layer is put in float32 (scoring_models.float32_head). Not on a quantized base,
    where TRL keeps QLoRA's trained parts in bfloat16 on purpose, nor under DeepSpeed ZeRO-3, which needs one dtype
    (TRL's own rule). Returns the names of the modules cast."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from .scoring_models import float32_head

    plugin = getattr(args, "deepspeed_plugin", None)
    quantized = getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
    if quantized or (plugin is not None and plugin.zero_stage == 3):
        return []
    cast = []
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if isinstance(module, BaseTunerLayer) or not any(p.requires_grad for p in own):
            continue
        if any(p.dtype in (torch.bfloat16, torch.float16) for p in own) and hasattr(module, "weight"):
            float32_head(module)
            cast.append(name)
    if cast:
        logger.info("trained heads kept in float32 on the %s base: %s", model.dtype, ", ".join(cast))
    return cast


def held_out_accuracy(outcomes) -> dict:
    """Pairwise accuracy over held-out pairs (1: chosen scored higher), their count, and a 95% bootstrap interval."""
    from ..evaluation.probes import mean_interval

    accuracy, low, high = mean_interval(outcomes)
    return {
        "eval_accuracy": accuracy,
        "eval_pairs": len(outcomes),
        "eval_accuracy_low": low,
        "eval_accuracy_high": high,
    }
