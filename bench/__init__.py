"""Performance measurements of rlhf-recipes, each a module run from the repository root: `python -m bench.<name>`.

harness.py      the one fresh-process runner (wall time, train time, peak RSS) and what the benches share
synthetic.py    the one synthetic data generator (and the benches' random-head reward model)
roofline.py     matmul rate of every precision, training FLOPs, fraction of the roofline of the precision used
speed.py        `make bench`: SFT, reward model and PPO side by side with plain TRL
memory.py       `make bench-memory`: planned vs measured peak RSS of every stage; writes the planner's calibration
ppo_memory.py   `make bench-ppo-memory`: peak RSS of PPO against TRL's example setup
prepare_data.py `make bench-data`: rows per second of data preparation
gpu_check.py    `make gpu-check`: the prepared check for a machine with a GPU
trl_ppo_example.py  TRL's own PPO example setup, the PPO baseline
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the one repository root of the benches
