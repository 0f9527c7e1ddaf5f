"""The package installs as a wheel and works from it: templates, recipes, known model configs, metric modules and
the planner's calibration ship inside; a fresh virtual environment (no `-e`, run outside the checkout) renders a
card and runs a stage for 2 steps on the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from conftest import CONFIGS, DEMO, REPO

SHIPPED = (
    "rlhf_recipes/assets/model_cards/causal_lm.md.jinja",
    "rlhf_recipes/assets/model_cards/reward_model.md.jinja",
    "rlhf_recipes/assets/chat_templates/smollm2_training.jinja",
    "rlhf_recipes/assets/known_models/embedded--SmolLM2-135M-Instruct.json",
    "rlhf_recipes/assets/recipes/sft.py",
    "rlhf_recipes/evaluation/metrics/domain_accuracy/domain_accuracy.py",
    "rlhf_recipes/plan/calibration.json",
)


def test_wheel_installs_and_runs_a_stage_outside_the_checkout(tmp_path, tiny_model_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(REPO), "-w",
                    str(tmp_path / "dist")], check=True, capture_output=True)  # fmt: skip
    wheel = next((tmp_path / "dist").glob("rlhf_recipes-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(SHIPPED) <= names, set(SHIPPED) - names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, capture_output=True)  # fmt: skip
    site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())  # fmt: skip
    # the pinned stack comes from this environment (a path line: its own .pth files, the editable install, stay off)
    (site / "zz_pinned_stack.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "elsewhere"  # not the checkout: no src/, no model_cards/, no recipes/ next to it
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.check_output([str(python), "-c", "import rlhf_recipes; print(rlhf_recipes.__file__)"],
                                    cwd=work, env=env, text=True).strip()  # fmt: skip
    assert where.startswith(str(site)), where

    run = subprocess.run(
        [str(venv / "bin" / "rlhf-recipes"), "sft", "--config", str(CONFIGS / "sft.yaml"), "--model_name_or_path",
         str(tiny_model_path), "--dataset_name", str(DEMO / "sft"), "--output_dir", str(work / "sft"), "--max_steps",
         "2", "--per_device_train_batch_size", "2", "--eval_strategy", "no", "--save_strategy", "no"],
        cwd=work, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    lineage = json.loads((work / "sft" / "lineage.json").read_text())
    assert lineage["stage"] == "sft" and lineage["metrics"]["train_loss"] > 0
    card = (work / "sft" / "README.md").read_text()
    assert card.startswith("---") and "rlhf-recipes" in card and "sft" in card
