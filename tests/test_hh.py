"""Issue 25: real preference data end to end. The HH-RLHF recipe (configs/hh-rlhf/) on its split of the shared pairs
and, at toy size, through every stage; TRL-format preference datasets by their Hub layouts (UltraFeedback binarized,
HH's strings, OpenAssistant trees) from small files written here; the evaluation's reward-model judge on another
tokenizer and template than the policy's; and each mistake a user can make here as one sentence."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CONFIGS, REPO

from rlhf_recipes import stages
from rlhf_recipes.errors import UserError

HH = REPO.parent / "shared" / "data" / "hh-rlhf"  # the 2,000 real pairs the recipe reads offline
HH_FILE = "harmless-base-test-first2000.jsonl.gz"
RECIPE = REPO / "configs" / "hh-rlhf"
EXAMPLES = REPO / "configs" / "data-examples"
TINY_TOP = r".*\.layers\.1\.(self_attn|mlp)\..*_proj"  # the tiny model has 2 layers: LoRA on its top one
needs_hh = pytest.mark.skipif(not (HH / HH_FILE).is_file(), reason=f"the shared HH-RLHF pairs are not at {HH}")


def hh_row(i: int) -> dict:
    """A short HH-style pair (two conversations as strings, the last reply differing); every third one two turns."""
    opening = f"\n\nHuman: Question {i} about item {i % 7}?\n\nAssistant: Which item {i}?" if i % 3 == 0 else ""
    prompt = f"{opening}\n\nHuman: Tell me about thing {i}, please."
    return {
        "chosen": f"{prompt}\n\nAssistant: Thing {i} is kind and safe.",
        "rejected": f"{prompt}\n\nAssistant: No. Go away {i}.",
    }


def write_jsonl_gz(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)
    return path


def prepare(argv: list[str]):
    return stages.get("data").run(argv)


# ------------------------------------------------------------------------------------------------ the HH recipe
@needs_hh
def test_the_hh_recipe_splits_the_shared_pairs_into_disjoint_sets(tmp_path, monkeypatch):
    """data.yaml on the real 2,000 pairs: the counts its comments give, every drop counted, no pair or held-out prompt
    in two roles, and the rows read named in the report."""
    monkeypatch.chdir(REPO)
    prepare(["--config", str(RECIPE / "data.yaml"), "--output_root", str(tmp_path)])

    def rows(name, split):
        return [json.loads(line) for line in (tmp_path / name / f"{split}.jsonl").read_text().splitlines()]

    counts = {(n, s): len(rows(n, s)) for n in ("preferences", "judge", "prompts") for s in ("train", "test")}
    assert counts == {("preferences", "train"): 765, ("preferences", "test"): 284, ("judge", "train"): 474,
                      ("judge", "test"): 284, ("prompts", "train"): 177, ("prompts", "test"): 85}  # fmt: skip
    key = json.dumps
    pairs = {
        n: {key([r["prompt"], r["chosen"], r["rejected"]]) for r in rows(*n)} for n in counts if n[0] != "prompts"
    }
    assert not pairs["preferences", "train"] & pairs["judge", "train"]
    assert not (pairs["preferences", "train"] | pairs["judge", "train"]) & pairs["preferences", "test"]
    assert pairs["preferences", "test"] == pairs["judge", "test"]  # both reward models held out on the same pairs
    held_out_prompts = {key(r["prompt"]) for r in rows("prompts", "test")}
    assert not held_out_prompts & {key(r["prompt"]) for r in rows("prompts", "train")}
    assert not held_out_prompts & {key(r["prompt"]) for n in ("preferences", "judge") for r in rows(n, "train")}
    report = json.loads((tmp_path / "preferences" / "report.json").read_text())
    assert [(s["source_split"], s["rows_loaded"], s["rows_in_split"]) for s in report["sources"][:2]] == [
        ("test[0:800]", 800, 2000), ("test[800:1100]", 300, 2000)
    ]  # fmt: skip
    train = report["splits"]["train"]
    assert train["rows_in"] - train["rows_out"] == sum(d["count"] for d in train["dropped"].values()) == 35


def test_the_hub_variants_differ_from_the_offline_recipe_only_where_the_data_comes_from():
    """pipeline-hub.yaml and data-hub.yaml are the offline files but for the data's source (no drift)."""
    read = {name: yaml.safe_load((RECIPE / name).read_text()) for name in
            ("pipeline.yaml", "pipeline-hub.yaml", "data.yaml", "data-hub.yaml")}  # fmt: skip
    offline, online = read["pipeline.yaml"], read["pipeline-hub.yaml"]
    assert offline["stages"][0]["config"] == "data.yaml" and online["stages"][0]["config"] == "data-hub.yaml"
    for stage in (offline["stages"][0], online["stages"][0]):
        stage.pop("config"), stage.pop("inputs", None)
    assert offline == online
    for name, dataset in read["data-hub.yaml"]["datasets"].items():
        for group, sources in dataset.items():
            if isinstance(sources, list):
                for source in sources:
                    assert source.pop("path") == "Anthropic/hh-rlhf" and source.pop("data_dir") == "harmless-base"
                    mirror = read["data.yaml"]["datasets"][name][group][sources.index(source)]
                    assert mirror.pop("path") == "../shared/data/hh-rlhf" and source == mirror
    assert read["data-hub.yaml"] == read["data.yaml"]


def test_the_hh_pipeline_runs_every_stage_at_toy_size(tmp_path, tiny_model_path, monkeypatch):
    """configs/hh-rlhf/pipeline.yaml unchanged but for step counts, on the tiny model and a stand-in for the shared
    file (2,000 short pairs in its layout, every source of data.yaml pointed at it): data, the reward model, the
    judge, GRPO from the model itself, and the evaluation against that model, judged by the judge."""
    stand_in = write_jsonl_gz(tmp_path / "hh-rlhf" / HH_FILE, [hh_row(i) for i in range(2000)]).parent
    work = tmp_path / "main"
    work.mkdir()
    monkeypatch.chdir(work)
    data = yaml.safe_load((RECIPE / "data.yaml").read_text())["datasets"]
    settings = [f"data.datasets.{name}.{group}.{i}.path={stand_in}" for name, spec in data.items()
                for group, sources in spec.items() if isinstance(sources, list) for i in range(len(sources))]  # fmt: skip
    assert len(settings) == 8
    settings += [f"reward.lora_target_modules={TINY_TOP}", f"judge.lora_target_modules={TINY_TOP}"]
    settings += ["reward.max_steps=2", "judge.max_steps=2", "grpo.max_steps=2", "grpo.max_completion_length=4",
                "grpo.min_reward_accuracy=0", "eval.max_new_tokens=4", "eval.max_rows=6", "eval.num_side_by_side=2"]  # fmt: skip
    argv = [
        "--config",
        str(RECIPE / "pipeline.yaml"),
        "--model",
        str(tiny_model_path),
        "--output_dir",
        str(work / "out"),
    ]
    rows = stages.get("pipeline").run(argv + ["--set", *settings])
    assert [r["stage"] for r in rows] == ["data", "reward", "judge", "grpo", "eval"]
    assert all(r["status"] == "ran" for r in rows)
    report = json.loads((work / "out" / "eval" / "eval.json").read_text())
    assert report["models"]["grpo"]["baseline"] == "base"  # no SFT: RL is compared with the model it started from
    found = {(r["stage"], r["task"], r["metric"]): r for r in report["results"]}
    for metric in ("judge_gain", "reward_gain"):
        assert found["grpo", "vs-base", metric]["n"] == 12  # 6 held-out prompts x 2 samples, paired
    for metric in ("kl_per_token", "refusal_share", "common_phrase_share", "cut_share", "mean_length"):
        assert ("grpo", "held-out-prompts", metric) in found
    reward = found["reward", "preference-pairs", "accuracy"]
    assert reward["n"] == 6 and reward["low"] <= reward["value"] <= reward["high"]
    judge = found["judge", "preference-pairs", "accuracy"]  # the judge's own held-out accuracy, from its lineage
    assert judge["n"] == 300 and judge["dataset"].endswith("data/judge")  # rows 800-1099, none dropped here
    judge_target = next(t for t in report["targets"] if "judge score" in t["target"])
    assert "CI > 0" in judge_target["target"]  # 2 toy steps may leave every answer as it was: then no interval
    assert set(judge_target["measured"] or {"gain", "interval_low"}) == {"gain", "interval_low"}
    assert judge_target["measured"] is not None or judge_target["met"] is None  # never "met" unmeasured
    assert ("base", "held-out-perplexity", "perplexity") not in found  # text_dataset: null
    text = (work / "out" / "eval" / "report.md").read_text()
    assert "judge " in text.split("## Sampled answers")[1] and "Most common 4 words" in text
    lineage = json.loads((work / "out" / "reward" / "lineage.json").read_text())
    assert lineage["metrics"]["eval_pairs"] == 300 and lineage["adapter"]["target_modules"].startswith(".*")
    assert json.loads((work / "out" / "judge" / "lineage.json").read_text())["config"]["seed"] == 7


@pytest.mark.parametrize("algorithm", ["ppo", "rloo"])
def test_the_hh_pipeline_takes_another_rl_algorithm(algorithm, monkeypatch):
    monkeypatch.chdir(REPO)
    config, _ = stages.get("pipeline").parse_args(["--config", str(RECIPE / "pipeline.yaml"), "--rl", algorithm])
    names = [run.name for run in config.stages]
    assert names == ["data", "reward", "judge", algorithm, "eval"]
    assert config.stages[-1].args["models"] == {"base": config.model, algorithm: f"outputs/hh-rlhf/{algorithm}"}


# ---------------------------------------------------------------------------------- slices, data_dir, mistakes
@pytest.fixture
def hh_repo(tmp_path) -> Path:
    """A folder in Anthropic/hh-rlhf's layout: a subset folder per kind of data, train and test files in each."""
    root = tmp_path / "hh-rlhf"
    for offset, subset in ((0, "harmless-base"), (1000, "helpful-base")):
        write_jsonl_gz(root / subset / "train.jsonl.gz", [hh_row(offset + i) for i in range(40)])
        write_jsonl_gz(root / subset / "test.jsonl.gz", [hh_row(offset + 100 + i) for i in range(30)])
    (root / "README.md").write_text("---\nlicense: mit\n---\n# HH-RLHF\n")
    return root


def _one_source(tmp_path, source: dict, kind: str = "preferences") -> list[str]:
    config = tmp_path / "one.data.yaml"
    config.write_text(yaml.safe_dump({
        "tokenizer": str(REPO / "tests"), "output_root": str(tmp_path / "out"),
        "cleaning": {"min_tokens": 1, "near_dedup": False}, "datasets": {"d": {"kind": kind, "sources": [source]}},
    }))  # fmt: skip
    return ["--config", str(config)]


def test_a_sliced_split_reads_its_rows_and_names_a_bad_record_by_its_line(tmp_path, hh_repo, tokenizer_path):
    source = {"path": str(hh_repo), "data_dir": "harmless-base", "split": "test[20:30]", "format": "hh"}
    argv = _one_source(tmp_path, source) + ["--tokenizer", str(tokenizer_path)]
    (report,) = prepare(argv)
    assert report["sources"][0]["rows_loaded"] == 10 and report["sources"][0]["rows_in_split"] == 30
    rows = [json.loads(line) for line in (tmp_path / "out" / "d" / "train.jsonl").read_text().splitlines()]
    assert sorted(int(r["prompt"][-1]["content"].split()[4].strip(",")) for r in rows) == list(range(120, 130))
    broken = [hh_row(100 + i) for i in range(30)]
    broken[25] = {"chosen": "no turns here", "rejected": "x"}
    write_jsonl_gz(hh_repo / "harmless-base" / "test.jsonl.gz", broken)
    with pytest.raises(UserError, match=r"test\.jsonl\.gz, line 26: field 'chosen' has no '\\n\\nAssistant:' turn"):
        prepare(argv + ["--overwrite", "true"])


MISTAKES = [  # (source, what the one sentence must say)
    ({"data_dir": "harmles-base", "split": "test"},
     r"data_dir .* is 'harmles-base', which is not a folder in .*hh-rlhf \(its folders: harmless-base, helpful-base\)"),
    ({"path": "{repo}/harmless-base/test.jsonl.gz", "data_dir": "harmless-base"},
     r"is 'harmless-base', but .*test.jsonl.gz is a file or pattern; data_dir names a subfolder"),
    ({"data_dir": "harmless-base", "split": "test[40:50]"},
     r"split .* is 'test\[40:50\]', which selects no row of .*: its split 'test' has 30 rows; fix the slice"),
    ({"data_dir": "harmless-base", "split": "test[a:b]"}, r"is 'test\[a:b\]'; give one split, optionally sliced"),
    ({"data_dir": "harmless-base", "split": "train+test"}, r"is 'train\+test'; give one split"),
    ({"data_dir": "harmless-base", "split": "validation"}, r"has no split 'validation' \(its splits: train, test\)"),
]  # fmt: skip


@pytest.mark.parametrize("source, sentence", MISTAKES, ids=lambda v: str(v)[:40] if isinstance(v, dict) else "")
def test_a_data_dir_or_split_that_does_not_exist_is_one_sentence(tmp_path, hh_repo, tokenizer_path, source, sentence):
    source = {"path": str(hh_repo), "format": "hh", **source}
    source["path"] = source["path"].replace("{repo}", str(hh_repo))
    with pytest.raises(UserError, match=sentence):
        prepare(_one_source(tmp_path, source) + ["--tokenizer", str(tokenizer_path)])


def test_a_hub_dataset_id_offline_is_one_sentence_with_exit_code_2(tmp_path):
    """data-hub.yaml on a machine without the Hub: exit 2, one line naming the id and how to go on, no traceback."""
    result = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "prepare_data.py"), "--config", str(RECIPE / "data-hub.yaml"),
         "--output_root", str(tmp_path / "out")],
        cwd=REPO, capture_output=True, text=True, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "Anthropic/hh-rlhf" in line and "is a Hub dataset id, and HF_HUB_OFFLINE is set" in line
    assert "hf download Anthropic/hh-rlhf --repo-type dataset" in line
    assert not list((tmp_path / "out").glob("*/train.jsonl"))  # no dataset written


def test_a_hub_data_dir_that_does_not_exist_is_one_sentence(tmp_path, tokenizer_path, monkeypatch):
    """The Hub's answer to a missing data_dir (datasets' words, as it says them online) becomes one sentence."""
    import datasets

    from rlhf_recipes import offline

    def load_dataset(path, *args, data_dir=None, **kwargs):
        if path != "Anthropic/hh-rlhf":
            return real(path, *args, data_dir=data_dir, **kwargs)
        raise FileNotFoundError(
            f"Unable to find 'hf://datasets/Anthropic/hh-rlhf@09be8c5/{data_dir}/' with any supported extension"
        )

    real = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(offline, "check", lambda *args, **kwargs: None)  # as if the Hub answered
    source = {"path": "Anthropic/hh-rlhf", "data_dir": "harmles-base", "split": "test", "format": "hh"}
    with pytest.raises(UserError, match=r"the Hub dataset Anthropic/hh-rlhf has no data in data_dir 'harmles-base'"):
        prepare(_one_source(tmp_path, source) + ["--tokenizer", str(tokenizer_path)])


# ------------------------------------------------------------------- TRL-format preference datasets by Hub layout
def test_ultrafeedback_binarized_in_its_hub_layout(tmp_path, tokenizer_path):
    """The example config on a folder laid out as the Hub snapshot: a README.md card naming train_prefs/test_prefs,
    Parquet shards under data/, `chosen`/`rejected` whole conversations beside `prompt`, `messages` and the scores."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "ultrafeedback_binarized"
    (folder / "data").mkdir(parents=True)
    card = "---\nconfigs:\n- config_name: default\n  data_files:\n"
    for split, count in (("train_prefs", 12), ("test_prefs", 4), ("train_sft", 3)):
        card += f"  - split: {split}\n    path: data/{split}-*\n"
        rows = []
        for i in range(count):
            prompt = f"{split} question {i}: how do I water a fern?"
            chosen = [{"content": prompt, "role": "user"}, {"content": f"Water fern {i} weekly.", "role": "assistant"}]
            rejected = [{"content": prompt, "role": "user"}, {"content": "Never.", "role": "assistant"}]
            rows.append({"prompt": prompt, "prompt_id": f"id{i}", "chosen": chosen, "rejected": rejected,
                         "messages": chosen, "score_chosen": 8.0, "score_rejected": 3.5})  # fmt: skip
        pq.write_table(pa.Table.from_pylist(rows), folder / "data" / f"{split}-00000-of-00001.parquet")
    (folder / "README.md").write_text(card + "---\n# UltraFeedback binarized\n")
    paths = ["--datasets.preferences.sources.0.path", str(folder), "--datasets.preferences.eval_sources.0.path",
             str(folder)]  # fmt: skip
    config = ["--config", str(EXAMPLES / "ultrafeedback.data.yaml"), "--output_root", str(tmp_path / "out")]
    (report,) = prepare(config + paths + ["--tokenizer", str(tokenizer_path)])
    assert report["splits"]["train"]["rows_out"] == 12 and report["splits"]["test"]["rows_out"] == 4
    row = json.loads((tmp_path / "out" / "preferences" / "test.jsonl").read_text().splitlines()[0])
    assert row["prompt"] == [{"role": "user", "content": "test_prefs question 0: how do I water a fern?"}]
    assert row["chosen"] == [{"role": "assistant", "content": "Water fern 0 weekly."}]
    assert report["sources"][0]["splits_not_read"] == {"test_prefs": 1, "train_sft": 1}


def test_hh_rlhf_strings_in_the_repository_layout(tmp_path, hh_repo, tokenizer_path):
    """The HH example (data_dir per subset, its train and test files, slices) on a folder laid out as the Hub's."""
    config = ["--config", str(EXAMPLES / "hh-rlhf.data.yaml"), "--output_root", str(tmp_path / "out")]
    keys = ["preferences.sources.0", "preferences.sources.1", "preferences.eval_sources.0", "prompts.sources.0",
            "prompts.eval_sources.0"]  # fmt: skip
    paths = [arg for key in keys for arg in (f"--datasets.{key}.path", str(hh_repo))]
    prepare(config + paths + ["--tokenizer", str(tokenizer_path), "--datasets.prompts.eval_sources.0.split", "test"])
    pairs = (tmp_path / "out" / "preferences" / "train.jsonl").read_text().splitlines()
    assert len(pairs) == 40 + 10  # harmless-base's 40 and a quarter of helpful-base's (weight 0.25)
    prompt = json.loads((tmp_path / "out" / "prompts" / "train.jsonl").read_text().splitlines()[0])["prompt"]
    assert prompt[-1]["role"] == "user" and set(prompt[0]) == {"role", "content"}


def test_openassistant_trees_through_the_store_into_pairs(tmp_path, tokenizer_path):
    """The three commands of oasst.data.yaml's header on a trees file in oasst's layout (nested replies with ranks)."""
    from test_feedback import OASST_TREE

    trees = write_jsonl_gz(tmp_path / "2023-04-12_oasst_ready.trees.jsonl.gz", [OASST_TREE])
    store, pairs = str(tmp_path / "feedback.sqlite"), tmp_path / "pairs"
    stages.get("collect").run(
        ["--config", str(CONFIGS / "collect.yaml"), "--import_format", "oasst", "--import_path", str(trees),
         "--store", store, "--output_dir", str(tmp_path / "collect")]
    )  # fmt: skip
    stages.get("label").run(
        ["--config", str(CONFIGS / "label.yaml"), "--store", store, "--ranker", "human", "--wait", "false",
         "--guidelines", "null", "--heldout_pairs", "null", "--output_dir", str(pairs)]
    )  # fmt: skip
    config = ["--config", str(EXAMPLES / "oasst.data.yaml"), "--output_root", str(tmp_path / "out")]
    (report,) = prepare(
        config + ["--datasets.preferences.sources.0.path", str(pairs), "--tokenizer", str(tokenizer_path)]
    )
    rows = [json.loads(line) for line in (tmp_path / "out" / "preferences" / "train.jsonl").read_text().splitlines()]
    assert sorted((r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows) == [
        ("Red.", "Green."), ("Teal.", "Blue.")
    ]  # fmt: skip
    assert report["splits"]["train"]["rows_in"] == 2


# ------------------------------------------------------------------------------- the judge, and its tokenizer
def test_a_judge_that_is_the_trained_reward_model_is_refused(tmp_path, sft_and_reward):
    from rlhf_recipes.evaluation.judge import check_judge

    sft, reward = sft_and_reward
    with pytest.raises(UserError, match=r"is the reward model RL trained against \(reward_model\); a judge must be"):
        check_judge(f"reward:{reward}", str(reward))
    copy = shutil.copytree(reward, tmp_path / "judge-copy")
    with pytest.raises(UserError, match=r"judge-copy has the same weights as reward_model=.*train a second reward"):
        check_judge(f"reward:{copy}", str(reward))
    with pytest.raises(UserError, match=r"is a causal lm, not a reward model"):
        check_judge(f"reward:{sft}", str(reward))
    result = subprocess.run(  # through the evaluation's command line: exit 2, one sentence, before any model loads
        [sys.executable, str(REPO / "recipes" / "eval.py"), "--config", str(RECIPE / "eval.yaml"), "--reward_model",
         str(reward), "--judge", f"reward:{copy}", "--models", json.dumps({"base": str(sft)}), "--output_dir",
         str(tmp_path / "eval")], cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr and "has the same weights" in result.stderr


def _other_tokenizer_reward_model(folder: Path) -> Path:
    """A reward model on a tokenizer of its own (byte-level BPE trained here, 300 tokens) with a Llama-3-style chat
    template: nothing in it is the policy's SmolLM2 tokenizer or ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    special = ["<pad>", "<s>", "<|eot|>", "<|hdr|>", "<|/hdr|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    bpe.train_from_iterator(["Who keeps the lighthouse? Be brief. The ferry is called the Morrow Belle."], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>", eos_token="<|eot|>")
    tokenizer.chat_template = (
        "{{- bos_token }}{%- for m in messages %}{{- '<|hdr|>' + m['role'] + '<|/hdr|>' + m['content'] | trim + "
        "'<|eot|>' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|hdr|>assistant<|/hdr|>' }}{%- endif %}"
    )
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_the_reward_judge_scores_each_answer_in_its_own_tokenizer_and_template(tmp_path, tiny_model_path):
    """The evaluation's `reward:` judge (on a tokenizer and template of its own) and its reward model (SmolLM2's
    tokenizer with Qwen's template) score the policy's sampled answers as each renders the conversation itself:
    the prompt's messages plus the answer's text in its own template, read at its last token, within 1e-5."""
    from test_rl_learning import QWEN_TEMPLATE
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    judge = _other_tokenizer_reward_model(tmp_path / "judge")
    reward = tmp_path / "reward"
    torch.manual_seed(2)
    AutoModelForSequenceClassification.from_pretrained(tiny_model_path, num_labels=1).save_pretrained(reward)
    smollm2 = AutoTokenizer.from_pretrained(tiny_model_path)
    smollm2.chat_template = QWEN_TEMPLATE
    smollm2.save_pretrained(reward)
    prompts = [[{"role": "user", "content": "Who keeps the lighthouse?"}],
               [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the ferry called?"}]]  # fmt: skip
    pairs = {"prompt": prompts[0], "chosen": [{"role": "assistant", "content": "Corwin."}],
             "rejected": [{"role": "assistant", "content": "No."}]}  # fmt: skip
    for name, rows in (("prompts", [{"prompt": p} for p in prompts]), ("pairs", [pairs])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = stages.get("eval").run(
        ["--config", str(RECIPE / "eval.yaml"), "--models", json.dumps({"a": str(tiny_model_path), "b": str(tiny_model_path)}),
         "--paired", json.dumps({"b": "a"}), "--reward_model", str(reward), "--judge", f"reward:{judge}",
         "--prompt_dataset", str(tmp_path / "prompts"), "--preference_dataset", str(tmp_path / "pairs"),
         "--samples_per_prompt", "1", "--max_new_tokens", "6", "--num_side_by_side", "2", "--output_dir", str(tmp_path / "eval")]
    )  # fmt: skip

    def own_score(folder: Path, prompt, answer: str) -> tuple[float, list[int]]:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1).eval()
        ids = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": answer}], tokenize=True,
                                            return_dict=True)["input_ids"]  # fmt: skip
        with torch.no_grad():
            return model(input_ids=torch.tensor([ids])).logits[0, 0].item(), list(ids)

    policy = AutoTokenizer.from_pretrained(tiny_model_path)
    for prompt, example in zip(prompts, report["sampled_examples"]):
        for name in ("a", "b"):
            answer, scores = example[name], example["scores"][name]
            judged, judge_ids = own_score(judge, prompt, answer)
            rewarded, reward_ids = own_score(reward, prompt, answer)
            assert scores["judge"] == pytest.approx(judged, abs=1e-5)
            assert scores["reward"] == pytest.approx(rewarded, abs=1e-5)
            policy_ids = policy.apply_chat_template(prompt + [{"role": "assistant", "content": answer}], tokenize=True,
                                                    return_dict=True)["input_ids"]  # fmt: skip
            assert judge_ids != list(policy_ids)  # another tokenizer altogether
            if prompt[0]["role"] != "system":  # ChatML either way, but Qwen's default system prompt is not SmolLM2's
                assert reward_ids != list(policy_ids)


# ----------------------------------------------------------------------------------------- reward model, probes
def test_the_reward_stage_counts_its_held_out_pairs_with_an_interval(sft_and_reward):
    metrics = json.loads((sft_and_reward[1] / "lineage.json").read_text())["metrics"]
    assert metrics["eval_pairs"] == 80
    assert round(metrics["eval_accuracy"] * 80) == pytest.approx(metrics["eval_accuracy"] * 80, abs=1e-6)
    assert metrics["eval_accuracy_low"] <= metrics["eval_accuracy"] <= metrics["eval_accuracy_high"]


def test_hh_pairs_longer_than_max_length_beyond_the_allowed_share_are_one_sentence(tmp_path, tiny_model_path):
    folder = tmp_path / "pairs"
    folder.mkdir()
    long_pairs = [{"prompt": [{"role": "user", "content": f"Tell me about thing {i}. " * (40 if i % 4 else 1)}],
                   "chosen": [{"role": "assistant", "content": "Safe."}],
                   "rejected": [{"role": "assistant", "content": "No."}]} for i in range(8)]  # fmt: skip
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in long_pairs))
    reward_refuses(
        tiny_model_path, tmp_path, folder,
        r"6 of 8 training pairs in .*pairs \(75%\) are longer than max_length=128 "
        r"tokens .* raise max_length, or allow more with max_dropped_share",
        "--max_length", "128", "--eval_strategy", "no", "--lora_target_modules", TINY_TOP,
    )  # fmt: skip


def reward_refuses(model, tmp_path, dataset, match: str, *extra: str) -> None:
    """The HH reward YAML's stage, on the tiny model, stops before training with one sentence matching `match`."""
    with pytest.raises(UserError, match=match):
        stages.get("reward").run(
            ["--config", str(RECIPE / "reward.yaml"), "--model_name_or_path", str(model), "--dataset_name",
             str(dataset), "--output_dir", str(tmp_path / "out"), *extra]
        )  # fmt: skip


def test_lora_targets_that_match_no_layer_of_the_model_are_one_sentence(tmp_path, tiny_model_path):
    """The HH reward YAML's regex names layers 20-29; on a 2-layer model it matches nothing: one sentence."""
    reward_refuses(
        tiny_model_path, tmp_path, REPO / "data" / "demo" / "preferences",
        r"lora_target_modules '.*2\[0-9\].*' \(one entry: a regex over module names\) "
        r"matches no linear module of .*named like model.layers.0.self_attn.q_proj",
    )  # fmt: skip


def test_the_hacking_probes_count_refusals_and_a_repeated_phrase():
    from rlhf_recipes.evaluation.probes import common_phrase, refusal_share

    answers = ["I'm sorry, I can't help with that.", "Sure: water it weekly.", "I cannot do that, as an AI.",
               "I'm sorry, I can't help with that at all."]  # fmt: skip
    assert refusal_share(answers) == 0.75
    assert common_phrase(answers) == ("i'm sorry i can't", 0.5)
    assert common_phrase(["Yes."]) == ("", 0.0)


def test_the_bench_counts_the_flops_of_lora_on_the_top_layers_only(embedded_model_path):
    """The HH reward YAML trains LoRA on 10 of 30 layers: the bench holds it against its own FLOPs (the 20 layers
    below run forward only), not against a backward pass through all 30 that it never runs."""
    from bench import roofline, speed

    model = str(embedded_model_path)
    assert speed.lora_layers("reward", RECIPE / "reward.yaml", [], model) == (16, 10)
    assert speed.lora_layers("reward", CONFIGS / "reward.yaml", [], model) == (16, None)
    every, top = (roofline.training_flops(model, [300], [0], 16, False, layers) for layers in (None, 10))
    assert 0.6 < top / every < 0.7  # forward 2N everywhere, backward 2N and LoRA on a third of the layers
