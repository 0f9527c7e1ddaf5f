"""The benches' own parts, fast: the fresh-process harness, the synthetic data, the roofline of the precision used,
and the GPU check's planning part on CPU. The benches themselves take minutes to hours and are run by hand."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from bench import gpu_check, harness, memory, roofline, speed, synthetic
from rlhf_recipes.errors import UserError

# --- harness ---------------------------------------------------------------------------------------------------------


def test_a_fresh_process_run_records_its_own_peak_rss_and_time(tmp_path):
    touch_300_mib = "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"
    ballast = bytearray(900 * 2**20)  # a large parent (pytest late in a run is ~1.3 GiB): Linux would hand its
    ballast[::4096] = b"x" * len(ballast[::4096])  # high-water mark to a child it spawns directly
    record = harness.run_process([sys.executable, "-c", touch_300_mib], tmp_path / "run.log")
    assert record["returncode"] == 0
    assert 300 <= record["peak_rss_mib"] < 600  # the child's own peak, not this test process's
    assert record["wall_seconds"] > 0
    small = harness.run_process([sys.executable, "-c", "pass"], tmp_path / "small.log")
    assert small["peak_rss_mib"] < 200  # each run is measured on its own
    del ballast
    assert (
        harness.run_process([sys.executable, "-c", "raise SystemExit(5)"], tmp_path / "x.log", check=False)[
            "returncode"
        ]
        == 5
    )


def test_a_failed_or_overlong_run_raises_with_the_end_of_its_log(tmp_path):
    failing = [sys.executable, "-c", "print('the last words'); raise SystemExit(3)"]
    with pytest.raises(harness.BenchError, match=r"failed \(exit 3\)(.|\n)*the last words"):
        harness.run_process(failing, tmp_path / "fail.log")
    assert harness.run_process(failing, tmp_path / "fail.log", check=False)["returncode"] == 3
    with pytest.raises(harness.BenchError, match="ran past 1 s"):
        harness.run_process([sys.executable, "-c", "import time; time.sleep(30)"], tmp_path / "slow.log", timeout=1)


def test_setups_are_interleaved_round_by_round():
    order = harness.schedule({"trl-defaults": 1, "trl": 3, "ours": 3})
    assert order == [(0, "trl-defaults"), (0, "trl"), (0, "ours"), (1, "trl"), (1, "ours"), (2, "trl"), (2, "ours")]
    assert harness.summarise([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "runs": [3.0, 1.0, 2.0]}


def _trainer(bf16=False, fp16=False, weights="float32", ppo=None, precision=None):
    import torch

    module = {"trl": "trl.experimental.ppo.ppo_trainer", "ours": "rlhf_recipes.train.ppo.loop"}.get(ppo, "trl")
    cls = type("PPOTrainer" if ppo else "SFTTrainer", (), {"__module__": module})  # ours is a Trainer, not TRL's
    trainer = cls()
    trainer.args = SimpleNamespace(bf16=bf16, fp16=fp16, precision=precision)
    trainer.model = torch.nn.Linear(4, 4).to(getattr(torch, weights))
    trainer.accelerator = SimpleNamespace(device=torch.device("cpu"))
    return trainer


def test_the_compute_dtype_is_the_autocast_one_or_the_weights():
    assert harness.compute_dtype(_trainer(bf16=True)) == "bfloat16"  # Trainer autocasts (TRL's default bf16)
    assert harness.compute_dtype(_trainer()) == "float32"
    assert harness.compute_dtype(_trainer(weights="bfloat16")) == "bfloat16"  # bf16 weights, no autocast
    assert harness.compute_dtype(_trainer(bf16=True, ppo="trl")) == "float32"  # TRL's PPO loop never autocasts
    assert harness.compute_dtype(_trainer(bf16=True, ppo="ours")) == "bfloat16"  # the project's PPO autocasts


# --- synthetic data --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(embedded_model_path):
    from rlhf_recipes.models import load_tokenizer

    return load_tokenizer(str(embedded_model_path))


def test_synthetic_lengths_are_log_uniform_in_20_to_500_and_deterministic_by_seed(tokenizer):
    rows, lengths, loss_tokens = synthetic.Synthetic(tokenizer, seed=1).conversations(40)
    assert all(synthetic.MIN_TOKENS <= n <= synthetic.MAX_TOKENS for n in lengths)
    assert sorted(lengths)[len(lengths) // 2] < 200 < max(lengths)  # log-uniform: most short, some long
    assert all(0 < k < n for k, n in zip(loss_tokens, lengths))
    assert synthetic.Synthetic(tokenizer, seed=1).conversations(40)[0] == rows
    assert synthetic.Synthetic(tokenizer, seed=2).conversations(40)[0] != rows
    pairs, pair_lengths = synthetic.Synthetic(tokenizer, seed=1).pairs(5)
    assert all(synthetic.MIN_TOKENS <= n <= synthetic.MAX_TOKENS for n in pair_lengths)
    assert [m["role"] for m in pairs[0]["prompt"]] == ["system", "user"] and pairs[0]["chosen"][0][
        "role"
    ] == "assistant"


def test_synthetic_rows_hit_a_target_length_for_every_stage_kind(tokenizer):
    generator = synthetic.Synthetic(tokenizer, seed=0)
    _, lengths, _ = generator.conversations(3, target=300)
    assert all(296 <= n <= 300 for n in lengths)
    _, lengths = generator.prompts(3, target=64)
    assert all(60 <= n <= 64 for n in lengths)
    for columns, key in ((("text",), "text"), (("prompt",), "prompt"), (("chosen", "rejected"), "chosen")):
        assert key in generator.for_columns(columns, 1, 50)[0]
    with pytest.raises(ValueError, match="no synthetic rows"):
        generator.for_columns(("images",), 1)


# --- the roofline of the precision used ------------------------------------------------------------------------------


class FakeRates:
    rates = {"float32": 160.0, "bfloat16": 0.2}

    def gflops(self, dtype):
        return self.rates[dtype]


def test_each_setup_is_held_against_the_roofline_of_the_precision_it_ran_in():
    plan = {"flops_per_token": 1e9}
    record = {"speed": 10.0, "global_step": 1, "peak_rss_mib": 1000.0}
    bf16 = speed._setup_result([{**record, "compute_dtype": "bfloat16"}], 1, 8, plan, FakeRates())
    fp32 = speed._setup_result([{**record, "compute_dtype": "float32"}], None, 8, plan, FakeRates())
    assert bf16["roofline_gflops"] == 0.2 and fp32["roofline_gflops"] == 160.0
    assert bf16["roofline_fraction"]["median"] == pytest.approx(10 * 1e9 / 0.2e9)  # 50x its own, emulated, peak
    assert fp32["roofline_fraction"]["median"] == pytest.approx(10 * 1e9 / 160e9)
    assert roofline.fraction(100, 1e9, 200) == pytest.approx(0.5)


def test_a_forward_pass_counts_what_a_training_pass_counts_for_its_forward(tiny_model_path):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_model_path)
    lengths = [30, 177, 512]
    frozen = roofline.training_flops(config, lengths, [0, 0, 0], 16, False, trained_layers=0)  # no backward at all
    assert roofline.forward_flops(config, lengths) == pytest.approx(frozen)
    assert roofline.training_flops(config, lengths, [0, 0, 0], 16, False) > 2 * frozen  # a backward over every layer


def test_a_layers_products_are_measured_at_its_own_shapes_and_weighted_by_their_flops(tiny_model_path):
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(tiny_model_path)
    seen = []

    def rate(shape):
        seen.append(shape)
        return 200.0 if shape[2] == c.hidden_size else 50.0

    rates = roofline.layer_gemm_rate(c, 100, rate)
    hidden, inter = c.hidden_size, c.intermediate_size
    assert (100, hidden, inter) in seen and (100, inter, hidden) in seen and len(seen) == len(set(seen))  # each once
    kv = c.num_key_value_heads * c.hidden_size // c.num_attention_heads
    to_hidden = 2 * hidden * hidden + inter * hidden  # q, o and down (width `hidden` out): 200 GFLOP/s
    other = 2 * hidden * kv + 2 * hidden * inter  # k, v, gate, up: 50
    assert rates["layer"] == pytest.approx((to_hidden + other) / (to_hidden / 200 + other / 50))


def test_ours_overrides_are_parsed_only_by_the_tasks_run(tmp_path, tiny_model_path):
    """`--ours --length_buckets 8` is a reward key: the SFT stage would refuse it, so a reward-only run plans no SFT."""
    args = SimpleNamespace(ours=["--length_buckets", "8"], reward_config=str(speed.CONFIGS / "reward.yaml"),
                           ppo_episodes=8, capped_steps=1)  # fmt: skip
    made = {"reward_data": "pairs", "reward_lengths": [40, 60], "sft_data": "conversations", "sft_lengths": [50]}
    made |= {"sft_loss_tokens": [10], "ppo_data": "prompts"}
    machine = {"chosen": {"bf16": False}, "native_bf16": True}
    planned = speed.plans(args, made, str(tiny_model_path), None, machine, ("reward",))
    assert "sft" not in planned and planned["reward"]["flops_per_token"]["ours"] > 0
    with pytest.raises(UserError, match="unknown key 'length_buckets'"):
        speed.plans(args, made, str(tiny_model_path), None, machine, ("sft", "reward"))


def test_a_bench_given_a_model_path_that_does_not_exist_says_so_in_one_line(tmp_path, capsys):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(SystemExit) as exit_info:
        harness.main(lambda: roofline.main(["--model", missing]))
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip() == (
        f"bench: model_name_or_path={missing} does not exist and is no Hub id; pass a finished stage's output folder, "
        "a model folder, a Hub id or embedded:SmolLM2-135M-Instruct."
    )


def test_the_speed_table_names_the_machine_the_dtypes_and_each_roofline():
    entry = {"speed": harness.summarise([5.0]), "runs": 1, "peak_rss_mib": harness.summarise([900.0])}
    entry |= {"optimizer_steps": 1, "examples_per_step": 8.0, "roofline_speed": 3.0}
    setups = {
        "trl-defaults": {**entry, "compute_dtype": "bfloat16", "capped_steps": 1},
        "trl": {**entry, "compute_dtype": "float32", "capped_steps": None},
        "ours": {**entry, "compute_dtype": "float32", "capped_steps": None},
    }
    for setup in setups.values():
        setup["roofline_fraction"] = harness.summarise([0.5])
    results = {
        "machine": {"cpu": "AMD EPYC", "cores": 2, "capability": "AVX2", "native_bf16": False},
        "matmul_gflops": {
            "float32": {"gflops": 160.0, "min": 150.0, "max": 170.0, "samples": 3, "size": 2048},
            "bfloat16": {"gflops": 0.2, "min": 0.2, "max": 0.2, "samples": 1, "size": 512},
        },
        "sft": {"unit": "real tokens/s", "same_as": {}, "setups": setups, "flops_per_token": 1e9, "commit": "abc"},
        "data": {"sft_conversations": 8},
    }
    results["machine"]["chosen"] = {"dtype": "float32", "reason": "auto -> float32 (cpu AVX2: no native bf16)"}
    table = speed.markdown(results)
    assert "CPU capability AVX2; native bf16: no" in table
    assert "float32 160 GFLOP/s" in table and "bfloat16 0.20 GFLOP/s" in table
    assert "| sft | compute dtype | bfloat16 | float32 | float32 |" in table
    assert "0.500 of bfloat16" in table and "capped: 1 run of 1 optimizer step" in table


def test_the_memory_bench_fits_the_step_factor_from_a_plan():
    # fixed 1.0 GiB + 1.6 x step 1.0 GiB = 2.6 planned; a peak of 2.4 means a factor of 1.4
    plan = {"total_gib": 2.6, "items": [{"component": "allocator overhead on per-step memory (glibc)", "gib": 0.6}]}
    assert memory.fitted_factor(plan, 2.4, 1.6) == pytest.approx(1.4)
    assert memory.fitted_factor({"total_gib": 1.0, "items": []}, 1.0, 1.6) is None


# --- the GPU check, on CPU -------------------------------------------------------------------------------------------


def test_the_gpu_check_plans_every_stage_at_both_sizes_without_a_gpu():
    rows = gpu_check.plan_checks()
    planned = {(row["model"], row["stage"]): row["planned_gib"] for row in rows}
    trained = ("cpt", "sft", "reward", "ppo", "grpo", "rloo", "online_dpo", "dpo", "kto")  # each training stage
    assert set(planned) == {(model, stage) for model in ("1.5b", "7b") for stage in trained}
    assert all(planned["7b", stage] > planned["1.5b", stage] > 0 for stage in trained)
    assert planned["7b", "ppo"] < gpu_check.PPO_LIMIT_GIB  # what the 7B PPO config promises, and the check measures


def test_the_gpu_check_says_plainly_that_there_is_no_gpu(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main([])
    assert exit_info.value.code == 1
    assert "this machine has no CUDA GPU" in capsys.readouterr().out


def test_the_rl_bench_gives_every_setup_the_same_work_and_parses_as_each_command_will(tmp_path):
    """bench/rl_speed.py: ours parses as its recipe will (the registry), TRL's as `trl grpo` / `trl rloo` will; the
    work (completions per step, group size, completion length, steps, LoRA) is the same in every setup."""
    from trl.scripts import grpo, rloo

    from bench import rl_speed
    from rlhf_recipes import stages

    for task, script in (("grpo", grpo), ("rloo", rloo)):
        parsed = {}
        for setup in rl_speed.SETUPS:
            command = rl_speed.argv(task, setup, 4, "data", "model", "reward", tmp_path / setup, bf16=False)
            if setup == "ours":
                _, training, model = stages.get(task).parse_args(command, check_paths=False)
            else:
                _, training, model, _ = script.make_parser().parse_args_and_config(
                    command, fail_with_unknown_args=True
                )
            parsed[setup] = (training, model)
        for training, model in parsed.values():
            assert (training.per_device_train_batch_size, training.num_generations, training.max_completion_length,
                    training.max_steps, model.lora_r, model.use_peft) == (8, 4, 48, 4, 16, True)  # fmt: skip
            assert model.lora_target_modules == parsed["ours"][1].lora_target_modules
            assert model.lora_alpha == parsed["ours"][1].lora_alpha
        assert parsed["trl-defaults"][0].bf16 is True  # what a user typing `trl grpo` gets
        assert parsed["trl"][0].bf16 is False and parsed["trl"][0].beta == parsed["ours"][0].beta


def test_the_ppo_bench_baseline_trains_the_same_adapter_as_ours(tmp_path):
    """bench.speed and bench.ppo_memory give TRL's PPO example ppo.yaml's LoRA shape, not peft's q_proj/v_proj."""
    from bench import speed, trl_ppo_example
    from rlhf_recipes import stages

    _, _, ours = stages.get("ppo").parse_args(
        speed.ppo_argv("ours", "data", "model", "reward", tmp_path, 8), check_paths=False
    )
    theirs = trl_ppo_example.parse_args(speed.ppo_argv("trl-defaults", "data", "model", "reward", tmp_path, 8))
    assert ours.use_peft and theirs.use_peft
    assert (theirs.lora_r, theirs.lora_alpha) == (ours.lora_r, ours.lora_alpha)
    assert theirs.lora_target_modules == ours.lora_target_modules and len(ours.lora_target_modules) == 7


def test_the_speed_table_holds_ppo_to_its_speed_and_memory_targets():
    def entry(speeds, rss):
        return {"speed": harness.summarise(speeds), "runs": len(speeds), "peak_rss_mib": harness.summarise(rss),
                "compute_dtype": "float32", "capped_steps": None}  # fmt: skip

    results = {
        "machine": {"cpu": "AMD EPYC", "cores": 2, "capability": "AVX2", "native_bf16": False,
                    "chosen": {"dtype": "float32", "reason": "auto"}},  # fmt: skip
        "matmul_gflops": {"float32": {"gflops": 90.0, "min": 90.0, "max": 90.0, "samples": 1, "size": 2048}},
        "ppo": {"unit": "episodes/s", "same_as": {"trl": "trl-defaults"}, "commit": "abc",
                "setups": {"trl-defaults": entry([0.1, 0.1], [1000, 1200]), "ours": entry([0.2, 0.3], [400, 600])}},
        "data": {"ppo_prompts": 8},
    }  # fmt: skip
    results["ppo"]["setups"]["trl"] = results["ppo"]["setups"]["trl-defaults"]
    for base in ("trl-defaults", "trl"):  # as run_task computes them, run by run
        results["ppo"][f"ours_vs_{base}"] = speed.paired_ratio(results["ppo"]["setups"], base, "speed")
        results["ppo"][f"ours_rss_vs_{base}"] = speed.paired_ratio(results["ppo"]["setups"], base, "peak_rss_mib")
    table = speed.markdown(results)
    assert "| ppo | episodes/s | 0.100 (0.100-0.100) | same run as TRL defaults | 0.250 (0.200-0.300) |" in table
    assert "2.50 (2.00-3.00) | 2.50 (2.00-3.00) | 2.5x |" in table
    assert "| ppo | peak RSS, MiB | 1100 (1000-1200) | 1100 (1000-1200) | 500 (400-600) | 0.45 (0.40-0.50) |" in table
    assert table.rstrip().splitlines()[0].startswith("Machine: AMD EPYC")
    assert "<= 0.5x |" in table
    assert "measured on another machine" not in table  # no machine of its own: the header's
    results["ppo"]["machine"] = {**results["machine"], "capability": "AVX512", "native_bf16": True}
    results["ppo"]["matmul_gflops"] = {"float32": {"gflops": 159.0}}
    assert "ppo was measured on another machine: AMD EPYC, 2 cores, CPU capability AVX512, native bf16: yes" in (
        speed.markdown(results)
    )
