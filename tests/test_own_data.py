"""A user's own data, read as `datasets.load_dataset` reads it: a local folder in the Hub layout (parquet shards,
JSON Lines, CSV; with and without its README.md card, whose `configs` may name the splits) gives a train and a test
split, never one pile, in data preparation and in the training stages; every TRL dataset type is accepted, standard
and conversational."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from rlhf_recipes import stages
from rlhf_recipes.data import formats
from rlhf_recipes.data.formats import FIELDS
from rlhf_recipes.errors import UserError

CARD = "---\nlicense: mit\ntask_categories: [text-generation]\n---\n# A dataset card\n\nNot data.\n"
# A card whose `configs` name the splits: without it, these file names would be one pile (no split keyword in them)
CARD_CONFIGS = (
    "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/fit-*\n"
    "  - split: test\n    path: data/held-*\n---\n# A dataset card\n"
)


def split_rows(split: str, count: int) -> list[dict]:
    """TRL's standard prompt-completion rows (plus a `text` column for CPT) that say which split they belong to."""
    words = ["harbour", "lantern", "orchard", "ferry", "market", "quarry", "beacon", "meadow"]
    return [
        {
            "text": f"{split} document about the {words[i]} of Skerrowen, number {i}.",
            "prompt": f"{split} question: what is the {words[i]} called?",
            "completion": f"The {words[i]} is called {split.upper()}-{i}.",
        }
        for i in range(count)
    ]


def write_rows(path: Path, rows: list[dict]) -> None:
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        import csv

        with open(path, "w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def hub_layout(folder: Path, extension: str, card: str | None) -> Path:
    """A folder as `hf download --repo-type dataset` leaves it: data/<split>-0000N-of-00002.<ext> (+ README.md)."""
    (folder / "data").mkdir(parents=True)
    names = ("fit", "held") if card == CARD_CONFIGS else ("train", "test")
    for split, name, count in (("train", names[0], 6), ("test", names[1], 3)):
        rows = split_rows(split, count)
        for shard in range(2):
            write_rows(folder / "data" / f"{name}-{shard:05d}-of-00002.{extension}", rows[shard::2])
    if card:
        (folder / "README.md").write_text(card, encoding="utf-8")
    return folder


LAYOUTS = {
    "parquet": ("parquet", None),
    "jsonl": ("jsonl", None),
    "csv": ("csv", None),
    "parquet+card": ("parquet", CARD),
    "jsonl+card": ("jsonl", CARD),
    "csv+card": ("csv", CARD),
    "card-configs": ("jsonl", CARD_CONFIGS),
}


def prepare(tmp_path: Path, tokenizer_path, sources: list, eval_sources: list) -> Path:
    tmp_path.mkdir(exist_ok=True)
    config = {
        "tokenizer": str(tokenizer_path),
        "output_root": str(tmp_path / "out"),
        "cleaning": {"near_dedup": False},
        "datasets": {"sft": {"kind": "messages", "sources": sources, "eval_sources": eval_sources}},
    }
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(config))
    stages.get("data").run(["--config", str(tmp_path / "data.yaml")])
    return tmp_path / "out" / "sft"


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_data_preparation_reads_one_split_of_a_hub_layout_folder(layout, tmp_path, tokenizer_path):
    folder = hub_layout(tmp_path / "snapshot", *LAYOUTS[layout])
    out = prepare(tmp_path, tokenizer_path, [str(folder)], [{"path": str(folder), "split": "test"}])
    train, test = lines(out / "train.jsonl"), lines(out / "test.jsonl")
    assert len(train) == 6 and len(test) == 3  # the card is no row, the test files no training row
    assert not [row for row in train if "test" in json.dumps(row)], "a test row reached training"
    assert all("test question" in row["messages"][0]["content"] for row in test)
    report = json.loads((out / "report.json").read_text())
    assert report["sources"][0]["splits_not_read"] == {"test": 2}  # said, not silent


@pytest.mark.parametrize("layout", LAYOUTS)
def test_training_stages_read_the_train_split_of_a_hub_layout_folder(layout, tmp_path):
    from rlhf_recipes.train.common import load_splits

    folder = hub_layout(tmp_path / "snapshot", *LAYOUTS[layout])
    script_args = SimpleNamespace(dataset_name=str(folder), dataset_config=None, dataset_streaming=False,
                                  dataset_train_split="train", dataset_test_split="test")  # fmt: skip
    train, test = load_splits(script_args, SimpleNamespace(eval_strategy="steps", dataset_text_field="text"),
                              stages.get("cpt"))  # fmt: skip
    assert len(train) == 6 and not [t for t in train["text"] if t.startswith("test")]
    assert len(test) == 3 and all(t.startswith("test") for t in test["text"])


def test_a_split_is_honoured_and_a_missing_one_is_one_sentence(tmp_path, tokenizer_path):
    from rlhf_recipes.train.common import load_splits

    folder = hub_layout(tmp_path / "snapshot", "jsonl", CARD)
    out = prepare(tmp_path, tokenizer_path, [{"path": str(folder), "split": "test"}], [])
    assert len(lines(out / "train.jsonl")) == 3  # the test split, as asked
    with pytest.raises(UserError, match=r"has no split 'validation' \(its splits: train, test\); set .*split"):
        prepare(tmp_path / "again", tokenizer_path, [{"path": str(folder), "split": "validation"}], [])
    with pytest.raises(UserError, match=r"is a file or pattern, which has no splits"):
        prepare(tmp_path / "file", tokenizer_path, [{"path": str(folder / "data" / "test-*"), "split": "test"}], [])
    script_args = SimpleNamespace(dataset_name=str(folder), dataset_config=None, dataset_streaming=False,
                                  dataset_train_split="train", dataset_test_split="validation")  # fmt: skip
    with pytest.raises(UserError, match="has no 'validation' split .*; set dataset_test_split to test"):
        load_splits(script_args, SimpleNamespace(eval_strategy="steps", dataset_text_field="text"), stages.get("cpt"))


def test_a_folder_without_split_names_is_all_train_and_its_card_no_data(tmp_path, tokenizer_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    write_rows(folder / "part-a.jsonl", split_rows("train", 3))
    write_rows(folder / "part-b.jsonl", split_rows("more", 2))
    (folder / "README.md").write_text(CARD)
    out = prepare(tmp_path, tokenizer_path, [str(folder)], [])
    assert len(lines(out / "train.jsonl")) == 5


# ---------------------------------------------------------------------------------------------- TRL dataset types
USER, ANSWER = {"role": "user", "content": "What is the ferry called?"}, {"role": "assistant", "content": "Gannet."}
BAD = {"role": "assistant", "content": "No idea."}
Q, A = USER["content"], ANSWER["content"]
TRL_TYPES = {  # name -> (record, the kind it becomes, the record it becomes)
    "language modelling": ({"text": "The ferry is Gannet."}, "text", {"text": "The ferry is Gannet."}),
    "language modelling, conversational": ({"messages": [USER, ANSWER]}, "messages", {"messages": [USER, ANSWER]}),
    "prompt-only": ({"prompt": Q}, "prompts", {"prompt": [USER]}),
    "prompt-only, conversational": ({"prompt": [USER]}, "prompts", {"prompt": [USER]}),
    "prompt-completion": ({"prompt": Q, "completion": A}, "messages", {"messages": [USER, ANSWER]}),
    "prompt-completion, conversational": (
        {"prompt": [USER], "completion": [ANSWER]}, "messages", {"messages": [USER, ANSWER]}),
    "preference": ({"prompt": Q, "chosen": A, "rejected": BAD["content"]}, "preferences",
                   {"prompt": [USER], "chosen": [ANSWER], "rejected": [BAD]}),
    "preference, conversational": ({"prompt": [USER], "chosen": [ANSWER], "rejected": [BAD]}, "preferences",
                                   {"prompt": [USER], "chosen": [ANSWER], "rejected": [BAD]}),
    "preference, implicit prompt": ({"chosen": f"{Q} {A}", "rejected": f"{Q} {BAD['content']}"}, "preferences",
                                    {"prompt": [USER], "chosen": [ANSWER], "rejected": [BAD]}),
    "preference, implicit prompt, conversational": (
        {"chosen": [USER, ANSWER], "rejected": [USER, BAD]}, "preferences",
        {"prompt": [USER], "chosen": [ANSWER], "rejected": [BAD]}),
    "unpaired preference": ({"prompt": Q, "completion": A, "label": True}, "unpaired",
                            {"prompt": [USER], "completion": [ANSWER], "label": True}),
    "unpaired preference, conversational": ({"prompt": [USER], "completion": [BAD], "label": False}, "unpaired",
                                            {"prompt": [USER], "completion": [BAD], "label": False}),
}  # fmt: skip


@pytest.mark.parametrize("name", TRL_TYPES)
def test_every_trl_dataset_type_is_detected_and_converted(name, tmp_path):
    from rlhf_recipes.config import Origin
    from rlhf_recipes.data.config import SourceConfig
    from rlhf_recipes.data.sources import load_source

    record, kind, expected = TRL_TYPES[name]
    write_rows(tmp_path / "one.jsonl", [record])
    loaded = load_source(SourceConfig(path=str(tmp_path / "one.jsonl")), "datasets.x.sources[0]", Origin("d.yaml"),
                         index=0, kind=None, cache_dir=str(tmp_path / "cache"), num_proc=None)  # fmt: skip
    assert loaded.dataset[0]["_error"] is None, loaded.dataset[0]["_error"]
    assert {field: loaded.dataset[0][field] for field in FIELDS[kind]} == expected  # its natural kind
    assert list(expected) == list(FIELDS[kind])


@pytest.mark.parametrize("conversational", [False, True], ids=["standard", "conversational"])
def test_unpaired_preferences_are_prepared_for_a_kto_stage(conversational, tmp_path, tokenizer_path):
    name = "unpaired preference" + (", conversational" if conversational else "")
    record = TRL_TYPES[name][0]
    rows = [{**record, "label": label} for label in (True, False)]
    rows += [{**record, "prompt": [{"role": "user", "content": "Who keeps the lighthouse?"}] if conversational
              else "Who keeps the lighthouse?", "label": "true"}]  # fmt: skip
    (tmp_path / "kto.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {"tokenizer": str(tokenizer_path), "output_root": str(tmp_path / "out"),
              "datasets": {"kto": {"kind": "unpaired", "sources": [str(tmp_path / "kto.jsonl")]}}}  # fmt: skip
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(config))
    stages.get("data").run(["--config", str(tmp_path / "data.yaml")])
    written = lines(tmp_path / "out" / "kto" / "train.jsonl")
    assert sorted(row["label"] for row in written) == [False, True, True]  # one answer labelled both ways: two rows
    assert all(list(row) == ["prompt", "completion", "label"] for row in written)
    assert formats.data_folder(("prompt", "completion", "label")) == "unpaired"
