"""One PPO rollout: the policy answers a batch of prompts, and everything the update needs is computed with no
gradient: the answers' log-probs under the policy and under the reference, the value model's per-token values and
the reward model's scores.

Answers are generated with Hugging Face `generate` only (vLLM serves GRPO, RLOO and online DPO, not PPO), sampling
with exactly the configured temperature (top-k and top-p off; the checkpoint's own generation settings were cleared,
`models.clean_generation_config`), in chunks of `local_rollout_forward_batch_size` rows. The no-grad passes skip
the batch's padding (`unpad.py`); log-probs come from float32 logits whatever the autocast. The reward is read
through the one scoring path (`scoring.RewardScorer`) with the reward model's own tokenizer and chat template: the
prompt's messages and the decoded answer are rendered as RewardTrainer rendered its training pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig
from trl.trainer.utils import pad, selective_log_softmax

from .. import heap
from ..unpad import forward_rows, rollout_inputs
from .losses import INVALID_LOGPROB
from .merged import lora_folded


@dataclass
class Rollout:
    """A batch of answered prompts; every per-token tensor is `[rows, answer positions]`."""

    query_responses: torch.Tensor  # prompt (left-padded) + answer (right-padded), as generated
    context_length: int  # the prompts' padded width: answers start here
    responses: torch.Tensor  # the answers' tokens as generated (pad after a stop)
    logprobs: torch.Tensor  # log p_policy(token), float32; INVALID_LOGPROB after the answer's end
    ref_logprobs: torch.Tensor  # log p_reference(token), likewise
    values: torch.Tensor  # the value model's V per position; 0 after the position that takes the score
    scores: torch.Tensor  # the reward model's score per answer, minus missing_eos_penalty where it never stopped
    last: torch.Tensor  # index of each answer's last token (the stop token included)
    contain_eos: torch.Tensor  # whether each answer reached EOS
    answers: list[str]  # decoded answers, for the logs

    @property
    def mask(self) -> torch.Tensor:
        """The answer's own tokens: positions up to `last`."""
        return self.positions <= self.last.unsqueeze(1)

    @property
    def value_mask(self) -> torch.Tensor:
        """The value positions that count: up to `last + 1`, where the score is given (TRL's `padding_mask_p1`)."""
        return self.positions <= (self.last + 1).unsqueeze(1)

    @property
    def positions(self) -> torch.Tensor:
        width = self.responses.shape[1]
        return torch.arange(width, device=self.responses.device).expand(len(self.responses), width)


def first_true(bools: torch.Tensor) -> torch.Tensor:
    """Index of the first True in each row, or the row's length when there is none."""
    width = bools.shape[-1]
    candidates = width * (~bools).long() + torch.arange(width, device=bools.device)
    return candidates.min(dim=-1).values


def truncate_at_stop(responses: torch.Tensor, stop_token_id: int | None, pad_token_id: int) -> torch.Tensor:
    """The answers with every token after the first stop token replaced by padding (the stop token is kept)."""
    if stop_token_id is None:
        return responses
    cut = first_true(responses == stop_token_id).unsqueeze(-1)
    positions = torch.arange(responses.shape[1], device=responses.device)
    return torch.masked_fill(responses, positions > cut, pad_token_id)


def sampling_config(args, stop_token_id: int | None, pad_token_id: int) -> GenerationConfig:
    """Sampling at `temperature` with nothing else: top-k and top-p off (TRL's 1e-7 keeps a temperature of 0 finite)."""
    return GenerationConfig(
        max_new_tokens=args.response_length, temperature=args.temperature + 1e-7, top_k=0, top_p=1.0,
        do_sample=True, eos_token_id=stop_token_id, pad_token_id=pad_token_id,
    )  # fmt: skip


@torch.no_grad()
def generate(policy, queries: torch.Tensor, pad_token_id: int, config: GenerationConfig, chunk: int, scores: bool):
    """Prompts + sampled answers, right-padded to the longest answer, and (with `scores`) the sampler's processed
    logits per answer token (already divided by the temperature), zero where an answer had ended."""
    context = queries.shape[1]
    sequences, logits = [], []
    for start in range(0, len(queries), chunk):
        query = queries[start : start + chunk]
        mask = query != pad_token_id
        output = policy.generate(
            input_ids=torch.masked_fill(query, ~mask, 0), attention_mask=mask, generation_config=config,
            return_dict_in_generate=True, output_scores=scores,
        )  # fmt: skip
        sequences.append(torch.cat((query, output.sequences[:, context:]), 1))
        if scores:
            logits.append(torch.stack(output.scores, 1))
    query_responses = pad(sequences, padding_value=pad_token_id, padding_side="right")
    query_responses = query_responses.view(-1, query_responses.shape[-1])[: len(queries)]
    if not scores:
        return query_responses, None
    logits = pad(logits, padding_value=0, padding_side="right")
    return query_responses, logits.view(-1, *logits.shape[2:])[: len(queries)]


def answer_logits(model, query_responses: torch.Tensor, pad_token_id: int, context: int) -> torch.Tensor:
    """A causal LM's float32 logits predicting each answer token (positions `context - 1 ... -2`), without padding."""
    keep = query_responses.shape[1] - context + 1

    def logits(**rows):
        return (model(**rows, logits_to_keep=keep, use_cache=False).logits.float(),)

    return forward_rows(**rollout_inputs(query_responses, pad_token_id), keep=keep, call=logits)[0][
        :, context - 1 : -1
    ]


def answer_values(value_model, query_responses: torch.Tensor, pad_token_id: int, context: int) -> torch.Tensor:
    """The value model's value at each answer position (read from the token before it), without padding."""
    keep = query_responses.shape[1] - context + 1
    backbone = getattr(value_model, value_model.base_model_prefix)

    def values(**rows):
        return (value_model.score(backbone(**rows, use_cache=False).last_hidden_state[:, -keep:]),)

    full = forward_rows(**rollout_inputs(query_responses, pad_token_id), keep=keep, call=values)[0]
    return full[:, context - 1 : -1].squeeze(-1)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
    """log softmax(logits / temperature) at `tokens`, in float32 (`temperature=None`: already divided)."""
    logits = logits.float()
    if temperature is not None:
        logits = logits / (temperature + 1e-7)
    return selective_log_softmax(logits, tokens)


def score_answers(scorer, tokenizer, prompts: list, finished: torch.Tensor, missing_eos_penalty: float | None):
    """(decoded answers, scores, reached EOS) of answers cut at their stop token: each conversation, the prompt's
    messages and the answer's text, rendered in the reward model's own template (`scorer.tokenizer`, whatever the
    policy's) as RewardTrainer rendered its pairs; `missing_eos_penalty` off the score of an answer without EOS."""
    answers = tokenizer.batch_decode(finished, skip_special_tokens=True)
    scores = torch.tensor(scorer.score(prompts, answers), device=finished.device, dtype=torch.float32)
    contain_eos = (finished == tokenizer.eos_token_id).any(-1)
    if missing_eos_penalty is not None:
        scores[~contain_eos] -= missing_eos_penalty
    return answers, scores, contain_eos


@torch.no_grad()
def collect(trainer, queries: torch.Tensor, prompts: list, values: bool = True) -> Rollout:
    """Answer `queries` with the policy and compute what the update needs (see the module docstring). With
    `values=False` the values (and under bf16 the policy's log-probs) are left to the update's first forward pass,
    which runs at the same weights (loop.PPOTrainer.ppo_update)."""
    args, tokenizer, pad_id = trainer.args, trainer.processing_class, trainer.processing_class.pad_token_id
    wrapper = trainer.unwrapped
    policy, context = wrapper.policy, queries.shape[1]
    from_sampler = not trainer.recompute_logprobs  # float32: the sampler's logits are the update's, to ~1e-5

    with trainer.generation_context() as generating, lora_folded(generating.policy):  # merged.py: LoRA folded in
        query_responses, logits = generate(
            generating.policy, queries, pad_id, trainer.sampling, args.local_rollout_forward_batch_size, from_sampler
        )
        responses = query_responses[:, context:]
        if from_sampler:
            logprobs = token_logprobs(logits, responses)
        elif values:  # bf16: the sampler's cached bf16 logits differ from a full forward pass by ~1e-3 per token
            logits = answer_logits(policy, query_responses, pad_id, context)
            logprobs = token_logprobs(logits, responses, args.temperature)
        else:  # bf16, from the update's first pass
            logprobs = torch.zeros(responses.shape, device=responses.device)
    del logits
    heap.trim()  # the sampler's caches and logits, freed: their pages back to the system (heap.py)
    with trainer.reference() as reference:
        ref_logprobs = token_logprobs(
            answer_logits(reference, query_responses, pad_id, context), responses, args.temperature
        )
    if values:
        with lora_folded(wrapper.value_model):
            values = answer_values(wrapper.value_model, query_responses, pad_id, context)
    else:
        values = torch.zeros(responses.shape, device=responses.device)

    # The answer ends at its stop token; the reward model scores the conversation as it was trained on
    finished = truncate_at_stop(responses, trainer.stop_token_id, pad_id)
    answers, scores, contain_eos = score_answers(
        trainer.scorer, tokenizer, prompts, finished, args.missing_eos_penalty
    )

    heap.trim()  # the reference, value and scoring passes' temporaries
    last = first_true(finished == pad_id) - 1
    positions = torch.arange(responses.shape[1], device=responses.device)
    after_end = positions > last.unsqueeze(1)
    return Rollout(
        query_responses=query_responses, context_length=context, responses=responses,
        logprobs=torch.masked_fill(logprobs, after_end, INVALID_LOGPROB),
        ref_logprobs=torch.masked_fill(ref_logprobs, after_end, INVALID_LOGPROB),
        values=torch.masked_fill(values, positions > (last + 1).unsqueeze(1), 0),
        scores=scores, last=last, contain_eos=contain_eos, answers=answers,
    )  # fmt: skip
