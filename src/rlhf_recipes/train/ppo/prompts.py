"""PPO's prompts: tokenized up to the assistant's turn with their messages kept (the reward model renders them in
its own template), batched left-padded, in an order drawn from a generator of the run's own."""

from __future__ import annotations

import logging

import torch

from ...cli import UserError

logger = logging.getLogger(__name__)


def tokenize_prompts(dataset, tokenizer, num_proc: int | None = None, max_prompt_tokens: int | None = None):
    """`{"prompt": [messages] | str}` rows -> `{"input_ids", "prompt"}` (the messages), ending with the assistant's
    generation prompt. Prompts longer than `max_prompt_tokens` (the context left after the answer) are dropped,
    counted and logged; none left is one sentence."""
    from ..rl import check_prompts

    check_prompts(dataset, "PPO")  # before any work: a bad row is one sentence, not a traceback

    def tokenize(row):
        prompt = row["prompt"]
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        return {"input_ids": list(ids["input_ids"]), "prompt": messages}

    columns = [c for c in dataset.column_names if c != "prompt"]
    tokenized = dataset.map(tokenize, remove_columns=columns, num_proc=num_proc, desc="Tokenizing prompts")
    if max_prompt_tokens is None:
        return tokenized
    kept = tokenized.filter(lambda row: len(row["input_ids"]) <= max_prompt_tokens, num_proc=num_proc)
    dropped = len(tokenized) - len(kept)
    if dropped:
        logger.warning(
            "dropped %d of %d prompts longer than %d tokens (the model's context minus response_length)",
            dropped, len(tokenized), max_prompt_tokens,
        )  # fmt: skip
    if not len(kept):
        raise UserError(
            f"every one of the {len(tokenized)} prompts is longer than {max_prompt_tokens} tokens, the model's context "
            "minus response_length; use shorter prompts or a smaller response_length."
        )
    return kept


class PromptCollator:
    """A batch of tokenized prompts: `input_ids` left-padded (the tokenizer's side), `prompt` the messages."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, rows: list[dict]) -> dict:
        padded = self.tokenizer.pad({"input_ids": [row["input_ids"] for row in rows]}, return_tensors="pt")
        return {"input_ids": padded["input_ids"], "prompt": [row["prompt"] for row in rows]}


def prompt_loader(dataset, tokenizer, batch_size: int, strategy: str, seed: int):
    """Batches of `batch_size` prompts per update, in an order from a generator seeded by `seed` (a resumed run
    replays it): shuffled (`random`), as stored (`sequential`), or of similar length (`group_by_length`, so that
    generation and every pass pad less). Full batches only: the leftover prompts are drawn at random each epoch."""
    from torch.utils.data import DataLoader, RandomSampler, SequentialSampler

    from ..rl import LengthGroupedBatches

    order = torch.Generator().manual_seed(seed)
    if strategy == "group_by_length":
        lengths = [len(ids) for ids in dataset["input_ids"]]
        batches = {"batch_sampler": LengthGroupedBatches(lengths, batch_size, order)}
    else:
        sampler = SequentialSampler(dataset) if strategy == "sequential" else RandomSampler(dataset, generator=order)
        batches = {"sampler": sampler, "batch_size": batch_size, "drop_last": True}
    return DataLoader(
        dataset,
        collate_fn=PromptCollator(tokenizer),
        # each new iterator draws a worker seed: from this generator, not from the global RNG of the sampling
        generator=torch.Generator().manual_seed(seed + 1),
        **batches,
    )
