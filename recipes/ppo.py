"""RLHF with PPO: the SFT policy answers prompts, the reward model scores them, PPO updates the policy.

    python recipes/ppo.py --config configs/smollm2-135m/ppo.yaml [--total_episodes 16]

`model_name_or_path` is the SFT output (policy, and reference with the LoRA adapter disabled); `reward_model_path`
is the reward stage's output (reward model, and the value model's initialisation). With `use_peft` the value model
trains through LoRA too; `load_in_4bit`, `reward_model_load_in_4bit` and `value_model_load_in_4bit` put the policy's,
the reward model's and the value model's frozen weights in 4-bit. PPO is the project's own loop
(rlhf_recipes/train/ppo/, one update top to bottom in loop.py): the reward is read as the reward model learned it, in
its own chat template (rlhf_recipes/scoring.py), log-probs are float32, and a killed run resumes from its last
checkpoint.
"""

from rlhf_recipes import stages  # first: it quiets a notice bitsandbytes logs when trl imports it

# isort: split
from transformers import AutoModelForCausalLM, set_seed
from trl import ModelConfig, ScriptArguments, get_peft_config

from rlhf_recipes.models import load_tokenizer
from rlhf_recipes.train import common, rl
from rlhf_recipes.train.ppo import PPOConfig, PPOTrainer, final_metrics, tokenize_prompts
from rlhf_recipes.train.scoring_models import add_value_adapter, check_model_options, load_scoring_model

STAGE = stages.get("ppo")
KEY_SETTINGS = ("kl_coef", "kl_estimator", "response_length", "temperature", "total_episodes", "num_ppo_epochs",
                "learning_rate", "cliprange", "vf_coef", "missing_eos_penalty")  # fmt: skip


def main(script_args: ScriptArguments, training_args: PPOConfig, model_args: ModelConfig) -> dict:
    set_seed(training_args.seed)  # LoRA's A matrices start random
    check_model_options(training_args, model_args)
    accuracy = rl.check_reward_model(training_args.reward_model_path, training_args.min_reward_accuracy)

    policy_path = common.prepare_model(model_args.model_name_or_path, STAGE)
    reward_path = common.prepare_model(training_args.reward_model_path, STAGE, key="reward_model_path")
    tokenizer = load_tokenizer(policy_path, padding_side="left")
    reward_tokenizer = load_tokenizer(reward_path)  # the reward model scores in its own chat template

    # Data, before any model loads: {"prompt": [messages]} rows; those too long for the context left after the
    # answer are dropped and counted; the rest tokenized up to the assistant's turn
    training_args.eval_strategy = "no"
    train_dataset, _ = common.load_splits(script_args, training_args, STAGE)
    rl.check_prompts(train_dataset, "PPO")
    context = rl.context_length(policy_path)
    room = context - training_args.response_length if context else None
    train_dataset = rl.fit_prompts(train_dataset, tokenizer, room, training_args.max_dropped_share, "PPO")
    train_dataset = tokenize_prompts(train_dataset, tokenizer, training_args.dataset_num_proc)

    # Models: policy (+ adapter-disabled reference) from SFT; reward and value models from the reward stage
    init_kwargs = common.model_init_kwargs(model_args)
    policy = AutoModelForCausalLM.from_pretrained(policy_path, **init_kwargs)
    peft_config = get_peft_config(model_args)
    ref_policy = None if peft_config else AutoModelForCausalLM.from_pretrained(policy_path, **init_kwargs)
    reward_model = load_scoring_model(reward_path, init_kwargs, model_args, training_args.reward_model_load_in_4bit)
    value_model = load_scoring_model(reward_path, init_kwargs, model_args, training_args.value_model_load_in_4bit)
    if peft_config:
        value_model = add_value_adapter(value_model, peft_config)  # LoRA + score head train; its base stays frozen

    # Trainer
    trainer = PPOTrainer(
        args=training_args,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_policy,
        reward_model=reward_model,
        value_model=value_model,
        train_dataset=train_dataset,
        peft_config=peft_config,
        reward_processing_class=reward_tokenizer,
    )
    extra = rl.algorithm("ppo", training_args, KEY_SETTINGS, accuracy)
    return common.train_and_save(trainer, STAGE, model_args, script_args, training_args, final_metrics, extra)


if __name__ == "__main__":
    stages.run_recipe(STAGE, main)
