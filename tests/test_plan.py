"""The memory planner: runs on every shipped config without loading weights, says what fits, moves the right way.

No model is loaded here: parameter shapes come from the `meta` device and configs from the shipped copies. Every
config is found and parsed through the stage registry, as its recipe parses it.
"""

from __future__ import annotations

import hashlib
import json
import runpy

import pytest
import yaml
from conftest import CONFIGS, REPO

from rlhf_recipes import cli
from rlhf_recipes import plan as planner
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
    assert set(STAGE_NAMES) == {"cpt", "sft", "reward", "ppo"}
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
    plans = planner.plan_file(str(path), device=CPU)
    assert [p.stage for p in plans] == ["cpt", "sft", "reward", "ppo"]
    assert all("SmolLM2" in p.models[0] or "embedded" in p.models[0] for p in plans)
    assert "not written yet" in plans[-1].models[0]


def test_pipeline_overrides_go_to_the_stages_that_have_the_key():
    plans = planner.plan_file(str(CONFIGS / "pipeline.yaml"), ["--max_length", "128"], device=CPU)
    assert all("x 128 tokens" in p.setup for p in plans if p.stage != "ppo")  # PPO has no max_length
    with pytest.raises(cli.UserError, match="max_lenth"):
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
    full_ft = ["--use_peft", "false", "--load_in_4bit", "false", "--value_model_load_in_4bit", "false"]
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
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(argv, words, capsys):
    code, _, err = run_plan(argv, capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert all(word in lines[0] for word in words)
