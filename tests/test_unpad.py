"""PPO's forward passes without the batch's padding (rlhf_recipes/train/unpad.py) compute what TRL 1.12's padded passes
compute, gradients included, and length-grouped batches keep every prompt and draw a fresh order per epoch."""

from __future__ import annotations

import pytest
import torch

from rlhf_recipes.train.unpad import chunks, forward_rows, rollout_inputs

PAD = 0


def _rollouts(lengths: list[int], width: int, answer: int) -> torch.Tensor:
    """Left-padded queries of the given lengths, then `answer` answer tokens, the second answer stopped early."""
    torch.manual_seed(0)
    rows = torch.randint(5, 500, (len(lengths), width))
    for row, length in enumerate(lengths):
        rows[row, : width - answer - length] = PAD
    rows[1, width - 2 :] = PAD  # an answer cut at its stop token: right padding inside the answer
    return rows


@pytest.fixture(scope="module")
def models(tiny_model_path):
    """A LoRA policy and a LoRA value model on the tiny Llama, with non-zero LoRA B so that the adapters count."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from rlhf_recipes.train.scoring_models import add_value_adapter

    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_proj"], init_lora_weights=False)
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_path), lora)
    value = add_value_adapter(AutoModelForSequenceClassification.from_pretrained(tiny_model_path, num_labels=1), lora)
    return policy, value


def test_chunks_hold_every_row_once_and_bound_the_padding():
    starts = [0, 140, 190, 220, 240, 250, 260, 247, 439]
    groups = chunks(starts, 440, min_tokens=512, slack=1.25)
    assert sorted(row for group in groups for row in group) == list(range(len(starts)))
    for group in groups:
        real = sum(440 - starts[row] for row in group)
        padded = len(group) * (440 - min(starts[row] for row in group))
        assert padded <= max(512, 1.25 * real)
    assert len(groups) > 1 and chunks(starts, 440, min_tokens=0, slack=1.0) == [
        [row] for row in (0, 1, 2, 3, 4, 7, 5, 6, 8)
    ]


@pytest.mark.parametrize("lengths", [[7, 7, 7, 7], [3, 11, 6, 9]], ids=["no padding", "left padding"])
def test_rows_without_padding_compute_the_padded_batchs_logits(models, lengths):
    """The reference pass: logits at the answer's positions equal the batched pass's to float rounding (1e-6 when no
    row is left-padded, 1e-5 over masked padding); one chunk per row, so the rows come back in their own order."""
    policy, _ = models
    width, answer = 16, 5
    batch = _rollouts(lengths, width, answer)
    inputs = rollout_inputs(batch, PAD)
    keep = answer + 1
    with torch.no_grad():
        padded = policy(**inputs).logits[:, -keep:]
        (rows,) = forward_rows(**inputs, keep=keep, call=lambda **r: (policy(**r, logits_to_keep=keep).logits,),
                               min_tokens=0, slack=1.0)  # fmt: skip
    assert rows.shape == (len(lengths), width, padded.shape[-1])
    tolerance = 1e-6 if len(set(lengths)) == 1 else 1e-5
    torch.testing.assert_close(rows[:, -keep:], padded, atol=tolerance, rtol=0)


def _padded_update_pass(policy, value, batch):
    """What TRL 1.12's PPO update computed: both models over the whole padded batch, TRL's inputs, every position."""
    inputs = rollout_inputs(batch, PAD)
    backbone = getattr(value, value.base_model_prefix)
    hidden = backbone(**inputs, output_hidden_states=True, use_cache=False).hidden_states[-1]
    return policy(**inputs, use_cache=False).logits, value.score(hidden)


def test_update_pass_equals_the_padded_pass_with_gradients(models):
    """The update pass (`PolicyAndValue`, padding skipped) against the padded pass TRL 1.12 ran on one micro-batch:
    the log-probs and values PPO reads, and the gradients of a loss over them on every trained parameter."""
    from rlhf_recipes.train.ppo.loop import PolicyAndValue

    policy, value = models
    width, answer, context = 16, 5, 11
    batch = _rollouts([3, 11, 6, 9], width, answer)
    results = []
    for unpadded in (False, True):
        wrapper = PolicyAndValue(policy, value)
        wrapper.zero_grad()
        if unpadded:
            output, values = wrapper(**rollout_inputs(batch, PAD), logits_to_keep=width - context + 1)
            logits = output.logits
        else:
            logits, values = _padded_update_pass(policy, value, batch)
        logprobs = logits[:, context - 1 : -1].float().log_softmax(-1).gather(-1, batch[:, context:, None])
        values = values[:, context - 1 : -1]
        (logprobs.sum() + values.square().sum()).backward()
        grads = {name: p.grad.clone() for name, p in wrapper.named_parameters() if p.requires_grad}
        results.append((logprobs.detach(), values.detach(), grads))
    (padded_logprobs, padded_values, padded_grads), (logprobs, values, grads) = results
    torch.testing.assert_close(logprobs, padded_logprobs, atol=1e-5, rtol=0)
    torch.testing.assert_close(values, padded_values, atol=1e-5, rtol=0)
    assert grads.keys() == padded_grads.keys() and any("value_model.score" in name for name in grads)
    assert all(padded_grads[name].abs().max() > 0 for name in grads)  # every trained part is reached
    for name in grads:
        torch.testing.assert_close(grads[name], padded_grads[name], atol=1e-4, rtol=1e-3)


def test_length_grouped_batches_pad_less_and_reshuffle_each_epoch():
    from rlhf_recipes.train.rl import LengthGroupedBatches

    lengths = [31] * 8 + [38, 41, 59, 78, 80, 106, 123, 132, 190, 199, 213, 225, 366, 373, 386, 387, 50, 60]
    sampler = LengthGroupedBatches(lengths, 8, torch.Generator().manual_seed(0))
    epochs = [list(sampler) for _ in range(3)]
    for batches in epochs:
        assert len(batches) == len(sampler) == 3 and all(len(batch) == 8 for batch in batches)
        rows = [row for batch in batches for row in batch]
        assert len(set(rows)) == 24  # no prompt twice in an epoch; the 2 left over are dropped
    padded = sum(8 * max(lengths[row] for row in batch) for batch in epochs[0])
    random = sum(8 * max(lengths[row] for row in rows) for rows in torch.randperm(26)[:24].view(3, 8).tolist())
    assert padded < 0.75 * random, (padded, random)
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]  # a fresh order each epoch, from the seeded generator
    replay = LengthGroupedBatches(lengths, 8, torch.Generator().manual_seed(0))
    assert [list(replay) for _ in range(3)] == epochs  # what a resumed run replays


def test_ppo_refuses_a_sampling_strategy_it_cannot_use(tmp_path):
    """TRL 1.12's PPO loop ignored `train_sampling_strategy`; ours honours random, sequential and group_by_length and
    refuses the rest."""
    from trl import ModelConfig

    from rlhf_recipes.errors import UserError
    from rlhf_recipes.train.ppo import PPOConfig
    from rlhf_recipes.train.rl import LengthGroupedBatches
    from rlhf_recipes.train.scoring_models import check_model_options

    args = PPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, train_sampling_strategy="batch_rebalance")
    with pytest.raises(UserError, match="train_sampling_strategy=batch_rebalance is not one PPO can use"):
        check_model_options(args, ModelConfig(use_peft=True))
    assert list(LengthGroupedBatches([5, 9, 3], 8, torch.Generator().manual_seed(0))) == []  # fewer than one batch


def test_lora_folded_into_the_weights_computes_the_adapters_output_and_leaves_the_base_bit_for_bit(models):
    """The rollout's no-grad passes fold LoRA into the weights (train/ppo/merged.py): the same logits as the LoRA
    path to float rounding, the frozen weights afterwards the very same tensors; never under bf16 autocast."""
    from rlhf_recipes.train.ppo.merged import lora_folded, mergeable

    policy, _ = models
    batch = _rollouts([7, 7, 7, 7], 16, 5)
    before = {name: (p.data_ptr(), p.detach().clone()) for name, p in policy.named_parameters()}
    with torch.no_grad():
        lora_path = policy(input_ids=batch).logits
        with lora_folded(policy):
            folded = policy(input_ids=batch).logits
            with policy.disable_adapter():  # the adapter really is in the weights now, not beside them
                assert torch.allclose(policy(input_ids=batch).logits, folded)
        with policy.disable_adapter():
            base = policy(input_ids=batch).logits
    torch.testing.assert_close(folded, lora_path, atol=1e-5, rtol=0)
    assert (lora_path - base).abs().max() > 1e-3  # the adapter changes the logits, so the check can fail
    for name, p in policy.named_parameters():
        assert p.data_ptr() == before[name][0] and torch.equal(p, before[name][1]), name
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not mergeable(policy)  # bf16 would round a small adapter away from the answers it samples
