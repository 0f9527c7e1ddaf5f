"""The pipeline: end to end on the tiny model, skip/rerun by manifest, and resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, REPO
from safetensors.torch import load_file

from rlhf_recipes.cli import UserError
from rlhf_recipes.pipeline import load_pipeline_config, run_pipeline

# Small overrides of the real pipeline.yaml: 2 steps per stage, short answers, a few eval rows.
TINY_SETTINGS = (
    "cpt.max_steps=2", "sft.max_steps=2", "reward.max_steps=2",
    "ppo.total_episodes=4", "ppo.response_length=6", "ppo.per_device_train_batch_size=2", "ppo.num_ppo_epochs=1",
    "evaluate.max_new_tokens=4", "evaluate.num_side_by_side=2", "evaluate.max_rows=8",
    "card.parity_samples=2", "card.parity_max_new_tokens=4",
)  # fmt: skip
TINY_OVERRIDES = [arg for setting in TINY_SETTINGS for arg in ("--set", setting)]


def test_tiny_pipeline_runs_every_stage_end_to_end(tmp_path, tiny_model_path, monkeypatch):
    import pipeline as pipeline_recipe

    monkeypatch.chdir(REPO)
    argv = ["--config", str(CONFIGS / "pipeline.yaml"), "--model", str(tiny_model_path), "--output_dir", str(tmp_path)]
    rows = pipeline_recipe.main(argv + TINY_OVERRIDES)
    assert [r["status"] for r in rows] == ["ran"] * 7
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    measured = {(r["stage"], r["metric"]) for r in report["results"]}
    assert {
        ("base", "perplexity"),
        ("cpt", "perplexity"),
        ("sft", "accuracy"),
        ("ppo", "kl_to_sft"),
        ("reward", "accuracy"),
        ("ppo", "mean_reward"),
        ("sft", "mean_reward"),
    } <= measured
    assert (tmp_path / "eval" / "report.md").read_text().startswith("# Evaluation")
    chain = json.loads((tmp_path / "ppo" / "lineage.json").read_text())["chain"]
    assert [step["stage"] for step in chain] == ["cpt", "sft", "ppo"]
    assert (tmp_path / "logs" / "sft.log").stat().st_size > 0

    rerun = pipeline_recipe.main(argv + TINY_OVERRIDES)  # nothing changed: every stage is skipped
    assert [r["status"] for r in rerun] == ["skipped"] * 7
    card = (tmp_path / "publish" / "README.md").read_text()
    assert "model-index" in card and "sft" in card


FAKE_RECIPE = """
import sys, pathlib
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
out = pathlib.Path(args["--output_dir"])
with open(out.parent / "runs.log", "a") as log:
    log.write(out.name + "\\n")
if args.get("--fail") == "yes":
    sys.exit(3)
out.mkdir(parents=True, exist_ok=True)
(out / "done").write_text(args.get("--value", ""))
"""


@pytest.fixture
def fake_pipeline(tmp_path):
    """Three stand-in stages (a script that records that it ran): tests the orchestration, not the training."""
    recipe = tmp_path / "fake_recipe.py"
    recipe.write_text(FAKE_RECIPE)
    config = tmp_path / "pipeline.yaml"
    stages = [{"name": n, "recipe": str(recipe), "output": "{output_dir}/" + n, "args": {"value": "1"}} for n in "abc"]
    config.write_text(json.dumps({"output_dir": str(tmp_path / "out"), "stages": stages}))

    def run(**changes):
        loaded = load_pipeline_config(config)
        for key, value in changes.items():
            stage, arg = key.split("__")
            next(s for s in loaded.stages if s.name == stage).args[arg] = value
        log = tmp_path / "out" / "runs.log"
        before = log.read_text().split() if log.exists() else []
        run_pipeline(loaded)
        return log.read_text().split()[len(before) :]

    return run, tmp_path / "out"


def test_unchanged_stages_are_skipped_and_a_change_reruns_downstream(fake_pipeline):
    run, out = fake_pipeline
    assert run() == ["a", "b", "c"]
    assert run() == []
    assert run(b__value="2") == ["b", "c"]
    assert (out / "b.stale" / "done").read_text() == "1", "the stale output is set aside, not deleted"
    assert (out / "b" / "done").read_text() == "2"


def test_a_comment_in_a_stage_config_does_not_rerun_it(tmp_path):
    from rlhf_recipes.pipeline import Stage, stage_hash

    config = tmp_path / "sft.yaml"
    config.write_text("learning_rate: 1.0e-4  # a comment\n")
    stage = Stage(name="sft", recipe="recipes/sft.py", config=str(config))
    before = stage_hash(stage, "")
    config.write_text("learning_rate: 1.0e-4  # another comment\n\n")
    assert stage_hash(stage, "") == before
    config.write_text("learning_rate: 2.0e-4\n")
    assert stage_hash(stage, "") != before


def test_interrupted_stage_reruns_in_place_and_a_failure_is_one_sentence(fake_pipeline):
    run, out = fake_pipeline
    run()
    manifest = json.loads((out / "pipeline_manifest.json").read_text())
    manifest["stages"]["b"]["status"] = "running"  # what a SIGKILL in the middle of stage b leaves behind
    (out / "pipeline_manifest.json").write_text(json.dumps(manifest))
    assert run() == ["b"]
    assert not (out / "b.stale").exists(), "an interrupted stage keeps its folder (and checkpoints) to resume from"
    with pytest.raises(UserError, match="stage 'c' failed \\(exit code 3\\); its log is"):
        run(c__fail="yes")


def test_pipeline_refuses_to_touch_a_folder_it_did_not_make(fake_pipeline):
    run, out = fake_pipeline
    (out / "a").mkdir(parents=True)
    (out / "a" / "precious.txt").write_text("user data")
    with pytest.raises(UserError, match="exists but this pipeline did not make it"):
        run()
    assert (out / "a" / "precious.txt").read_text() == "user data"


def test_pipeline_config_is_strict(tmp_path):
    config = tmp_path / "pipeline.yaml"
    config.write_text("output_dir: x\nstages:\n  - name: a\n    recipe: recipes/sft.py\n    ouput: y\n")
    with pytest.raises(UserError, match="unknown key 'ouput' in .*stage 1; did you mean 'output'"):
        load_pipeline_config(config)


def _sft_command(tiny_model_path, output_dir, max_steps):
    return [
        sys.executable,
        "recipes/sft.py",
        "--config",
        str(CONFIGS / "sft.yaml"),
        "--model_name_or_path",
        str(tiny_model_path),
        "--output_dir",
        str(output_dir),
        "--max_steps",
        str(max_steps),
        "--save_steps",
        "2",
        "--save_total_limit",
        "10",
        "--per_device_train_batch_size",
        "2",
        "--eval_strategy",
        "no",
        "--logging_steps",
        "1",
        "--learning_rate",
        "1e-3",
    ]


def test_sigkill_mid_stage_then_rerun_resumes_to_the_same_adapter(tmp_path, tiny_model_path):
    """Kill SFT with SIGKILL after its first checkpoint, rerun the same command: it resumes from the checkpoint and
    ends with the adapter of an uninterrupted run (tolerance 1e-5: same data order, RNG and optimizer state)."""
    steps = 12
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(
        _sft_command(tiny_model_path, tmp_path / "straight", steps), cwd=REPO, env=env, check=True, capture_output=True
    )

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _sft_command(tiny_model_path, killed, steps),
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while (
        not (killed / "checkpoint-2" / "trainer_state.json").exists()
        and proc.poll() is None
        and time.time() < deadline
    ):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "lineage.json").exists(), "the run must be killed before it finished"
    assert not (killed / f"checkpoint-{steps}").exists()

    rerun = subprocess.run(
        _sft_command(tiny_model_path, killed, steps), cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    assert "Resuming sft from" in rerun.stderr + rerun.stdout
    straight = load_file(str(tmp_path / "straight" / "adapter_model.safetensors"))
    resumed = load_file(str(killed / "adapter_model.safetensors"))
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], atol=1e-5, rtol=1e-4)
    assert any(straight[name].norm() > 0 for name in straight if "lora_B" in name)


def test_config_path_is_checked(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_pipeline_config(Path(tmp_path) / "missing.yaml")


def test_resume_passes_over_a_checkpoint_cut_off_while_saving(tmp_path):
    from rlhf_recipes.training import last_checkpoint

    assert last_checkpoint(str(tmp_path / "missing")) is None
    for step in (2, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-12").mkdir()  # killed before trainer_state.json was written
    (tmp_path / "checkpoint-12" / "adapter_model.safetensors").write_text("half")
    assert last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-10")
