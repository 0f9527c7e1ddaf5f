"""The one way to ask a reward model for a score: the conversation rendered exactly as RewardTrainer rendered its
training pairs, right-padded as its collator pads, read at the last token as its head was trained.

RewardTrainer tokenizes a conversational pair with `apply_chat_template(prompt + completion, tokenize=True)` (TRL's
`_tokenize`), and a plain-text pair as `tokenizer(prompt + completion + eos)`. For SmolLM2 that rendering ends a turn
with `<|im_end|>\\n`, so the score head learned at the `\\n`; TRL 1.12's PPO read it at `<|im_end|>`, a position the
head never trained on. Every caller (PPO's rollouts, the GRPO/RLOO/online DPO reward functions, the evaluation, the
feedback rankers) scores (prompt messages, answer text) through `RewardScorer` with the reward model's own tokenizer
and chat template, whatever the policy's, and tests hold their scores equal.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _messages(value) -> list[dict]:
    return [{"role": "user", "content": value}] if isinstance(value, str) else list(value)


def training_ids(tokenizer, prompt, completion) -> list[int]:
    """Token ids of (prompt, completion) exactly as TRL's RewardTrainer tokenizes a training pair."""
    from trl.data_utils import _tokenize

    if not prompt:  # an implicit-prompt pair: RewardTrainer tokenizes the completion (the whole conversation) alone
        prompt = [] if not isinstance(completion, str) else ""
    if not isinstance(prompt, str) or not isinstance(completion, str):  # conversational (messages on either side)
        if isinstance(completion, str):
            completion = [{"role": "assistant", "content": completion}]
        return list(_tokenize(tokenizer, (_messages(prompt) if prompt else []) + list(completion))["input_ids"])
    text = prompt + completion
    if not text.endswith(tokenizer.eos_token):
        text += tokenizer.eos_token
    return list(_tokenize(tokenizer, text)["input_ids"])


def length_batches(order: list[int], lengths: list[int], batch_size: int, max_tokens: int = 2048):
    """Consecutive runs of `order` (indices sorted by length) of at most `batch_size` rows and `max_tokens` padded
    tokens: a forward pass on CPU is compute-bound, so padding is the only waste a batch adds."""
    batch = []
    for index in order:
        if batch and (len(batch) == batch_size or (len(batch) + 1) * lengths[index] > max_tokens):
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch


class RewardScorer:
    """A sequence-classification reward model and its tokenizer, scoring conversations as it was trained."""

    def __init__(self, model, tokenizer, batch_size: int = 16):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    @classmethod
    def from_path(cls, model_name_or_path: str, batch_size: int = 16, dtype=torch.float32) -> RewardScorer:
        from transformers import AutoModelForSequenceClassification

        from .models import load_tokenizer, resolve_model_path

        path = resolve_model_path(model_name_or_path)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype).eval()
        return cls(model, load_tokenizer(path), batch_size)

    @torch.no_grad()
    def score_ids(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        """Scores of token-id sequences, right-padded like RewardTrainer's collator, read at each last token.

        Sequences are batched by length (each batch padded to its own longest: right padding changes no earlier
        position, so the score is the same) and returned in the order given."""
        pad = self.tokenizer.pad_token_id
        device = next(self.model.parameters()).device
        sequences = [list(s) for s in sequences]
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        scores = torch.zeros(len(sequences))
        for rows in length_batches(order, [len(s) for s in sequences], self.batch_size):
            width = max(len(sequences[i]) for i in rows)
            input_ids = torch.tensor([sequences[i] + [pad] * (width - len(sequences[i])) for i in rows], device=device)
            attention_mask = torch.tensor(
                [[1] * len(sequences[i]) + [0] * (width - len(sequences[i])) for i in rows], device=device
            )
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
            scores[rows] = logits[:, 0].float().cpu()
        return scores

    def score(self, prompts: Sequence, completions: Sequence) -> list[float]:
        """Scores of (prompt, completion) pairs: messages or plain text, as in the preference data."""
        return self.score_ids([training_ids(self.tokenizer, p, c) for p, c in zip(prompts, completions)]).tolist()
