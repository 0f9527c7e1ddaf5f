"""KTO: the SFT policy trained on unpaired feedback (a thumbs up or down per answer: `label` true or false), against
the SFT model as reference (with LoRA: the policy with its adapter disabled, so no second copy is held).

    python recipes/kto.py --config configs/smollm2-135m/kto.yaml [--max_steps 2]

`model_name_or_path` is the SFT output; `dataset_name` holds (prompt, completion, label) rows: the data stage's
`unpaired` folder (the demo's preference pairs read as one good and one bad answer each), thumbs up and down exported
from the comparison store (recipes/label.py, `unpaired_dir`), or a file of your own. `load_in_4bit` trains QLoRA.
Evaluated like every RL stage: sampled answers to held-out prompts, scored by the reward model (which KTO never saw)
and by the judge.
"""

from rlhf_recipes import stages  # first: it quiets a notice bitsandbytes logs when trl imports it

# isort: split
from trl import KTOConfig, KTOTrainer, ModelConfig, ScriptArguments, get_peft_config, get_quantization_config

from rlhf_recipes.errors import UserError
from rlhf_recipes.models import load_tokenizer
from rlhf_recipes.train import common, rl

STAGE = stages.get("kto")
KEY_SETTINGS = ("beta", "loss_type", "desirable_weight", "undesirable_weight", "max_length", "learning_rate",
                "num_train_epochs", "max_steps")  # fmt: skip


def main(script_args: ScriptArguments, training_args: KTOConfig, model_args: ModelConfig) -> dict:
    from transformers import set_seed

    set_seed(training_args.seed)  # LoRA's A matrices start random
    if training_args.loss_type == "kto" and training_args.per_device_train_batch_size < 2:  # before any model loads
        raise UserError(
            "per_device_train_batch_size is 1, but KTO estimates its KL term from the other answers of the same "
            "batch: set it to 2 or more (gradient_accumulation_steps keeps the effective batch)."
        )

    # Model: the SFT policy; TRL loads it from the path with these arguments (4-bit through quantization_config)
    model_path = common.prepare_model(model_args.model_name_or_path, STAGE)
    tokenizer = load_tokenizer(model_path)
    init_kwargs = common.model_init_kwargs(model_args)
    init_kwargs.pop("quantization_config", None)  # KTOTrainer takes it as its own argument
    training_args.model_init_kwargs = init_kwargs

    # Data: {"prompt", "completion", "label"} rows, conversational or plain text
    train_dataset, eval_dataset = common.load_splits(script_args, training_args, STAGE)

    # Trainer
    trainer = KTOTrainer(
        model=model_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
    )
    extra = rl.algorithm("kto", training_args, KEY_SETTINGS)
    return common.train_and_save(trainer, STAGE, model_args, script_args, training_args, extra=extra)


if __name__ == "__main__":
    stages.run_recipe(STAGE, main)
