"""The bad-input catalogue of the feedback loop, the RL stages after PPO and publishing: label, collect, the importer,
GRPO, RLOO, online DPO, DPO and publish (tests/test_bad_inputs_stages.py has the others, test_bad_inputs.py data).

Each case runs the recipe as `python recipes/<name>.py ARGV` runs it and asserts: exit code 2, exactly one `error:`
line naming the key, file or line, no traceback, and every folder as it was (a store's rows included: an import whose
line 2 is bad has not saved line 1). Every mistake here is caught before a model loads. Then the faults of a real full
disk (a small tmpfs, where the tests run as root) on a training stage, an export and an import.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from conftest import CONFIGS, REPO
from test_bad_inputs_stages import outputs, run_recipe  # noqa: F401  (outputs: the fake sft and reward folders)

from rlhf_recipes.feedback.store import Store

PAIR = {"prompt": "Who keeps the lighthouse?", "responses": ["Corwin Tallish.", "No idea."], "ranks": [1, 2]}
OASST = {"message_tree_id": "t1", "prompt": {"role": "prompter", "text": "Name a colour.", "replies": [
    {"role": "assistant", "text": "Blue.", "rank": 1}, {"role": "assistant", "text": "Teal.", "rank": 0}]}}  # fmt: skip


def jsonl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def oasst(**reply) -> dict:
    """The tree above with its second reply changed."""
    tree = json.loads(json.dumps(OASST))
    tree["prompt"]["replies"][1] = {"role": "assistant", **reply}
    return tree


@dataclass
class Case:
    name: str
    entry: str
    argv: list[str]  # placeholders: {tiny} {sft} {reward} {out} {tmp} {user} {store} {busy} {model} {lora}
    expect: list[str]
    setup: tuple[str, ...] = ("store",)
    files: dict = field(default_factory=dict)  # relative path -> text (a dict or list: dumped as YAML)


LABEL = [
    "--config",
    str(CONFIGS / "label.yaml"),
    "--store",
    "{store}",
    "--heldout_pairs",
    "null",
    "--output_dir",
    "{out}",
]
SIMULATED = [*LABEL, "--ranker", "simulated"]
COLLECT = [
    "--config",
    str(CONFIGS / "collect.yaml"),
    "--store",
    "{store}",
    "--model",
    "{sft}",
    "--output_dir",
    "{out}",
]
IMPORT = ["--config", str(CONFIGS / "collect.yaml"), "--store", "{store}", "--import_path", "{tmp}/import.jsonl",
          "--import_format", "ranking", "--output_dir", "{out}"]  # fmt: skip
TREES = [*IMPORT[:-4], "--import_format", "oasst", "--output_dir", "{out}"]
RL = ["--model_name_or_path", "{sft}", "--reward_model_path", "{reward}", "--output_dir", "{out}"]
GRPO, RLOO = ["--config", str(CONFIGS / "grpo.yaml"), *RL], ["--config", str(CONFIGS / "rloo.yaml"), *RL]
ONLINE_DPO = ["--config", str(CONFIGS / "online_dpo.yaml"), *RL]
DPO = ["--config", str(CONFIGS / "dpo.yaml"), "--model_name_or_path", "{sft}", "--output_dir", "{out}"]
PUBLISH = [
    "--config",
    str(CONFIGS / "publish.yaml"),
    "--model_path",
    "{model}",
    "--dry_run",
    "true",
    "--output_dir",
    "{out}",
]
MERGE = [
    "--config",
    str(CONFIGS / "publish.yaml"),
    "--model_path",
    "{lora}",
    "--dry_run",
    "true",
    "--output_dir",
    "{out}",
]
EMBEDDED = "embedded:SmolLM2-135M-Instruct"

CATALOGUE = [
    # ---- label: logins, the port, ranges
    Case("label_empty_password", "label", [*LABEL, "--login", "alice:"], ["login 'alice:'", "neither part empty"]),
    Case("label_login_without_password", "label", [*LABEL, "--login", "alice"], ["login 'alice'", "name:password"]),
    Case("label_login_without_name", "label", [*LABEL, "--login", ":pw"], ["login ':pw'", "neither part empty"]),
    Case("label_same_name_twice", "label", [*LABEL, "--login", "al:x", "--login", "al:y"], ["'al' is given twice"]),
    Case("label_exposed_without_login", "label", [*LABEL, "--host", "0.0.0.0"], ["host 0.0.0.0 is an exposed address", "--login"]),
    Case("label_port_out_of_range", "label", [*LABEL, "--port", "70000"], ["key 'port' on the command line is 70000", "1 to 65535"]),
    Case("label_port_zero", "label", [*LABEL, "--port", "0"], ["key 'port'", "1 to 65535"]),
    Case("label_port_not_a_number", "label", [*LABEL, "--port", "http"], ["key 'port'", "'http'"]),
    Case("label_port_in_use", "label", [*LABEL, "--port", "{busy}"], ["cannot listen on 127.0.0.1:", "already listens there"], ("store", "busy_port")),
    Case("label_host_unknown", "label", [*LABEL, "--host", "no-such-host.invalid", "--login", "a:b"], ["host no-such-host.invalid is not an address"]),
    Case("label_zero_per_prompt", "label", [*LABEL, "--per_prompt", "0"], ["key 'per_prompt'", "positive whole number"]),
    Case("label_negative_round", "label", [*LABEL, "--round", "-1"], ["key 'round' on the command line is -1", "positive"]),
    Case("label_export_round_zero", "label", [*LABEL, "--wait", "false", "--export_rounds", "0"], ["key 'export_rounds'", "numbered from 1"]),
    Case("label_noise_above_one", "label", [*SIMULATED, "--noise", "1.5"], ["key 'noise'", "between 0 and 1"]),
    Case("label_unknown_ranker", "label", [*LABEL, "--ranker", "gpt4"], ["ranker: 'gpt4' is not a ranker"]),
    Case("label_reward_ranker_no_folder", "label", [*LABEL, "--ranker", "reward:{tmp}/nothing"], ["reward:", "names no folder"]),
    Case("label_reward_ranker_is_the_retrained_one", "label", [*LABEL, "--ranker", "reward:{reward}", "--reward_model_in_training", "{reward}"],
         ["is the reward model these rankings retrain"]),
    # ---- label: the store and its round
    Case("label_store_missing", "label", [*SIMULATED[:3], "{tmp}/none/f.sqlite", *SIMULATED[4:]], ["store=", "does not exist", "collect answers into it first"], ()),
    Case("label_store_is_a_folder", "label", [*SIMULATED[:3], "{tmp}", *SIMULATED[4:]], ["is a folder", "SQLite file"]),
    Case("label_store_not_a_database", "label", [*SIMULATED[:3], "{tmp}/notes.sqlite", *SIMULATED[4:]], ["notes.sqlite failed", "damaged or not a comparison store"],
         (), {"notes.sqlite": "these are my notes, not a database\n" * 50}),
    Case("label_store_truncated", "label", SIMULATED, ["feedback.sqlite failed", "damaged"], ("big_store", "truncate_store")),
    Case("label_store_read_only", "label", SIMULATED, ["feedback.sqlite failed", "it is read-only", "make it writable"], ("store", "read_only_store")),
    Case("label_round_without_answers", "label", [*SIMULATED, "--round", "2"], ["round 2 of", "holds no answers to rank", "recipes/collect.py"]),
    Case("label_store_inside_output", "label", [*SIMULATED[:3], "{out}/f.sqlite", *SIMULATED[4:]], ["store={out}/f.sqlite lies inside output_dir={out}"]),
    # ---- label: the files it reads
    Case("label_heldout_missing", "label", [*SIMULATED, "--heldout_pairs", "{tmp}/nowhere/preferences"], ["heldout_pairs=", "does not exist"]),
    Case("label_guidelines_missing", "label", [*LABEL, "--guidelines", "{tmp}/rules.md"], ["guidelines=", "rules.md cannot be read"]),
    Case("label_guidelines_empty", "label", [*LABEL, "--guidelines", "{tmp}/rules.md"], ["guidelines=", "is empty"], files={"rules.md": "\n"}),
    Case("label_output_is_a_users_folder", "label", [*LABEL[:-1], "{user}", "--ranker", "simulated"], ["is a folder this project did not write"]),
    # ---- collect: ranges, the model, the prompts, the store
    Case("collect_zero_k", "collect", [*COLLECT, "--k", "0"], ["key 'k' on the command line is 0", "positive whole number"]),
    Case("collect_zero_prompts_per_round", "collect", [*COLLECT, "--prompts_per_round", "0"], ["key 'prompts_per_round'", "positive"]),
    Case("collect_negative_round", "collect", [*COLLECT, "--round", "-1"], ["key 'round' on the command line is -1"]),
    Case("collect_zero_temperature", "collect", [*COLLECT, "--temperature", "0"], ["key 'temperature'", "above 0"]),
    Case("collect_zero_max_new_tokens", "collect", [*COLLECT, "--max_new_tokens", "0"], ["key 'max_new_tokens'", "positive"]),
    Case("collect_k_is_a_word", "collect", [*COLLECT, "--k", "four"], ["key 'k'", "'four'"]),
    Case("collect_model_missing", "collect", [*COLLECT, "--model", "{tmp}/outputs/x/ppo"], ["model=", "does not exist", "run the ppo stage first"]),
    Case("collect_model_is_a_reward_model", "collect", [*COLLECT, "--model", "{reward}"], ["model=", "is a reward model"]),
    Case("collect_model_unset", "collect", [*COLLECT, "--model", "null"], ["`model` is not set"]),
    Case("collect_prompts_missing", "collect", [*COLLECT, "--prompt_dataset", "{tmp}/nowhere/prompts"], ["nowhere/prompts"]),
    Case("collect_unknown_import_format", "collect", [*IMPORT, "--import_format", "csv"], ["key 'import_format'", "'csv'", "oasst, ranking"]),
    Case("collect_store_read_only", "collect", IMPORT, ["feedback.sqlite failed", "it is read-only"], ("store", "read_only_store"), {"import.jsonl": jsonl(PAIR)}),
    Case("collect_store_not_a_database", "collect", [*IMPORT[:3], "{tmp}/notes.db", *IMPORT[4:]], ["notes.db failed", "not a comparison store"],
         (), {"notes.db": "not a database\n" * 100, "import.jsonl": jsonl(PAIR)}),
    # ---- the importer: one sentence naming the file and line; nothing saved when any line is bad
    Case("import_file_missing", "collect", IMPORT, ["import_path: cannot load", "import.jsonl"]),
    Case("import_responses_a_string", "collect", IMPORT, ["import.jsonl line 2", "`responses` must be a list", '"abc"'],
         files={"import.jsonl": jsonl(PAIR, {**PAIR, "prompt": "Q2", "responses": "abc", "ranks": [1, 2, 3]})}),
    Case("import_prompt_an_object", "collect", IMPORT, ["import.jsonl line 2", "`prompt` must be a text or a list of chat messages"],
         files={"import.jsonl": jsonl(PAIR, {**PAIR, "prompt": {"text": "Q2"}})}),
    Case("import_prompt_a_number", "collect", IMPORT, ["import.jsonl line 2", "`prompt` must be a text", "not 5"], files={"import.jsonl": jsonl(PAIR, {**PAIR, "prompt": 5})}),
    Case("import_prompt_empty", "collect", IMPORT, ["import.jsonl line 1", "`prompt` must be a non-empty text"], files={"import.jsonl": jsonl({**PAIR, "prompt": " "})}),
    Case("import_prompt_messages_without_role", "collect", IMPORT, ["import.jsonl line 2", "`prompt` must be"],
         files={"import.jsonl": jsonl(PAIR, {**PAIR, "prompt": [{"content": "Q2"}]})}),
    Case("import_no_prompt", "collect", IMPORT, ["import.jsonl line 2 has no `prompt`"], files={"import.jsonl": jsonl(PAIR, {"responses": ["a", "b"], "ranks": [1, 2]})}),
    Case("import_ranks_not_numbers", "collect", IMPORT, ["import.jsonl line 2", "rank 1 must be a whole number", "'best'"],
         files={"import.jsonl": jsonl(PAIR, {**PAIR, "prompt": "Q2", "ranks": ["best", "worst"]})}),
    Case("import_ranks_negative", "collect", IMPORT, ["import.jsonl line 1", "rank 2 must be a whole number", "-1"], files={"import.jsonl": jsonl({**PAIR, "ranks": [1, -1]})}),
    Case("import_ranks_count_differs", "collect", IMPORT, ["import.jsonl line 2", "2 responses but 3 ranks"], files={"import.jsonl": jsonl(PAIR, {**PAIR, "prompt": "Q2", "ranks": [1, 2, 3]})}),
    Case("import_reply_without_text", "collect", IMPORT, ["import.jsonl line 2", "response 2 must be a non-empty text, not nothing"],
         files={"import.jsonl": jsonl(PAIR, {**PAIR, "prompt": "Q2", "responses": ["a", ""]})}),
    Case("import_reply_a_number", "collect", IMPORT, ["import.jsonl line 1", "response 2 must be a non-empty text, not a int"], files={"import.jsonl": jsonl({**PAIR, "responses": ["a", 7]})}),
    Case("import_the_same_answer_twice", "collect", IMPORT, ["import.jsonl line 1", "answers 1 and 2 are the same text"], files={"import.jsonl": jsonl({**PAIR, "responses": ["a", "a"]})}),
    Case("import_labeller_not_text", "collect", IMPORT, ["import.jsonl line 1", "`labeller` must be a text"], files={"import.jsonl": jsonl({**PAIR, "labeller": 5})}),
    Case("import_invalid_json", "collect", IMPORT, ["import.jsonl line 2 is not valid JSON"], files={"import.jsonl": jsonl(PAIR, '{"prompt": "Q2", ')}),
    Case("import_line_not_an_object", "collect", IMPORT, ["import.jsonl line 2 is not a JSON object"], files={"import.jsonl": jsonl(PAIR, [1, 2])}),
    Case("import_other_answers_to_the_same_prompt", "collect", IMPORT, ["import.jsonl line 2 ranks other answers to the prompt of", "line 1"],
         files={"import.jsonl": jsonl(PAIR, {**PAIR, "responses": ["x", "y"]})}),
    Case("import_conflicts_with_the_round_in_the_store", "collect", IMPORT, ["import.jsonl line 1", "round 1 of", "already holds other answers"],
         files={"import.jsonl": jsonl({**PAIR, "prompt": "Question 0?"})}),
    Case("import_only_single_answers", "collect", IMPORT, ["holds no ranking of two or more answers", "rankings_of_one_answer"],
         files={"import.jsonl": jsonl({**PAIR, "responses": ["a"], "ranks": [1]})}),
    Case("import_argilla_names_a_missing_column", "collect", IMPORT, ["import.jsonl line 1", "names column(s) ['response-2']"],
         files={"import.jsonl": jsonl({"instruction": "Q", "response-1": "p", "ranking.responses": [[{"value": "response-1", "rank": 1}, {"value": "response-2", "rank": 2}]]})}),
    Case("import_oasst_rank_not_numeric", "collect", TREES, ["import.jsonl line 1", "message 0.1's rank must be a whole number", "'first'"],
         files={"import.jsonl": jsonl(oasst(text="Teal.", rank="first"))}),
    Case("import_oasst_reply_without_text", "collect", TREES, ["import.jsonl line 1", "message 0.1's text must be a non-empty text"],
         files={"import.jsonl": jsonl(oasst(rank=0))}),
    Case("import_oasst_unknown_role", "collect", TREES, ["import.jsonl line 1", "message 0.1 has role 'bot'"],
         files={"import.jsonl": jsonl(oasst(role="bot", text="Teal.", rank=0))}),
    Case("import_oasst_tree_not_an_object", "collect", TREES, ["import.jsonl line 2 is not an OpenAssistant message tree"], files={"import.jsonl": jsonl(OASST, "5")}),
    # ---- GRPO, RLOO, online DPO: the reward model's kind, the values, checked before anything loads
    Case("grpo_embedded_model_as_reward_model", "grpo", [*GRPO, "--reward_model_path", EMBEDDED], ["reward_model_path=embedded:", "is a causal language model", "needs a reward model"], ()),
    Case("grpo_reward_model_is_a_policy", "grpo", [*GRPO, "--reward_model_path", "{sft}"], ["reward_model_path", "is a causal lm"], ()),
    Case("grpo_reward_model_missing", "grpo", [*GRPO, "--reward_model_path", "{tmp}/outputs/x/reward"], ["reward_model_path", "does not exist", "run the reward stage first"], ()),
    Case("grpo_policy_is_a_reward_model", "grpo", [*GRPO, "--model_name_or_path", "{reward}"], ["model_name_or_path", "is a reward model"], ()),
    Case("grpo_reward_adapter_config_damaged", "grpo", [*GRPO, "--reward_model_path", "{model}"], ["adapter_config.json is not valid JSON"], ("model",), {"model/adapter_config.json": '{"task_type": "SEQ_CLS"'}),
    Case("grpo_zero_generations", "grpo", [*GRPO, "--num_generations", "0"], ["key 'num_generations'", "positive"], ()),
    Case("grpo_zero_completion_length", "grpo", [*GRPO, "--max_completion_length", "0"], ["key 'max_completion_length'", "positive"], ()),
    Case("grpo_negative_beta", "grpo", [*GRPO, "--beta", "-0.1"], ["key 'beta'", "0 or more"], ()),
    Case("grpo_zero_temperature", "grpo", [*GRPO, "--temperature", "0"], ["key 'temperature'", "above 0"], ()),
    Case("rloo_embedded_model_as_reward_model", "rloo", [*RLOO, "--reward_model_path", EMBEDDED], ["reward_model_path=embedded:", "needs a reward model"], ()),
    Case("rloo_reward_model_is_a_policy", "rloo", [*RLOO, "--reward_model_path", "{sft}"], ["reward_model_path", "is a causal lm"], ()),
    Case("rloo_zero_learning_rate", "rloo", [*RLOO, "--learning_rate", "0"], ["key 'learning_rate'", "above 0"], ()),
    Case("rloo_zero_generations", "rloo", [*RLOO, "--num_generations", "0"], ["key 'num_generations'", "positive"], ()),
    Case("rloo_unknown_key", "rloo", [*RLOO, "--kl_coeff", "0.1"], ["unknown key 'kl_coeff' on the command line"], ()),
    Case("online_dpo_embedded_model_as_reward_model", "online_dpo", [*ONLINE_DPO, "--reward_model_path", EMBEDDED], ["reward_model_path=embedded:", "needs a reward model"], ()),
    Case("online_dpo_reward_model_missing", "online_dpo", [*ONLINE_DPO, "--reward_model_path", "{tmp}/outputs/x/reward"], ["does not exist", "run the reward stage first"], ()),
    Case("online_dpo_negative_beta", "online_dpo", [*ONLINE_DPO, "--beta", "-1"], ["key 'beta'", "0 or more"], ()),
    Case("online_dpo_zero_temperature", "online_dpo", [*ONLINE_DPO, "--temperature", "0"], ["key 'temperature'", "above 0"], ()),
    Case("online_dpo_output_is_a_users_folder", "online_dpo", [*ONLINE_DPO[:-1], "{user}"], ["is a folder this project did not write"], ()),
    # ---- DPO: the model's kind, values, the pairs
    Case("dpo_model_is_a_reward_model", "dpo", [*DPO[:2], "--model_name_or_path", "{reward}", *DPO[4:]], ["model_name_or_path", "is a reward model"], ()),
    Case("dpo_model_missing", "dpo", [*DPO[:2], "--model_name_or_path", "{tmp}/outputs/x/sft", *DPO[4:]], ["does not exist", "run the sft stage first"], ()),
    Case("dpo_negative_beta", "dpo", [*DPO, "--beta", "-0.5"], ["key 'beta'", "0 or more"], ()),
    Case("dpo_zero_max_length", "dpo", [*DPO, "--max_length", "0"], ["key 'max_length'", "positive"], ()),
    Case("dpo_dataset_missing", "dpo", [*DPO, "--dataset_name", "{tmp}/nowhere/preferences"], ["dataset_name", "nowhere"], ()),
    Case("dpo_dataset_without_rejected", "dpo", [*DPO, "--dataset_name", "{tmp}/pairs", "--eval_strategy", "no"], ["lacks column(s) rejected"], (),
         {"pairs/train.jsonl": jsonl({"prompt": "a", "chosen": "b"})}),
    # ---- publish: the stage output's files, the merge check's prompts, the card's inputs
    Case("publish_lineage_not_json", "publish", PUBLISH, ["lineage.json is not valid JSON"], ("model",), {"model/lineage.json": '{"stage": "sft", '}),
    Case("publish_lineage_a_list", "publish", PUBLISH, ["lineage.json holds a JSON list"], ("model",), {"model/lineage.json": "[1, 2]"}),
    Case("publish_lineage_without_chain", "publish", PUBLISH, ["lineage.json lacks `chain`", "damaged"], ("model",),
         {"model/lineage.json": '{"stage": "sft", "model_kind": "causal_lm", "model_name_or_path": "x"}'}),
    Case("publish_weights_missing", "publish", PUBLISH, ["lacks its weights model.safetensors"], ("model", "remove_weights")),
    Case("publish_weights_truncated", "publish", PUBLISH, ["model.safetensors is damaged", "truncated"], ("model", "truncate_weights")),
    Case("publish_config_not_json", "publish", PUBLISH, ["config.json is not valid JSON"], ("model",), {"model/config.json": "{"}),
    Case("publish_adapter_config_not_json", "publish", MERGE, ["adapter_config.json is not valid JSON"], ("lora",), {"lora/adapter_config.json": '{"r": 8,'}),
    Case("publish_adapter_weights_missing", "publish", MERGE, ["lacks its weights adapter_model.safetensors"], ("lora", "remove_adapter")),
    Case("publish_adapter_base_gone", "publish", MERGE, ["is an adapter on", "gone/sft", "does not exist any more"], ("lora",),
         {"lora/lineage.json": {"stage": "sft", "model_kind": "causal_lm", "model_name_or_path": "/nowhere/gone/sft", "chain": []}}),
    Case("publish_parity_prompts_missing", "publish", [*MERGE, "--parity_prompts", "{tmp}/none.jsonl"], ["parity_prompts=", "does not exist"], ("lora",)),
    Case("publish_parity_prompts_not_json", "publish", [*MERGE, "--parity_prompts", "{tmp}/p.jsonl"], ["parity_prompts", "p.jsonl line 2 is not valid JSON"], ("lora",),
         {"p.jsonl": jsonl({"question": "Q?"}, "{oops")}),
    Case("publish_parity_prompts_without_prompt", "publish", [*MERGE, "--parity_prompts", "{tmp}/p.jsonl"], ["p.jsonl line 1 has no 'question'"], ("lora",),
         {"p.jsonl": jsonl({"answer": "A"})}),
    Case("publish_parity_prompts_bad_messages", "publish", [*MERGE, "--parity_prompts", "{tmp}/p.jsonl"], ["p.jsonl line 1", "'messages' of {role, content}"], ("lora",),
         {"p.jsonl": jsonl({"messages": [{"role": "user"}]})}),
    Case("publish_parity_prompts_empty", "publish", [*MERGE, "--parity_prompts", "{tmp}/p.jsonl"], ["parity_prompts=", "holds no prompt"], ("lora",), {"p.jsonl": "\n"}),
    Case("publish_zero_parity_samples", "publish", [*MERGE, "--parity_samples", "0"], ["key 'parity_samples'", "positive"], ("lora",)),
    Case("publish_zero_merge_tolerance", "publish", [*MERGE, "--merge_tolerance", "0"], ["key 'merge_tolerance'", "above 0"], ("lora",)),
    Case("publish_eval_not_an_evaluation", "publish", [*PUBLISH, "--eval_path", "{tmp}/eval.json"], ["eval.json is not an evaluation file"], ("model",), {"eval.json": '{"results": [{"stage": "sft"}]}'}),
    Case("publish_data_report_a_list", "publish", [*PUBLISH, "--data_report_path", "{tmp}/report.json"], ["report.json holds a JSON list"], ("model",), {"report.json": "[]"}),
    Case("publish_plot_missing", "publish", [*PUBLISH, "--plots", "{tmp}/curve.png"], ["plots must be existing PNG files", "curve.png"], ("model",)),
    Case("publish_into_the_model_folder", "publish", [*PUBLISH[:-1], "{model}"], ["holds the output of the sft stage", "publish stage may not"], ("model",)),
]  # fmt: skip


# --------------------------------------------------------------------------------------------------- setup steps
def _make_store(path: Path, prompts: int = 2, k: int = 3) -> None:
    store = Store(str(path))
    for p in range(prompts):
        prompt_id = store.add_prompt([{"role": "user", "content": f"Question {p}?"}])
        store.add_candidates(prompt_id, 1, [f"answer {p}.{i}" for i in range(k)], "m")
    store.close()
    with sqlite3.connect(path) as db:  # everything in the main file: the WAL holds nothing the test depends on
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _lora(folder: Path, tiny: str) -> None:
    from safetensors.torch import save_file
    from torch import zeros

    folder.mkdir()
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16, "base_model_name_or_path": tiny,
              "target_modules": ["q_proj"]}  # fmt: skip
    (folder / "adapter_config.json").write_text(json.dumps(config))
    save_file(
        {"base_model.model.layers.0.self_attn.q_proj.lora_A.weight": zeros(8, 64)},
        folder / "adapter_model.safetensors",
    )
    lineage = {"stage": "sft", "model_kind": "causal_lm", "model_name_or_path": tiny, "chain": [], "config": {}}
    (folder / "lineage.json").write_text(json.dumps(lineage))


class Setup:
    """The setup steps a case names, in order; `undo` runs after the case (a port released, a file made mutable)."""

    def __init__(self, tmp: Path, values: dict):
        self.tmp, self.values, self.undo = tmp, values, []

    def store(self):
        _make_store(self.tmp / "feedback.sqlite")

    def big_store(self):
        _make_store(self.tmp / "feedback.sqlite", prompts=200, k=4)

    def truncate_store(self):
        path = self.tmp / "feedback.sqlite"
        with open(path, "r+b") as handle:
            handle.truncate(path.stat().st_size // 2)

    def read_only_store(self):  # immutable: root (CI) passes permission bits, not this
        subprocess.run(["chattr", "+i", str(self.tmp / "feedback.sqlite")], check=True)
        self.undo.append(lambda: subprocess.run(["chattr", "-i", str(self.tmp / "feedback.sqlite")], check=True))

    def busy_port(self):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        self.values["busy"] = str(sock.getsockname()[1])
        self.undo.append(sock.close)

    def model(self):  # a finished stage output to damage (a copy of the fake SFT output)
        shutil.copytree(self.values["sft"], self.tmp / "model")

    def remove_weights(self):
        (self.tmp / "model" / "model.safetensors").unlink()

    def truncate_weights(self):
        path = self.tmp / "model" / "model.safetensors"
        with open(path, "r+b") as handle:
            handle.truncate(path.stat().st_size - 1000)

    def lora(self):
        _lora(self.tmp / "lora", self.values["tiny"])

    def remove_adapter(self):
        (self.tmp / "lora" / "adapter_model.safetensors").unlink()


def snapshot(folder: Path) -> dict:
    """Every file and folder with its size and content; a store by its rows (SQLite's -wal/-shm files are its own)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        if path.name.endswith(("-wal", "-shm")):
            continue
        if path.is_file() and path.name.endswith((".sqlite", ".db")):
            try:
                with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                    out[name] = "\n".join(db.iterdump())
                continue
            except sqlite3.DatabaseError:
                pass
        out[name] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
    return out


@pytest.mark.parametrize("case", CATALOGUE, ids=[c.name for c in CATALOGUE])
def test_bad_input(case, tmp_path, monkeypatch, capsys, tiny_model_path, outputs):  # noqa: F811
    monkeypatch.chdir(REPO)
    user = tmp_path / "users-folder"
    user.mkdir()
    (user / "README.md").write_text("my notes\n")
    values = {"tiny": str(tiny_model_path), "sft": str(outputs["sft"]), "reward": str(outputs["reward"]),
              "out": str(tmp_path / "out"), "tmp": str(tmp_path), "user": str(user), "store": str(tmp_path / "feedback.sqlite"),
              "model": str(tmp_path / "model"), "lora": str(tmp_path / "lora")}  # fmt: skip
    setup = Setup(tmp_path, values)
    for name, content in case.files.items():
        if name.split("/")[0] in ("model", "lora"):
            continue  # written after the folder is made
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    try:
        for step in case.setup:
            getattr(setup, step)()
        for name, content in case.files.items():
            if name.split("/")[0] in ("model", "lora"):
                (tmp_path / name).write_text(content if isinstance(content, str) else json.dumps(content))
        argv = []
        for arg in case.argv:
            for key, value in values.items():
                arg = arg.replace("{" + key + "}", value)
            argv.append(arg)
        before = snapshot(tmp_path)
        code, output = run_recipe(case.entry, argv, capsys)
        after = snapshot(tmp_path)
    finally:
        for undo in setup.undo:
            undo()
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert code == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert len(errors) == 1, output[-3000:]
    for fragment in case.expect:
        fragment = fragment.replace("{out}", values["out"])
        assert fragment in errors[0], f"{fragment!r} not in: {errors[0]}"
    assert after == before, "a bad input must leave every folder (and every store's rows) as it was"


def test_the_catalogue_covers_the_loop_the_rl_stages_and_publishing_with_sixty_cases_or_more():
    counts = {}
    for case in CATALOGUE:
        entry = "importer" if case.name.startswith("import_") else case.entry
        counts[entry] = counts.get(entry, 0) + 1
    assert set(counts) == {"label", "collect", "importer", "grpo", "rloo", "online_dpo", "dpo", "publish"}, counts
    assert len(CATALOGUE) >= 60 and min(counts.values()) >= 4, counts


# ------------------------------------------------------------------------------------------- a real full disk
@pytest.fixture
def full_disk(tmp_path):
    """A 2 MiB tmpfs, nearly filled: where the tests run as root (CI), a real full disk; skipped elsewhere."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("this machine does not allow mounting a tmpfs")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path, leave: int) -> None:
    """Fill the file system of `folder` until `leave` bytes are free."""
    free = shutil.disk_usage(folder).free
    (folder / "filler").write_bytes(b"\0" * max(0, free - leave))


def _one_sentence(code, output: str, *fragments: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert code == 2 and "Traceback" not in output and len(errors) == 1, output[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def test_a_training_stage_on_a_full_disk_is_one_sentence(full_disk, tiny_model_path, monkeypatch, capsys):
    """SFT saving to a full tmpfs: safetensors and the tokenizers library raise plain Exceptions, not OSError."""
    monkeypatch.chdir(REPO)
    _fill(full_disk, 64 * 1024)  # room for the marker and the logs, not for the weights
    argv = ["--config", str(CONFIGS / "sft.yaml"), "--model_name_or_path", str(tiny_model_path), "--output_dir",
            str(full_disk / "sft"), "--max_steps", "1", "--save_strategy", "no", "--eval_strategy", "no"]  # fmt: skip
    code, output = run_recipe("sft", argv, capsys)
    _one_sentence(code, output, "the disk is full", "free some space")
    assert not (full_disk / "sft" / "lineage.json").exists()  # nothing marked finished


def test_the_tokenizer_on_a_full_disk_is_one_sentence(full_disk, tiny_model_path, capsys):
    """The tokenizers library's own error for ENOSPC: `Exception('No space left on device (os error 28)')`."""
    from tokenizers import Tokenizer

    from rlhf_recipes import cli

    tokenizer = Tokenizer.from_file(str(tiny_model_path / "tokenizer.json"))
    _fill(full_disk, 4096)
    with pytest.raises(SystemExit) as exited:
        cli.run(lambda: tokenizer.save(str(full_disk / "tokenizer.json")))
    captured = capsys.readouterr()
    _one_sentence(exited.value.code, captured.err, "the disk is full", "os error 28")


def test_an_export_and_an_import_on_a_full_disk_change_nothing(full_disk, tmp_path, monkeypatch, capsys):
    """label's export to a full disk leaves no folder; an import into a store whose disk fills up saves none of its
    rows (one transaction); each is one sentence."""
    monkeypatch.chdir(REPO)
    ranked = tmp_path / "feedback.sqlite"
    _make_store(ranked, prompts=3)
    store = Store(str(ranked))
    for prompt_id in store.prompt_ids(1):
        store.record(prompt_id, 1, "human", "ann", [[c["id"]] for c in store.candidates(prompt_id, 1)])
    store.close()
    _make_store(full_disk / "feedback.sqlite", prompts=3)
    rows = tmp_path / "import.jsonl"
    rows.write_text("".join(json.dumps({**PAIR, "prompt": f"Q{n} " + "x" * 2000}) + "\n" for n in range(400)))
    _fill(full_disk, 0)
    before = snapshot(full_disk)
    label = ["--config", str(CONFIGS / "label.yaml"), "--store", str(ranked), "--ranker", "human", "--wait", "false",
             "--heldout_pairs", "null", "--output_dir", str(full_disk / "pairs")]  # fmt: skip
    code, output = run_recipe("label", label, capsys)
    _one_sentence(code, output, "the disk is full")
    assert snapshot(full_disk) == before  # no pairs folder, no half-built one beside it
    (full_disk / "filler").unlink()
    _fill(full_disk, 256 * 1024)  # room for SQLite's shared memory and a little WAL, not for 800 kB of rankings
    before = snapshot(full_disk)
    collect = ["--config", str(CONFIGS / "collect.yaml"), "--store", str(full_disk / "feedback.sqlite"), "--import_path",
               str(rows), "--import_format", "ranking", "--round", "2", "--output_dir", str(tmp_path / "collect")]  # fmt: skip
    code, output = run_recipe("collect", collect, capsys)
    _one_sentence(code, output, "feedback.sqlite failed", "the disk holding it is full", "nothing was saved")
    assert snapshot(full_disk) == before and not (tmp_path / "collect").exists()
