"""The main job: data -> continued pretraining -> SFT -> reward model -> PPO -> evaluation -> model card, one command.

    python recipes/pipeline.py --config configs/smollm2-135m/pipeline.yaml          # or: make demo
    python recipes/pipeline.py --config configs/smollm2-135m/pipeline.yaml --sft.learning_rate 1e-4
    python recipes/pipeline.py --config configs/smollm2-135m/pipeline.yaml --precision float32
    python recipes/pipeline.py --config configs/smollm2-135m/pipeline.yaml --model Qwen/Qwen2.5-0.5B-Instruct \
        --output_dir outputs/qwen2.5-0.5b
    python recipes/pipeline.py --config configs/smollm2-135m/pipeline.yaml --stages sft,reward --force

Each stage runs its own recipe in a fresh process (the command is printed; on a CPU machine forked from a launcher
that imported torch, transformers and TRL once) and logs to <output_dir>/logs/. Every
stage's command is parsed before the first one starts. Rerunning skips the stages whose config, overrides and
inputs are unchanged, reruns what changed and everything after it, and resumes an interrupted stage from its last
checkpoint. `--STAGE.KEY VALUE` (or `--set STAGE.KEY=VALUE`) overrides one key of one stage's YAML; `--precision
auto|bf16|float32` forces the compute precision of every stage; `--stages a,b` runs only those; `--force` reruns
them even when unchanged.
"""

from rlhf_recipes import stages
from rlhf_recipes.pipeline import PipelineConfig, launcher, run_pipeline, summary

STAGE = stages.get("pipeline")


def main(config: PipelineConfig, options: dict) -> list[dict]:
    launcher.wait_ready()  # its imports done before the pipeline measures this machine's matmul rate
    rows = run_pipeline(config, only=options["only"], force=options["force"])
    print("\n" + summary(config, rows))
    return rows


if __name__ == "__main__":
    import sys

    from rlhf_recipes import usage

    if not usage.requested(sys.argv[1:]):  # --help prints and exits in the parser: no launcher for it
        launcher.prestart()  # stages fork from it: its imports (~11 s) overlap the parsing of every stage's command
    stages.run_recipe(STAGE, main)  # parsed by the registry's pipeline stage (pipeline/spec.py's parse_argv)
