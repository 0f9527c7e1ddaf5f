"""TRL's own PPO example setup (examples/scripts/ppo/ppo.py of TRL v1.12), as the baseline for the PPO benchmarks.

    make bench-trl112-env   # once: .venv-trl112, the pinned stack with trl 1.12.0 (1.13 removed PPOTrainer)
    .venv-trl112/bin/python -m bench.trl_ppo_example --policy SFT_FOLDER --reward REWARD_FOLDER \
        --dataset data/demo/prompts --total_episodes 16 --per_device_train_batch_size 4 --gradient_accumulation_steps 2

The benches run it in a fresh process of that environment through `harness.run_baseline("trl-ppo-example", ARGV,
LOG)`, which records the seconds of `train()`, the episodes and the process's peak RSS. This is the one module of
the repository that imports `trl.experimental.ppo`.

What TRL's example does, done the same way here:
- policy: AutoModelForCausalLM from the SFT path, in the checkpoint's own precision (no dtype, no quantization);
- value and reward models: two separate AutoModelForSequenceClassification(num_labels=1) from the reward path, in
  full precision; the value model is fully fine-tuned;
- reference: None with --use_peft (TRL disables the LoRA adapter), else a second full copy of the policy;
- TRL's PPOTrainer itself, unmodified (no autocast), with the example's settings: learning_rate 3e-6,
  num_ppo_epochs 1, num_mini_batches 1, missing_eos_penalty 1.0, response_length 53 and no stop token, TRL's
  defaults for everything else (kl_coef 0.05, temperature 0.7, local_rollout_forward_batch_size 64,
  num_sample_generations 10). Batch sizes, episodes and response length come from the command line so that a
  benchmark can match another setup's.

Where it departs from the example, for a like-for-like comparison with recipes/ppo.py: the prompts are the demo's
chat prompts, tokenized with the chat template up to the assistant's turn as recipes/ppo.py does, and the tokenizer pads with a token
the model already has (TRL adds a new "[PAD]" for Pythia, which would sit outside SmolLM2's embedding matrix). With
`--use_peft` the benches pass the LoRA shape of the setup they compare with (`--lora_r`, `--lora_alpha`,
`--lora_target_modules`), so both train the same adapter. The output folder is a temporary one, not
removed-and-reused as in the example. On a machine without a GPU it sets `use_cpu`, as the example needs `--use_cpu`
there (PPOConfig's default `bf16: true` refuses a CPU otherwise; TRL's PPOTrainer never autocasts, so the run is
float32 either way).
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from bench import REPO


def trainer_class():
    """TRL 1.12's PPOTrainer (the harness times its `train`); only in the TRL 1.12 environment."""
    from trl.experimental.ppo import PPOTrainer

    return PPOTrainer


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", required=True, help="SFT model folder or Hub id (TRL's sft_model_path)")
    parser.add_argument("--reward", required=True, help="reward model folder or Hub id, full weights")
    parser.add_argument("--dataset", default=str(REPO / "data" / "demo" / "prompts"), help="prompts folder")
    parser.add_argument("--total_episodes", type=int, default=16)
    parser.add_argument("--per_device_train_batch_size", type=int, default=4)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=2)
    parser.add_argument("--response_length", type=int, default=53)
    parser.add_argument("--num_ppo_epochs", type=int, default=1)
    parser.add_argument("--num_sample_generations", type=int, default=10)
    parser.add_argument("--use_peft", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--lora_r", type=int, default=16, help="with --use_peft (TRL's ModelConfig default)")
    parser.add_argument("--lora_alpha", type=int, default=32, help="with --use_peft (TRL's ModelConfig default)")
    parser.add_argument(
        "--lora_target_modules", nargs="+", default=None, help="with --use_peft (default: peft's, q_proj v_proj)"
    )
    parser.add_argument("--output_dir", default=None, help="default: a temporary folder")
    return parser.parse_args(argv)


def tokenize(dataset, tokenizer):
    """`{"prompt": [messages]}` rows -> `{"input_ids"}` up to the assistant's generation prompt (TRL's collator pads)."""

    def ids(row):
        rendered = tokenizer.apply_chat_template(
            row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return {"input_ids": list(rendered["input_ids"])}

    return dataset.map(ids, remove_columns=dataset.column_names)


def main(argv: list[str] | None = None):
    args = parse_args(argv)
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from trl import ModelConfig, get_peft_config
    from trl.experimental.ppo import PPOConfig

    from rlhf_recipes.models import load_tokenizer

    output_dir = args.output_dir or tempfile.mkdtemp(prefix="trl-ppo-example-")
    training_args = PPOConfig(
        output_dir=output_dir,
        learning_rate=3e-6,
        num_ppo_epochs=args.num_ppo_epochs,
        num_mini_batches=1,
        missing_eos_penalty=1.0,
        response_length=args.response_length,
        total_episodes=args.total_episodes,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        num_sample_generations=args.num_sample_generations,
        report_to="none",
        save_strategy="no",
        use_cpu=not torch.cuda.is_available(),  # what `--use_cpu` does on a CPU machine (bf16's default needs it)
    )
    model_args = ModelConfig(
        model_name_or_path=args.policy, use_peft=args.use_peft, lora_r=args.lora_r, lora_alpha=args.lora_alpha,
        lora_target_modules=args.lora_target_modules,
    )  # fmt: skip

    # Model & tokenizer, as in the example
    tokenizer = load_tokenizer(args.policy, padding_side="left")
    value_model = AutoModelForSequenceClassification.from_pretrained(args.reward, num_labels=1)
    reward_model = AutoModelForSequenceClassification.from_pretrained(args.reward, num_labels=1)
    policy = AutoModelForCausalLM.from_pretrained(args.policy)
    peft_config = get_peft_config(model_args)
    ref_policy = None if peft_config else AutoModelForCausalLM.from_pretrained(args.policy)

    # Dataset: the train split; the test split (or the last rows) for TRL's sample generations
    dataset = load_dataset(args.dataset)
    train_dataset = tokenize(dataset["train"], tokenizer)
    eval_dataset = tokenize(dataset["test"], tokenizer) if "test" in dataset else train_dataset

    trainer = trainer_class()(
        args=training_args,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_policy,
        reward_model=reward_model,
        value_model=value_model,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=peft_config,
    )
    trainer.train()
    trainer.save_model(output_dir)
    return trainer


if __name__ == "__main__":
    main(sys.argv[1:])
