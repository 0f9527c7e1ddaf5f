"""Adding a stage is one registry entry + its recipe + its YAML: a throwaway stage, registered from a plugin module
(as a user would add one outside the package), is picked up by the strict config parse, the planner, the pipeline
and the evaluation with no other change."""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest
import yaml
from conftest import CONFIGS, REPO

from rlhf_recipes import stages
from rlhf_recipes.errors import UserError

PLUGIN = """
from pathlib import Path
from rlhf_recipes import stages
from rlhf_recipes.models import CAUSAL_LM

stages.register(stages.Stage(
    "toy", "a throwaway RL-like stage: SFT's trainer on conversations, evaluated against SFT",
    stages.get("sft").config_types, role="rl", recipe=str(Path(__file__).parent / "toy.py"),
    model_keys={"model_name_or_path": CAUSAL_LM}, makes=CAUSAL_LM, columns=("messages",),
    plan="rlhf_recipes.plan.estimate:plan_lm_stage", baseline="sft", targets=stages.RL_TARGETS,
))
"""


@pytest.fixture
def toy_stage(tmp_path, monkeypatch):
    (tmp_path / "toy_stage_plugin.py").write_text(PLUGIN)
    recipe = (REPO / "recipes" / "sft.py").read_text().replace('stages.get("sft")', 'stages.get("toy")')
    (tmp_path / "toy.py").write_text(recipe)  # its recipe: SFT's, with `STAGE = stages.get("toy")`
    shutil.copy(CONFIGS / "sft.yaml", tmp_path / "toy.yaml")  # its YAML, named after it
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("RLHF_RECIPES_STAGES", "toy_stage_plugin")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(tmp_path), str(REPO / "src"), os.environ.get("PYTHONPATH", "")])
    )
    sys.modules.pop("toy_stage_plugin", None)
    import toy_stage_plugin  # noqa: F401  (registers "toy")

    yield stages.get("toy")
    stages.unregister("toy")
    sys.modules.pop("toy_stage_plugin", None)


def test_a_registered_stage_is_parsed_planned_run_and_evaluated(toy_stage, tmp_path, tiny_model_path, monkeypatch):
    from rlhf_recipes import plan
    from rlhf_recipes.pipeline import parse_argv, run_pipeline

    # the strict config parse (tests/test_configs.py's path): by file name, unknown keys refused
    config = tmp_path / "toy.yaml"
    assert stages.for_config(config) is toy_stage
    toy_stage.parse_args(["--config", str(config)], check_paths=False)
    bad = tmp_path / "toy-bad.yaml"
    bad.write_text(config.read_text() + "learning_rat: 1.0e-4\n")
    with pytest.raises(UserError, match="unknown key 'learning_rat'.*did you mean 'learning_rate'"):
        stages.for_config(bad).parse_args(["--config", str(bad)], check_paths=False)

    # the planner
    plans = plan.plan_file(str(config), ["--model_name_or_path", str(tiny_model_path)])
    assert [p.stage for p in plans] == ["toy"] and plans[0].total > 0

    # the pipeline: sft, then toy from sft's output, each its own recipe in a subprocess
    out = tmp_path / "out"
    short = {"max_steps": 2, "per_device_train_batch_size": 2, "eval_strategy": "no", "save_strategy": "no"}
    pipeline = {
        "output_dir": str(out),
        "model": str(tiny_model_path),
        "stages": [
            {"stage": "sft", "config": str(CONFIGS / "sft.yaml"), "args": {"model_name_or_path": "{model}", **short}},
            {"stage": "toy", "config": str(config), "args": {"model_name_or_path": "{output_dir}/sft", **short}},
        ],
    }
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))
    monkeypatch.chdir(REPO)
    parsed, options = parse_argv(["--config", str(tmp_path / "pipeline.yaml")])
    rows = run_pipeline(parsed, **options)
    assert [r["status"] for r in rows] == ["ran", "ran"]
    lineage = json.loads((out / "toy" / "lineage.json").read_text())
    assert lineage["stage"] == "toy" and [s["stage"] for s in lineage["chain"]] == ["sft", "toy"]

    # the evaluation: toy's output is compared with its baseline stage's (sft) as the registry says
    models = json.dumps({"base": str(tiny_model_path), "sft": str(out / "sft"), "toy": str(out / "toy")})
    report = stages.get("eval").run(
        ["--config", str(CONFIGS / "eval.yaml"), "--models", models, "--max_rows", "2", "--max_new_tokens", "4",
         "--reward_model", "", "--output_dir", str(tmp_path / "eval")]
    )  # fmt: skip
    assert report["models"]["toy"]["baseline"] == "sft" and report["models"]["toy"]["role"] == "rl"
    measured = {(r["stage"], r["metric"]) for r in report["results"]}
    assert {
        ("toy", "kl_to_baseline"),
        ("toy", "judge_score"),
        ("toy", "judge_gain"),
        ("sft", "judge_score"),
    } <= measured
    assert any(t["target"].startswith("toy judge score over sft's") for t in report["targets"])
    assert not any(t["met"] is True and t["measured"] is None for t in report["targets"])


def test_an_unknown_stage_name_lists_the_valid_ones():
    with pytest.raises(UserError, match="unknown stage 'sfft'; did you mean 'sft'.*The stages are: data, cpt, sft"):
        stages.get("sfft")
