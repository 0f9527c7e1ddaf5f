"""RLHF with GRPO: the SFT policy answers each prompt `num_generations` times, the reward model scores every answer,
and each answer's advantage is its reward against its group's mean (no value model).

    python recipes/grpo.py --config configs/smollm2-135m/grpo.yaml [--max_steps 2]

`model_name_or_path` is the SFT output (with `beta` > 0 the KL reference is it with the LoRA adapter disabled);
`reward_model_path` is the reward stage's output, read through the project's one scoring path (rlhf_recipes/scoring.py)
as a reward function, so the reward is the one the reward model learned. `load_in_4bit` trains QLoRA.
"""

from rlhf_recipes import stages  # first: it quiets a notice bitsandbytes logs when trl imports it

# isort: split
from trl import GRPOTrainer, ModelConfig, ScriptArguments, get_peft_config

from rlhf_recipes.train import online
from rlhf_recipes.train.online import GRPOConfig

STAGE = stages.get("grpo")
KEY_SETTINGS = ("num_generations", "beta", "loss_type", "scale_rewards", "max_completion_length", "temperature",
                "learning_rate", "max_steps", "epsilon", "missing_eos_penalty")  # fmt: skip


def main(script_args: ScriptArguments, training_args: GRPOConfig, model_args: ModelConfig) -> dict:
    # Models and data: the SFT policy, the reward model as a reward function, {"prompt": [messages]} rows
    run = online.prepare(STAGE, script_args, training_args, model_args, "GRPO")

    # Trainer
    trainer = GRPOTrainer(
        model=run.policy,
        reward_funcs=[run.reward],
        args=training_args,
        train_dataset=run.train_dataset,
        eval_dataset=run.eval_dataset,
        processing_class=run.tokenizer,
        peft_config=get_peft_config(model_args),
    )
    return online.train_and_save(trainer, STAGE, run, KEY_SETTINGS, script_args, training_args, model_args)


if __name__ == "__main__":
    stages.run_recipe(STAGE, main)
