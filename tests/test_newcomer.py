"""A newcomer's path (issue 27): `--help` that helps, the installed command (`init`, `plan`, a stage without a config,
an edited copy of a recipe), a Hub id while offline, tracking (a missing integration, trackio, plain log lines, a KL
panel of its own) and the pipeline's forecast."""

from __future__ import annotations

import io
import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import CONFIGS, DEMO, REPO

from rlhf_recipes import stages
from rlhf_recipes.errors import UserError


# ------------------------------------------------------------------------------------------------------------ help
def help_of(name: str, capsys, *flags: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        stages.get(name).parse_args([*(flags or ["--help"])])
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


@pytest.mark.parametrize("name", stages.names())
def test_help_of_every_stage_says_what_it_does_and_the_command_first(name, capsys):
    text = help_of(name, capsys)
    lines = text.splitlines()
    spec = stages.get(name)
    assert lines[0] == f"{name}: {spec.summary}"
    assert lines[2:5] == [
        "usage:",
        f"  rlhf-recipes {name} --config configs/smollm2-135m/{name}.yaml [--KEY VALUE ...]",
        f"  python recipes/{spec.recipe_path.name} --config configs/smollm2-135m/{name}.yaml [--KEY VALUE ...]",
    ]
    assert "--no_" not in text  # booleans are `--key true|false`; HfArgumentParser's `--no_key` flags do not parse
    if spec.parse is None:  # a flat YAML: its own keys, grouped as it groups them, not every TrainingArguments field
        assert f"the keys of configs/smollm2-135m/{name}.yaml, grouped as it groups them" in text
        assert len(lines) < 200, len(lines)


def test_help_groups_the_keys_as_the_yaml_and_describes_them_as_the_project_reads_them(capsys):
    text = help_of("sft", capsys)
    headings = [line for line in text.splitlines() if line in ("Model", "LoRA", "Data", "Trainer")]
    assert headings == ["Model", "LoRA", "Data", "Trainer"]
    bf16 = text.split("--bf16", 1)[1].split("\n  --", 1)[0]
    assert "[auto]" in bf16 and "native bf16" in bf16 and "Requires Ampere" not in bf16
    assert "--help-all" in text.splitlines()[-1]
    everything = help_of("sft", capsys, "--help-all")
    assert (
        "--adam_beta1" in everything and "--adam_beta1" not in text
    )  # the full TrainingArguments list, behind a flag
    assert help_of("publish", capsys).count("--private") == 1 and "private" in help_of("publish", capsys, "--help-all")


def test_help_from_the_command_line_has_no_library_noise_and_eval_no_traceback():
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    for argv, first in (
        ([sys.executable, "-m", "rlhf_recipes", "sft", "--help"], "sft: supervised fine-tuning"),
        ([sys.executable, str(REPO / "recipes" / "eval.py"), "--help"], "eval: evaluation of every stage"),
        ([sys.executable, str(REPO / "recipes" / "ppo.py"), "--help"], "ppo: PPO"),
    ):
        run = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
        assert run.returncode == 0 and "Traceback" not in run.stdout + run.stderr, run.stderr[-2000:]
        assert run.stdout.startswith(first), run.stdout[:300]
        assert "gemm_4bit" not in run.stderr, run.stderr  # the package is imported before trl: no bitsandbytes notice


# ------------------------------------------------------------------------------------------- the installed command
def test_the_command_lists_stages_and_tools(capsys):
    from rlhf_recipes.__main__ import main

    main([])
    text = capsys.readouterr().out
    assert "  init " in text and "  plan " in text and "  sft " in text


def test_init_copies_a_model_folder_and_the_demo_data(tmp_path, capsys):
    from rlhf_recipes import workspace

    workspace.main([str(tmp_path / "work")])
    work = tmp_path / "work"
    assert sorted(p.name for p in (work / "configs" / "smollm2-135m").glob("*.yaml")) == sorted(
        p.name for p in CONFIGS.glob("*.yaml")
    )
    assert (work / "configs" / "accelerate" / "ddp.yaml").is_file()
    for name in ("sft/train.jsonl", "prompts/test.jsonl", "qa/test.jsonl"):  # the demo data, byte for byte
        assert (work / "data" / "demo" / name).read_bytes() == (DEMO / name).read_bytes()
    assert "rlhf-recipes pipeline --config configs/smollm2-135m/pipeline.yaml" in capsys.readouterr().out
    workspace.main([str(work)])  # again: nothing is overwritten, and it says so
    assert "exists: left as it is" in capsys.readouterr().out
    with pytest.raises(UserError, match="no config folder 'smollm3' in the package; the folders are .*smollm2-135m"):
        workspace.init(tmp_path / "other", "smollm3")


def test_the_pipeline_finds_its_stage_configs_next_to_its_yaml(tmp_path, monkeypatch):
    from rlhf_recipes.pipeline import parse_argv

    copied = tmp_path / "elsewhere" / "my-configs"
    shutil.copytree(CONFIGS, copied)
    monkeypatch.chdir(tmp_path)  # not the checkout, not the YAML's folder
    config, _ = parse_argv(["--config", str(copied / "pipeline.yaml"), "--rl", "dpo"])
    assert {Path(run.config).parent for run in config.stages if run.config} == {copied}
    old_style = (copied / "pipeline.yaml").read_text().replace("config: sft.yaml", "config: my-configs/sft.yaml")
    (copied / "old.yaml").write_text(old_style)
    monkeypatch.chdir(copied.parent)  # where the old way (relative to the current folder) would have found it
    with pytest.raises(UserError, match=r"names config my-configs/sft.yaml, which does not exist in .*; stage configs "
                                        r"are relative to the pipeline YAML's folder, so write sft.yaml"):  # fmt: skip
        parse_argv(["--config", str(copied / "old.yaml"), "--rl", "dpo"])


@pytest.mark.parametrize("rl", [",", " "])
def test_a_pipeline_with_no_rl_algorithm_is_refused(rl):
    from rlhf_recipes.pipeline import parse_argv

    with pytest.raises(UserError, match="rl on the command line names no RL algorithm; name one or more of ppo"):
        parse_argv(["--config", str(CONFIGS / "pipeline.yaml"), "--rl", rl])


def test_a_stage_without_a_config_on_a_cpu_with_native_bf16_trains_on_the_cpu(
    auto_from_hardware, monkeypatch, tmp_path, tiny_model_path
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512": True, "avx512_bf16": True})
    argv = ["--model_name_or_path", str(tiny_model_path), "--dataset_name", str(DEMO / "sft"),
            "--output_dir", str(tmp_path / "sft")]  # fmt: skip
    _, training_args, _ = stages.get("sft").parse_args(argv)  # was TRL's "Your setup doesn't support bf16/gpu"
    assert training_args.bf16 is True and training_args.use_cpu is True
    _, explicit, _ = stages.get("sft").parse_args([*argv, "--bf16", "false"])
    assert explicit.bf16 is False


def test_an_edited_copy_of_a_recipe_runs(tmp_path, monkeypatch, capsys):
    """A recipe names its stage (`STAGE = stages.get("sft")`), so a copy runs whatever its file is called."""
    edited = (REPO / "recipes" / "sft.py").read_text().replace("set_seed(training_args.seed)", "set_seed(7)")
    for name in ("my_sft.py", "train.py"):
        copy = tmp_path / name
        copy.write_text(edited)
        monkeypatch.setattr(sys, "argv", [str(copy), "--help"])
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(str(copy), run_name="__main__")
        assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("sft: ")


# --------------------------------------------------------------------------------------------- Hub ids, offline
def test_a_hub_model_id_while_offline_is_one_sentence():
    from rlhf_recipes.models import resolve_model_path

    with pytest.raises(UserError) as error:  # conftest sets HF_HUB_OFFLINE=1
        resolve_model_path("Qwen/Qwen2.5-0.5B-Instruct")
    message = str(error.value)
    assert message.startswith("model_name_or_path=Qwen/Qwen2.5-0.5B-Instruct is a Hub model id, and HF_HUB_OFFLINE")
    assert "hf download Qwen/Qwen2.5-0.5B-Instruct --local-dir" in message and "embedded:" in message
    with pytest.raises(UserError) as error:  # a stage checks it before anything loads, with the same sentence
        stages.get("sft").parse_args(["--config", str(CONFIGS / "sft.yaml"), "--model_name_or_path",
                                      "Qwen/Qwen2.5-0.5B-Instruct"])  # fmt: skip
    assert str(error.value) == message.replace("-Instruct is", "-Instruct on the command line is")


def test_a_hub_id_with_no_network_is_one_sentence_without_minutes_of_retries(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9",
           "PYTHONPATH": str(REPO / "src")}  # fmt: skip
    for key, value, what in (("model_name_or_path", "Qwen/Qwen2.5-0.5B-Instruct", "model"),
                             ("dataset_name", "someorg/some-dataset", "dataset")):  # fmt: skip
        run = subprocess.run(
            [sys.executable, "-m", "rlhf_recipes", "sft", "--config", str(CONFIGS / "sft.yaml"), f"--{key}", value,
             "--output_dir", str(tmp_path / what)],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
        )  # fmt: skip
        errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
        assert errors == [f"error: {key}={value} is a Hub {what} id, and the Hub (http://127.0.0.1:9) cannot be "
                          f"reached from this machine; download it where the Hub is reachable (`hf download {value}"
                          + (" --repo-type dataset" if what == "dataset" else "") + " --local-dir DIR`) and pass "
                          "the folder, " + ("or use the embedded model (embedded:SmolLM2-135M-Instruct)."
                                            if what == "model" else "or a local data folder.")]  # fmt: skip


def test_a_hub_dataset_id_while_offline_is_one_sentence():
    from rlhf_recipes.train.common import load_splits

    script_args = SimpleNamespace(dataset_name="someorg/some-dataset", dataset_config=None, dataset_streaming=False,
                                  dataset_train_split="train", dataset_test_split="test")  # fmt: skip
    with pytest.raises(UserError, match=r"^dataset_name=someorg/some-dataset is a Hub dataset id, and HF_HUB_OFFLINE "
                                        r"is set .*`hf download someorg/some-dataset --repo-type dataset"):  # fmt: skip
        load_splits(script_args, SimpleNamespace(eval_strategy="no"), stages.get("sft"))


# ------------------------------------------------------------------------------------------------------ tracking
@pytest.mark.parametrize("tracker", ["tensorboard", "wandb"])
def test_a_tracker_that_is_not_installed_is_one_sentence(tracker):
    with pytest.raises(UserError, match=rf"report_to on the command line names {tracker}, which is not installed; "
                                        rf"`pip install {tracker}`, or set report_to: trackio"):  # fmt: skip
        stages.get("sft").parse_args(["--config", str(CONFIGS / "sft.yaml"), "--report_to", tracker],
                                     check_paths=False)  # fmt: skip


def test_trackio_records_a_stage_locally(tmp_path, tiny_model_path, monkeypatch):
    pytest.importorskip("trackio")
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    code = "import sys; from rlhf_recipes import stages; stages.get('sft').run(sys.argv[1:])"  # a process of its own: trackio reads TRACKIO_DIR at import
    argv = ["--config", str(CONFIGS / "sft.yaml"), "--model_name_or_path", str(tiny_model_path), "--output_dir",
            str(tmp_path / "sft"), "--max_steps", "2", "--logging_steps", "1", "--report_to", "trackio",
            "--save_strategy", "no", "--per_device_train_batch_size", "2", "--project", "newcomer"]  # fmt: skip
    run = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=REPO, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO / "src")})  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    import sqlite3

    database = tmp_path / "trackio" / "newcomer.db"  # the project's own file, local: no Hub, no server
    rows = [json.loads(metrics) for (metrics,) in sqlite3.connect(database).execute("select metrics from metrics")]
    assert [row["train/global_step"] for row in rows if "train/loss" in row] == [1, 2]


def test_logs_are_plain_lines_per_update():
    from rlhf_recipes.pipeline.launcher import PlainLog

    out = io.BytesIO()
    log = PlainLog(out)
    for chunk in (b"start\n", b"\r 10%|#  | 1/10\x1b[A\r 20%|##", b" | 2/10\r 20%|## | 2/10\r100%|###| 10/10\n",
                  b"{'loss': 1.0}\r", b"\n\nend"):  # fmt: skip
        log.write(chunk)
    log.close()
    assert out.getvalue().decode().split("\n") == [
        "start",
        " 10%|#  | 1/10",
        " 20%|## | 2/10",
        "100%|###| 10/10",
        "{'loss': 1.0}",
        "",
        "end",
        "",
    ]


def test_kl_has_a_panel_of_its_own_and_a_lone_eval_loss_is_labelled(tmp_path):
    from rlhf_recipes.evaluation.curves import curves_figure

    def stage(name: str, history: list[dict]) -> dict:
        (tmp_path / name).mkdir()
        (tmp_path / name / "trainer_state.json").write_text(json.dumps({"log_history": history}))
        return {"stage": name, "output_dir": str(tmp_path / name)}

    ppo = stage("ppo", [{"step": s, "objective/scores": -4 + s, "objective/kl": 0.01 * s, "loss": 1.0} for s in
                        range(1, 8)])  # fmt: skip
    reward = stage(
        "reward", [{"step": s, "loss": 0.7 - 0.05 * s} for s in range(1, 9)] + [{"step": 8, "eval_loss": 0.4}]
    )
    cpt = stage("cpt", [{"step": 2, "loss": 3.1}])  # a short CPT logs its loss once
    figure = curves_figure([cpt, reward, ppo])
    axes = {a.get_title(): a for a in figure.axes if a.get_visible()}
    assert set(axes) == {"cpt: loss", "reward: loss", "ppo: loss", "ppo: reward", "ppo: KL"}
    assert [t.get_text() for t in axes["cpt: loss"].texts] == ["3.1"]  # one point is said, not drawn as a line
    low, high = axes["ppo: KL"].get_ylim()
    assert high < 0.2 and high - low > 0.05  # the KL's own scale: 0.01 to 0.07 is readable, not a flat line at 0
    assert [t.get_text() for t in axes["reward: loss"].texts] == ["0.4"]  # the one eval loss, said


# ------------------------------------------------------------------------------------------------------ forecast
def test_the_forecast_scales_later_stages_by_the_machine_not_by_the_current_stage(monkeypatch, capsys):
    from rlhf_recipes import precision
    from rlhf_recipes.progress import PipelineClock

    monkeypatch.setattr(precision, "matmul_rate", lambda *a, **k: 50.0)  # half the reference's 100 GFLOP/s
    runs = [SimpleNamespace(name=n, expected_seconds=s) for n, s in (("data", 10), ("sft", 100), ("ppo", 200))]
    config = SimpleNamespace(stages=runs, expected_at_gflops=100.0, precision="float32")
    clock = PipelineClock(config, None, manifest=None)
    assert "pipeline should take about 10.3 min" in capsys.readouterr().out  # (10 + 100 + 200) x 2 = 620 s
    clock.skipped(runs[0])
    clock.start(runs[1])
    clock.progress("sft", "10", "100", elapsed="100", eta="900")  # this stage is 5x slower than forecast
    assert "~15.0 min left in this stage; pipeline ~21.7 min left" in capsys.readouterr().out  # 900 + 200 x 2 s

    # native bf16 is forecast by float32's rate, as the reference was measured: its 1024 x 1024 bf16 rate (5.5x
    # float32's on AMX) forecast a 13 min bf16 demo at 3.8 min; emulated bf16 by its own rate on a small matrix
    sizes = []
    monkeypatch.setattr(precision, "matmul_rate", lambda dtype, size, seconds: sizes.append((dtype, size)) or 50.0)
    monkeypatch.setattr(precision, "machine", lambda use_cpu=True: ("cpu", "AVX512", True))
    PipelineClock(SimpleNamespace(stages=runs, expected_at_gflops=100.0, precision="bf16"), None, manifest=None)
    assert sizes == [("float32", 1024)]
    assert "computing in bfloat16" in capsys.readouterr().out
    monkeypatch.setattr(precision, "machine", lambda use_cpu=True: ("cpu", "AVX2", False))
    PipelineClock(SimpleNamespace(stages=runs, expected_at_gflops=100.0, precision="bf16"), None, manifest=None)
    assert sizes[1:] == [("bfloat16", 128)]


def test_finished_stages_correct_the_forecast_of_the_later_ones(monkeypatch, capsys):
    """The matmul rate overstates a small model's bf16 gain (the demo read 2.3 min forecast, 9.2 min run): once a
    stage of a minute or more has finished at 3x its forecast, the later stages are forecast 3x longer; a short
    stage (the data stage, I/O) corrects nothing."""
    import time

    from rlhf_recipes import precision
    from rlhf_recipes.progress import PipelineClock

    monkeypatch.setattr(precision, "matmul_rate", lambda *a, **k: 100.0)  # the reference's own rate: factor 1
    runs = [SimpleNamespace(name=n, expected_seconds=s) for n, s in (("data", 10), ("sft", 100), ("ppo", 200))]
    clock = PipelineClock(SimpleNamespace(stages=runs, expected_at_gflops=100.0, precision="float32"), None, None)
    capsys.readouterr()
    clock.start(runs[0])
    clock.stage_started = time.time() - 40  # 4x its 10 s, but under a minute: no correction
    clock.stop(runs[0])
    assert clock.forecast(runs[1]) == "expected ~100 s; pipeline ~5.0 min left"
    clock.start(runs[1])
    clock.stage_started = time.time() - 300  # 3x its 100 s
    assert clock.stop(runs[1]) == pytest.approx(300, abs=1)
    assert "took 3.0x their forecast" in capsys.readouterr().out
    assert clock.forecast(runs[2]) == "expected ~10.0 min; pipeline ~10.0 min left"  # 200 s x 3


def test_make_label_collects_round_one_before_it_serves_the_page():
    """After `make demo` the store is empty: `make label` samples round 1 first (a rerun adds only what is missing)."""
    import shutil
    import subprocess

    if not shutil.which("make"):
        pytest.skip("no make here")
    dry = subprocess.run(["make", "-n", "-o", ".venv/.installed", "label"], cwd=REPO, capture_output=True, text=True)
    lines = [line for line in dry.stdout.splitlines() if "recipes/" in line]
    assert dry.returncode == 0 and [line.split("recipes/")[1].split()[0] for line in lines] == [
        "collect.py",
        "label.py",
    ]
    assert "--round 1" in lines[0] and "configs/smollm2-135m/collect.yaml" in lines[0]
