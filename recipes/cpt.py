"""Continued pretraining: next-token prediction on raw domain text, packed into full `max_length` sequences.

    python recipes/cpt.py --config configs/smollm2-135m/cpt.yaml [--max_steps 5] [--load_in_4bit true]

The same TRL SFTTrainer as recipes/sft.py, on a `text` column with `packing: true` (set in the YAML): no chat
template, loss on every token. Only the stage name and the expected column differ, so the SFT recipe's `main` runs it.
"""

from sft import main
from trl import ModelConfig, ScriptArguments, SFTConfig

from rlhf_recipes import cli

if __name__ == "__main__":
    cli.run(lambda: main(*cli.parse_config((ScriptArguments, SFTConfig, ModelConfig)), stage="cpt"))
