"""Reward modelling: a sequence-classification head on (prompt, chosen, rejected) pairs, with the pairwise loss.

    python recipes/reward.py --config configs/smollm2-135m/reward.yaml [--max_steps 5] [--load_in_4bit true]

With `use_peft` the LoRA adapter is a `SEQ_CLS` one (`lora_task_type: SEQ_CLS`), which also trains and saves the new
`score` head. RewardTrainer logs pairwise accuracy (`eval_accuracy`) on the test split. Pairs longer than
`max_length` are counted before training (RewardTrainer drops them).
"""

from rlhf_recipes import stages  # first: it quiets a notice bitsandbytes logs when trl imports it

# isort: split
from transformers import set_seed
from trl import ModelConfig, ScriptArguments, get_peft_config, get_quantization_config

from rlhf_recipes.errors import UserError
from rlhf_recipes.models import load_tokenizer
from rlhf_recipes.train import common
from rlhf_recipes.train.reward import RewardConfig, RewardTrainer, check_lora_targets, check_pair_lengths

STAGE = stages.get("reward")


def main(script_args: ScriptArguments, training_args: RewardConfig, model_args: ModelConfig) -> dict:
    set_seed(training_args.seed)  # LoRA's A matrices and the new score head start random

    # Model: a causal LM (usually the SFT stage's output) that gets a one-output score head
    if model_args.use_peft and model_args.lora_task_type != "SEQ_CLS":
        raise UserError("reward models need `lora_task_type: SEQ_CLS` with `use_peft: true`; set it in the YAML.")
    model_path = common.prepare_model(model_args.model_name_or_path, STAGE)
    check_lora_targets(model_path, model_args)
    tokenizer = load_tokenizer(model_path)
    init_kwargs = common.model_init_kwargs(model_args)
    init_kwargs.pop("quantization_config", None)  # RewardTrainer takes it as its own argument
    training_args.model_init_kwargs = init_kwargs

    # Data: {"prompt", "chosen", "rejected"} pairs, conversational or plain text; pairs over max_length counted
    train_dataset, eval_dataset = common.load_splits(script_args, training_args, STAGE)
    check_pair_lengths(train_dataset, tokenizer, training_args, script_args.dataset_name)

    # Trainer
    trainer = RewardTrainer(
        model=model_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
    )
    return common.train_and_save(trainer, STAGE, model_args, script_args, training_args)


if __name__ == "__main__":
    stages.run_recipe(STAGE, main)
