"""Supervised fine-tuning: conversations rendered with the chat template, loss on assistant tokens only.

    python recipes/sft.py --config configs/smollm2-135m/sft.yaml [--max_steps 5] [--use_peft false]

SmolLM2's chat template has no `{% generation %}` markers, so `load_tokenizer` swaps in a training template that
renders byte-identically and marks assistant turns (end-of-turn token included); TRL raises if a sample's assistant
mask is empty.
"""

from transformers import set_seed
from trl import ModelConfig, ScriptArguments, SFTConfig, SFTTrainer, get_peft_config

from rlhf_recipes import cli, training
from rlhf_recipes.models import CAUSAL_LM, load_tokenizer


def main(script_args: ScriptArguments, training_args: SFTConfig, model_args: ModelConfig, stage: str = "sft") -> dict:
    set_seed(training_args.seed)  # LoRA's A matrices and a new score head start random

    # Model: a Hub id, a folder, the embedded default, or an earlier stage's output (its adapter merged in once)
    model_path = training.prepare_model(model_args.model_name_or_path, CAUSAL_LM)
    tokenizer = load_tokenizer(model_path)
    training_args.model_init_kwargs = training.model_init_kwargs(model_args)

    # Data: {"messages": [...]} conversations for SFT, {"text": str} documents for continued pretraining
    columns = (training_args.dataset_text_field,) if stage == "cpt" else ("messages",)
    train_dataset, eval_dataset = training.load_splits(script_args, training_args, columns=columns)

    # Trainer
    try:
        trainer = SFTTrainer(
            model=model_path,
            args=training_args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            peft_config=get_peft_config(model_args),
        )
    except RuntimeError as error:  # TRL's check that every rendered sample has assistant tokens to learn from
        if "no assistant tokens" not in str(error):
            raise
        raise cli.UserError(
            f"a conversation in {script_args.dataset_name} renders with an empty assistant mask (no assistant turn, or "
            "a chat template without {% generation %} markers); fix the data with recipes/prepare_data.py."
        ) from None
    return training.train_and_save(
        trainer,
        stage=stage,
        model_kind=CAUSAL_LM,
        model_args=model_args,
        script_args=script_args,
        training_args=training_args,
    )


if __name__ == "__main__":
    cli.run(lambda: main(*cli.parse_config((ScriptArguments, SFTConfig, ModelConfig))))
