"""Supervised fine-tuning: conversations rendered with the chat template, loss on assistant tokens only.

    python recipes/sft.py --config configs/smollm2-135m/sft.yaml [--max_steps 5] [--use_peft false]

SmolLM2's chat template has no `{% generation %}` markers, so `load_tokenizer` swaps in a training template that
renders byte-identically and marks assistant turns (end-of-turn token included). Before training, every row is
rendered and measured: a conversation that `max_length` would leave with no assistant token stops the run.
"""

from rlhf_recipes import stages  # first: it quiets a notice bitsandbytes logs when trl imports it

# isort: split
from transformers import set_seed
from trl import ModelConfig, ScriptArguments, SFTConfig, SFTTrainer, get_peft_config

from rlhf_recipes.models import load_tokenizer
from rlhf_recipes.train import common, sft

STAGE = stages.get("sft")


def main(script_args: ScriptArguments, training_args: SFTConfig, model_args: ModelConfig) -> dict:
    set_seed(training_args.seed)  # LoRA's A matrices start random

    # Model: a Hub id, a folder, the embedded default, or an earlier stage's output (its adapter merged in once)
    model_path = common.prepare_model(model_args.model_name_or_path, STAGE)
    tokenizer = load_tokenizer(model_path)
    training_args.model_init_kwargs = common.model_init_kwargs(model_args)

    # Data: {"messages": [...]} conversations; rows left without loss tokens by max_length are counted first
    train_dataset, eval_dataset = common.load_splits(script_args, training_args, STAGE)
    sft.check_loss_tokens(train_dataset, tokenizer, training_args, script_args.dataset_name)

    # Trainer
    trainer = SFTTrainer(
        model=model_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    return common.train_and_save(trainer, STAGE, model_args, script_args, training_args)


if __name__ == "__main__":
    stages.run_recipe(STAGE, main)
