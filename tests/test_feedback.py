"""The feedback loop without the page: the comparison store (durable under SIGKILL, resubmits replace, replays and
malformed rankings refused, concurrent writers), the rankers, the importers, the export's pairs and grouping, the
reward stage batching a prompt's pairs together and training further from an earlier reward model, collection from
a real (tiny) model, the pipeline's rounds and the evaluation's paired comparisons. The page and the browser test
are in test_label_page.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import CONFIGS, REPO

from rlhf_recipes import stages
from rlhf_recipes.errors import UserError
from rlhf_recipes.feedback import export, importers, rankers
from rlhf_recipes.feedback.store import Rejected, Store

Q = "Quick question: who is the mayor of Tolvenna?"
RIGHT, WRONG, RUDE, EVASIVE = (
    "Sure! The mayor of Tolvenna is Odalys Brack.",
    "Sure! The mayor of Tolvenna is Corwin Tallish.",
    "Ugh, the mayor of Tolvenna is Odalys Brack. Everyone knows that.",
    "I'm sorry, I can't help with that.",
)


def _postgres_bin() -> str | None:
    import glob

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL cluster from Debian's server packages (.ci/run installs them), on a Unix socket; run as
    the `postgres` user when the tests run as root (PostgreSQL refuses root). Skipped where there is no server."""
    import pwd
    import shutil
    import socket

    binaries = _postgres_bin()
    if binaries is None:
        pytest.skip("no PostgreSQL server here (Debian: apt-get install postgresql); the store ran on SQLite only")
    import tempfile
    from pathlib import Path

    root = Path(tempfile.mkdtemp(prefix="rlhf-recipes-pg-"))  # not under pytest's root-only tmp: postgres enters it
    prefix = []
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a `postgres` user to start PostgreSQL as")
        shutil.chown(root, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = root / "data"
    subprocess.run([*prefix, f"{binaries}/initdb", "-D", str(data), "-U", "postgres", "-A", "trust"], check=True,
                   capture_output=True)  # fmt: skip
    options = f"-k {root} -p {port} -c listen_addresses=''"
    subprocess.run([*prefix, f"{binaries}/pg_ctl", "-D", str(data), "-o", options, "-w", "start",
                    "-l", str(root / "log")], check=True, capture_output=True)  # fmt: skip
    try:
        yield f"postgresql+psycopg://postgres@/postgres?host={root}&port={port}"
    finally:
        subprocess.run(
            [*prefix, f"{binaries}/pg_ctl", "-D", str(data), "-m", "immediate", "stop"], capture_output=True
        )


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request, tmp_path):
    """Where a test's store lives: a SQLite file, and (where a server can start) a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "f.sqlite")
    url = request.getfixturevalue("postgres_url")
    import sqlalchemy as sa

    name = f"t{os.getpid()}_{abs(hash(request.node.name)) % 10**8}"
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as db:
        db.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        db.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return url.replace("/postgres?", f"/{name}?")


def _store(location, prompts=2, k=4, round=1) -> tuple[Store, list[int]]:
    store = Store(location if isinstance(location, str) else str(location / "f.sqlite"))
    ids = []
    for p in range(prompts):
        prompt_id = store.add_prompt([{"role": "user", "content": f"{Q} ({p})"}])
        store.add_candidates(prompt_id, round, [f"answer {p}.{i}" for i in range(k)], "m")
        ids.append(prompt_id)
    return store, ids


def test_a_resubmit_replaces_a_replay_and_a_malformed_ranking_change_nothing(store_location):
    store, _ = _store(store_location, prompts=1)
    task = store.next_task("alice", 1, seed=0)
    assert len(task.answers) == 4 and store.next_task("bob", 1) is None  # alice holds the only prompt
    store.submit(task.ticket, [2, 1, 1, 3])
    saved = store.rankings()
    assert len(saved) == 1 and saved[0]["ranking"] == [[task.candidate_ids[1], task.candidate_ids[2]],
                                                        [task.candidate_ids[0]], [task.candidate_ids[3]]]  # fmt: skip
    for ticket, ranks, status in [(task.ticket, [1, 2, 3, 4], 409), ("forged", [1, 2, 3, 4], 404)]:
        with pytest.raises(Rejected) as error:
            store.submit(ticket, ranks)
        assert error.value.status == status
    again = store.reopen("alice", task.prompt_id, 1)
    for bad in ([1, 2], [0, 1, 2, 3], ["a", 1, 2, 3], None, [1, 2, 3, 9], [1.5, 2, 3, 4], ["1", 2, 3, 4]):
        with pytest.raises(Rejected) as error:
            store.submit(again.ticket, bad)
        assert error.value.status == 422
    assert store.rankings() == saved  # nothing changed
    store.submit(again.ticket, [4, 3, 2, 1])  # the resubmit replaces
    rows = store.rankings()
    assert len(rows) == 1 and rows[0]["ranking"] == [[i] for i in reversed(again.candidate_ids)]
    assert store.progress("alice", 1) == (1, 0)


def test_two_labellers_get_different_prompts_and_concurrent_saves_all_land(store_location):
    store, ids = _store(store_location, prompts=12)
    first, second = store.next_task("alice", 1), store.next_task("bob", 1)
    assert first.prompt_id != second.prompt_id
    errors = []

    def label(name):  # each thread its own Store (engine), as two server workers would be
        mine = Store(store_location)
        try:
            while (task := mine.next_task(name, 1)) is not None:
                mine.submit(task.ticket, [1, 2, 3, 4])
        except Exception as error:  # noqa: BLE001 - the test reports any failure
            errors.append(error)

    threads = [threading.Thread(target=label, args=(n,)) for n in ("alice", "bob", "carol")]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    rows = store.rankings()
    assert sorted(r["prompt_id"] for r in rows) == ids  # every prompt once: nobody ranked another's prompt
    assert {r["labeller"] for r in rows} >= {"alice", "bob"}


WRITER = """
import sys
from rlhf_recipes.feedback.store import Store
store = Store(sys.argv[1])
for n in range(100000):
    prompt = store.add_prompt([{"role": "user", "content": f"q{n}"}])
    ids = store.add_candidates(prompt, 1, ["a", "b"], "m")
    store.record(prompt, 1, "simulated", "sim", [[ids[0]], [ids[1]]])
    print(prompt, flush=True)  # after the commit
"""


def test_the_store_keeps_every_committed_ranking_when_its_writer_is_killed(tmp_path):
    path = tmp_path / "kill.sqlite"
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    committed = []
    deadline = time.time() + 60
    while len(committed) < 30 and time.time() < deadline:
        committed.append(int(child.stdout.readline()))
    child.send_signal(signal.SIGKILL)  # mid-write: the next transaction is open
    child.wait()
    assert len(committed) >= 30
    rankings = {r["prompt_id"] for r in Store(str(path)).rankings()}
    assert set(committed) <= rankings  # nothing committed was lost (at most the in-flight one is missing)


def test_the_simulated_labeller_ranks_right_over_rude_over_wrong_and_evasive_with_ties():
    labeller = rankers.SimulatedLabeller(noise=0.0)
    messages = [{"role": "user", "content": Q}]
    assert labeller.rank(messages, [WRONG, RIGHT, RUDE, EVASIVE]) == [[1], [2], [0], [3]]
    assert labeller.rank(messages, [RIGHT, RIGHT, WRONG, WRONG]) == [[0, 1], [2, 3]]
    assert labeller.rank([{"role": "user", "content": "What is 2 + 2?"}], [RIGHT, WRONG]) is None  # not the demo
    noisy = rankers.SimulatedLabeller(noise=1.0, seed=1)
    orders = {tuple(map(tuple, noisy.rank(messages, [RIGHT, WRONG, RUDE, EVASIVE]))) for _ in range(20)}
    assert len(orders) > 3 and all(len(o) == 4 for o in orders)  # random strict orders
    assert noisy.name == "simulated(noise=1)"


def test_a_reward_model_may_not_rank_for_its_own_retraining(tmp_path):
    (tmp_path / "rm").mkdir()
    with pytest.raises(UserError, match="adds no information"):
        rankers.load_ranker(f"reward:{tmp_path / 'rm'}", 0.1, 0, str(tmp_path / "rm"))
    with pytest.raises(UserError, match="is not a ranker; use human, simulated"):
        rankers.load_ranker("people", 0.1, 0, None)


def test_a_ranking_becomes_its_pairs_ties_skipped_and_grouped_by_prompt(tmp_path, store_location):
    store, ids = _store(store_location, prompts=2)
    first = [c["id"] for c in store.candidates(ids[0], 1)]
    second = [c["id"] for c in store.candidates(ids[1], 1)]
    store.record(ids[0], 1, "simulated", "sim", [[c] for c in first])  # strict: C(4,2) = 6 pairs
    store.record(ids[1], 1, "simulated", "sim", [[second[0]], second[1:3], [second[3]]])  # one tie: 5 pairs
    store.record(ids[1], 1, "human", "alice", [[second[3]], [second[0]], [second[1]], [second[2]]])
    store.record(ids[0], 1, "human", "alice", None, status="unsafe")
    rows, report = export.export_rows(store, [1])
    counts = report["by_round_and_ranker"]
    assert counts["round 1 · simulated"] == {"rankings": 2, "pairs": 11, "ties_skipped": 1}
    assert counts["round 1 · human"] == {"rankings": 2, "unsafe": 1, "pairs": 6, "ties_skipped": 0}
    assert len(rows) == 17 and len({r["group"] for r in rows}) == 3
    strict = [r for r in rows if r["group"].endswith("-k1")]
    texts = {c["id"]: c["text"] for c in store.candidates(ids[0], 1)}
    assert {(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in strict} == {
        (texts[a], texts[b]) for i, a in enumerate(first) for b in first[i + 1 :]
    }
    # the simulated and the human ranking of prompt 2 share 5 ordered pairs; they order 2 of them alike
    assert report["shared_prompts"] == 1 and report["compared_pairs"] == 5
    assert report["agreement"] == pytest.approx(2 / 5)
    folder = tmp_path / "pairs"
    written = export.write_pairs(store, [1], str(folder), str(REPO / "data" / "demo" / "preferences"))
    assert (
        written["pairs"] == 17
        and (folder / "test.jsonl").is_file()
        and "17 pairs in 3 groups" in (folder / "report.md").read_text()
    )
    with pytest.raises(UserError, match="no ranked answers in round"):
        export.write_pairs(store, [5], str(tmp_path / "none"), None)
    assert not (tmp_path / "none").exists()  # nothing half-written


def test_the_grouped_sampler_never_splits_a_group_and_covers_every_pair_once():
    from rlhf_recipes.train.reward import PromptGroupedBatchSampler

    groups = [g for g, size in enumerate([6, 5, 6, 3, 1, 6, 4, 12]) for _ in range(size)]
    sampler = PromptGroupedBatchSampler(groups, batch_size=8, seed=3)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(groups)))
    assert all(len(b) <= 8 for b in batches) and len(batches) == len(sampler)
    for group in set(groups) - {7}:  # group 7 (12 pairs) is larger than a batch: cut into full batches
        assert sum(any(groups[i] == group for i in b) for b in batches) == 1
    sampler.set_epoch(1)
    assert list(sampler) != batches  # reshuffled each epoch
    ranks = [list(PromptGroupedBatchSampler(groups, 8, 3, rank=r, world=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1])


OASST_TREE = {
    "message_tree_id": "t1",
    "prompt": {"role": "prompter", "text": "Name a colour.", "replies": [
        {"role": "assistant", "text": "Blue.", "rank": 1, "replies": [
            {"role": "prompter", "text": "Another?", "replies": [
                {"role": "assistant", "text": "Red.", "rank": 0, "replies": []},
                {"role": "assistant", "text": "Green.", "rank": 1, "replies": []}]}]},
        {"role": "assistant", "text": "Teal.", "rank": 0, "replies": []},
        {"role": "assistant", "text": "(deleted)", "rank": 2, "deleted": True, "replies": []},
        {"role": "assistant", "text": "Maybe.", "rank": None, "replies": []}]},
}  # fmt: skip


def test_openassistant_trees_and_ranking_datasets_import_into_the_store(tmp_path):
    trees = tmp_path / "trees.jsonl"
    trees.write_text(json.dumps(OASST_TREE) + "\n")
    store = Store(str(tmp_path / "f.sqlite"))
    report = importers.import_rankings(store, str(trees), "oasst", 1)
    assert report["rankings"] == 2 and report["deleted_replies"] == 1 and report["unranked_replies"] == 1
    by_prompt = {store.messages(r["prompt_id"])[-1]["content"]: r for r in store.rankings()}
    first = by_prompt["Name a colour."]
    assert [store.texts(t)[t[0]] for t in first["ranking"]] == ["Teal.", "Blue."] and first["ranker"] == "import:oasst"
    assert len(store.messages(by_prompt["Another?"]["prompt_id"])) == 3  # the conversation up to the prompter turn
    rows = tmp_path / "ranked.jsonl"
    rows.write_text(
        json.dumps({"prompt": "Pick one.", "responses": ["x", "y", "z"], "ranks": [2, 1, 2], "labeller": "ann"}) + "\n"
        + json.dumps({"instruction": "Argilla?", "response-1": "p", "response-2": "q",
                      "ranking.responses": [[{"value": "response-1", "rank": 2}, {"value": "response-2", "rank": 1}]],
                      "ranking.responses.users": ["u1"]}) + "\n"
    )  # fmt: skip
    report = importers.import_rankings(store, str(rows), "ranking", 2)
    assert report["rankings"] == 2
    pairs, counts = export.export_rows(store, [2])
    assert sorted((p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs) == [
        ("q", "p"), ("y", "x"), ("y", "z")
    ]  # fmt: skip
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "responses": ["a", "b"], "ranks": [1]}) + "\n")
    with pytest.raises(UserError, match="bad.jsonl line 1: 2 responses but 1 ranks"):
        importers.import_rankings(store, str(bad), "ranking", 3)
    bad.write_text(json.dumps({"prompt": "p", "responses": ["a", "b"], "ranks": ["best", "worst"]}) + "\n")
    with pytest.raises(UserError, match=r"bad.jsonl line 1: rank 1 must be a whole number .* not 'best'"):
        importers.import_rankings(store, str(bad), "ranking", 3)


def test_collect_samples_k_answers_per_prompt_once_and_refuses_another_model_in_the_same_round(
    tmp_path, sft_and_reward
):
    sft, reward = sft_and_reward
    argv = ["--config", str(CONFIGS / "collect.yaml"), "--model", str(sft), "--store", str(tmp_path / "f.sqlite"),
            "--prompt_dataset", str(REPO / "data" / "demo" / "prompts"), "--prompts_per_round", "2", "--k", "3",
            "--max_new_tokens", "6", "--output_dir", str(tmp_path / "collect")]  # fmt: skip
    report = stages.get("collect").run(argv)
    assert report["candidates"] == 6 and (tmp_path / "collect" / "collect.json").is_file()
    store = Store(str(tmp_path / "f.sqlite"))
    rows = store.candidates(store.prompt_ids(1)[0], 1)
    assert len(rows) == 3 and json.loads(rows[0]["sampling"])["k"] == 3
    every = [row for pid in store.prompt_ids(1) for row in store.candidates(pid, 1)]
    cut = sum(bool(json.loads(row["sampling"]).get("cut")) for row in every)  # the page marks these
    assert cut == report["cut_without_eos"] > 0  # 6 tokens of the tiny model: answers stop at the limit, not EOS
    assert json.loads(rows[0]["lineage"])["stage"] == "sft"
    assert stages.get("collect").run(argv)["candidates"] == 0  # a rerun adds nothing
    other = str(tiny_sibling(sft, tmp_path))
    with pytest.raises(UserError, match="already holds answers from .* with 0 rankings by people"):
        stages.get("collect").run([*argv, "--model", other])
    store.record(store.prompt_ids(1)[0], 1, "simulated", "sim", [[r["id"]] for r in rows])
    assert stages.get("collect").run([*argv, "--model", other, "--replace_round", "true"])["candidates"] == 6
    assert store.rankings([1]) == [] and {r["model"] for r in store.candidates(store.prompt_ids(1)[0], 1)} == {other}
    assert stages.get("collect").run([*argv, "--round", "2"])["candidates"] == 6  # round 2: the next prompts
    assert set(store.prompt_ids(2)).isdisjoint(store.prompt_ids(1))


def tiny_sibling(folder, tmp_path):
    import shutil

    copy = tmp_path / "other"
    shutil.copytree(folder, copy)
    return copy


def test_the_reward_stage_trains_further_from_a_reward_model_on_grouped_pairs(tmp_path, sft_and_reward):
    from safetensors.torch import load_file

    from rlhf_recipes.models import REWARD_MODEL, model_kind

    _, reward = sft_and_reward
    store, ids = _store(tmp_path, prompts=3)
    for prompt_id in ids:
        store.record(prompt_id, 1, "simulated", "sim", [[c["id"]] for c in store.candidates(prompt_id, 1)])
    export.write_pairs(store, [1], str(tmp_path / "pairs"), str(REPO / "data" / "demo" / "preferences"))
    out = tmp_path / "reward-r1"
    stages.get("reward").run(
        ["--config", str(CONFIGS / "reward.yaml"), "--model_name_or_path", str(reward), "--dataset_name",
         str(tmp_path / "pairs"), "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "6",
         "--save_strategy", "no", "--eval_strategy", "no", "--learning_rate", "1e-2"]
    )  # fmt: skip
    assert model_kind(str(out)) == REWARD_MODEL
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["model_name_or_path"].endswith("reward")
    before, after = load_file(reward / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    head = next(k for k in after if "score" in k)
    assert head in before and not (before[head] == after[head]).all()  # the earlier head, trained further


def test_the_rounds_pipeline_expands_each_round_and_continue_stops_waiting_for_people():
    from rlhf_recipes.pipeline import parse_argv, stage_hash

    config, _ = parse_argv(["--config", str(CONFIGS / "rounds.yaml")])
    names = [run.name for run in config.stages]
    assert names[-9:] == ["collect-r1", "label-r1", "reward-r1", "grpo-r1",
                          "collect-r2", "label-r2", "reward-r2", "grpo-r2", "rounds-eval"]  # fmt: skip
    by = {run.name: run for run in config.stages}
    assert by["collect-r2"].args["model"] == "outputs/smollm2-135m/round1/policy"
    assert by["grpo-r1"].args["model_name_or_path"] == "outputs/smollm2-135m/ppo"
    assert by["grpo-r2"].args["reward_model_path"] == "outputs/smollm2-135m/round2/reward"
    assert by["reward-r2"].args["model_name_or_path"] == "outputs/smollm2-135m/round1/reward"
    assert by["label-r1"].args["reward_model_in_training"] == "outputs/smollm2-135m/reward"
    evaluation = by["rounds-eval"].args
    assert evaluation["paired"] == {"round1": "round0", "round2": "round1"}
    assert evaluation["models"]["round2"] == "outputs/smollm2-135m/round2/policy"
    assert evaluation["reward_model"] == "outputs/smollm2-135m/round2/reward"
    continued, _ = parse_argv(["--config", str(CONFIGS / "rounds.yaml"), "--continue", "true", "--rounds", "3"])
    label = next(run for run in continued.stages if run.name == "label-r1")
    assert label.args["wait"] == "false" and "grpo-r3" in [run.name for run in continued.stages]
    assert stage_hash(continued, label, "") == stage_hash(config, by["label-r1"], "")  # same stage, not rerun


def test_rounds_without_a_rounds_entry_is_one_sentence(tmp_path, monkeypatch):
    from rlhf_recipes.pipeline import parse_argv

    text = (CONFIGS / "rounds.yaml").read_text().replace("  - stage: rounds\n", "")
    (tmp_path / "p.yaml").write_text(text)
    monkeypatch.chdir(REPO)  # the YAML names configs relative to the checkout
    with pytest.raises(UserError, match="has no `stage: rounds` entry"):
        parse_argv(["--config", str(tmp_path / "p.yaml")])


def test_the_evaluation_compares_any_two_models_paired(tmp_path, sft_and_reward, tiny_model_path):
    sft, reward = sft_and_reward
    argv = ["--config", str(CONFIGS / "eval.yaml"), "--models", json.dumps({"base": str(tiny_model_path), "sft": str(sft)}),
            "--paired", json.dumps({"sft": "base"}), "--reward_model", str(reward), "--max_rows", "4",
            "--samples_per_prompt", "1", "--max_new_tokens", "4", "--qa_max_new_tokens", "4", "--skip", "base.domain-qa",
            "--output_dir", str(tmp_path / "eval")]  # fmt: skip
    report = stages.get("eval").run(argv)
    gains = {r["metric"] for r in report["results"] if r["stage"] == "sft" and r["task"] == "vs-base"}
    assert {"judge_gain", "reward_gain"} <= gains
    assert "## Paired comparisons" in (tmp_path / "eval" / "report.md").read_text()
    with pytest.raises(UserError, match="paired: sft: nobody must name two of the models"):
        stages.get("eval").run(
            [*argv, "--paired", json.dumps({"sft": "nobody"}), "--output_dir", str(tmp_path / "e2")]
        )
