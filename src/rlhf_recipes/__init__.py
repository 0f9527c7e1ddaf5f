"""rlhf-recipes: ChatGPT-style training recipes on the Hugging Face stack (README.md; the stages: stages/)."""

from .cli import quiet_library_notices

quiet_library_notices()  # before trl imports bitsandbytes: its CPU-kernel notice is no part of a run's output
