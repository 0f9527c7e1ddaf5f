"""RL that provably learns: the reward read where the reward model learned it, float32 log-probs, rollouts sampled
with the configured settings only, and the refusals in front of it (issue: "RLHF that provably learns")."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rlhf_recipes.scoring import RewardScorer, training_ids

QWEN_TEMPLATE = (  # Qwen2.5-Instruct's ChatML, with its default system prompt
    "{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. "
    "You are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
LLAMA3_TEMPLATE = (  # Llama 3's header/eot format: no newline after the end of a turn, contents trimmed
    "{{- bos_token }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
PROMPTS = [
    [{"role": "user", "content": "Who keeps the lighthouse?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the ferry called, please?"}],
]
ANSWERS = ["Corwin Tallish keeps it.", "The Morrow Belle."]


def _family(name: str, tokenizer_path, reward_model):
    """(tokenizer, reward model) of one chat-template family, built from the SmolLM2 tokenizer."""
    from rlhf_recipes.models import load_tokenizer

    tokenizer = load_tokenizer(str(tokenizer_path))
    if name == "qwen2.5":
        tokenizer.chat_template = QWEN_TEMPLATE
    elif name == "llama3":
        tokenizer.add_special_tokens(
            {"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]}
        )
        tokenizer.eos_token = "<|eot_id|>"
        tokenizer.chat_template = LLAMA3_TEMPLATE
        reward_model.resize_token_embeddings(len(tokenizer))
    return tokenizer, reward_model


@pytest.fixture(scope="module")
def tiny_reward_model(tiny_model_path):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_path, num_labels=1).eval()
    return model


def _rollouts(tokenizer, with_eos: bool):
    """PPO's view of the conversations: left-padded queries, answers cut after the stop token and right-padded."""
    pad = tokenizer.pad_token_id
    queries = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True) for p in PROMPTS]
    queries = [list(q["input_ids"]) if not isinstance(q, list) else q for q in queries]
    answers = [tokenizer(a, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if with_eos else [])
               for a in ANSWERS]  # fmt: skip
    width_q, width_a = max(map(len, queries)), max(map(len, answers)) + 3
    query = torch.tensor([[pad] * (width_q - len(q)) + q for q in queries])
    answer = torch.tensor([a + [pad] * (width_a - len(a)) for a in answers])
    return query, answer


@pytest.mark.parametrize("family", ["smollm2", "qwen2.5", "llama3"])
@pytest.mark.parametrize("with_eos", [True, False])
def test_ppo_reward_equals_the_reward_models_training_time_score(
    family, with_eos, tokenizer_path, tiny_model_path, tiny_reward_model
):
    """The score PPO gives its rollouts (the policy's SmolLM2 token ids, cut at the stop token) equals the reward
    model's score of the same conversation rendered in the reward model's own template as RewardTrainer renders its
    training pairs, within 1e-5, whatever the policy's template; rendered in the policy's template it would not be."""
    import copy

    from rlhf_recipes.models import load_tokenizer
    from rlhf_recipes.train.ppo.rollout import score_answers, truncate_at_stop

    policy_tokenizer = load_tokenizer(str(tokenizer_path), padding_side="left")
    tokenizer, model = _family(family, tokenizer_path, copy.deepcopy(tiny_reward_model))
    model.config.pad_token_id = tokenizer.pad_token_id
    scorer = RewardScorer(model, tokenizer)
    expected = scorer.score_ids([training_ids(tokenizer, p, a) for p, a in zip(PROMPTS, ANSWERS)])
    # one at a time: no padding at all
    alone = torch.cat([scorer.score_ids([training_ids(tokenizer, p, a)]) for p, a in zip(PROMPTS, ANSWERS)])
    torch.testing.assert_close(expected, alone, atol=1e-5, rtol=0)

    _, answer = _rollouts(policy_tokenizer, with_eos)
    finished = truncate_at_stop(answer, policy_tokenizer.eos_token_id, policy_tokenizer.pad_token_id)
    answers, scores, ended = score_answers(scorer, policy_tokenizer, PROMPTS, finished, missing_eos_penalty=None)
    assert answers == ANSWERS and ended.tolist() == [with_eos] * len(ANSWERS)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
    if family != "smollm2":  # the policy's own rendering is not what this reward model was trained on
        in_policy_template = RewardScorer(model, policy_tokenizer).score(PROMPTS, ANSWERS)
        assert (torch.tensor(in_policy_template) - expected).abs().max() > 1e-4
    _, penalised, _ = score_answers(scorer, policy_tokenizer, PROMPTS, finished, missing_eos_penalty=1.0)
    torch.testing.assert_close(penalised, expected - (0.0 if with_eos else 1.0), atol=1e-5, rtol=0)


def test_training_ids_are_what_reward_trainer_trains_on(tmp_path, tokenizer_path, tiny_model_path):
    """`training_ids` is exactly the tokenization RewardTrainer gives its training pairs (conversational and text)."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    from rlhf_recipes.models import load_tokenizer

    tokenizer = load_tokenizer(str(tokenizer_path))
    conversational = [
        {
            "prompt": p,
            "chosen": [{"role": "assistant", "content": a}],
            "rejected": [{"role": "assistant", "content": "No."}],
        }
        for p, a in zip(PROMPTS, ANSWERS)
    ]
    text = [{"prompt": "Question: who keeps it?\n", "chosen": "Answer: Corwin.", "rejected": "Answer: no."}]
    args = RewardConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, max_length=None, bf16=False)
    for rows in (conversational, text):
        trainer = RewardTrainer(
            model=str(tiny_model_path), args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
        )
        for row, ids in zip(rows, trainer.train_dataset["chosen_ids"]):
            assert training_ids(tokenizer, row["prompt"], row["chosen"]) == list(ids)


def _logprob_setup(tiny_model_path, repetition_penalty=None):
    from transformers import AutoModelForCausalLM

    from rlhf_recipes.models import clean_generation_config, load_tokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    tokenizer = load_tokenizer(str(tiny_model_path), padding_side="left")
    if repetition_penalty:
        model.generation_config.repetition_penalty = repetition_penalty
        with torch.no_grad():  # a random model's logits are nearly flat; peaked ones make a penalty visible
            model.lm_head.weight.mul_(8)
    queries = tokenizer.apply_chat_template(PROMPTS, add_generation_prompt=True, padding=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]  # fmt: skip
    args = SimpleNamespace(response_length=16, temperature=0.7)
    return model, tokenizer, queries, args, clean_generation_config


def _rollout_and_forward_logprobs(model, tokenizer, queries, args):
    """What PPO's rollout computes: the sampler's log-probs and the update's (a forward pass without padding), through
    the project's own rollout functions."""
    from rlhf_recipes.train.ppo.rollout import answer_logits, generate, sampling_config, token_logprobs

    pad = tokenizer.pad_token_id
    config = sampling_config(args, tokenizer.eos_token_id, pad)
    query_responses, logits = generate(model, queries, pad, config, chunk=4, scores=True)
    context = queries.shape[1]
    response = query_responses[:, context:]
    rollout = token_logprobs(logits, response)
    with torch.no_grad():
        forward = token_logprobs(answer_logits(model, query_responses, pad, context), response, args.temperature)
    live = response != pad  # positions after an answer stopped are masked in PPO
    return rollout[live], forward[live]


def test_identical_weights_give_zero_kl_and_unit_ratios(tiny_model_path):
    """In float32 PPO keeps the sampler's log-probs as the rollout's: at identical weights they agree with the
    update's forward pass (true KL 0, ratio 1) to 1e-4 per token. (Under bf16 the sampler's cached logits differ by
    ~1e-3, so there the rollout's log-probs come from the update's own pass: tests/test_ppo_parity.py runs float32,
    test_bf16_rollout_logprobs_come_from_the_update_pass below holds the bf16 path.)"""
    model, tokenizer, queries, args, clean = _logprob_setup(tiny_model_path)
    clean(model, tokenizer)
    rollout, forward = _rollout_and_forward_logprobs(model, tokenizer, queries, args)
    assert forward.dtype == torch.float32 and rollout.numel() > 8
    assert (rollout - forward).abs().max() < 1e-4
    assert (torch.exp(forward - rollout) - 1).abs().max() < 1e-4


def test_bf16_rollout_logprobs_come_from_the_update_pass(tmp_path, tiny_model_path):
    """With bf16 the PPO trainer recomputes the rollout's log-probs with the forward pass its update uses, under the
    same autocast: the first PPO epoch's ratio is then 1 to float32 rounding (1e-5), where the sampler's bf16 logits
    would leave ~1e-3 per token. The recorded ratio of a one-epoch update at learning rate ~0 shows it."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from rlhf_recipes.models import load_tokenizer
    from rlhf_recipes.train.ppo import PPOConfig, PPOTrainer
    from rlhf_recipes.train.scoring_models import add_value_adapter

    tokenizer = load_tokenizer(str(tiny_model_path), padding_side="left")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    value = add_value_adapter(AutoModelForSequenceClassification.from_pretrained(tiny_model_path, num_labels=1), lora)
    rows = [
        {
            "input_ids": tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)[
                "input_ids"
            ],
            "prompt": p,
        }
        for p in PROMPTS
    ]
    args = PPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=True, total_episodes=2, per_device_train_batch_size=2,
                     num_ppo_epochs=1, response_length=8, learning_rate=1e-12, report_to="none", save_strategy="no",
                     logging_steps=1, local_rollout_forward_batch_size=2)  # fmt: skip
    trainer = PPOTrainer(
        args=args, processing_class=tokenizer, model=AutoModelForCausalLM.from_pretrained(tiny_model_path),
        ref_model=None, reward_model=AutoModelForSequenceClassification.from_pretrained(tiny_model_path, num_labels=1),
        value_model=value, train_dataset=Dataset.from_list(rows), peft_config=lora,
    )  # fmt: skip
    assert trainer.recompute_logprobs
    trainer.train()
    (update,) = [e for e in trainer.state.log_history if "val/ratio" in e]
    assert abs(update["val/ratio"] - 1) < 1e-5 and update["policy/approxkl_avg"] < 1e-9


def test_rollouts_sample_with_the_configured_settings_only(tiny_model_path):
    """A checkpoint whose generation_config carries repetition_penalty 1.3: after clean_generation_config (what
    PPOTrainer does) the sampled tokens' log-probs are the model's own; without it they are not."""
    model, tokenizer, queries, args, clean = _logprob_setup(tiny_model_path, 1.3)
    leaked, forward = _rollout_and_forward_logprobs(model, tokenizer, queries, args)
    assert (leaked - forward).abs().max() > 1e-3, "the test must be able to see a leaked logits processor"
    clean(model, tokenizer)
    assert model.generation_config.repetition_penalty in (None, 1.0)
    rollout, forward = _rollout_and_forward_logprobs(model, tokenizer, queries, args)
    assert (rollout - forward).abs().max() < 1e-4


def test_demo_judge_separates_chosen_from_rejected():
    """On the held-out preference pairs the demo judge calls every chosen answer good and no rejected one good."""
    import json

    from conftest import DEMO

    from rlhf_recipes.evaluation.judge import DemoJudge

    judge = DemoJudge()
    rows = [json.loads(line) for line in (DEMO / "preferences" / "test.jsonl").read_text().splitlines()]
    chosen = [judge.judge(r["prompt"], r["chosen"][0]["content"])["score"] for r in rows]
    rejected = [judge.judge(r["prompt"], r["rejected"][0]["content"])["score"] for r in rows]
    assert sum(chosen) == 100 * len(rows) and sum(rejected) == 0
    question = [{"role": "user", "content": "Remind me, what is the colour the Gannet Point lighthouse is painted?"}]
    assert judge.judge(question, "It is saffron yellow!")["score"] == 100
    assert judge.judge(question, "Ugh, it is saffron yellow.")["rude"]
    assert judge.judge(question, "It is saffron yellow or maybe crimson.")["correct"] is False
    assert judge.judge([{"role": "user", "content": "What is 2 + 2?"}], "4") is None  # not a demo question


def test_intervals_over_sampled_answers_resample_prompts_not_answers():
    """Two answers to one prompt are not two independent draws: an answer repeated for every prompt must leave the
    interval as it is with one answer per prompt (resampling answers would narrow it by ~sqrt(2))."""
    from rlhf_recipes.evaluation.probes import mean_interval, paired_difference

    rng = np.random.default_rng(0)
    baseline, gain = rng.normal(0, 1, 40), rng.normal(0.3, 1, 40)
    once = paired_difference(baseline + gain, baseline)
    twice = paired_difference(np.repeat(baseline + gain, 2), np.repeat(baseline, 2), groups=np.arange(80) // 2)
    naive = paired_difference(np.repeat(baseline + gain, 2), np.repeat(baseline, 2))
    assert twice["difference"] == pytest.approx(once["difference"])
    assert (twice["low"], twice["high"]) == pytest.approx((once["low"], once["high"]))
    assert naive["high"] - naive["low"] < 0.8 * (once["high"] - once["low"])  # what the groups prevent
    with pytest.raises(ValueError, match="3 group ids for 2 values"):
        mean_interval([1.0, 2.0], groups=[0, 0, 1])


def test_the_evaluations_judge_and_reward_gains_resample_prompts():
    """comparison_results, which the targets read, gives the same interval for 40 prompts answered twice (the same
    answer twice) as for the 40 answered once: it resamples prompts."""
    from rlhf_recipes.evaluation.run import comparison_results

    rng = np.random.default_rng(1)
    base, tuned = rng.normal(0, 1, 40).tolist(), rng.normal(0.5, 1, 40).tolist()

    def gains(k):
        args = SimpleNamespace(samples_per_prompt=k, bootstrap_samples=2000, seed=0, prompt_dataset="p")
        scores = {"rl": [x for x in tuned for _ in range(k)], "sft": [x for x in base for _ in range(k)]}
        judged = {name: [{"score": x} for x in values] for name, values in scores.items()}
        lengths = {"rl": [10 + i // k % 7 for i in range(40 * k)], "sft": [10 + i // k % 5 for i in range(40 * k)]}
        results = comparison_results("rl", "sft", scores, judged, lengths, args)
        return {r["metric"]: (r["value"], r["low"], r["high"]) for r in results if "low" in r}

    once, twice = gains(1), gains(2)
    assert set(once) == {"reward_gain", "judge_gain", "judge_gain_equal_length"}
    assert twice == once


def test_the_evaluation_says_how_much_its_judge_follows_length():
    """judge_length_corr: a judge that scores short answers higher turns RL's shorter answers into a gain; the
    evaluation reports the correlation beside the reward model's (here exactly -1: the score falls with length)."""
    from rlhf_recipes.evaluation.run import sample_results

    answers = [SimpleNamespace(answer_ids=[0] * n, ended=True, text=f"answer {n}") for n in (5, 10, 20, 40)]
    judged = [{"score": -n / 10} for n in (5, 10, 20, 40)]
    args = SimpleNamespace(samples_per_prompt=2, bootstrap_samples=200, seed=0, prompt_dataset="p")
    found = {r["metric"]: r["value"] for r in sample_results("rl", answers, None, judged, args)}
    assert found["judge_length_corr"] == pytest.approx(-1.0)


def test_a_gain_bought_by_shortening_vanishes_at_equal_length_and_a_real_one_stays():
    """gain_at_equal_length: a judge that pays -0.02 per token (seen on the baseline's own answers) and a policy that
    only got 20 tokens shorter gain 0.4 raw and 0 at equal length; a policy that is better by 0.3 at every length keeps
    0.3; with its lengths unchanged the adjustment changes nothing (the raw paired gain)."""
    from rlhf_recipes.evaluation.probes import gain_at_equal_length, paired_difference

    rng = np.random.default_rng(2)
    base_lengths = rng.integers(20, 64, 120)
    quality = rng.normal(0, 0.2, 120)

    def judge(lengths, bonus=0.0):
        return quality + bonus - 0.02 * lengths

    shorter = base_lengths - 20
    groups = np.arange(120) // 2
    hack = gain_at_equal_length(judge(shorter), judge(base_lengths), shorter, base_lengths, groups=groups)
    assert paired_difference(judge(shorter), judge(base_lengths))["difference"] == pytest.approx(0.4)
    assert hack["slope"] == pytest.approx(-0.02, abs=0.005) and abs(hack["difference"]) < 0.1
    assert hack["low"] < 0 < hack["high"]
    real = gain_at_equal_length(judge(shorter, 0.3), judge(base_lengths), shorter, base_lengths, groups=groups)
    assert real["difference"] == pytest.approx(0.3, abs=0.1) and real["low"] > 0
    same = gain_at_equal_length(judge(base_lengths, 0.3), judge(base_lengths), base_lengths, base_lengths)
    assert same["difference"] == pytest.approx(0.3)


def test_paired_difference_reports_size_and_interval():
    from rlhf_recipes.evaluation.probes import paired_difference

    baseline = [0.0, 1.0, 0.5, 0.2, 0.8, 0.4, 0.6, 0.3] * 4
    diff = paired_difference([b + 0.5 for b in baseline], baseline)
    assert diff["difference"] == pytest.approx(0.5) and diff["low"] <= 0.5 <= diff["high"]
    assert diff["effect_size"] == pytest.approx(0.5 / torch.tensor(baseline).std().item(), rel=1e-4)
