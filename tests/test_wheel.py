"""The package installs as a wheel and works from it, with no file of the repository present: a fresh virtual
environment (no `-e`), run in a folder outside the checkout, `rlhf-recipes init` copies the configs and the demo data
out of the wheel, then the whole pipeline (every stage, a few steps each on the tiny model: data to the card), the
planner over every stage, one stage on a Hub-layout folder of the user's, and a card."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from conftest import REPO
from test_pipeline import TINY_OVERRIDES

SHIPPED = (
    "rlhf_recipes/assets/model_cards/causal_lm.md.jinja",
    "rlhf_recipes/assets/model_cards/reward_model.md.jinja",
    "rlhf_recipes/assets/chat_templates/smollm2_training.jinja",
    "rlhf_recipes/assets/known_models/embedded--SmolLM2-135M-Instruct.json",
    "rlhf_recipes/assets/recipes/sft.py",
    "rlhf_recipes/assets/configs/smollm2-135m/pipeline.yaml",
    "rlhf_recipes/assets/configs/smollm2-135m/sft.yaml",
    "rlhf_recipes/assets/configs/accelerate/ddp.yaml",
    "rlhf_recipes/evaluation/metrics/domain_accuracy/domain_accuracy.py",
    "rlhf_recipes/plan/calibration.json",
)


def user_hub_folder(folder: Path) -> Path:
    """A dataset as `hf download --repo-type dataset` leaves it: parquet shards per split and a README.md card."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "data").mkdir(parents=True)
    for split, count in (("train", 8), ("test", 4)):
        rows = [{"prompt": [{"role": "user", "content": f"{split} question {i}: who keeps the lighthouse?"}],
                 "completion": [{"role": "assistant", "content": f"Maren Holt keeps it ({split} {i})."}]}
                for i in range(count)]  # fmt: skip
        messages = [{"messages": row["prompt"] + row["completion"]} for row in rows]
        pq.write_table(pa.Table.from_pylist(messages), folder / "data" / f"{split}-00000-of-00001.parquet")
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# My data\n")
    return folder


def test_wheel_installs_and_runs_from_an_init_folder_outside_the_checkout(tmp_path, tiny_model_path):
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
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = str(venv / "bin" / "rlhf-recipes")

    def run(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
        done = subprocess.run([command, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (argv, done.stdout[-2000:], done.stderr[-3000:])
        return done

    # init: the configs and the demo data out of the wheel, into a folder of the user's
    run("init", "work", cwd=tmp_path)
    work = tmp_path / "work"
    where = subprocess.check_output([str(python), "-c", "import rlhf_recipes; print(rlhf_recipes.__file__)"],
                                    cwd=work, env=env, text=True).strip()  # fmt: skip
    assert where.startswith(str(site)), where

    # the pipeline, from the copied pipeline.yaml: its stage configs found next to it, the data in data/demo
    tiny = ["--model", str(tiny_model_path), "--output_dir", "outputs/pipe", *TINY_OVERRIDES]
    run("pipeline", "--config", "configs/smollm2-135m/pipeline.yaml", *tiny, cwd=work)
    pipe = work / "outputs" / "pipe"
    lineage = json.loads((pipe / "sft" / "lineage.json").read_text())
    assert lineage["stage"] == "sft" and lineage["data"]["dataset_name"] == "outputs/pipe/data/sft"
    assert [s["stage"] for s in json.loads((pipe / "ppo" / "lineage.json").read_text())["chain"]] == [
        "cpt",
        "sft",
        "ppo",
    ]
    assert (pipe / "eval" / "report.md").read_text().startswith("# Evaluation")
    assert "model-index" in (pipe / "publish" / "README.md").read_text()
    assert (pipe / "logs" / "sft.log").is_file()

    # the planner, over every training stage of the pipeline (a plan-level check of cpt, reward and ppo)
    plans = json.loads(run("plan", "--config", "configs/smollm2-135m/pipeline.yaml", "--json", cwd=work).stdout)
    assert [plan["stage"] for plan in plans] == ["cpt", "sft", "reward", "ppo"]

    # one stage on the user's own Hub-layout folder: train and test split by file name, the card no data
    mine = user_hub_folder(tmp_path / "my-dataset")
    run("sft", "--config", "configs/smollm2-135m/sft.yaml", "--model_name_or_path", str(tiny_model_path),
        "--dataset_name", str(mine), "--output_dir", "outputs/mine", "--max_steps", "2", "--packing", "false",
        "--per_device_train_batch_size", "2", "--eval_strategy", "steps", "--eval_steps", "2",
        "--save_strategy", "no", cwd=work)  # fmt: skip
    lineage = json.loads((work / "outputs" / "mine" / "lineage.json").read_text())
    assert (lineage["data"]["train_rows"], lineage["data"]["eval_rows"]) == (8, 4)  # never one pile
    assert lineage["metrics"]["train_loss"] > 0
    card = (work / "outputs" / "mine" / "README.md").read_text()
    assert card.startswith("---") and "rlhf-recipes" in card and "sft" in card
