"""A causal LM loaded for evaluation: perplexity terms, greedy and sampled answers, and float32 answer log-probs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..scoring import length_batches


def as_messages(prompt) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


@dataclass
class Answer:
    text: str
    prompt_ids: list[int]
    answer_ids: list[int]  # up to and including the end-of-turn token when the answer ended
    ended: bool  # False: cut at max_new_tokens without an end-of-turn token


class LoadedModel:
    """A causal LM (adapters merged through the cache) with its tokenizer, padded on the left for generation."""

    def __init__(self, model_name_or_path: str, device: str = "cpu", dtype=torch.float32):
        from transformers import AutoModelForCausalLM

        from ..models import clean_generation_config, load_tokenizer, resolve_model_path

        path = resolve_model_path(model_name_or_path)
        self.tokenizer = load_tokenizer(path, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        clean_generation_config(self.model, self.tokenizer)  # sample with exactly the settings asked for
        self.device = device

    @torch.no_grad()
    def perplexity_terms(self, texts: list[str], max_length: int, batch_size: int) -> tuple[list[float], list[int]]:
        """Summed next-token NLL and token count of each text (in the given order). Texts are batched by length, so
        a batch pads only to its own longest (padding is ~30% of the demo's held-out text otherwise)."""
        encoded = self.tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        pad = self.tokenizer.pad_token_id
        nll_sums, counts = [0.0] * len(texts), [0] * len(texts)
        for rows in length_batches(order, [len(e) for e in encoded], batch_size):
            width = max(len(encoded[i]) for i in rows)
            ids = torch.tensor([encoded[i] + [pad] * (width - len(encoded[i])) for i in rows], device=self.device)
            mask = torch.tensor([[1] * len(encoded[i]) + [0] * (width - len(encoded[i])) for i in rows])
            mask = mask.to(self.device)
            logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            targets, kept = ids[:, 1:], mask[:, 1:]
            nll = torch.nn.functional.cross_entropy(  # flat: a transposed (B, V, L) input is ~4x slower on CPU
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
            ).view(targets.shape)
            nll = nll * kept
            for row, index in enumerate(rows):
                nll_sums[index], counts[index] = nll[row].sum().item(), int(kept[row].sum())
        return nll_sums, counts

    @torch.no_grad()
    def answers(
        self, prompts: list, max_new_tokens: int, batch_size: int, temperature: float | None = None
    ) -> list[Answer]:
        """Greedy answers, or sampled ones at `temperature` (top-k and top-p off, as PPO samples)."""
        from transformers import GenerationConfig

        if temperature:
            settings = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
        else:
            settings = dict(do_sample=False)
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            **settings,
        )
        out = []
        for start in range(0, len(prompts), batch_size):
            chats = [as_messages(p) for p in prompts[start : start + batch_size]]
            batch = self.tokenizer.apply_chat_template(
                chats, add_generation_prompt=True, return_tensors="pt", return_dict=True, padding=True
            ).to(self.device)
            sequences = self.model.generate(**batch, generation_config=config)
            for row, prompt_ids, mask in zip(
                sequences[:, batch["input_ids"].shape[1] :], batch["input_ids"], batch["attention_mask"]
            ):
                ids = row.tolist()
                ended = self.tokenizer.eos_token_id in ids
                ids = (
                    ids[: ids.index(self.tokenizer.eos_token_id) + 1]
                    if ended
                    else [t for t in ids if t != self.tokenizer.pad_token_id]
                )
                text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
                out.append(Answer(text, prompt_ids[mask.bool()].tolist(), ids, ended))
        return out

    def generate(self, prompts: list, max_new_tokens: int, batch_size: int, temperature: float | None = None):
        answers = self.answers(prompts, max_new_tokens, batch_size, temperature)
        return [a.text for a in answers], answers

    @torch.no_grad()
    def answer_logprobs(
        self, answers: list[Answer], temperature: float = 1.0, batch_size: int = 16
    ) -> list[list[float]]:
        """Per-token log-probabilities of each answer given its prompt, from float32 logits at `temperature` (the
        distribution the answers were sampled from; PPO's KL uses the same). Batched, right-padded: each row keeps
        its own positions, so padding after it changes nothing."""
        from trl.trainer.utils import selective_log_softmax

        pad, batch_size = self.tokenizer.pad_token_id, min(batch_size, 16)
        out = []
        for start in range(0, len(answers), batch_size):
            batch = answers[start : start + batch_size]
            rows = [a.prompt_ids + a.answer_ids for a in batch]
            width = max(map(len, rows))
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=self.device)
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=self.device)
            logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float() / temperature
            logprobs = selective_log_softmax(logits, ids[:, 1:])  # TRL's: no full-vocabulary log-softmax in memory
            for row, answer in enumerate(batch):
                first = len(answer.prompt_ids) - 1
                out.append(logprobs[row, first : first + len(answer.answer_ids)].tolist())
        return out
