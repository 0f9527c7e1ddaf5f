"""Nothing lost: no stage writes into or replaces a folder that another stage made or that holds a store (fs.py's one
rule), checked on every entry point that has an output folder, on the three commands that used to delete a user's
rankings, on folders of earlier versions, and at the rename (a store that appears meanwhile is never replaced)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from conftest import CONFIGS, REPO
from test_bad_inputs_stages import _tree, run_recipe

from rlhf_recipes import fs, stages
from rlhf_recipes.errors import UserError


def _marked(folder: Path, stage: str, run: str | None = None, **files) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / fs.MARKER).write_text(json.dumps({"written_by": stage, "run": run}))
    for name, text in files.items():
        (folder / name.replace("__", ".")).write_text(text)
    return folder


def _store(path: Path) -> Path:
    """A small real SQLite store with one row (any SQLite file counts as a store)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE rankings (id INTEGER)")
        db.execute("INSERT INTO rankings VALUES (1)")
    return path


def _pipeline_folder(root: Path) -> Path:
    """What `make demo` then `make label` leave: the pipeline's folder with the store and a stage output in it."""
    folder = _marked(root, "pipeline", "run1", pipeline_manifest__json='{"stages": {}}')
    _store(folder / "feedback.sqlite")
    _marked(folder / "sft", "sft", "run1", lineage__json='{"stage": "sft", "model_kind": "causal_lm"}')
    return folder


# ------------------------------------------------------------------------------------------------ the rule itself
def test_a_stage_may_reuse_or_replace_only_what_it_made(tmp_path, monkeypatch):
    monkeypatch.delenv(fs.RUN_ENV, raising=False)
    sft = _marked(tmp_path / "sft", "sft", weights="x")
    assert fs.refusal(sft, "sft") is None
    assert "holds the output of the sft stage, which the grpo stage may not" in fs.refusal(sft, "grpo")
    pipeline = _pipeline_folder(tmp_path / "run")
    assert fs.refusal(pipeline, "pipeline") is None  # its own folder: reused, never replaced
    assert "is a pipeline's output folder" in fs.refusal(pipeline, "label")
    _store(sft / "feedback.sqlite")
    assert "holds the store feedback.sqlite" in fs.refusal(sft, "sft")
    label = _marked(tmp_path / "pairs", "label")
    _marked(label / "inner", "reward")
    assert "holds the output of the reward stage in inner/" in fs.refusal(label, "label")
    # A store under any name is told by its header; a run's marker names the run
    other = _marked(tmp_path / "collect", "collect", "run1")
    _store(other / "notes")
    assert "holds the store notes" in fs.refusal(other, "collect")
    (other / "notes").unlink()
    assert fs.refusal(other, "collect", run="run1") is None
    assert "made outside this pipeline run" in fs.refusal(other, "collect", run="run2")


def test_folders_of_earlier_versions_keep_their_stage(tmp_path):
    """Legacy markers: the old `written_by` words, lineage.json, eval.json, publish.json, the pipeline's manifest and
    the data report each name their stage; a marker without `run` passes a run check; an unreadable one is refused."""
    cases = {
        "pairs": ({fs.MARKER: '{"written_by": "preference pairs"}'}, "label"),
        "collect": ({fs.MARKER: '{"written_by": "collected answers"}'}, "collect"),
        "ppo": ({"lineage.json": '{"stage": "ppo"}', "adapter_model.safetensors": "x"}, "ppo"),
        "eval": ({"eval.json": "{}"}, "eval"),
        "publish": ({"publish.json": "{}", "lineage.json": '{"stage": "ppo"}'}, "publish"),
        "pipeline": ({"pipeline_manifest.json": "{}"}, "pipeline"),
        "data": ({"report.json": '{"generator": "rlhf_recipes.prepare_data"}'}, "data"),
    }
    for name, (files, stage) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        for file, text in files.items():
            (folder / file).write_text(text)
        assert fs.owner(folder).stage == stage and fs.owner(folder).legacy, name
        assert fs.refusal(folder, stage, run="any run") is None, name
        assert fs.refusal(folder, "grpo") is not None, name
    (tmp_path / "data-root").mkdir()  # an earlier version's data output_root: nothing but data outputs in it
    (tmp_path / "data").rename(tmp_path / "data-root" / "sft")
    assert fs.owner(tmp_path / "data-root") == fs.Owner("data", None, True)
    (tmp_path / "data-root" / "notes.txt").write_text("mine")
    assert fs.owner(tmp_path / "data-root") is None
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "lineage.json").write_text('{"stage": "sft"')  # cut short
    assert "which stage made it cannot be told" in fs.refusal(broken, "sft")
    fs.claim(tmp_path / "ppo", "ppo")  # an earlier version's folder gets a marker naming its stage now
    assert fs.owner(tmp_path / "ppo") == fs.Owner("ppo", None, False)


def test_a_publish_staging_with_copied_reports_is_still_publishs_own(tmp_path):
    """publish.py copies eval.json and a data report.json into subfolders: copies, not outputs of eval or data."""
    staged = _marked(tmp_path / "publish", "publish", publish__json="{}", lineage__json='{"stage": "ppo"}')
    (staged / "evaluation").mkdir()
    (staged / "evaluation" / "eval.json").write_text('{"results": []}')
    (staged / "data_report").mkdir()
    (staged / "data_report" / "report.json").write_text('{"generator": "rlhf_recipes.prepare_data"}')
    assert fs.refusal(staged, "publish") is None
    assert fs.check_output_folder(staged, "output_dir", "", what="publish staging", replace=True) == staged


def test_the_rename_checks_again_and_keeps_the_result_aside(tmp_path):
    """A store created in the target after the check (collect's store placed inside its own output): never replaced;
    the new result is kept beside it and named. An own folder is replaced as before."""
    target = tmp_path / "collect"
    with fs.build_aside(target, what="collect", replace=True) as folder:
        (folder / "collect.json").write_text("1")
    with fs.build_aside(target, what="collect", replace=True) as folder:  # its own: replaced
        (folder / "collect.json").write_text("2")
    assert (target / "collect.json").read_text() == "2"
    with pytest.raises(UserError, match=r"exists \(holds the store feedback.sqlite.*kept in .*collect.new-"):
        with fs.build_aside(target, what="collect", replace=True) as folder:
            (folder / "collect.json").write_text("3")
            _store(target / "feedback.sqlite")
    assert (target / "collect.json").read_text() == "2" and (target / "feedback.sqlite").is_file()
    with pytest.raises(UserError, match="holds the output of the sft stage"):
        with fs.build_aside(_marked(tmp_path / "sft", "sft", weights="w"), what="label", replace=True):
            pass
    assert (tmp_path / "sft" / "weights").read_text() == "w"


def test_a_stage_run_by_the_pipeline_names_the_run_in_its_marker(tmp_path, monkeypatch):
    monkeypatch.setenv(fs.RUN_ENV, "abc123")
    fs.claim(tmp_path / "sft", "sft")
    assert fs.owner(tmp_path / "sft") == fs.Owner("sft", "abc123", False)
    pipeline = _pipeline_folder(tmp_path / "run")
    assert fs.pipeline_run(pipeline) == "run1" and len(fs.pipeline_run(tmp_path / "new")) == 12


# ------------------------------------------------------------------------------------- every entry point, for real
@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model_path):
    root = tmp_path_factory.mktemp("ownership-inputs")
    for name, kind in (("sft", "causal_lm"), ("reward", "reward_model")):
        shutil.copytree(tiny_model_path, root / name)
        lineage = {"stage": name, "model_kind": kind, "model_name_or_path": str(tiny_model_path), "chain": [],
                   "config": {}, "metrics": {"eval_accuracy": 0.9}}  # fmt: skip
        (root / name / "lineage.json").write_text(json.dumps(lineage))
    (root / "f.jsonl").write_text(json.dumps({"prompt": "p", "responses": ["a", "b"], "ranks": [1, 2]}) + "\n")
    _store(root / "store" / "feedback.sqlite")
    return {"tiny": str(tiny_model_path), "sft": str(root / "sft"), "reward": str(root / "reward"), "root": root}


RL = ["--model_name_or_path", "{sft}", "--reward_model_path", "{reward}", "--output_dir", "{target}"]
ENTRY_POINTS = {  # recipe -> (argv, the stage its marker names)
    "prepare_data": (["--config", str(CONFIGS / "data.yaml"), "--output_root", "{tmp}/data", "--datasets.sft.output_dir", "{target}"], "data"),
    "cpt": (["--config", str(CONFIGS / "cpt.yaml"), "--model_name_or_path", "{tiny}", "--output_dir", "{target}"], "cpt"),
    "sft": (["--config", str(CONFIGS / "sft.yaml"), "--model_name_or_path", "{tiny}", "--output_dir", "{target}"], "sft"),
    "reward": (["--config", str(CONFIGS / "reward.yaml"), "--model_name_or_path", "{tiny}", "--output_dir", "{target}"], "reward"),
    "ppo": (["--config", str(CONFIGS / "ppo.yaml"), *RL], "ppo"),
    "grpo": (["--config", str(CONFIGS / "grpo.yaml"), *RL], "grpo"),
    "rloo": (["--config", str(CONFIGS / "rloo.yaml"), *RL], "rloo"),
    "online_dpo": (["--config", str(CONFIGS / "online_dpo.yaml"), *RL], "online_dpo"),
    "dpo": (["--config", str(CONFIGS / "dpo.yaml"), "--model_name_or_path", "{sft}", "--output_dir", "{target}"], "dpo"),
    "collect": (["--config", str(CONFIGS / "collect.yaml"), "--store", "{root}/store/feedback.sqlite", "--import_path", "{root}/f.jsonl",
                 "--import_format", "ranking", "--output_dir", "{target}"], "collect"),
    "label": (["--config", str(CONFIGS / "label.yaml"), "--store", "{root}/store/feedback.sqlite", "--ranker", "simulated",
               "--heldout_pairs", "null", "--output_dir", "{target}"], "label"),
    "eval": (["--config", str(CONFIGS / "eval.yaml"), "--models", '{base: "{tiny}"}', "--output_dir", "{target}"], "eval"),
    "publish": (["--config", str(CONFIGS / "publish.yaml"), "--model_path", "{sft}", "--dry_run", "true", "--output_dir", "{target}"], "publish"),
    "pipeline": (["--config", str(CONFIGS / "pipeline.yaml"), "--model", "{tiny}", "--output_dir", "{target}"], "pipeline"),
}  # fmt: skip
TARGETS = {
    "another_stages_output": "holds the output of the",
    "a_pipeline_folder_with_the_store": "is a pipeline's output folder",
    "its_own_folder_holding_a_store": "holds the store feedback.sqlite",
    "an_earlier_versions_stage_output": "holds the output of the",
}


def _target(kind: str, folder: Path, stage: str) -> None:
    other = "reward" if stage == "sft" else "sft"
    if kind == "another_stages_output":
        _marked(folder, other, weights="x")
    elif kind == "a_pipeline_folder_with_the_store":
        _pipeline_folder(folder)
    elif kind == "its_own_folder_holding_a_store":
        _marked(folder, stage, result="mine")
        _store(folder / "feedback.sqlite")
    else:  # no marker: an earlier version's output, told by its lineage.json
        folder.mkdir()
        (folder / "lineage.json").write_text(json.dumps({"stage": other, "model_kind": "causal_lm"}))


CASES = [
    (entry, kind)
    for entry in ENTRY_POINTS
    for kind in TARGETS
    if not (entry == "pipeline" and kind in ("a_pipeline_folder_with_the_store", "its_own_folder_holding_a_store"))
]


@pytest.mark.parametrize("entry,kind", CASES, ids=[f"{e}-{k}" for e, k in CASES])
def test_no_stage_writes_into_another_stages_folder_or_a_store(entry, kind, tmp_path, monkeypatch, capsys, inputs):
    monkeypatch.chdir(REPO)
    argv, stage = ENTRY_POINTS[entry]
    target = tmp_path / "target"
    _target(kind, target, stage)
    values = {"target": str(target), "tmp": str(tmp_path), **{k: str(v) for k, v in inputs.items()}}
    for key, value in values.items():
        argv = [a.replace("{" + key + "}", value) for a in argv]
    before, store_before = _tree(tmp_path), _tree(inputs["root"] / "store")
    code, output = run_recipe(entry, argv, capsys)
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert code == 2 and "Traceback" not in output and len(errors) == 1, output[-3000:]
    assert str(target) in errors[0] and TARGETS[kind] in errors[0], errors[0]
    assert _tree(tmp_path) == before and _tree(inputs["root"] / "store") == store_before


# ----------------------------------------------------------------------------- the three commands of issue 28
@pytest.fixture
def demo_checkout(tmp_path, monkeypatch, inputs):
    """A folder where `make demo` and a round of ranking ran: outputs/smollm2-135m with its store and stages."""
    folder = _pipeline_folder(tmp_path / "outputs" / "smollm2-135m")
    shutil.copytree(inputs["sft"], folder / "ppo")  # a finished stage output publish.yaml would publish
    monkeypatch.chdir(tmp_path)
    return folder


@pytest.mark.parametrize(
    "entry,argv",
    [
        (
            "label",
            [
                "--config",
                str(CONFIGS / "label.yaml"),
                "--ranker",
                "simulated",
                "--heldout_pairs",
                "null",
                "--output_dir",
                "outputs/smollm2-135m",
            ],
        ),
        ("publish", ["--config", str(CONFIGS / "publish.yaml"), "--dry_run", "--output_dir", "outputs/smollm2-135m"]),
    ],  # fmt: skip
    ids=["label_into_the_pipeline_folder", "publish_dry_run_into_the_pipeline_folder"],
)
def test_the_commands_that_deleted_every_ranking_now_refuse(entry, argv, demo_checkout, capsys):
    before = _tree(demo_checkout.parent.parent)
    code, output = run_recipe(entry, argv, capsys)
    assert code == 2 and "Traceback" not in output, output[-3000:]
    assert "error: output_dir=outputs/smollm2-135m on the command line is a pipeline's output folder" in output
    assert _tree(demo_checkout.parent.parent) == before


@pytest.mark.parametrize("existing", [False, True], ids=["new_folder", "folder_holding_the_store"])
def test_collect_never_deletes_the_store_it_imported_into(existing, tmp_path, monkeypatch, capsys, inputs):
    monkeypatch.chdir(tmp_path)
    if existing:
        _store(tmp_path / "D" / "feedback.sqlite")
    before = _tree(tmp_path)
    argv = ["--store", "D/feedback.sqlite", "--import_path", str(inputs["root"] / "f.jsonl"), "--import_format",
            "ranking", "--output_dir", "D"]  # fmt: skip
    code, output = run_recipe("collect", argv, capsys)
    assert code == 2 and "Traceback" not in output, output[-3000:]
    expected = "(feedback.sqlite is in it)" if existing else "store=D/feedback.sqlite lies inside output_dir=D"
    assert expected in output and _tree(tmp_path) == before


def test_label_and_collect_still_replace_their_own_folders(tmp_path, monkeypatch, capsys, inputs):
    """The rule refuses what it must and nothing more: a second import and export replace their own outputs."""
    monkeypatch.chdir(tmp_path)
    store = str(tmp_path / "feedback.sqlite")
    collect = ["--store", store, "--import_path", str(inputs["root"] / "f.jsonl"), "--import_format", "ranking",
               "--output_dir", "collect"]  # fmt: skip
    label = [
        "--store",
        store,
        "--ranker",
        "human",
        "--wait",
        "false",
        "--heldout_pairs",
        "null",
        "--output_dir",
        "pairs",
    ]
    for _ in range(2):
        stages.get("collect").run(collect)
        stages.get("label").run(label)
    assert fs.owner(tmp_path / "collect").stage == "collect" and fs.owner(tmp_path / "pairs").stage == "label"
    assert (tmp_path / "pairs" / "train.jsonl").is_file()
