"""DPO: the SFT policy trained directly on the preference pairs (no reward model, no sampling), its reference the
SFT model itself (with LoRA: the policy with its adapter disabled, so no second copy is held).

    python recipes/dpo.py --config configs/smollm2-135m/dpo.yaml [--max_steps 2]

`model_name_or_path` is the SFT output; `dataset_name` holds (prompt, chosen, rejected) pairs, the reward stage's
data. `load_in_4bit` trains QLoRA. Evaluated like every RL stage: sampled answers to held-out prompts, scored by the
reward model (which DPO never saw in training) and by the judge.
"""

from rlhf_recipes import stages  # first: it quiets a notice bitsandbytes logs when trl imports it

# isort: split
from trl import DPOConfig, DPOTrainer, ModelConfig, ScriptArguments, get_peft_config, get_quantization_config

from rlhf_recipes.models import load_tokenizer
from rlhf_recipes.train import common, rl

STAGE = stages.get("dpo")
KEY_SETTINGS = ("beta", "loss_type", "max_length", "learning_rate", "num_train_epochs", "max_steps")


def main(script_args: ScriptArguments, training_args: DPOConfig, model_args: ModelConfig) -> dict:
    from transformers import set_seed

    set_seed(training_args.seed)  # LoRA's A matrices start random

    # Model: the SFT policy; TRL loads it from the path with these arguments (4-bit through quantization_config)
    model_path = common.prepare_model(model_args.model_name_or_path, STAGE)
    tokenizer = load_tokenizer(model_path)
    init_kwargs = common.model_init_kwargs(model_args)
    init_kwargs.pop("quantization_config", None)  # DPOTrainer takes it as its own argument
    training_args.model_init_kwargs = init_kwargs

    # Data: {"prompt", "chosen", "rejected"} pairs, conversational or plain text
    train_dataset, eval_dataset = common.load_splits(script_args, training_args, STAGE)

    # Trainer
    trainer = DPOTrainer(
        model=model_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
    )
    extra = rl.algorithm("dpo", training_args, KEY_SETTINGS)
    return common.train_and_save(trainer, STAGE, model_args, script_args, training_args, extra=extra)


if __name__ == "__main__":
    stages.run_recipe(STAGE, main)
