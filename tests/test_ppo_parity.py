"""The project's PPO reproduces what TRL 1.12.0's PPOTrainer recorded on the same inputs (tests/ppo_parity.py: tiny
models, eight prompts, a LoRA case with the k1 estimator and a full fine-tuning case with k3, whitened rewards and
narrow clip ranges; recorded by tests/data/ppo_trl112/record.py before the project moved to TRL 1.16).

Same inputs, same seeds and the same sampler's RNG stream: the answers sampled at every update must be token for
token the recorded ones, and every logged statistic and every trained weight equal within

- statistics: 1e-6 absolute + 1e-4 relative; weights: 2e-6 absolute + 1e-4 relative. The only arithmetic the two
  loops do differently is float summation order (the project's passes skip the padding and batch rows by length,
  TRL's run the padded batch: ~1e-7 in a logit, tests/test_unpad.py), compounded over 3 updates of Adam steps. Measured
  on this fixture: at most 2.8e-7 absolute (9e-5 relative, on a policy loss of -0.003) in a statistic and 2.3e-7 in
  a weight; the tolerances sit about ten times above that, and far below what one optimizer step changes (lr 1e-3
  and 3e-4: Adam moves every weight by about lr per step).

Intended differences, both present in the recording and in the project (the recorder applies them to TRL's loop):
the reward is read through `scoring.RewardScorer` (where the reward model learned it, not at the stop token), and
the prompts come in their stored order from a loader with its own generator. Differences the fixture cannot see:
the project steps the optimizer once per mini-batch, where TRL 1.12 stepped every `gradient_accumulation_steps`
micro-batches and on every micro-batch of an update whose prompts ended the loader's epoch (both cases use
gradient_accumulation_steps: 1, where the two agree; the LoRA case has two mini-batches); and it honours
`max_grad_norm` (off by default, as TRL's loop ignored it). With one mini-batch on one process the project reads the
rollout's values from the update's first forward pass rather than a pass of their own (the full case; the LoRA case,
with two mini-batches, runs the separate pass): both match.
"""

from __future__ import annotations

import json

import pytest
import torch
from ppo_parity import CASES, COMMON, FIXTURE, METRICS, USER_TURNS, models, prompts, trained_state
from safetensors.torch import load_file

RECORDED = json.loads((FIXTURE / "ppo_trl112.json").read_text())
STATS = dict(atol=1e-6, rtol=1e-4)
WEIGHTS = dict(atol=2e-6, rtol=1e-4)


@pytest.fixture(scope="module", params=list(CASES))
def run(request, tmp_path_factory, tiny_model_path):
    """The project's PPOTrainer on one recorded case: its log, its sampled answers and its trained weights."""
    from rlhf_recipes.models import load_tokenizer
    from rlhf_recipes.train.ppo import PPOConfig, PPOTrainer, loop
    from rlhf_recipes.train.scoring_models import add_value_adapter

    name, case = request.param, CASES[request.param]
    tokenizer = load_tokenizer(str(tiny_model_path), padding_side="left")
    policy, reference, reward, value = models(tiny_model_path, case, add_value_adapter)
    dataset = prompts(tokenizer).add_column("prompt", [[{"role": "user", "content": t}] for t in USER_TURNS])
    args = PPOConfig(
        output_dir=str(tmp_path_factory.mktemp(name)), train_sampling_strategy="sequential", **COMMON,
        **case["settings"],
    )  # fmt: skip
    trainer = PPOTrainer(
        args=args, processing_class=tokenizer, model=policy, ref_model=reference, reward_model=reward,
        value_model=value, train_dataset=dataset,
    )  # fmt: skip
    sampled, value_passes = [], []
    collect = loop.collect

    def recording(trainer_, queries, batch_prompts, **kwargs):
        rollout = collect(trainer_, queries, batch_prompts, **kwargs)
        sampled.append(rollout.responses.tolist())
        value_passes.append(kwargs.get("values", True))
        return rollout

    loop.collect = recording
    try:
        trainer.train()
    finally:
        loop.collect = collect
    updates = [entry for entry in trainer.state.log_history if "objective/scores" in entry]
    # the LoRA case (two mini-batches) computes values in a pass of their own, the full case (one) in the update's
    assert set(value_passes) == {name == "lora"}
    weights = {f"policy.{k}": v for k, v in trained_state(trainer.unwrapped.policy).items()}
    weights |= {f"value.{k}": v for k, v in trained_state(trainer.unwrapped.value_model).items()}
    return name, updates, sampled, weights


def test_the_answers_sampled_are_the_recorded_ones(run):
    name, _, sampled, _ = run
    recorded = RECORDED["cases"][name]["responses"]
    assert len(sampled) == len(recorded)
    for update, (ours, theirs) in enumerate(zip(sampled, recorded)):
        width = min(len(ours[0]), len(theirs[0]))
        assert [row[:width] for row in ours] == [row[:width] for row in theirs], f"update {update + 1}"


def test_every_statistic_of_every_update_matches_trl_1_12(run):
    name, updates, _, _ = run
    recorded = RECORDED["cases"][name]["updates"]
    assert len(updates) == len(recorded) == len(RECORDED["cases"][name]["responses"])
    for update, (ours, theirs) in enumerate(zip(updates, recorded), start=1):
        for key in METRICS:
            assert ours[key] == pytest.approx(theirs[key], abs=STATS["atol"], rel=STATS["rtol"]), (update, key)
    assert any(u["policy/clipfrac_avg"] > 0 for u in recorded) or name == "lora"  # the full case clips
    assert any(u["val/num_eos_tokens"] > 0 for u in recorded)  # answers stop at EOS: truncation takes part


def test_the_trained_weights_match_trl_1_12(run):
    name, _, _, weights = run
    recorded = load_file(str(FIXTURE / f"{name}.safetensors"))
    assert weights.keys() == recorded.keys() and len(weights) > 4
    for key, tensor in recorded.items():
        torch.testing.assert_close(weights[key], tensor, **WEIGHTS, msg=lambda m, key=key: f"{key}: {m}")
