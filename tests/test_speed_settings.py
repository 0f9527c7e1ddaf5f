"""The shipped speed settings change how batches are laid out, never the loss: packed SFT and length-bucketed RM."""

from __future__ import annotations

import pytest
import torch
from conftest import CONFIGS
from datasets import Dataset

from rlhf_recipes import stages
from rlhf_recipes.errors import UserError
from rlhf_recipes.models import load_tokenizer


def conversations(n: int) -> list[dict]:
    words = "the harbour at Tolvenna is busy with fishing boats every morning and the paths are steep".split()
    rows = []
    for i in range(n):
        answer = " ".join(words[: 3 + 4 * i])  # different lengths, so padding and packing both matter
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"Question {i}: what is on Skerrowen?"},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return rows


def sft_batch(tiny_model_path, tmp_path, **settings):
    """The one batch SFTTrainer makes of four conversations, its loss, and the model's logits for it."""
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(tmp_path),
        assistant_only_loss=True,
        max_length=512,
        report_to="none",
        use_cpu=True,
        bf16=False,
        **settings,
    )
    trainer = SFTTrainer(
        model=str(tiny_model_path),
        args=args,
        train_dataset=Dataset.from_list(conversations(4)),
        processing_class=load_tokenizer(str(tiny_model_path)),
    )
    batches = list(trainer.get_train_dataloader())
    assert len(batches) == 1, "all four conversations must land in one batch for the comparison"
    batch = batches[0]
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch)).item()
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
        logits = trainer.model(**inputs, use_cache=False).logits
    return loss, batch, logits, trainer.model


def per_conversation(batch, logits) -> list[torch.Tensor]:
    """Each conversation's logits, from a padded batch (one per row) or a packed row (split where positions restart)."""
    if "position_ids" in batch:
        starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [batch["input_ids"].shape[1]]
        return [logits[0, a:b] for a, b in zip(starts, starts[1:]) if b > a]
    return [logits[i, : int(n)] for i, n in enumerate(batch["attention_mask"].sum(1))]


def sorted_by_length(tensors):
    return sorted(tensors, key=len)


def test_packed_sft_batch_matches_the_padded_batch(tiny_model_path, tmp_path):
    """bfd packing puts the four conversations in one row; attention must not cross from one into the next."""
    padded_loss, padded, padded_logits, _ = sft_batch(tiny_model_path, tmp_path / "a", per_device_train_batch_size=4)
    packed_loss, packed, packed_logits, _ = sft_batch(
        tiny_model_path, tmp_path / "b", packing=True, packing_strategy="bfd", per_device_train_batch_size=1
    )
    assert packed["input_ids"].shape[0] == 1 and "position_ids" in packed  # really packed, padding-free
    expected = sorted_by_length(per_conversation(padded, padded_logits))
    got = sorted_by_length(per_conversation(packed, packed_logits))
    assert [len(t) for t in got] == [len(t) for t in expected]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert packed_loss == pytest.approx(padded_loss, abs=1e-5)


def test_the_packing_check_can_fail(tiny_model_path, tmp_path):
    """The same packed row without its position ids reads as one long sequence: later conversations change."""
    _, packed, packed_logits, model = sft_batch(
        tiny_model_path, tmp_path, packing=True, packing_strategy="bfd", per_device_train_batch_size=1
    )
    with torch.no_grad():
        crossed = model(input_ids=packed["input_ids"], use_cache=False).logits
    assert (crossed - packed_logits).abs().max().item() > 1e-2


def reward_loss_and_rewards(tiny_model_path, tmp_path, buckets: int):
    from rlhf_recipes.train.reward import RewardConfig, RewardTrainer

    rows = conversations(6)
    pairs = [
        {"prompt": a["messages"][:1], "chosen": a["messages"][1:], "rejected": b["messages"][1:]}
        for a, b in zip(rows, rows[::-1])
    ]
    torch.manual_seed(0)
    args = RewardConfig(
        output_dir=str(tmp_path),
        length_buckets=buckets,
        per_device_train_batch_size=6,
        report_to="none",
        use_cpu=True,
        bf16=False,
        model_init_kwargs={"dtype": "float32"},
    )
    trainer = RewardTrainer(
        model=str(tiny_model_path),
        args=args,
        train_dataset=Dataset.from_list(pairs),
        processing_class=load_tokenizer(str(tiny_model_path)),
    )
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()
    with torch.no_grad():
        loss, outputs = trainer.compute_loss(trainer.model, dict(batch), return_outputs=True)
    return loss.item(), outputs.logits.squeeze(-1), trainer.model.score.weight


def test_length_buckets_give_the_same_rewards_and_loss(tiny_model_path, tmp_path):
    loss_1, rewards_1, score_1 = reward_loss_and_rewards(tiny_model_path, tmp_path / "one", buckets=1)
    loss_4, rewards_4, score_4 = reward_loss_and_rewards(tiny_model_path, tmp_path / "four", buckets=4)
    assert torch.equal(score_1, score_4)  # same random score head, so the rewards are comparable
    assert len(set(rewards_1.tolist())) > 1  # the 12 sequences get different rewards: an order mix-up would show
    torch.testing.assert_close(rewards_4, rewards_1, atol=1e-5, rtol=1e-4)
    assert loss_4 == pytest.approx(loss_1, abs=1e-5)


def test_length_buckets_must_be_positive():
    argv = ["--config", str(CONFIGS / "reward.yaml"), "--length_buckets", "0"]
    with pytest.raises(UserError, match="key 'length_buckets' on the command line is 0, but it must be a positive"):
        stages.get("reward").parse_args(argv, check_paths=False)
