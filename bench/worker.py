"""One timed training run in a fresh process, for bench/run.py: a plain-TRL baseline or this project's recipe.

    python bench/worker.py TASK SETUP OUT.json -- [recipe or `trl` command-line arguments]

TASK is sft, reward or ppo; SETUP is `trl` (TRL's own script: `trl sft` / `trl reward`, or TRL's PPO example setup in
bench/trl_ppo_example.py) or `ours` (recipes/<task>.py). Both run unchanged; the only instrumentation is a wrapper
around `Trainer.train` / `PPOTrainer.train` that records its wall time, and the process's peak RSS at exit.
"""

from __future__ import annotations

import functools
import json
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECORD: dict = {}


def timed(train):
    @functools.wraps(train)
    def wrapper(self, *args, **kwargs):
        started = time.perf_counter()
        result = train(self, *args, **kwargs)
        RECORD["train_seconds"] = time.perf_counter() - started
        RECORD["global_step"] = self.state.global_step
        RECORD["log_history"] = self.state.log_history
        return result

    return wrapper


def instrument(task: str) -> None:
    if task == "ppo":
        from trl.experimental.ppo import PPOTrainer

        PPOTrainer.train = timed(PPOTrainer.train)  # the project's subclass calls this one
    else:
        from transformers import Trainer

        Trainer.train = timed(Trainer.train)


def run_trl(task: str, argv: list[str]) -> None:
    if task == "ppo":
        sys.path.insert(0, str(REPO / "bench"))
        import trl_ppo_example

        trl_ppo_example.main(argv)
        return
    module = {"sft": "trl.scripts.sft", "reward": "trl.scripts.reward"}[task]
    script = __import__(module, fromlist=["main", "make_parser"])
    parser = script.make_parser()
    # exactly what `trl sft ...` / `trl reward ...` does with these arguments
    script.main(*parser.parse_args_and_config(argv, fail_with_unknown_args=True))


def run_ours(task: str, argv: list[str]) -> None:
    sys.path.append(str(REPO / "recipes"))
    import importlib

    from rlhf_recipes import cli

    recipe = importlib.import_module(task)
    sys.argv = [f"recipes/{task}.py", *argv]
    dataclasses = {
        "sft": ("ScriptArguments", "SFTConfig", "ModelConfig"),
        "reward": ("ScriptArguments", "RewardConfig", "ModelConfig"),
        "ppo": ("ScriptArguments", "PPOConfig", "ModelConfig"),
    }[task]
    types = tuple(getattr(recipe, name) for name in dataclasses)
    recipe.main(*cli.parse_config(types))


def main() -> None:
    task, setup, out = sys.argv[1:4]
    argv = sys.argv[5:] if sys.argv[4:5] == ["--"] else sys.argv[4:]
    instrument(task)
    (run_trl if setup == "trl" else run_ours)(task, argv)
    RECORD["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(out).write_text(json.dumps(RECORD, default=str))


if __name__ == "__main__":
    main()
