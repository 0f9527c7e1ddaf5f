"""Publishing on the tiny model: the card round-trips, merges match base + adapter, dry runs push nothing, a missing
token or network is one sentence that keeps the staged folder, and the token is written nowhere.

No test reaches the Hub. The failure paths run the real huggingface_hub code against HF_HUB_OFFLINE or an endpoint
that refuses connections; only the successful push of a stage (test_stage_push_is_one_upload_with_our_card) mocks
`HfApi`, because nothing real can accept an upload here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import CONFIGS, DEMO, REPO
from test_stages import run_stage

from rlhf_recipes import stages
from rlhf_recipes.errors import UserError
from rlhf_recipes.models import read_lineage, resolve_model_path
from rlhf_recipes.publish import cards, hub, inputs

TOKEN = "hf_rlhfRecipesTestToken0123456789abcdef"  # a fake token: every test that writes files looks for it
PUBLISH_YAML = CONFIGS / "publish.yaml"
QUICK_CHECK = "--parity_samples 1 --parity_max_new_tokens 1"


def publish(*overrides: str) -> dict:
    """recipes/publish.py on the real publish.yaml with `overrides`, in-process through the registry."""
    return stages.get("publish").run(["--config", str(PUBLISH_YAML), *overrides])


def files_containing(folder: Path, needle: str) -> list[str]:
    return [str(p) for p in Path(folder).rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


@pytest.fixture(autouse=True)
def no_cached_login(monkeypatch, tmp_path):
    """No test may find the developer's own token; each sets HF_TOKEN itself when it wants one."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


@pytest.fixture(scope="module")
def sft_lora(tmp_path_factory, tiny_model_path):
    output_dir = tmp_path_factory.mktemp("sft-lora")
    run_stage("sft", tiny_model_path, output_dir, "--eval_strategy", "no")
    return output_dir


@pytest.fixture(scope="module")
def cpt_qlora(tmp_path_factory, tiny_model_path):
    output_dir = tmp_path_factory.mktemp("cpt-qlora")
    qlora = "--load_in_4bit true --dtype bfloat16 --bnb_4bit_quant_type nf4 --eval_strategy no --learning_rate 1e-2"
    run_stage("cpt", tiny_model_path, output_dir, *qlora.split())
    return output_dir


@pytest.fixture()
def card_inputs(tmp_path, sft_lora):
    """An evaluation folder (eval.json with the contract's fields, report.md, a plot), a data report folder (report.json,
    report.md, histogram) and one extra plot, laid out as recipes/eval.py and recipes/prepare_data.py write them."""
    png = sft_lora / cards.TRAINING_CURVES
    results = [
        {"stage": "base", "task": "domain-qa", "dataset": "data/demo/qa", "metric": "accuracy", "value": 0.05},
        {"stage": "sft", "task": "domain-qa", "dataset": "data/demo/qa", "metric": "accuracy", "value": 0.42},
        {"stage": "sft", "task": "perplexity", "dataset": "data/demo/sft", "metric": "perplexity", "value": 7.5},
    ]
    evaluation, report = tmp_path / "eval" / "eval.json", tmp_path / "data" / "report.json"
    for folder, image in ((evaluation.parent, "loss_curves.png"), (report.parent, "token_lengths.png")):
        folder.mkdir()
        shutil.copy(png, folder / image)
        (folder / "report.md").write_text(f"# Report\n\n![plot]({image})\n")
    evaluation.write_text(json.dumps({"results": results, "plots": ["loss_curves.png"]}))
    splits = {"train": {"rows_in": 400, "rows_out": 391, "dropped": {"exact_duplicate": {"count": 9}}}}
    report.write_text(
        json.dumps({"name": "sft", "kind": "messages", "histogram": "token_lengths.png", "splits": splits})
    )
    shutil.copy(png, tmp_path / "extra.png")
    return SimpleNamespace(eval=evaluation, report=report, plot=tmp_path / "extra.png", results=results)


# ----------------------------------------------------------------------------------------------------- the card
def test_stage_output_gets_the_card_and_it_round_trips(sft_lora):
    from huggingface_hub import ModelCard

    card = ModelCard.load(sft_lora / "README.md")
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "text-generation"
    assert {"rlhf-recipes", "sft", "lora"} <= set(card.data.tags)
    assert card.data.base_model is None  # the tiny base is a local folder: no Hub id to name
    assert "Not evaluated" in card.text and "| 1 | sft | `data/demo/sft` |" in card.text
    assert "Model Card for Model ID" not in card.text  # peft's draft README was replaced
    assert read_lineage(sft_lora)["command"].split()[0] in card.text  # the reproduce section has the command
    assert (sft_lora / cards.TRAINING_CURVES).stat().st_size > 1000


@pytest.mark.parametrize("kind", ["causal_lm", "reward_model"])
def test_card_metadata_and_model_index_survive_a_round_trip(kind, tmp_path, sft_lora, card_inputs):
    from huggingface_hub import ModelCard

    lineage = {**read_lineage(sft_lora), "model_kind": kind, "base_model": "embedded:SmolLM2-135M-Instruct"}
    lineage["command"] += f" --hub_token {TOKEN} --token={TOKEN[::-1]}"  # as if typed on the command line
    evaluation = cards.load_evaluation(str(card_inputs.eval))["results"]
    report = cards.load_data_report(str(card_inputs.report))
    card = cards.render_card(
        lineage, model_name="tiny-sft", published="merged", evaluation=evaluation, data_report=report
    )
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    assert loaded.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and loaded.data.license == "apache-2.0"
    assert loaded.data.library_name == "transformers"
    assert loaded.data.pipeline_tag == {"causal_lm": "text-generation", "reward_model": "text-classification"}[kind]
    own = [(r["task"], r["metric"], r["value"]) for r in card_inputs.results if r["stage"] == "sft"]
    assert [(e.task_name, e.metric_type, e.metric_value) for e in loaded.data.eval_results] == own
    assert loaded.data.model_name == "tiny-sft" and loaded.data.eval_results[0].dataset_type == "data/demo/qa"
    assert "| domain-qa | `data/demo/qa` | accuracy | 0.05 | 0.42 |" in loaded.text  # every stage side by side
    assert "| train | 400 | 391 | exact_duplicate: 9 |" in loaded.text
    assert TOKEN not in loaded.text and TOKEN[::-1] not in loaded.text and "--hub_token ***" in loaded.text


def test_evaluation_file_without_the_contract_fields_is_one_sentence(tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps({"results": [{"stage": "sft", "value": 1}]}))
    with pytest.raises(UserError, match=r"eval.json is not an evaluation file .*task, dataset, metric"):
        cards.load_evaluation(str(tmp_path / "eval.json"))
    assert cards.load_evaluation(str(tmp_path / "missing.json")) is None  # not there yet: "not evaluated"


# ------------------------------------------------------------------------------------------------ merge parity
def held_out_prompts(count=4):
    return inputs.read_prompts(str(DEMO / "qa" / "test.jsonl"), count)


def test_lora_merge_matches_base_plus_adapter_and_a_bad_merge_fails(tmp_path, sft_lora):
    from safetensors.torch import load_file, save_file

    merged = resolve_model_path(str(sft_lora))
    check = hub.check_merge(str(sft_lora), merged, held_out_prompts(), tolerance=1e-4, max_new_tokens=8)
    assert check["max_abs_logit_diff"] < 1e-4 and check["greedy_identical"] == check["prompts"] == 4
    assert check["adapter_effect"] > 100 * check["max_abs_logit_diff"]  # so the check can tell a lost adapter apart
    assert check["quantized_base_diff"] is None
    assert check["allowed"] == pytest.approx(1e-4 * max(1.0, check["adapter_effect"]))  # rounding scales with it
    broken = tmp_path / "broken"
    shutil.copytree(merged, broken)
    weights = load_file(str(broken / "model.safetensors"))
    name = next(k for k in weights if k.endswith("q_proj.weight"))
    weights[name] = weights[name] + 0.05  # what a merge with the wrong scaling or a missed layer would look like
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(
        UserError, match=r"the merged model's logits differ from base \+ adapter by .* merge_tolerance"
    ):
        hub.check_merge(str(sft_lora), str(broken), held_out_prompts(1), tolerance=1e-4, max_new_tokens=1)


def test_qlora_merge_matches_base_plus_adapter_on_the_float32_base(cpt_qlora):
    # The bfloat16 adapter of a 4-bit run is upcast and merged into the float32 base; base + adapter in float32 is
    # the same computation in another order, so the float32 tolerance holds. The 4-bit model training saw differs
    # by the NF4 rounding of every base weight: reported, and much larger.
    assert read_lineage(cpt_qlora)["adapter"]["method"] == "qlora"
    check = hub.check_merge(str(cpt_qlora), resolve_model_path(str(cpt_qlora)), held_out_prompts(2), 1e-4, 4)
    assert check["max_abs_logit_diff"] < 1e-4 and check["greedy_identical"] == 2
    assert check["quantized_base_diff"] > 100 * max(check["max_abs_logit_diff"], 1e-7)


# ------------------------------------------------------------------------------------------- staging and pushing
def test_dry_run_stages_merged_model_and_card_and_pushes_nothing(tmp_path, sft_lora, card_inputs, capsys, monkeypatch):
    from huggingface_hub import HfApi, ModelCard
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(HfApi, "__init__", lambda *a, **k: pytest.fail("a dry run must not talk to the Hub"))
    staged = tmp_path / "staged"
    publish(*f"--model_path {sft_lora} --output_dir {staged} --eval_path {card_inputs.eval} --data_report_path "
            f"{card_inputs.report} --plots {card_inputs.plot} --parity_samples 3 --parity_max_new_tokens 4 "
            "--hub_model_id me/tiny-sft --dry_run".split())  # fmt: skip
    files = {str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file()}
    expected = "model.safetensors config.json generation_config.json tokenizer.json README.md lineage.json "
    expected += "publish.json training_curves.png extra.png evaluation/eval.json evaluation/report.md "
    expected += (
        "evaluation/loss_curves.png data_report/report.json data_report/report.md data_report/token_lengths.png"
    )
    assert set(expected.split()) <= files
    assert not files & {"adapter_config.json", "adapter_model.safetensors", "training_args.bin", "trainer_state.json"}
    out = capsys.readouterr().out
    assert "Dry run: nothing pushed" in out and "me/tiny-sft (private, branch main)" in out
    assert "model.safetensors" in out and (staged / "README.md").read_text() in out  # the files and the whole card
    card = ModelCard.load(staged / "README.md")
    assert [e.metric_value for e in card.data.eval_results] == [0.42, 7.5]
    assert "greedy answers of 4 tokens identical for **3 of 3** prompts" in card.text
    links = (
        "training_curves.png extra.png evaluation/loss_curves.png evaluation/report.md data_report/token_lengths.png"
    )
    for link in (links + " data_report/report.md").split():
        assert f"({link})" in card.text
    manifest = json.loads((staged / "publish.json").read_text())
    assert manifest["published"] == "merged" and manifest["merge_check"]["prompts"] == 3
    assert AutoModelForCausalLM.from_pretrained(staged).num_parameters() > 0  # loads without peft
    assert files_containing(staged, TOKEN) == []
    # the same command again replaces its own staging (its copied eval.json and report.json are no stage's output)
    publish(*f"--model_path {sft_lora} --output_dir {staged} --eval_path {card_inputs.eval} --parity_samples 1 "
            "--parity_max_new_tokens 1 --data_report_path null --dry_run".split())  # fmt: skip
    assert not (staged / "data_report").exists() and (staged / "evaluation" / "eval.json").is_file()


def test_reward_model_publishes_merged_with_its_own_card(tmp_path, tiny_model_path, sft_lora):
    from huggingface_hub import ModelCard
    from transformers import AutoModelForSequenceClassification

    reward = tmp_path / "reward"
    run_stage("reward", tiny_model_path, reward, "--model_name_or_path", str(sft_lora), "--eval_strategy", "no")
    manifest = publish(*f"--model_path {reward} --output_dir {tmp_path / 'staged'} {QUICK_CHECK} --dry_run".split())
    check = manifest["merge_check"]
    assert check["max_abs_logit_diff"] < 1e-4 < check["adapter_effect"] and check["greedy_identical"] is None
    card = ModelCard.load(tmp_path / "staged" / "README.md")
    assert card.data.pipeline_tag == "text-classification" and "reward-model" in card.data.tags
    assert "maximum absolute score difference" in card.text and "| 2 | reward |" in card.text
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "staged")
    assert model.config.num_labels == 1  # the score head came along with the merge


def test_staging_replaces_only_its_own_folder(tmp_path):
    user_folder = tmp_path / "mine"
    user_folder.mkdir()
    (user_folder / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(UserError, match="is a folder this project did not write .notes.txt is in it."):
            with hub.staging(str(user_folder), overwrite=overwrite):
                pass
    assert (user_folder / "notes.txt").read_text() == "keep me"
    with pytest.raises(RuntimeError), hub.staging(str(tmp_path / "new"), overwrite=False) as folder:
        (folder / "half.bin").write_text("x")
        raise RuntimeError("interrupted")
    assert not (tmp_path / "new").exists() and [p.name for p in tmp_path.iterdir()] == ["mine"]
    # An earlier staging of ours: kept without overwrite, replaced with it
    ours = tmp_path / "ours"
    with hub.staging(str(ours), overwrite=False) as folder:
        (folder / "first.txt").write_text("1")
    with pytest.raises(UserError, match="already holds an earlier publish staging output; set overwrite: true"):
        with hub.staging(str(ours), overwrite=False):
            pass
    with hub.staging(str(ours), overwrite=True) as folder:
        (folder / "second.txt").write_text("2")
    assert (ours / "second.txt").is_file() and not (ours / "first.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "ours"]


def test_adapter_only_needs_a_base_others_can_load(tmp_path, sft_lora):
    with pytest.raises(UserError, match="merge: false publishes only the adapter, but its base .* is a local folder"):
        publish(*f"--model_path {sft_lora} --output_dir {tmp_path / 'out'} --merge false --dry_run".split())
    assert not (tmp_path / "out").exists()


def test_without_a_token_one_sentence_and_the_staged_folder_stays(tmp_path, sft_lora):
    staged = tmp_path / "staged"
    sentence = "no Hugging Face token: set HF_TOKEN or run `hf auth login`, then rerun; the staged folder {} is kept"
    with pytest.raises(UserError, match="^" + re.escape(sentence.format(staged)) + " intact for the next try.$"):
        publish(*f"--model_path {sft_lora} --output_dir {staged} --hub_model_id me/x {QUICK_CHECK}".split())
    assert (staged / "README.md").is_file() and (staged / "model.safetensors").is_file()


def test_offline_and_unreachable_hub_exit_2_with_one_line_and_write_no_token(tmp_path, sft_lora, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # HF_HUB_OFFLINE=1 is set for all tests (conftest.py)
    with pytest.raises(UserError, match=f"cannot push to the Hub while HF_HUB_OFFLINE is set.*{tmp_path} is kept"):
        hub.push_folder(tmp_path, "me/x", private=True, commit_message="never sent")
    # Online, but nothing listens at the endpoint: the real create_repo/whoami path fails to connect.
    staged = tmp_path / "staged"
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": TOKEN}
    env["HF_HOME"] = str(tmp_path / "hf-home")  # and no cached login either
    command = f"recipes/publish.py --config {PUBLISH_YAML} --model_path {sft_lora} --output_dir {staged} "
    command += f"--hub_model_id me/tiny-sft {QUICK_CHECK}"
    result = subprocess.run([sys.executable, *command.split()], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"error: cannot reach the Hugging Face Hub at http://127\.0\.0\.1:9 \(.*[Cc]onnection refused\); "
        f"the staged folder {re.escape(str(staged))} is kept intact for the next try\\.",
        last_line,
    ), last_line
    assert (staged / "README.md").is_file() and (staged / "model.safetensors").is_file()
    # The token scan: every file the project wrote (stage output, staged folder) and everything it printed.
    assert TOKEN not in result.stdout + result.stderr
    assert files_containing(staged, TOKEN) == [] and files_containing(sft_lora, TOKEN) == []


def test_stage_push_is_one_upload_with_our_card(tmp_path, tiny_model_path, monkeypatch):
    # Mocked: a successful upload needs a Hub, and nothing real can accept one here.
    from huggingface_hub import HfApi, constants

    calls = []

    def upload_folder(self, *, repo_id, folder_path, revision=None, ignore_patterns=None, **kwargs):
        readme = Path(folder_path, "README.md").read_text()
        calls.append({"repo_id": repo_id, "revision": revision, "ignore": ignore_patterns, "readme": readme})
        return SimpleNamespace(commit_url=f"https://hub.invalid/{repo_id}/commit/1", done=lambda: True)

    monkeypatch.setattr(HfApi, "whoami", lambda self, **k: {"name": "me"})
    create_repo = lambda self, repo_id, **k: calls.append({"create": repo_id, **k}) or SimpleNamespace(repo_id=repo_id)  # noqa: E731
    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", lambda self, repo_id, **k: calls.append({"branch": k["branch"]}))
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    push = (
        "--push_to_hub true --hub_model_id me/tiny-sft --hub_private_repo true --hub_revision exp --hub_strategy end"
    )
    run_stage("sft", tiny_model_path, tmp_path, "--eval_strategy", "no", *push.split())
    uploads = [c for c in calls if "readme" in c]
    assert len(uploads) == 1, "Trainer's own push in save_model must be off: one upload, ours"
    assert uploads[0]["repo_id"] == "me/tiny-sft" and uploads[0]["revision"] == "exp"
    assert "training_args.bin" in uploads[0]["ignore"] and "## Lineage" in uploads[0]["readme"]
    assert {"branch": "exp"} in calls and all(c.get("private") for c in calls if "create" in c)
    assert (tmp_path / "README.md").read_text() == uploads[0]["readme"]
    assert read_lineage(tmp_path)["config"]["push_to_hub"] is True  # the run's config is recorded as given
    assert files_containing(tmp_path, TOKEN) == []


def test_lineage_command_hides_a_token_given_on_the_command_line(monkeypatch):
    from rlhf_recipes.lineage import command_line

    monkeypatch.setattr("sys.argv", ["recipes/sft.py", "--hub_token", "hf_" + "x" * 34, "--max_steps", "5"])
    assert command_line().endswith("recipes/sft.py --hub_token *** --max_steps 5")


def test_the_card_draws_the_evaluation_report_s_training_curves():
    """One plotting function for training curves (KL on its own panel): the card's is the evaluation's."""
    from rlhf_recipes.evaluation import curves
    from rlhf_recipes.publish import cards

    assert (
        cards.plot_training_curves is curves.plot_training_curves and cards.TRAINING_CURVES == curves.TRAINING_CURVES
    )
