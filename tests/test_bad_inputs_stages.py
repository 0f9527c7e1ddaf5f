"""The bad-input catalogue of every entry point but data preparation (tests/test_bad_inputs.py has that one).

Each case runs the recipe as `python recipes/<name>.py ARGV` runs it (`runpy`, `__main__`), and asserts: exit code 2
(130 for Ctrl-C), exactly one `error:` line, no traceback, the key or path named, and the output location exactly
as it was before (absent stays absent, a user's folder untouched, nothing that looks finished).
"""

from __future__ import annotations

import json
import logging
import os
import runpy
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from conftest import CONFIGS, REPO

SFT_ROW = {"messages": [{"role": "user", "content": "Who keeps the lighthouse?"},
                        {"role": "assistant", "content": "Corwin Tallish keeps it."}]}  # fmt: skip
PAIR_ROW = {"prompt": [{"role": "user", "content": "Who keeps the lighthouse?"}],
            "chosen": [{"role": "assistant", "content": "Corwin Tallish."}],
            "rejected": [{"role": "assistant", "content": "No idea."}]}  # fmt: skip


@dataclass
class Case:
    name: str
    entry: str  # recipes/<entry>.py
    argv: list[str]  # placeholders: {tiny} {sft} {reward} {out} {tmp} {data} {pairs} {prompts} {user}
    expect: list[str]  # fragments of the one error line
    setup: str | None = None  # a function below that prepares files in tmp
    files: dict = field(default_factory=dict)  # relative path -> text (a YAML dict is dumped)
    code: int = 2


def _yaml(path: Path, data) -> None:
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)


SFT = ["--config", str(CONFIGS / "sft.yaml"), "--model_name_or_path", "{tiny}", "--output_dir", "{out}"]
CPT = ["--config", str(CONFIGS / "cpt.yaml"), "--model_name_or_path", "{tiny}", "--output_dir", "{out}"]
REWARD = ["--config", str(CONFIGS / "reward.yaml"), "--model_name_or_path", "{tiny}", "--output_dir", "{out}"]
PPO = ["--config", str(CONFIGS / "ppo.yaml"), "--model_name_or_path", "{sft}", "--reward_model_path", "{reward}",
       "--output_dir", "{out}", "--min_reward_accuracy", "0"]  # fmt: skip
EVAL = ["--config", str(CONFIGS / "eval.yaml"), "--output_dir", "{out}", "--max_rows", "2"]
PIPE = ["--config", str(CONFIGS / "pipeline.yaml"), "--model", "{tiny}", "--output_dir", "{out}"]
PUBLISH = ["--config", str(CONFIGS / "publish.yaml"), "--output_dir", "{out}", "--dry_run", "true"]
PLAN = ["--config", str(CONFIGS / "sft.yaml")]

CATALOGUE = [
    # ---- training recipes: values
    Case("sft_max_length_cuts_every_answer", "sft", SFT + ["--max_length", "16"], ["keep no assistant token", "max_length=16"]),
    Case("sft_zero_epochs", "sft", SFT + ["--num_train_epochs", "0"], ["num_train_epochs", "above 0"]),
    Case("sft_zero_learning_rate", "sft", SFT + ["--learning_rate", "0"], ["learning_rate", "above 0"]),
    Case("sft_negative_learning_rate", "sft", SFT + ["--learning_rate", "-1e-4"], ["learning_rate", "-0.0001"]),
    Case("sft_learning_rate_is_a_word", "sft", SFT + ["--learning_rate", "fast"], ["learning_rate", "must be a number", "'fast'"]),
    Case("sft_zero_max_steps", "sft", SFT + ["--max_steps", "0"], ["max_steps", "positive number of steps"]),
    Case("sft_zero_batch_size", "sft", SFT + ["--per_device_train_batch_size", "0"], ["per_device_train_batch_size", "positive"]),
    Case("sft_dropout_above_one", "sft", SFT + ["--lora_dropout", "1.5"], ["lora_dropout", "[0, 1)"]),
    Case("sft_flag_without_value", "sft", SFT + ["--max_steps"], ["--max_steps needs a value"]),
    Case("sft_unknown_flag", "sft", SFT + ["--learning_rat", "1e-4"], ["unknown key 'learning_rat' on the command line", "learning_rate"]),
    Case("sft_bf16_maybe", "sft", SFT + ["--bf16", "maybe"], ["bf16", "auto, true or false"]),
    Case("sft_half_precision_full_fine_tune", "sft", SFT + ["--use_peft", "false", "--dtype", "bfloat16"], ["use_peft: false with dtype: bfloat16"]),
    Case("sft_qlora_float32", "sft", SFT + ["--load_in_4bit", "true", "--max_steps", "1"], ["load_in_4bit: true needs dtype: bfloat16"]),
    # ---- training recipes: YAML
    Case("sft_yaml_list_for_batch_size", "sft", ["--config", "{tmp}/bad.yaml", "--model_name_or_path", "{tiny}", "--output_dir", "{out}"],
         ["per_device_train_batch_size", "bad.yaml", "must be an integer"], files={"bad.yaml": {"per_device_train_batch_size": [4, 8]}}),
    Case("sft_yaml_misspelt_key", "sft", ["--config", "{tmp}/bad.yaml", "--output_dir", "{out}"],
         ["unknown key 'learning_rat' in", "bad.yaml", "did you mean 'learning_rate'"], files={"bad.yaml": {"learning_rat": 1e-4}}),
    Case("sft_yaml_not_a_mapping", "sft", ["--config", "{tmp}/bad.yaml"], ["bad.yaml", "must hold a YAML mapping"], files={"bad.yaml": "- a\n- b\n"}),
    Case("sft_yaml_invalid", "sft", ["--config", "{tmp}/bad.yaml"], ["bad.yaml", "is not valid YAML"], files={"bad.yaml": "a: [1, 2\n"}),
    Case("sft_config_missing", "sft", ["--config", "{tmp}/missing.yaml"], ["missing.yaml", "does not exist"]),
    Case("sft_config_is_a_folder", "sft", ["--config", "{tmp}"], ["is a folder"]),
    # ---- training recipes: paths
    Case("sft_output_is_a_users_folder", "sft", SFT[:-1] + ["{user}"], ["is a folder this project did not write", "README.md"]),
    Case("sft_output_is_a_file", "sft", SFT[:-1] + ["{tmp}/a-file"], ["is a file"], files={"a-file": "x"}),
    Case("sft_output_read_only", "sft", SFT[:-1] + ["{tmp}/locked/out"], ["cannot be written", "read-only"], setup="read_only"),
    Case("sft_model_folder_missing", "sft", SFT[:2] + ["--model_name_or_path", "{tmp}/outputs/smollm2-135m/cpt", "--output_dir", "{out}"],
         ["model_name_or_path", "does not exist", "run the cpt stage first"]),
    Case("sft_model_folder_empty", "sft", SFT[:2] + ["--model_name_or_path", "{tmp}/empty", "--output_dir", "{out}"], ["is an empty folder"], setup="empty_folder"),
    Case("sft_model_is_a_reward_model", "sft", SFT[:2] + ["--model_name_or_path", "{reward}", "--output_dir", "{out}"], ["is a reward model", "causal language model"]),
    Case("sft_dataset_missing", "sft", SFT + ["--dataset_name", "{tmp}/nowhere/data"], ["dataset_name", "nowhere"]),
    Case("sft_dataset_empty_train", "sft", SFT + ["--dataset_name", "{tmp}/data", "--eval_strategy", "no"], ["train.jsonl is empty"], files={"data/train.jsonl": ""}),
    Case("sft_dataset_wrong_columns", "sft", SFT + ["--dataset_name", "{tmp}/data", "--eval_strategy", "no"], ["lacks column(s) messages"],
         files={"data/train.jsonl": '{"text": "hello"}\n'}),
    Case("sft_dataset_no_test_split", "sft", SFT + ["--dataset_name", "{tmp}/data", "--eval_strategy", "epoch"], ["no 'test' split", "eval_strategy: no"],
         files={"data/train.jsonl": json.dumps(SFT_ROW) + "\n"}),
    Case("cpt_dataset_is_a_file", "cpt", CPT + ["--dataset_name", "{tmp}/train.jsonl"], ["is a file"], files={"train.jsonl": '{"text": "a"}\n'}),
    # ---- reward model
    Case("reward_max_length_drops_most_pairs", "reward", REWARD + ["--max_length", "16"], ["longer than max_length=16", "would be dropped"]),
    Case("reward_lora_task_type", "reward", REWARD + ["--lora_task_type", "CAUSAL_LM"], ["lora_task_type: SEQ_CLS"]),
    Case("reward_zero_length_buckets", "reward", REWARD + ["--length_buckets", "0"], ["length_buckets", "positive"]),
    Case("reward_dataset_without_rejected", "reward", REWARD + ["--dataset_name", "{tmp}/data", "--eval_strategy", "no"], ["lacks column(s) rejected"],
         files={"data/train.jsonl": json.dumps({"prompt": "a", "chosen": "b"}) + "\n"}),
    # ---- PPO
    Case("ppo_before_sft_has_run", "ppo", ["--config", str(CONFIGS / "ppo.yaml"), "--output_dir", "{out}"],
         ["model_name_or_path=outputs/smollm2-135m/sft", "does not exist", "run the sft stage first"], setup="empty_cwd"),
    Case("ppo_reward_model_is_a_policy", "ppo", PPO[:4] + ["--reward_model_path", "{sft}", *PPO[6:]], ["reward_model_path", "is a causal lm", "needs a reward model"]),
    Case("ppo_embedded_model_as_reward_model", "ppo", PPO[:4] + ["--reward_model_path", "embedded:SmolLM2-135M-Instruct", *PPO[6:]],
         ["reward_model_path=embedded:", "needs a reward model"]),
    Case("ppo_empty_prompt", "ppo", PPO + ["--dataset_name", "{tmp}/prompts"], ["PPO prompt 1 of the train split", "[]"],
         files={"prompts/train.jsonl": '{"prompt": [{"role": "user", "content": "Hi?"}]}\n{"prompt": []}\n'}),
    Case("ppo_zero_response_length", "ppo", PPO + ["--response_length", "0"], ["response_length", "positive"]),
    Case("ppo_negative_kl", "ppo", PPO + ["--kl_coef", "-1"], ["kl_coef", "0 or more"]),
    Case("ppo_zero_temperature", "ppo", PPO + ["--temperature", "0"], ["temperature", "above 0"]),
    Case("ppo_mini_batches_do_not_divide", "ppo", PPO + ["--num_mini_batches", "3"], ["num_mini_batches=3 must divide"]),
    # ---- evaluation
    Case("eval_reward_model_as_a_model", "eval", EVAL + ["--models", '{sft: "{reward}"}'], ["models.sft", "is a reward model"]),
    Case("eval_policy_as_reward_model", "eval", EVAL + ["--models", '{base: "{tiny}"}', "--reward_model", "{sft}"], ["reward_model", "is a causal lm"]),
    Case("eval_model_folder_missing", "eval", EVAL + ["--models", '{sft: "{tmp}/outputs/x/sft"}'], ["models.sft", "does not exist", "run the sft stage first"]),
    Case("eval_output_read_only", "eval", EVAL[:2] + ["--output_dir", "{tmp}/locked/eval", "--models", '{base: "{tiny}"}'],
         ["cannot be written", "read-only"], setup="read_only"),
    Case("eval_judge_is_the_trained_reward_model", "eval", EVAL + ["--models", '{base: "{tiny}"}', "--reward_model", "{reward}", "--judge", "reward:{reward}"],
         ["is the reward model RL trained against"]),
    Case("eval_unknown_judge", "eval", EVAL + ["--models", '{base: "{tiny}"}', "--judge", "gpt"], ["judge: 'gpt' is not a judge"]),
    Case("eval_zero_max_rows", "eval", EVAL[:-2] + ["--max_rows", "0"], ["max_rows", "positive"]),
    Case("eval_models_not_a_mapping", "eval", EVAL + ["--models", "[a, b]"], ["models", "must be a mapping"]),
    # ---- pipeline
    Case("pipeline_unknown_stage_selected", "pipeline", PIPE + ["--stages", "sfft"], ["--stages names 'sfft'", "did you mean 'sft'"]),
    Case("pipeline_set_misspelt_key", "pipeline", PIPE + ["--set", "sft.learning_rat=1e-4"], ["stage 'sft'", "unknown key 'learning_rat'", "learning_rate"]),
    Case("pipeline_dotted_misspelt_key", "pipeline", PIPE + ["--sft.learning_rat", "1e-4"], ["stage 'sft'", "learning_rat"]),
    Case("pipeline_set_bad_value", "pipeline", PIPE + ["--set", "sft.learning_rate=fast"], ["stage 'sft'", "learning_rate", "'fast'"]),
    Case("pipeline_no_such_stage_override", "pipeline", PIPE + ["--sfft.learning_rate", "1e-4"], ["there is no stage 'sfft'", "did you mean 'sft'"]),
    Case("pipeline_set_without_equals", "pipeline", PIPE + ["--set", "sft.learning_rate"], ["must look like STAGE.KEY=VALUE"]),
    Case("pipeline_unknown_stage_in_yaml", "pipeline", ["--config", "{tmp}/p.yaml"], ["unknown stage 'sftt'", "did you mean 'sft'"],
         files={"p.yaml": {"output_dir": "out", "stages": [{"stage": "sftt"}]}}),
    Case("pipeline_bad_placeholder", "pipeline", ["--config", "{tmp}/p.yaml"], ["{outdir}", "{output_dir}, {model}"],
         files={"p.yaml": {"output_dir": "out", "stages": [{"stage": "sft", "config": str(CONFIGS / "sft.yaml"), "args": {"dataset_name": "{outdir}/x"}}]}}),
    Case("pipeline_args_not_a_mapping", "pipeline", ["--config", "{tmp}/p.yaml"], ["stages[0].args", "must be a mapping"],
         files={"p.yaml": {"output_dir": "out", "stages": [{"stage": "sft", "args": 5}]}}),
    Case("pipeline_precision_fp16", "pipeline", PIPE + ["--precision", "fp16"], ["precision", "'fp16'", "auto, bf16, float32"]),
    Case("pipeline_output_is_a_users_folder", "pipeline", PIPE[:-1] + ["{user}"], ["is a folder this project did not write"]),
    # ---- planner
    Case("plan_zero_batch_size", "plan", PLAN + ["--per_device_train_batch_size", "0"], ["per_device_train_batch_size", "positive"]),
    Case("plan_config_missing", "plan", ["--config", "{tmp}/missing.yaml"], ["missing.yaml", "does not exist"]),
    Case("plan_bad_device", "plan", PLAN + ["--device", "cuda:lots"], ["--device", "'lots'"]),
    # ---- publishing
    Case("publish_unfinished_model", "publish", PUBLISH + ["--model_path", "{tmp}/nothing"], ["model_path", "not a finished stage output"]),
    Case("publish_without_hub_id", "publish", PUBLISH[:-2] + ["--model_path", "{sft}"], ["hub_model_id is not set"]),
    Case("publish_output_is_a_users_folder", "publish", PUBLISH[:2] + ["--output_dir", "{user}", "--dry_run", "true", "--model_path", "{sft}"],
         ["is a folder this project did not write"]),
]  # fmt: skip


def _fake_stage_output(folder: Path, tiny: Path, kind: str, stage: str) -> Path:
    """A finished-looking stage output folder of the given kind (for the kind checks; nothing loads its weights)."""
    shutil.copytree(tiny, folder)
    lineage = {"stage": stage, "model_kind": kind, "model_name_or_path": str(tiny), "chain": [], "config": {},
               "metrics": {"eval_accuracy": 0.9}, "command": "python recipes/x.py"}  # fmt: skip
    (folder / "lineage.json").write_text(json.dumps(lineage))
    return folder


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, tiny_model_path):
    root = tmp_path_factory.mktemp("stage-outputs")
    return {
        "sft": _fake_stage_output(root / "sft", tiny_model_path, "causal_lm", "sft"),
        "reward": _fake_stage_output(root / "reward", tiny_model_path, "reward_model", "reward"),
    }


def _tree(folder: Path) -> dict:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.is_dir(), p.stat().st_size if p.is_file() else 0, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}  # fmt: skip


def run_recipe(entry: str, argv: list[str], capsys) -> tuple[int, str]:
    recipe = REPO / "recipes" / f"{entry}.py"
    # Handlers set up once (the root's by cli.run, transformers' own) keep the stderr of the test that ran first,
    # which capsys has closed by now: point every one at this test's (setStream would first flush the closed one).
    loggers = [logging.getLogger(), *(x for x in logging.Logger.manager.loggerDict.values() if hasattr(x, "handlers"))]
    for handler in (h for logger in loggers for h in logger.handlers):
        if type(handler) is logging.StreamHandler:
            handler.stream = sys.stderr
            if "flush" in vars(handler):  # transformers binds its handler's flush to the stderr of that moment
                handler.flush = sys.stderr.flush
    saved = sys.argv
    sys.argv = [str(recipe), *argv]
    try:
        with pytest.raises(SystemExit) as exited:
            runpy.run_path(str(recipe), run_name="__main__")
    finally:
        sys.argv = saved
    captured = capsys.readouterr()
    return exited.value.code, captured.err + captured.out


@pytest.mark.parametrize("case", CATALOGUE, ids=[c.name for c in CATALOGUE])
def test_bad_input(case, tmp_path, monkeypatch, capsys, tiny_model_path, outputs):
    user = tmp_path / "users-folder"
    user.mkdir()
    (user / "README.md").write_text("my notes\n")
    for name, content in case.files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        _yaml(tmp_path / name, content)
    if case.setup == "read_only":  # immutable: root (CI) passes permission bits, not this
        (tmp_path / "locked").mkdir()
        subprocess.run(["chattr", "+i", str(tmp_path / "locked")], check=True)
    elif case.setup == "empty_folder":
        (tmp_path / "empty").mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    if case.setup == "empty_cwd":  # run from a checkout where no stage has run yet
        shutil.copytree(REPO / "data", cwd / "data")
        monkeypatch.chdir(cwd)
    else:
        monkeypatch.chdir(REPO)
    values = {"tiny": str(tiny_model_path), "sft": str(outputs["sft"]), "reward": str(outputs["reward"]),
              "out": str(tmp_path / "out"), "tmp": str(tmp_path), "user": str(user)}  # fmt: skip
    argv = []
    for arg in case.argv:
        for key, value in values.items():
            arg = arg.replace("{" + key + "}", value)
        argv.append(arg)
    before = _tree(tmp_path)
    try:
        code, output = run_recipe(case.entry, argv, capsys)
    finally:
        if case.setup == "read_only":
            subprocess.run(["chattr", "-i", str(tmp_path / "locked")], check=True)
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert code == case.code, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert len(errors) == 1, output[-3000:]
    for fragment in case.expect:
        assert fragment in errors[0], f"{fragment!r} not in: {errors[0]}"
    assert _tree(tmp_path) == before, "a bad input must leave every folder as it was"
    assert (user / "README.md").read_text() == "my notes\n"


def test_catalogue_covers_every_entry_point_with_forty_cases_or_more():
    entries = {c.entry for c in CATALOGUE}
    assert entries == {"sft", "cpt", "reward", "ppo", "eval", "pipeline", "plan", "publish"}
    assert len(CATALOGUE) >= 40


def test_ctrl_c_mid_training_is_one_sentence_and_marks_nothing_finished(tmp_path, tiny_model_path):
    """A real SIGINT to a real SFT run: exit code 130, one line saying a rerun resumes, no lineage.json."""
    import signal
    import subprocess
    import time

    out = tmp_path / "sft"
    argv = [sys.executable, "recipes/sft.py", *[a.replace("{tiny}", str(tiny_model_path)).replace("{out}", str(out))
            for a in SFT], "--max_steps", "400", "--save_steps", "2", "--eval_strategy", "no"]  # fmt: skip
    # SIGINT as a terminal delivers it: a test run started in the background (`cmd &`) would hand it on ignored
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.time() + 240
    while not (out / "checkpoint-2" / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "timeout"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "interrupted" in errors[0] and "resumes from its last complete checkpoint" in errors[0]
    assert not (out / "lineage.json").exists()


def test_a_full_disk_is_one_sentence(tmp_path, monkeypatch, capsys):
    """ENOSPC while writing (simulated: no small filesystem can be mounted in CI, so the write raises it)."""
    import errno

    from rlhf_recipes import cli

    def fill_disk():
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "model.safetensors"))

    with pytest.raises(SystemExit) as exited:
        cli.run(fill_disk)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("error:") == 1 and "Traceback" not in err
    assert "the disk is full" in err and "model.safetensors" in err and "resumes" in err
