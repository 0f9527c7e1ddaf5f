"""KTO, the stage added the documented way (CONTRIBUTING.md): the data stage unpairs the demo's preference pairs (each
chosen answer desirable, each rejected one not), KTO trains two steps from its real YAML on the tiny model (LoRA
trained, the base untouched, the output loads back and generates), the comparison store exports thumbs up and down,
and the pipeline runs it as one more `rl:` algorithm."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CONFIGS, DEMO, REPO
from safetensors.torch import load_file

from rlhf_recipes import stages
from rlhf_recipes.errors import UserError


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def unpaired(tmp_path_factory, tokenizer_path):
    """The demo data stage's `unpaired` folder, prepared from configs/smollm2-135m/data.yaml."""
    out = tmp_path_factory.mktemp("data")
    argv = ["--config", str(CONFIGS / "data.yaml"), "--only", "unpaired", "--output_root", str(out),
            "--tokenizer", str(tokenizer_path)]  # fmt: skip
    import os

    cwd = os.getcwd()
    os.chdir(REPO)  # data.yaml's sources are relative to the repository
    try:
        stages.get("data").run(argv)
    finally:
        os.chdir(cwd)
    return out / "unpaired"


def test_the_data_stage_unpairs_the_demo_preferences(unpaired):
    pairs = lines(DEMO / "preferences" / "train.jsonl")
    rows = lines(unpaired / "train.jsonl")
    assert all(list(row) == ["prompt", "completion", "label"] for row in rows)
    desirable = {json.dumps(r["completion"]) for r in rows if r["label"]}
    undesirable = {json.dumps(r["completion"]) for r in rows if not r["label"]}
    # the same information DPO trains on: every kept pair's chosen answer is desirable, its rejected one is not
    kept = [p for p in pairs if json.dumps(p["chosen"]) in desirable]
    assert len(kept) > 0.9 * len(pairs)
    assert all(json.dumps(p["rejected"]) in undesirable for p in kept)
    assert 0.4 < sum(r["label"] for r in rows) / len(rows) < 0.6
    report = json.loads((unpaired / "report.json").read_text())
    assert report["kind"] == "unpaired"


def test_kto_trains_two_steps_from_its_yaml(unpaired, sft_and_reward, tmp_path):
    sft, _ = sft_and_reward
    out = tmp_path / "kto"
    stages.get("kto").run(
        ["--config", str(CONFIGS / "kto.yaml"), "--model_name_or_path", str(sft), "--dataset_name", str(unpaired),
         "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "2", "--max_length", "256",
         "--learning_rate", "1e-3", "--logging_steps", "1", "--save_strategy", "no"]
    )  # fmt: skip

    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["stage"] == "kto" and lineage["algorithm"]["name"] == "kto"
    assert [s["stage"] for s in lineage["chain"]] == ["sft", "kto"]
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert adapter and all("lora_" in key for key in adapter), "only LoRA weights are trained and saved"
    assert min(w.norm() for k, w in adapter.items() if "lora_B" in k) > 0, "LoRA's B matrices start at 0: trained"

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rlhf_recipes.models import load_tokenizer, resolve_model_path

    base_path = resolve_model_path(str(sft))  # the SFT model, its own adapter merged: the frozen base
    base = AutoModelForCausalLM.from_pretrained(base_path).eval()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), out).eval()
    tokenizer = load_tokenizer(base_path)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Who keeps the lighthouse?"}], add_generation_prompt=True, return_tensors="pt",
        return_dict=True,
    )  # fmt: skip
    with torch.no_grad():
        tuned = model(**inputs).logits
        with model.disable_adapter():
            frozen = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        original = base(**inputs).logits
    assert (tuned - frozen).abs().max() > 1e-4, "the adapter changes the output"
    torch.testing.assert_close(frozen, original, atol=0, rtol=0, msg="the base weights did not move")
    assert generated.shape[1] > inputs["input_ids"].shape[1]


def test_kto_needs_two_answers_a_batch_before_any_model_loads(sft_and_reward, tmp_path):
    with pytest.raises(UserError, match="per_device_train_batch_size is 1, but KTO .* 2 or more"):
        stages.get("kto").run(
            ["--config", str(CONFIGS / "kto.yaml"), "--model_name_or_path", str(sft_and_reward[0]), "--output_dir",
             str(tmp_path / "kto"), "--per_device_train_batch_size", "1"]
        )  # fmt: skip


def test_the_store_exports_thumbs_up_and_down(tmp_path):
    from rlhf_recipes.feedback.export import write_thumbs
    from rlhf_recipes.feedback.store import Store

    store = Store(str(tmp_path / "feedback.sqlite"))
    messages = [{"role": "user", "content": "Who keeps the lighthouse?"}]
    prompt_id = store.add_prompt(messages)
    ids = store.add_candidates(prompt_id, 1, ["Corwin.", "Maybe Corwin.", "No idea."], "sft")
    store.record(prompt_id, 1, "human", "alice", [[ids[0]], [ids[1]], [ids[2]]])
    report = write_thumbs(store, [1], str(tmp_path / "thumbs"))
    rows = lines(tmp_path / "thumbs" / "train.jsonl")
    assert report == {"rounds": [1], "answers": 2, "desirable": 1}
    assert [(r["completion"][0]["content"], r["label"]) for r in rows] == [("Corwin.", True), ("No idea.", False)]
    assert rows[0]["prompt"] == messages


def test_the_pipeline_runs_kto_as_one_more_rl_algorithm():
    from rlhf_recipes.pipeline import parse_argv

    config, _ = parse_argv(["--config", str(CONFIGS / "compare-rl.yaml"), "--output_dir", "/tmp/kto-pipeline"])
    kto = next(run for run in config.stages if run.stage == "kto")
    assert kto.args["dataset_name"] == "/tmp/kto-pipeline/data/unpaired" and "reward_model_path" not in kto.args
    assert kto.configs[1].beta == 0.1, "its command was parsed once, as its recipe parses it"
