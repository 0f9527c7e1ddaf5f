"""RLHF with online DPO: the SFT policy answers each prompt twice, the reward model ranks the two answers, and the
DPO loss moves the policy towards the preferred one, relative to the SFT reference (the adapter disabled).

    python recipes/online_dpo.py --config configs/smollm2-135m/online_dpo.yaml [--max_steps 2]

`model_name_or_path` is the SFT output; `reward_model_path` is the reward stage's output, read through the project's
one scoring path (rlhf_recipes/scoring.py) as a reward function. `load_in_4bit` trains QLoRA.
"""

from rlhf_recipes import stages  # first: it quiets a notice bitsandbytes logs when trl imports it

# isort: split
from trl import ModelConfig, ScriptArguments, get_peft_config

from rlhf_recipes.train import online
from rlhf_recipes.train.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

STAGE = stages.get("online_dpo")
KEY_SETTINGS = ("beta", "loss_type", "max_new_tokens", "temperature", "learning_rate", "max_steps",
                "missing_eos_penalty")  # fmt: skip


def main(script_args: ScriptArguments, training_args: OnlineDPOConfig, model_args: ModelConfig) -> dict:
    # Models and data: the SFT policy, the reward model as a reward function, {"prompt": [messages]} rows
    run = online.prepare(STAGE, script_args, training_args, model_args, "online DPO", penalty=False)

    # Trainer
    trainer = OnlineDPOTrainer(
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
