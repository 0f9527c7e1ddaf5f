"""Continued pretraining: next-token prediction on raw domain text, packed into full `max_length` sequences.

    python recipes/cpt.py --config configs/smollm2-135m/cpt.yaml [--max_steps 5] [--load_in_4bit true]

TRL's SFTTrainer on a `text` column with `packing: true` (set in the YAML): no chat template, loss on every token,
documents joined with EOS between them and cut into full rows, so no step is spent on padding.
"""

from rlhf_recipes import stages  # first: it quiets a notice bitsandbytes logs when trl imports it

# isort: split
from transformers import set_seed
from trl import ModelConfig, ScriptArguments, SFTConfig, SFTTrainer, get_peft_config

from rlhf_recipes.models import load_tokenizer
from rlhf_recipes.train import common

STAGE = stages.get("cpt")


def main(script_args: ScriptArguments, training_args: SFTConfig, model_args: ModelConfig) -> dict:
    set_seed(training_args.seed)  # LoRA's A matrices start random

    # Model: a Hub id, a folder or the embedded default
    model_path = common.prepare_model(model_args.model_name_or_path, STAGE)
    training_args.model_init_kwargs = common.model_init_kwargs(model_args)

    # Data: {"text": str} documents
    train_dataset, eval_dataset = common.load_splits(script_args, training_args, STAGE)

    # Trainer
    trainer = SFTTrainer(
        model=model_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=load_tokenizer(model_path),
        peft_config=get_peft_config(model_args),
    )
    return common.train_and_save(trainer, STAGE, model_args, script_args, training_args)


if __name__ == "__main__":
    stages.run_recipe(STAGE, main)
