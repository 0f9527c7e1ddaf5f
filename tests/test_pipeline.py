"""The pipeline: end to end on the tiny model, skip/rerun by manifest, and resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, REPO
from safetensors.torch import load_file

from rlhf_recipes import fs, stages
from rlhf_recipes.errors import UserError
from rlhf_recipes.pipeline import PipelineConfig, StageRun, parse_argv, run_pipeline, stage_hash

# Small overrides of the real pipeline.yaml: 2 steps per stage, short answers, a few eval rows. Both override forms:
# `--STAGE.KEY VALUE` and `--set STAGE.KEY=VALUE`.
TINY_SETTINGS = (
    "cpt.max_steps=2", "sft.max_steps=2", "reward.max_steps=2",
    "ppo.total_episodes=4", "ppo.response_length=6", "ppo.per_device_train_batch_size=2", "ppo.num_ppo_epochs=1",
    "ppo.min_reward_accuracy=0",  # a 2-step tiny reward model ranks pairs near chance: the gate would refuse it
    "eval.max_new_tokens=4", "eval.num_side_by_side=2", "eval.max_rows=8",
)  # fmt: skip
TINY_OVERRIDES = [arg for setting in TINY_SETTINGS for arg in (f"--{setting.split('=')[0]}", setting.split("=")[1])]
TINY_OVERRIDES += ["--set", "card.parity_samples=2", "--set", "card.parity_max_new_tokens=4"]


def test_tiny_pipeline_runs_every_stage_end_to_end(tmp_path, tiny_model_path, monkeypatch):
    monkeypatch.chdir(REPO)
    argv = ["--config", str(CONFIGS / "pipeline.yaml"), "--model", str(tiny_model_path), "--output_dir", str(tmp_path)]
    pipeline = stages.get("pipeline")  # recipes/pipeline.py, run in-process through the registry
    rows = pipeline.run(argv + TINY_OVERRIDES)
    assert [r["status"] for r in rows] == ["ran"] * 7
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    measured = {(r["stage"], r["metric"]) for r in report["results"]}
    assert {
        ("base", "perplexity"),
        ("cpt", "perplexity"),
        ("sft", "accuracy"),
        ("ppo", "kl_to_baseline"),
        ("reward", "accuracy"),
        ("ppo", "mean_reward"),
        ("sft", "mean_reward"),
    } <= measured
    assert (tmp_path / "eval" / "report.md").read_text().startswith("# Evaluation")
    chain = json.loads((tmp_path / "ppo" / "lineage.json").read_text())["chain"]
    assert [step["stage"] for step in chain] == ["cpt", "sft", "ppo"]
    assert (tmp_path / "logs" / "sft.log").stat().st_size > 0

    rerun = pipeline.run(argv + TINY_OVERRIDES)  # nothing changed: every stage is skipped
    assert [r["status"] for r in rerun] == ["skipped"] * 7
    card = (tmp_path / "publish" / "README.md").read_text()
    assert "model-index" in card and "sft" in card


FAKE_RECIPE = """
import sys, pathlib
from rlhf_recipes import fs
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
out = pathlib.Path(args["--output_dir"])
with open(out.parent / "runs.log", "a") as log:
    log.write(out.name + "\\n")
if args.get("--fail") == "yes":
    sys.exit(3)
fs.claim(out, "fake")  # as every stage marks its output folder: the stage, and the pipeline run
(out / "done").write_text(args.get("--value", ""))
"""


@dataclass
class FakeArgs:
    """The keys the fake recipe takes, so that the pipeline's pre-parse of every stage command accepts them."""

    output_dir: str
    value: str = ""
    fail: str = "no"


@pytest.fixture
def fake_stage(tmp_path):
    """A stand-in stage (a script that records that it ran) in the registry: tests the orchestration, not training."""
    recipe = tmp_path / "fake_recipe.py"
    recipe.write_text(FAKE_RECIPE)
    stage = stages.register(
        stages.Stage("fake", "records that it ran", config_types=lambda: (FakeArgs,), role="tool", recipe=str(recipe))
    )
    yield stage
    stages.unregister(stage.name)


@pytest.fixture
def fake_pipeline(tmp_path, fake_stage):
    """Three runs of the fake stage, named a, b and c, chained by the pipeline."""
    config = tmp_path / "pipeline.yaml"
    runs = [
        {"stage": fake_stage.name, "name": n, "output": "{output_dir}/" + n, "args": {"value": "1"}} for n in "abc"
    ]
    config.write_text(json.dumps({"output_dir": str(tmp_path / "out"), "stages": runs}))

    def run(**changes):
        argv = ["--config", str(config)]
        for key, value in changes.items():  # b__value="2" -> --b.value 2
            argv += ["--" + key.replace("__", "."), value]
        loaded, options = parse_argv(argv)
        log = tmp_path / "out" / "runs.log"
        before = log.read_text().split() if log.exists() else []
        run_pipeline(loaded, only=options["only"], force=options["force"])
        return log.read_text().split()[len(before) :]

    return run, tmp_path / "out"


def test_unchanged_stages_are_skipped_and_a_change_reruns_downstream(fake_pipeline):
    run, out = fake_pipeline
    assert run() == ["a", "b", "c"]
    assert run() == []
    assert run(b__value="2") == ["b", "c"]
    assert (out / "b.stale" / "done").read_text() == "1", "the stale output is set aside, not deleted"
    assert (out / "b" / "done").read_text() == "2"


def test_a_stale_output_is_set_aside_only_when_the_stage_made_it_and_so_is_an_older_stale_copy(fake_pipeline):
    """Setting a stale output aside replaces a folder like every other replacement: checked for its owner first."""
    run, out = fake_pipeline
    run()
    (out / "b" / ".rlhf-recipes").write_text('{"written_by": "sft", "run": null}')  # not the fake stage's any more
    with pytest.raises(UserError, match=r"out/b of stage 'fake' holds the output of the sft stage, which the fake"):
        run(b__value="2")
    assert (out / "b" / "done").read_text() == "1" and not (out / "b.stale").exists()
    fs.mark(out / "b", "fake", fs.pipeline_run(out))
    (out / "b.stale").mkdir()
    (out / "b.stale" / "precious.txt").write_text("user data")  # an older .stale that this project did not make
    with pytest.raises(
        UserError, match=r"b\.stale \(the earlier copy of stage 'fake'\) is a folder this project did not write"
    ):
        run(b__value="2")
    assert (out / "b.stale" / "precious.txt").read_text() == "user data" and (out / "b" / "done").read_text() == "1"


def test_a_folder_this_pipeline_made_without_a_run_id_is_still_its_own(fake_pipeline):
    """Before the warm launcher passed the environment on, every stage it forked marked its folder `run: null`, and
    the next `make demo` after a change refused the pipeline's own data folder; a folder of the right stage that the
    manifest lists is this pipeline's, and is set aside as any stale output is."""
    run, out = fake_pipeline
    run()
    (out / "b" / ".rlhf-recipes").write_text('{"written_by": "fake", "run": null}')
    assert run(b__value="2") == ["b", "c"]
    assert (out / "b.stale" / "done").read_text() == "1" and (out / "b" / "done").read_text() == "2"
    manifest = json.loads((out / "pipeline_manifest.json").read_text())
    manifest["stages"]["c"]["status"] = "running"  # interrupted: resumed in place, in a folder marked with no run
    (out / "pipeline_manifest.json").write_text(json.dumps(manifest))
    (out / "c" / ".rlhf-recipes").write_text('{"written_by": "fake", "run": null}')
    assert run(b__value="2") == ["c"]
    assert fs.owner(out / "c").run == fs.pipeline_run(out), "adopted into this pipeline's run"


def test_a_comment_in_a_stage_config_does_not_rerun_it(tmp_path):
    config = tmp_path / "sft.yaml"
    config.write_text("learning_rate: 1.0e-4  # a comment\n")
    run = StageRun(stage="sft", name="sft", config=str(config), output=str(tmp_path / "sft"))
    pipeline = PipelineConfig(output_dir=str(tmp_path), stages=[run])
    before = stage_hash(pipeline, run, "")
    config.write_text("learning_rate: 1.0e-4  # another comment\n\n")
    assert stage_hash(pipeline, run, "") == before
    config.write_text("learning_rate: 2.0e-4\n")
    assert stage_hash(pipeline, run, "") != before


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
    with pytest.raises(UserError, match=r"is a folder this project did not write \(a is in it\)"):
        run()
    assert (out / "a" / "precious.txt").read_text() == "user data"


def test_pipeline_config_is_strict(tmp_path):
    config = tmp_path / "pipeline.yaml"
    config.write_text("output_dir: x\nstages:\n  - stage: sft\n    ouput: y\n")
    with pytest.raises(UserError, match=r"unknown key 'stages\[0\]\.ouput' in .*pipeline.yaml; did you mean 'output'"):
        parse_argv(["--config", str(config)])


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
        parse_argv(["--config", str(Path(tmp_path) / "missing.yaml")])


def test_resume_passes_over_a_checkpoint_cut_off_while_saving(tmp_path):
    from rlhf_recipes.train.common import last_checkpoint

    assert last_checkpoint(str(tmp_path / "missing")) is None
    for step in (2, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-12").mkdir()  # killed before trainer_state.json was written
    (tmp_path / "checkpoint-12" / "adapter_model.safetensors").write_text("half")
    assert last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-10")


def test_the_warm_launcher_runs_a_script_as_python_would_with_its_output_and_exit_code(tmp_path):
    """Stages forked from the launcher: output streamed to the log (the launcher's marker never shows), `[progress]`
    lines reported, the script's own folder first on sys.path, the environment as it is when the stage starts (the
    pipeline's run id is set after the launcher started: every marker said `run: null` and the next `make demo`
    refused its own folders), exit codes (0, 3, an uncaught error) passed on."""
    from rlhf_recipes.pipeline.launcher import MARKER, StageProcesses

    script = tmp_path / "stage.py"
    script.write_text(
        "import os, sys\nprint('argv', sys.argv[1:], 'path0', sys.path[0], 'run', os.environ.get('PIPELINE_TEST_RUN'))\n"
        "print('[progress] stage=x step=1/2 elapsed=1.0 eta=1.0', flush=True)\n"
        "if sys.argv[1] == 'boom':\n    raise RuntimeError('a bug')\nsys.exit(int(sys.argv[1]))\n"
    )
    processes, seen = StageProcesses(warm=True), []
    os.environ.pop("PIPELINE_TEST_RUN", None)
    processes.run([sys.executable, str(script), "0"], tmp_path / "started.log", lambda *a: None)  # launcher started
    os.environ["PIPELINE_TEST_RUN"] = "r1"  # set after the launcher started, as the pipeline sets its run id
    try:
        codes = [processes.run([sys.executable, str(script), arg], tmp_path / f"{arg}.log", lambda *a: seen.append(a))
                 for arg in ("0", "3", "boom")]  # fmt: skip
        pid = processes.launcher.pid
    finally:
        processes.close()
        os.environ.pop("PIPELINE_TEST_RUN", None)
    assert codes == [0, 3, 1]
    assert b"run None" in (tmp_path / "started.log").read_bytes()
    log = (tmp_path / "3.log").read_bytes()
    assert f"argv ['3'] path0 {tmp_path} run r1".encode() in log and MARKER not in log
    assert b"RuntimeError: a bug" in (tmp_path / "boom.log").read_bytes()
    assert seen == [("x", "1", "2", "1.0", "1.0")] * 3
    assert not Path(f"/proc/{pid}").exists(), "the launcher exits when the pipeline closes it"
