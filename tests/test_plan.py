"""The memory planner: runs on every shipped config without loading weights, says what fits, moves the right way.

No model is loaded here: parameter shapes come from the `meta` device and configs from the shipped copies. Every
config is found and parsed through the stage registry, as its recipe parses it.
"""

from __future__ import annotations

import hashlib
import json
import runpy
import shutil

import pytest
import yaml
from conftest import CONFIGS, REPO

from rlhf_recipes import cli, errors, stages
from rlhf_recipes import plan as planner
from rlhf_recipes.plan import calibration
from rlhf_recipes.plan.run import plannable

GIB = 2**30
STAGE_NAMES = tuple(plannable())  # the registered stages with a planner hook: cpt, sft, reward, ppo
QWEN_7B = REPO / "configs" / "qwen2.5-7b-instruct"
QWEN_1_5B = REPO / "configs" / "qwen2.5-1.5b-instruct"
SHIPPED = sorted(p for p in (REPO / "configs").glob("*/*.yaml") if p.stem in STAGE_NAMES)
CPU = planner.Device.cpu(64 * GIB)


def item(plan, prefix: str) -> float:
    return sum(i.bytes for i in plan.items if i.component.startswith(prefix))


def test_shipped_configs_are_found():
    assert set(STAGE_NAMES) == {"cpt", "sft", "reward", "ppo", "grpo", "rloo", "online_dpo", "dpo", "kto"}
    assert {p.stem for p in SHIPPED if p.parent == CONFIGS} == set(STAGE_NAMES)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_stage_config_plans(path):
    on_cpu = yaml.safe_load(path.read_text()).get("use_cpu")
    plan = planner.plan_config(str(path), device="cpu:64GiB" if on_cpu else "cuda:80GiB")
    assert plan.stage == path.stem
    assert plan.total > 0.5 * GIB
    assert all(i.bytes >= 0 for i in plan.items)
    assert plan.fits is True
    text = plan.format()
    assert "config:" in text and "total (estimated peak)" in text


def test_pipeline_plans_every_training_stage_through_unwritten_outputs(tmp_path):
    # outputs that do not exist yet are followed back through the stages that write them
    pipeline = yaml.safe_load((CONFIGS / "pipeline.yaml").read_text())
    pipeline["output_dir"] = str(tmp_path / "out")
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline))
    for stage in CONFIGS.glob("*.yaml"):  # the stage configs it names lie next to it
        if stage.name != "pipeline.yaml":
            (tmp_path / stage.name).write_text(stage.read_text())
    plans = planner.plan_file(str(path), device=CPU)
    assert [p.stage for p in plans] == ["cpt", "sft", "reward", "ppo"]
    assert all("SmolLM2" in p.models[0] or "embedded" in p.models[0] for p in plans)
    assert "not written yet" in plans[-1].models[0]


def test_pipeline_overrides_go_to_the_stages_that_have_the_key():
    plans = planner.plan_file(str(CONFIGS / "pipeline.yaml"), ["--max_length", "128"], device=CPU)
    assert all("x 128 tokens" in p.setup for p in plans if p.stage != "ppo")  # PPO has no max_length
    with pytest.raises(errors.UserError, match="max_lenth"):
        planner.plan_file(str(CONFIGS / "pipeline.yaml"), ["--max_lenth", "128"], device=CPU)


@pytest.mark.skipif(not QWEN_7B.is_dir(), reason="no Qwen2.5-7B-Instruct configs")
@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_qwen_7b_qlora_fits_24_gib(stage):
    plan = planner.plan_config(str(QWEN_7B / f"{stage}.yaml"), device="cuda:24GiB")
    assert plan.fits, plan.format()
    assert "4-bit" in plan.models[0]
    assert "CUDA context" in [i.component for i in plan.items]


@pytest.mark.skipif(not QWEN_1_5B.is_dir(), reason="no Qwen2.5-1.5B-Instruct configs")
@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_qwen_1_5b_fits_12_gib(stage):
    plan = planner.plan_config(str(QWEN_1_5B / f"{stage}.yaml"), device="cuda:12GiB")
    assert plan.fits, plan.format()


@pytest.mark.skipif(not QWEN_1_5B.is_dir(), reason="no Qwen2.5-1.5B-Instruct configs")
def test_vllm_colocated_takes_its_share_of_the_gpu_in_the_plan():
    """use_vllm (colocate) reserves vllm_gpu_memory_utilization of the GPU on top of training; off, it does not."""
    config = str(QWEN_1_5B / "grpo.yaml")
    on = planner.plan_config(config, device="cuda:12GiB")
    off = planner.plan_config(config, ["--use_vllm", "false"], device="cuda:12GiB")
    vllm = [i.bytes for i in on.items if i.component.startswith("vLLM")]
    assert vllm == [pytest.approx(0.3 * 12 * 2**30)] and not [i for i in off.items if i.component.startswith("vLLM")]
    assert on.total == pytest.approx(off.total + vllm[0])


def _qwen_7b_sft(*overrides):
    """The shipped SmolLM2 SFT config pointed at Qwen2.5-7B-Instruct for a GPU (works before the Qwen configs exist)."""
    base = ["--model_name_or_path", "Qwen/Qwen2.5-7B-Instruct", "--use_cpu", "false", "--max_length", "1024"]
    return planner.plan_config(str(CONFIGS / "sft.yaml"), [*base, *overrides], device="cuda:24GiB")


def test_7b_full_fine_tune_in_float32_does_not_fit_24_gib_and_warns():
    plan = _qwen_7b_sft("--use_peft", "false", "--dtype", "float32", "--optim", "adamw_torch")
    assert plan.fits is False
    assert item(plan, "weights") == pytest.approx(7.6156e9 * 4, rel=0.01)  # 7.6B parameters x 4 bytes
    text = plan.format()
    assert "WARNING: sft needs" in text and "will not fit" in text
    assert "use_peft" in text  # the weights alone are too big: the advice is LoRA / 4-bit, not a smaller batch


def test_7b_qlora_fits_24_gib():
    plan = _qwen_7b_sft("--load_in_4bit", "true", "--dtype", "bfloat16", "--gradient_checkpointing", "true")
    assert plan.fits is True
    assert 4.5 * GIB < item(plan, "weights") < 6 * GIB  # published: ~5.5 GB for Qwen2.5-7B in NF4


def test_weights_4bit_below_bf16_below_fp32():
    four = item(_qwen_7b_sft("--load_in_4bit", "true", "--dtype", "bfloat16"), "weights")
    nested = item(
        _qwen_7b_sft("--load_in_4bit", "true", "--dtype", "bfloat16", "--use_bnb_nested_quant", "true"), "weights"
    )
    bf16 = item(_qwen_7b_sft("--dtype", "bfloat16"), "weights")
    fp32 = item(_qwen_7b_sft("--dtype", "float32"), "weights")
    assert nested < four < bf16 < fp32
    assert fp32 == pytest.approx(2 * bf16)


@pytest.mark.parametrize("stage", ["cpt", "sft", "reward"])
def test_monotone_in_batch_size_and_sequence_length(stage):
    config = str(CONFIGS / f"{stage}.yaml")
    by_batch = [
        planner.plan_config(config, ["--per_device_train_batch_size", str(b)], device=CPU).total for b in (1, 2, 4, 8)
    ]
    by_length = [
        planner.plan_config(config, ["--max_length", str(n)], device=CPU).total for n in (128, 256, 512, 1024)
    ]
    assert by_batch == sorted(by_batch) and len(set(by_batch)) == 4
    assert by_length == sorted(by_length) and len(set(by_length)) == 4


def test_ppo_monotone_in_response_length_and_batch():
    config = str(CONFIGS / "ppo.yaml")
    by_response = [planner.plan_config(config, ["--response_length", str(n)], device=CPU).total for n in (16, 64, 256)]
    by_batch = [
        planner.plan_config(config, ["--per_device_train_batch_size", str(b)], device=CPU).total for b in (1, 4, 16)
    ]
    assert by_response == sorted(by_response) and len(set(by_response)) == 3
    assert by_batch == sorted(by_batch) and len(set(by_batch)) == 3


def test_ppo_four_models_and_their_options():
    config = str(QWEN_7B / "ppo.yaml") if QWEN_7B.is_dir() else str(CONFIGS / "ppo.yaml")
    lora = planner.plan_config(config, ["--reward_model_load_in_4bit", "false"], device="cuda:80GiB")
    four_bit = planner.plan_config(config, ["--reward_model_load_in_4bit", "true"], device="cuda:80GiB")
    assert item(four_bit, "reward model weights") < item(lora, "reward model weights")
    assert item(lora, "reference model (policy with its adapter disabled)") == 0
    full_ft = [
        "--use_peft",
        "false",
        "--dtype",
        "float32",
        "--load_in_4bit",
        "false",
        "--value_model_load_in_4bit",
        "false",
    ]
    full = planner.plan_config(config, full_ft, device="cuda:80GiB")
    assert item(full, "reference model weights") == item(full, "policy weights")  # a second, frozen copy
    assert item(full, "value gradients") > 0  # without use_peft the value model trains every weight


def test_sequence_length_override_plans_a_shorter_batch():
    config = str(CONFIGS / "reward.yaml")
    worst = planner.plan_config(config, device=CPU)
    short = planner.plan_config(config, device=CPU, sequence_length=64)
    assert short.total < worst.total / 2
    assert "64 tokens" in short.setup


def test_calibration_still_matches_the_measured_peaks():
    """Every CPU run in bench/results/memory.json, planned again now, within 25% of its measured peak RSS."""
    results = json.loads((REPO / "bench" / "results" / "memory.json").read_text())
    stale = []
    for row in results["rows"]:
        config = REPO / row["plan"]["config"]
        if hashlib.sha256(config.read_bytes()).hexdigest() != row.get("config_sha256"):
            stale.append(row["stage"])
            continue
        # the run's own input folders may be gone: the config's models are the same architecture
        overrides = row["overrides"]
        dropped = {"--model_name_or_path", "--reward_model_path", "--dataset_name", "--output_dir"}
        kept = [x for i in range(0, len(overrides), 2) if overrides[i] not in dropped for x in overrides[i : i + 2]]
        plan = planner.plan_config(str(config), kept, device=CPU)
        measured = row["measured_peak_rss_gib"] * GIB
        assert abs(plan.total - measured) <= 0.25 * measured, (row["stage"], plan.total / GIB, measured / GIB)
    if stale:
        pytest.skip(f"configs changed since bench/memory.py measured {', '.join(stale)}: rerun it")


# --- The command line ------------------------------------------------------------------------------------------------


def run_plan(argv, capsys) -> tuple[int, str, str]:
    """recipes/plan.py in this process, run from its file as `python recipes/plan.py ARGV` would (never imported)."""
    recipe = runpy.run_path(str(REPO / "recipes" / "plan.py"), run_name="plan_recipe")
    try:
        cli.run(lambda: recipe["main"](argv))
        code = 0
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_plans_several_configs_and_strict_exits_1(capsys):
    code, out, _ = run_plan(
        ["--config", str(CONFIGS / "cpt.yaml"), "--config", str(CONFIGS / "sft.yaml"), "--device", "cpu:64GiB"], capsys
    )
    assert code == 0 and "== cpt" in out and "== sft" in out and "fits:" in out
    code, out, err = run_plan(
        ["--config", str(CONFIGS / "reward.yaml"), "--device", "cpu:1GiB", "--strict", "--json"], capsys
    )
    assert code == 1
    assert json.loads(out)[0]["fits"] is False
    assert "will not fit" in err


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--config", "configs/nope.yaml"], ["configs/nope.yaml", "does not exist"]),
        (["--config", str(CONFIGS / "data.yaml")], ["trains nothing"]),
        (["--config", str(CONFIGS / "sft.yaml"), "--learnin_rate", "4"], ["learnin_rate", "did you mean"]),
        (["--config", str(CONFIGS / "sft.yaml"), "--device", "tpu"], ["--device"]),
        (["--config", str(CONFIGS / "sft.yaml"), "--device", "cpu:0GiB"], ["0GiB"]),
        (["--config", str(CONFIGS / "sft.yaml"), "--device", "cpu:1.2.3GiB"], ["1.2.3GiB"]),
        (["--config", str(CONFIGS / "sft.yaml"), "--sequence_length", "0"], ["--sequence_length"]),
        (["--config", str(CONFIGS / "ppo.yaml"), "--prompt_length", "-4"], ["--prompt_length"]),
        (["--config", str(CONFIGS / "sft.yaml"), "--sequence_length", "long"], ["--sequence_length"]),
        (["--config", str(CONFIGS / "sft.yaml"), "--stage", "sfft"], ["--stage", "sfft"]),
        (["--device", "cpu"], ["--config"]),
        (["--config", str(CONFIGS / "sft.yaml"), "--learning_rate", "fast"], ["learning_rate", "fast"]),
        # issue 16: a batch of 0 used to "fit" in negative GiB; the loader's range check refuses it
        (
            ["--config", str(CONFIGS / "sft.yaml"), "--per_device_train_batch_size", "0"],
            ["per_device_train_batch_size"],
        ),
        (
            ["--config", str(CONFIGS / "ppo.yaml"), "--per_device_train_batch_size", "0"],
            ["per_device_train_batch_size"],
        ),
        (["--config", str(CONFIGS / "reward.yaml"), "--max_length", "-1"], ["max_length"]),
        (
            ["--config", str(CONFIGS / "pipeline.yaml"), "--per_device_train_batch_size", "0"],
            ["stage 'cpt'", "per_device_train_batch_size"],
        ),
        (["--config", str(CONFIGS / "pipeline.yaml"), "--sft.lerning_rate", "1"], ["lerning_rate", "did you mean"]),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(argv, words, capsys):
    code, out, err = run_plan(argv, capsys)
    assert code == 2 and "fits" not in out
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert all(word in lines[0] for word in words)


# --- The registry: a stage's entry is all the planner needs ----------------------------------------------------------


@pytest.mark.parametrize("like", ["sft", "reward"])
def test_a_throwaway_registered_stage_is_planned_with_no_other_change(like, tmp_path, capsys):
    """A new stage with the LM planner hook and a YAML named after it plans like the shipped stage it copies: what it
    makes (a reward model: a score head) and its columns (chosen + rejected: pairs) come from its registry entry."""
    shipped = stages.get(like)
    name = f"throwaway{like}"
    stages.register(
        stages.Stage(
            name,
            "a stage registered by a test",
            shipped.config_types,
            model_keys=dict(shipped.model_keys),
            makes=shipped.makes,
            columns=shipped.columns,
            plan="rlhf_recipes.plan.estimate:plan_lm_stage",
        )
    )
    try:
        config = tmp_path / f"{name}.yaml"
        shutil.copy(CONFIGS / f"{like}.yaml", config)
        [plan] = planner.plan_file(str(config), device=CPU)
        reference = planner.plan_config(str(CONFIGS / f"{like}.yaml"), device=CPU)
        assert plan.stage == name
        assert [(i.component, i.bytes) for i in plan.items] == [(i.component, i.bytes) for i in reference.items]
        code, out, _ = run_plan(["--config", str(config), "--device", "cpu:64GiB"], capsys)
        assert code == 0 and f"== {name}: {config}" in out and "fits:" in out
    finally:
        stages.unregister(name)


def test_plans_only_the_stages_with_a_hook(capsys):
    assert set(STAGE_NAMES) == {stage.name for stage in stages.all_stages() if stage.plan}
    code, _, err = run_plan(["--config", str(CONFIGS / "eval.yaml")], capsys)
    assert code == 2 and "trains nothing" in err


# --- Precision: the one the loader resolved for the machine (issue 11) -----------------------------------------------


def _machine(native: bool):
    return lambda use_cpu=False: ("cpu", "AMX" if native else "AVX2", native)


@pytest.mark.usefixtures("auto_from_hardware")
@pytest.mark.parametrize("native", [True, False])
def test_plan_uses_the_precision_resolved_for_the_machine(native, monkeypatch):
    from rlhf_recipes import precision

    monkeypatch.setattr(precision, "machine", _machine(native))
    plan = planner.plan_config(str(CONFIGS / "sft.yaml"), device=CPU)  # bf16: auto, dtype: float32
    copies = item(plan, "bf16/fp16 copies")
    assert (copies > 0) is native  # autocast copies only when bf16 resolved true
    assert plan.precision.startswith("bf16 compute" if native else "float32 compute")
    assert ("no native bf16" in plan.precision) is not native and "auto ->" in plan.precision
    assert plan.format().splitlines()[2].startswith("precision ")  # in the table's header
    # PPO's `dtype: compute` stores the frozen weights in the resolved precision
    ppo = planner.plan_config(str(CONFIGS / "ppo.yaml"), device=CPU)
    assert item(ppo, "policy weights") == pytest.approx(134.5e6 * (2 if native else 4), rel=0.01)


def test_explicit_bf16_is_honoured_and_warned_about_on_a_cpu_without_it(monkeypatch):
    from rlhf_recipes import precision

    monkeypatch.setattr(precision, "machine", _machine(False))
    forced = planner.plan_config(str(CONFIGS / "sft.yaml"), ["--bf16", "true"], device=CPU)
    assert item(forced, "bf16/fp16 copies") > 0 and "as configured" in forced.precision
    assert any("without native bf16" in note for note in forced.notes)
    monkeypatch.setattr(precision, "machine", _machine(True))
    off = planner.plan_config(str(CONFIGS / "sft.yaml"), ["--bf16", "false"], device=CPU)
    assert item(off, "bf16/fp16 copies") == 0 and off.precision.startswith("float32 compute")


def test_pipeline_precision_option_reaches_every_stage(monkeypatch):
    from rlhf_recipes import precision

    monkeypatch.setattr(precision, "machine", _machine(True))
    plans = planner.plan_file(str(CONFIGS / "pipeline.yaml"), ["--precision", "float32"], device=CPU)
    assert all(p.precision.startswith("float32 compute") for p in plans)
    assert all(item(p, "bf16/fp16 copies") == 0 for p in plans)


# --- Models resolved without loading them; calibration as data -------------------------------------------------------


def test_embedded_model_shape_is_the_converted_checkpoints(embedded_model_path):
    """The shipped config the planner reads for embedded:SmolLM2-135M-Instruct has the converted checkpoint's shape."""
    from rlhf_recipes.models import DEFAULT_MODEL
    from rlhf_recipes.plan.shapes import model_shape

    shipped, converted = model_shape(DEFAULT_MODEL), model_shape(str(embedded_model_path))
    for key in ("architecture", "params", "linear_params", "layers", "hidden", "heads", "kv_heads", "vocab"):
        assert getattr(shipped, key) == getattr(converted, key), key


def test_calibration_is_read_from_its_file_and_written_by_the_bench(tmp_path):
    plan = planner.plan_config(str(CONFIGS / "sft.yaml"), device=CPU)
    assert item(plan, "process") == calibration.value("CPU_PROCESS_BASELINE") == 0.95 * GIB
    assert all(entry["measured"] and entry["what"] for entry in calibration.load().values())
    copy = tmp_path / "calibration.json"
    shutil.copy(calibration.PATH, copy)
    calibration.write({"CPU_STEP_MEMORY_FACTOR": 1.55}, "bench/memory.py, a test", path=copy)
    written = calibration.load(copy)
    assert written["CPU_STEP_MEMORY_FACTOR"]["value"] == 1.55
    assert written["CPU_STEP_MEMORY_FACTOR"]["measured"] == "bench/memory.py, a test"
    assert written["CPU_PROCESS_BASELINE"] == calibration.load()["CPU_PROCESS_BASELINE"]
    with pytest.raises(KeyError):
        calibration.write({"CPU_STEP_MEMORY_FACTR": 1.5}, "typo", path=copy)
    with pytest.raises(ValueError):
        calibration.write({"CUDA_CONTEXT": -1}, "negative", path=copy)


def test_cpu_memory_is_read_from_the_machine():
    device = planner.Device.cpu()
    assert device.capacity and device.capacity > 0 and "available of" in device.label
