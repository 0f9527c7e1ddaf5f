"""PPO's prompts: tokenized up to the assistant's turn with their messages kept (the reward model renders them in
its own template), batched left-padded, in an order drawn from a generator of the run's own."""

from __future__ import annotations

import torch


def tokenize_prompts(dataset, tokenizer, num_proc: int | None = None):
    """`{"prompt": [messages] | str}` rows -> `{"input_ids", "prompt"}` (the messages), ending with the assistant's
    generation prompt (rows checked by `rl.check_prompts` first)."""

    def tokenize(row):
        prompt = row["prompt"]
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        return {"input_ids": list(ids["input_ids"]), "prompt": messages}

    columns = [c for c in dataset.column_names if c != "prompt"]
    return dataset.map(tokenize, remove_columns=columns, num_proc=num_proc, desc="Tokenizing prompts")


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
