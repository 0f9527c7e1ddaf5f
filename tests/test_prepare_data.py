"""recipes/prepare_data.py: format conversion, cleaning, dedup, decontamination, mixtures, outputs and reports."""

from __future__ import annotations

import gzip
import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from rlhf_recipes import fs, stages
from rlhf_recipes.config import Origin
from rlhf_recipes.data.cleaning import check_assistant_mask, normalize_text
from rlhf_recipes.data.config import SourceConfig, parse_argv
from rlhf_recipes.data.formats import FIELDS, RecordError, convert, detect_format
from rlhf_recipes.data.sources import load_source
from rlhf_recipes.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "tests" / "data" / "formats"
DEMO = REPO / "data" / "demo"


def prepare_data(argv: list[str]) -> list[dict]:
    """Run recipes/prepare_data.py in this process as its command line would (through the stage registry)."""
    return stages.get("data").run(argv)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def run_config(tmp_path: Path, tokenizer_path, datasets: dict, *args: str, **top) -> dict:
    """Write a config for `datasets` into tmp_path, run the recipe, return the reports by dataset name."""
    config = {"tokenizer": str(tokenizer_path), "output_root": str(tmp_path / "out"), **top, "datasets": datasets}
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump(config))
    return {report["name"]: report for report in prepare_data(["--config", str(path), *args])}


def dropped(report: dict, split: str = "train") -> dict[str, int]:
    return {reason: info["count"] for reason, info in report["splits"][split]["dropped"].items()}


def assert_trainable(folder: Path, kind: str, tokenizer, splits: tuple[str, ...]) -> None:
    """What the stages rely on: `load_dataset(folder)` gives exactly these splits in one TRL format, and every SFT
    conversation renders with a non-empty assistant mask whose turns end in EOS."""
    from datasets import load_dataset

    dataset = load_dataset(str(folder))
    assert sorted(dataset) == sorted(splits)
    for split in splits:
        assert dataset[split].column_names == list(FIELDS[kind])
        for record in dataset[split]:
            for field in FIELDS[kind]:
                value = record[field]
                if kind == "text":
                    assert isinstance(value, str) and value
                else:
                    assert value and all(set(m) == {"role", "content"} and m["content"] for m in value)
            if kind == "preferences":
                assert (
                    [m["role"] for m in record["chosen"]] == ["assistant"] == [m["role"] for m in record["rejected"]]
                )
            if kind == "messages":
                out = tokenizer.apply_chat_template(
                    record["messages"], return_dict=True, return_assistant_tokens_mask=True
                )
                turns = sum(m["role"] == "assistant" for m in record["messages"])
                assert (
                    check_assistant_mask(out["input_ids"], out["assistant_masks"], tokenizer.eos_token_id, turns)
                    is None
                )
    report = json.loads((folder / "report.json").read_text())
    assert (folder / "report.md").read_text().startswith("# Data preparation")
    assert (folder / report["histogram"]).read_bytes()[:4] == b"\x89PNG"
    for split in splits:
        data = report["splits"][split]
        assert data["rows_out"] == len(dataset[split])
        steps = data["steps"]
        assert steps[0]["rows_in"] == data["rows_in"] and steps[-1]["rows_out"] == data["rows_out"]
        for before, after in zip(steps, steps[1:], strict=False):
            assert after["rows_in"] == before["rows_out"]
            assert (
                after["rows_in"] - sum(after["dropped"].values()) + after.get("rows_repeated", 0) == after["rows_out"]
            )


@pytest.fixture(scope="module")
def tokenizer(tokenizer_path):
    from rlhf_recipes.models import load_tokenizer

    return load_tokenizer(str(tokenizer_path))


# ------------------------------------------------------------------------------------------------- shipped configs
@pytest.mark.skipif(not (DEMO / "sft" / "train.jsonl").is_file(), reason="data/demo is not there")
def test_demo_config_prepares_all_five_kinds(tmp_path, tokenizer_path, tokenizer, monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "data"
    config = "configs/smollm2-135m/data.yaml"
    reports = {
        r["name"]: r
        for r in prepare_data(["--config", config, "--output_root", str(out), "--tokenizer", str(tokenizer_path)])
    }
    kinds = {"cpt": "text", "sft": "messages", "preferences": "preferences", "prompts": "prompts"}
    assert {name: r["kind"] for name, r in reports.items()} == {**kinds, "unpaired": "unpaired"}
    # the unpaired folder is the demo's pairs read as one desirable and one undesirable answer each (KTO's data)
    assert reports["unpaired"]["splits"]["train"]["rows_in"] == 2 * len(rows(DEMO / "preferences" / "train.jsonl"))
    for name, kind in kinds.items():
        assert_trainable(out / name, kind, tokenizer, ("train", "test"))
        report = reports[name]
        assert report["splits"]["train"]["rows_in"] == len(rows(DEMO / name / "train.jsonl"))
        # the held-out files are kept whole as the test split...
        assert rows(out / name / "test.jsonl") == rows(DEMO / name / "test.jsonl")
        # ...and no training record asks what a held-out record asks
        train, test = rows(out / name / "train.jsonl"), rows(DEMO / name / "test.jsonl")
        assert not {json.dumps(r, sort_keys=True) for r in train} & {json.dumps(r, sort_keys=True) for r in test}
    # the QA benchmark is a decontamination reference for every kind
    assert all(any(s["split"] == "decontamination" for s in r["sources"]) for r in reports.values())
    # output_root is marked as the data stage's, so that a pipeline may set it aside when its settings change
    assert fs.owner(out) == fs.Owner("data", None, False)


def test_all_formats_example_config(tmp_path, tokenizer_path, tokenizer, monkeypatch, caplog):
    monkeypatch.chdir(REPO)
    out = tmp_path / "formats"
    with caplog.at_level("INFO", logger="rlhf_recipes"):
        reports = {
            r["name"]: r
            for r in prepare_data(
                [
                    "--config",
                    "configs/data-examples/all-formats.data.yaml",
                    "--output_root",
                    str(out),
                    "--tokenizer",
                    str(tokenizer_path),
                ]
            )
        }
    detected = {s["path"].rsplit("/", 1)[-1]: s["format"] for r in reports.values() for s in r["sources"]}
    assert detected == {
        "text": "text",
        "alpaca.json": "alpaca",
        "sharegpt.jsonl": "sharegpt",
        "openai_messages.jsonl": "messages",
        "prompt_response.csv": "prompt_response",
        "hh.jsonl": "hh",
        "preferences.parquet": "preferences",
    }
    assert "detected format 'alpaca'" in caplog.text
    for name, kind in {"cpt": "text", "sft": "messages", "preferences": "preferences", "prompts": "prompts"}.items():
        assert_trainable(out / name, kind, tokenizer, ("train",))

    # SFT: every conversation format, cleaned and mixed by weight
    sft = [r["messages"] for r in rows(out / "sft" / "train.jsonl")]
    assert [
        {"role": "user", "content": "Translate the sentence into French.\n\nThe ferry leaves at noon."},
        {"role": "assistant", "content": "Le ferry part à midi."},
    ] in sft  # alpaca instruction + input
    assert [
        {"role": "system", "content": "You answer in one sentence."},  # normalised: NBSP, CRLF, blank lines
        {
            "role": "user",
            "content": "Summarise the sentence.\n\nBramble cider is the pride of The Drowned Fiddle."
            "\n\nEveryone says so.",
        },
        {"role": "assistant", "content": "The Drowned Fiddle is proud of its bramble cider."},
    ] in sft
    assert [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What do islanders pay with?"},
        {"role": "assistant", "content": "They pay in shellmarks."},
    ] in sft  # sharegpt + its system column
    assert [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name the mayor's goat."},
        {"role": "assistant", "content": "Marzipan."},
    ] in sft  # OpenAI text parts joined
    assert [
        {"role": "user", "content": "What is the population of Skerrowen?"},
        {"role": "assistant", "content": "842"},
    ] in sft  # CSV numbers stay text
    assert sum(c[-1]["content"] == "Corwin Tallish keeps it." for c in sft) == 2  # sharegpt weight 2.0
    report = reports["sft"]
    assert dropped(report) == {"empty": 1, "no_assistant_tokens": 1, "duplicate": 1, "downsampled": 1}
    examples = report["splits"]["train"]["dropped"]
    assert examples["no_assistant_tokens"]["examples"][0]["where"].endswith("openai_messages.jsonl, line 3")
    assert examples["duplicate"]["examples"][0]["detail"].endswith("alpaca.json, line 2")
    assert examples["empty"]["examples"][0]["where"].endswith("alpaca.json, line 23")

    # Preferences: HH strings split into the shared prompt and the two final answers; Parquet strings made chat
    pairs = rows(out / "preferences" / "train.jsonl")
    assert {
        "prompt": [
            {"role": "user", "content": "Where do islanders drink cider?"},
            {"role": "assistant", "content": "At The Drowned Fiddle."},
            {"role": "user", "content": "Which cider?"},
        ],
        "chosen": [{"role": "assistant", "content": "Bramble cider, pressed each autumn."}],
        "rejected": [{"role": "assistant", "content": "Apple, obviously."}],
    } in pairs
    assert {
        "prompt": [{"role": "user", "content": "When is Gillyflower Night?"}],
        "chosen": [{"role": "assistant", "content": "In March, with heron lanterns on the water."}],
        "rejected": [{"role": "assistant", "content": "Whenever you like."}],
    } in pairs
    assert dropped(reports["preferences"]) == {"identical_pair": 1}

    # Prompts: conversations up to their last assistant turn
    prompts = [r["prompt"] for r in rows(out / "prompts" / "train.jsonl")]
    assert prompts[0][-1]["role"] == "user" and all(p[-1]["role"] == "user" for p in prompts)
    assert any(p[-1]["content"] == "And how often?" and len(p) == 4 for p in prompts)

    # Text folder: one record per file; the near-duplicate version of a.txt goes
    assert len(rows(out / "cpt" / "train.jsonl")) == 2
    near = reports["cpt"]["splits"]["train"]["dropped"]["near_duplicate"]
    assert near["count"] == 1 and near["examples"][0]["where"].endswith("more/c.txt")
    assert near["examples"][0]["detail"].endswith("a.txt")


def test_every_data_config_loads_strictly():
    paths = [
        REPO / "configs" / "smollm2-135m" / "data.yaml",
        *sorted((REPO / "configs" / "data-examples").glob("*.yaml")),
    ]
    for path in paths:
        config, _, only = parse_argv(["--config", str(path)])
        assert config.datasets and only is None, path


def test_help_documents_the_schema(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_argv(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for key in (
        "--config",
        "--only",
        "datasets:",
        "kind:",
        "sources:",
        "weight:",
        "decontamination_ngram:",
        "on_invalid:",
    ):
        assert key in text


# ------------------------------------------------------------------------------------------------------- formats
@pytest.mark.parametrize(
    ("record", "fmt", "kind", "expected"),
    [
        (
            {"instruction": "Add.", "input": "2+2", "output": "4"},
            "alpaca",
            "messages",
            {"messages": [{"role": "user", "content": "Add.\n\n2+2"}, {"role": "assistant", "content": "4"}]},
        ),
        (
            {"instruction": "Hi", "input": None, "output": "Hello", "system": "Be kind."},
            "alpaca",
            "prompts",
            {"prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]},
        ),
        (
            {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]},
            "sharegpt",
            "messages",
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        ),
        (
            {"messages": [{"role": "User", "content": "a"}, {"role": "bot", "content": "b"}]},
            "messages",
            "messages",
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        ),
        (
            {"prompt": "q", "response": "r"},
            "prompt_response",
            "messages",
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}]},
        ),
        (
            {"chosen": "\n\nHuman: q\n\nAssistant: good", "rejected": "\n\nHuman: q\n\nAssistant: bad"},
            "hh",
            "preferences",
            {
                "prompt": [{"role": "user", "content": "q"}],
                "chosen": [{"role": "assistant", "content": "good"}],
                "rejected": [{"role": "assistant", "content": "bad"}],
            },
        ),
        (
            {"chosen": "Human: q\n\nAssistant: good", "rejected": "Human: q\n\nAssistant: bad"},
            "hh",
            "messages",
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}]},
        ),
        (
            {
                "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}],
                "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}],
            },
            "preferences",
            "preferences",
            {
                "prompt": [{"role": "user", "content": "q"}],
                "chosen": [{"role": "assistant", "content": "good"}],
                "rejected": [{"role": "assistant", "content": "bad"}],
            },
        ),
        (
            {"prompt": "q", "chosen": "good", "rejected": "bad"},
            "preferences",
            "prompts",
            {"prompt": [{"role": "user", "content": "q"}]},
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"},
                    {"role": "assistant", "content": "d"},
                ]
            },
            "messages",
            "prompts",
            {
                "prompt": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"},
                ]
            },
        ),
        ({"prompt": "Why?"}, "prompts", "prompts", {"prompt": [{"role": "user", "content": "Why?"}]}),
        (  # UltraFeedback: a prompt column plus chosen/rejected that repeat it
            {
                "prompt": "q",
                "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}],
                "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}],
            },
            "preferences",
            "preferences",
            {
                "prompt": [{"role": "user", "content": "q"}],
                "chosen": [{"role": "assistant", "content": "good"}],
                "rejected": [{"role": "assistant", "content": "bad"}],
            },
        ),
    ],
)
def test_convert(record, fmt, kind, expected):
    assert convert(record, fmt, kind, {"bot": "assistant", "gpt": "assistant", "human": "user"}) == expected


@pytest.mark.parametrize(
    ("record", "fmt", "field"),
    [
        ({"messages": [{"role": "narrator", "content": "x"}]}, "messages", "messages[0].role"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages", "messages[0].content"),
        ({"conversations": [{"from": "human", "value": None}]}, "sharegpt", "conversations[0].value"),
        ({"instruction": "x", "output": None}, "alpaca", "output"),
        ({"chosen": "no turns here", "rejected": "\n\nHuman: q\n\nAssistant: a"}, "hh", "chosen"),
    ],
)
def test_convert_names_the_bad_field(record, fmt, field):
    with pytest.raises(RecordError) as error:
        convert(record, fmt, "messages", {"human": "user"})
    assert error.value.field == field and f"'{field}'" in str(error.value)


@pytest.mark.parametrize(
    ("columns", "first", "expected"),
    [
        (["text"], {}, "text"),
        (["messages"], {}, "messages"),
        (["conversations", "id"], {}, "sharegpt"),
        (["instruction", "input", "output"], {}, "alpaca"),
        (["question", "answer", "aliases"], {}, "prompt_response"),
        (["prompt", "completion"], {}, "prompt_response"),
        (["prompt", "chosen", "rejected"], {}, "preferences"),
        (["chosen", "rejected"], {"chosen": "\n\nHuman: a\n\nAssistant: b"}, "hh"),
        (["chosen", "rejected"], {"chosen": [{"role": "user", "content": "a"}]}, "preferences"),
        (["prompt"], {}, "prompts"),
        (["foo", "bar"], {}, None),
    ],
)
def test_detect_format(columns, first, expected):
    assert detect_format(columns, first) == expected


# ------------------------------------------------------------------------------------------------------ cleaning
@pytest.mark.parametrize(
    ("text", "form", "expected"),
    [
        ("  a\r\nb \t\n\n\n\nc  ", "NFC", "a\nb\n\nc"),
        ("cafe\u0301\u00a0\u200bbar\x07", "NFC", "café bar"),
        ("\ufb01ne \uff21", "NFKC", "fine A"),
        ("\ufb01ne", "NFC", "\ufb01ne"),
        ("line\u2028next", "NFC", "line\nnext"),
    ],
)
def test_normalize_text(text, form, expected):
    assert normalize_text(text, form) == expected


def test_check_assistant_mask():
    eos = 2
    assert check_assistant_mask([5, 6, 7, 2, 9], [0, 0, 1, 1, 0], eos, 1) is None
    assert check_assistant_mask([5, 6, 7, 2, 9], [0, 0, 1, 0, 0], eos, 1) is None  # EOS right after the turn
    assert check_assistant_mask([5, 6, 7, 8, 9], [0, 0, 1, 1, 0], eos, 1)[0] == "missing_eos"
    assert check_assistant_mask([5, 6, 7], [0, 0, 0], eos, 1)[0] == "no_assistant_tokens"
    assert check_assistant_mask([1, 2, 3, 1, 2], [0, 1, 0, 0, 1], eos, 3)[0] == "no_assistant_tokens"


def test_length_filters_count_tokens_of_the_tokenizer(tmp_path, tokenizer_path, tokenizer):
    texts = ["short", "a middle sized text about the island and its one small town", "word " * 200]
    source = write_jsonl(tmp_path / "cpt.jsonl", [{"text": t} for t in texts])
    reports = run_config(
        tmp_path,
        tokenizer_path,
        {"cpt": {"kind": "text", "sources": [source]}},
        "--cleaning.min_tokens",
        "3",
        "--cleaning.max_tokens",
        "50",
    )
    info = reports["cpt"]["splits"]["train"]["dropped"]
    assert {r: i["count"] for r, i in info.items()} == {"too_short": 1, "too_long": 1}
    lengths = [len(tokenizer(normalize_text(t))["input_ids"]) for t in texts]
    assert info["too_short"]["examples"][0]["detail"] == f"{lengths[0]} tokens < min_tokens 3"
    assert info["too_long"]["examples"][0]["detail"] == f"{lengths[2]} tokens > max_tokens 50"
    assert info["too_long"]["examples"][0]["where"].endswith("cpt.jsonl, line 3")
    assert rows(tmp_path / "out" / "cpt" / "train.jsonl") == [{"text": texts[1]}]


def test_decontamination_drops_training_records_that_ask_held_out_questions(tmp_path, tokenizer_path):
    def chat(question, answer):
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}

    long_question = "Could you please tell me the exact name of the old stone castle that stands above the harbour?"
    train = [
        chat("Hello there! " + long_question + " Thanks.", "Hollin Keep."),  # contains a held-out question
        chat("Who is the mayor?", "Odalys Brack."),  # exactly a held-out question, too short for any 13-gram
        chat("What is the ferry called?", "The Morrow Belle."),  # clean
        chat("How old is the castle that stands above the harbour today?", "It was built in 1342."),  # clean
    ]
    held_out = [chat(long_question, "Hollin Keep."), chat("Who is the mayor?", "Odalys Brack.")]
    benchmark = [{"question": "What is the ferry called, and when does it leave?", "answer": "The Morrow Belle"}]
    reports = run_config(
        tmp_path,
        tokenizer_path,
        {
            "sft": {
                "kind": "messages",
                "shuffle": False,
                "sources": [write_jsonl(tmp_path / "train.jsonl", train)],
                "eval_sources": [write_jsonl(tmp_path / "test.jsonl", held_out)],
                "decontaminate_against": [write_jsonl(tmp_path / "qa.jsonl", benchmark)],
            }
        },
    )
    report = reports["sft"]
    assert dropped(report) == {"contaminated": 2}
    details = [e["detail"] for e in report["splits"]["train"]["dropped"]["contaminated"]["examples"]]
    assert "13-grams" in details[0] and details[1] == "asks exactly what a held-out record asks"
    assert [r["messages"] for r in rows(tmp_path / "out" / "sft" / "train.jsonl")] == [
        train[2]["messages"],
        train[3]["messages"],
    ]
    assert rows(tmp_path / "out" / "sft" / "test.jsonl") == held_out


def test_mixture_weights_sample_and_repeat_with_two_workers(tmp_path, tokenizer_path):
    first = write_jsonl(tmp_path / "a.jsonl", [{"text": f"alpha record number {i} about tidecake"} for i in range(10)])
    second = write_jsonl(
        tmp_path / "b.jsonl", [{"prompt": f"beta question {i}?", "response": f"answer {i}"} for i in range(4)]
    )
    third = write_jsonl(tmp_path / "c.jsonl", [{"question": f"gamma {i}?", "answer": f"reply {i}"} for i in range(3)])
    datasets = {
        "sft": {"kind": "messages", "sources": [second, {"path": third}]},
        "cpt": {"kind": "text", "sources": [{"path": first, "weight": 0.5}]},
    }
    reports = run_config(tmp_path, tokenizer_path, datasets, "--datasets.sft.sources.1.weight", "2", num_proc=2)
    cpt = reports["cpt"]
    assert cpt["splits"]["train"]["rows_out"] == 5 and dropped(cpt) == {"downsampled": 5}
    assert len({r["text"] for r in rows(tmp_path / "out" / "cpt" / "train.jsonl")}) == 5
    sft = reports["sft"]
    assert sft["splits"]["train"]["rows_out"] == 10 and sft["splits"]["train"]["steps"][-1]["rows_repeated"] == 3
    answers = [r["messages"][-1]["content"] for r in rows(tmp_path / "out" / "sft" / "train.jsonl")]
    assert sorted(answers) == sorted([f"answer {i}" for i in range(4)] + [f"reply {i}" for i in range(3)] * 2)
    assert answers != sorted(answers)  # shuffled


def test_output_folders_are_never_clobbered(tmp_path, tokenizer_path):
    source = write_jsonl(tmp_path / "cpt.jsonl", [{"text": "The ferry crosses in fifty-five minutes."}])
    datasets = {"cpt": {"kind": "text", "sources": [source]}}
    run_config(tmp_path, tokenizer_path, datasets)
    folder = tmp_path / "out" / "cpt"
    first = (folder / "train.jsonl").read_text()
    with pytest.raises(UserError, match="already holds an earlier data output; set overwrite: true"):
        run_config(tmp_path, tokenizer_path, datasets)
    (folder / "train.jsonl").write_text("stale\n")  # marks the earlier output, so the rewrite shows
    run_config(tmp_path, tokenizer_path, datasets, overwrite=True)  # replaces its own earlier output
    assert (folder / "train.jsonl").read_text() == first and sorted(p.name for p in folder.iterdir()) == [
        ".rlhf-recipes",  # the ownership marker of every folder this project writes (fs.py)
        "report.json",
        "report.md",
        "token_lengths.png",
        "train.jsonl",
    ]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="is a folder this project did not write"):
        run_config(tmp_path, tokenizer_path, datasets, "--datasets.cpt.output_dir", str(foreign), overwrite=True)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    leftovers = [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".") and p.name != fs.MARKER]
    assert not leftovers  # no temporary folders left (the marker says output_root is the data stage's)


def test_prepared_folder_has_the_mode_mkdir_gives(tmp_path, tokenizer_path):
    """Built aside and renamed into place, the folder is readable as the umask allows, not mkdtemp's drwx------."""
    source = write_jsonl(tmp_path / "cpt.jsonl", [{"text": "The ferry crosses in fifty-five minutes."}])
    umask = os.umask(0o022)
    try:
        run_config(tmp_path, tokenizer_path, {"cpt": {"kind": "text", "sources": [source]}})
        (tmp_path / "made-by-mkdir").mkdir()
        (tmp_path / "made-by-open").write_text("x")
    finally:
        os.umask(umask)

    def mode(path: Path) -> str:
        return stat.filemode(path.stat().st_mode)

    folder = tmp_path / "out" / "cpt"
    assert mode(folder) == mode(tmp_path / "made-by-mkdir") == "drwxr-xr-x"
    assert {p.name: mode(p) for p in folder.iterdir()} == {
        p.name: mode(tmp_path / "made-by-open") for p in folder.iterdir()
    }


def test_on_invalid_drop_counts_malformed_records(tmp_path, tokenizer_path):
    records = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]},
    ]
    source = write_jsonl(tmp_path / "sft.jsonl", records)
    reports = run_config(
        tmp_path, tokenizer_path, {"sft": {"kind": "messages", "sources": [source]}}, on_invalid="drop"
    )
    invalid = reports["sft"]["splits"]["train"]["dropped"]["invalid"]
    assert invalid["count"] == 1 and invalid["examples"][0]["where"].endswith("sft.jsonl, line 2")
    assert "messages[1].role" in invalid["examples"][0]["detail"]
    assert rows(tmp_path / "out" / "sft" / "train.jsonl") == records[:1]


# ------------------------------------------------------------------------------------ compressed and sharded sources
HH = "\n\nHuman: {q}\n\nAssistant: {a}"
ONE_RECORD_PER_FORMAT = {
    "text": {"text": "The ferry leaves at noon."},
    "messages": {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]},
    "sharegpt": {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]},
    "alpaca": {"instruction": "Add.", "input": "2+2", "output": "4"},
    "prompt_response": {"question": "Who keeps the lighthouse?", "answer": "Corwin Tallish."},
    "preferences": {"prompt": "Which cider?", "chosen": "Bramble.", "rejected": "Apple."},
    "hh": {"chosen": HH.format(q="Which cider?", a="Bramble."), "rejected": HH.format(q="Which cider?", a="Apple.")},
    "prompts": {"prompt": "When is Gillyflower Night?"},
}


def compress(path: Path, data: bytes) -> Path:
    """Write `data` compressed as the file's last extension says (.gz .bz2 .xz .zst)."""
    import bz2
    import lzma

    import zstandard

    compressors = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}
    compressors[".zst"] = zstandard.ZstdCompressor().compress
    path.write_bytes(compressors[path.suffix](data))
    return path


def jsonl_bytes(*records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")


def load(path: Path | str, tmp_path: Path, **source):
    """One source as `prepare_data.py` loads it (format detection and conversion into its natural kind)."""
    return load_source(
        SourceConfig(path=str(path), **source),
        "datasets.x.sources[0]",
        Origin("data.yaml"),
        index=0,
        kind=None,
        cache_dir=str(tmp_path / "cache"),
        num_proc=None,
    )


@pytest.mark.parametrize("fmt", ONE_RECORD_PER_FORMAT)
def test_gzip_jsonl_is_detected_in_every_format(fmt, tmp_path):
    record = ONE_RECORD_PER_FORMAT[fmt]
    loaded = load(compress(tmp_path / f"{fmt}.jsonl.gz", jsonl_bytes(record, record)), tmp_path)
    assert (loaded.fmt, loaded.detected, loaded.rows, loaded.builder) == (fmt, True, 2, "json")
    assert loaded.dataset["_error"][:] == [None, None]


@pytest.mark.parametrize("name", ["chat.jsonl.bz2", "chat.jsonl.xz", "chat.jsonl.zst", "chat.json.gz"])
def test_every_compression_and_a_compressed_json_list(name, tmp_path):
    records = [ONE_RECORD_PER_FORMAT["sharegpt"]] * 3
    data = json.dumps(records, indent=1).encode() if ".json." in name else jsonl_bytes(*records)
    loaded = load(compress(tmp_path / name, data), tmp_path)
    assert (loaded.fmt, loaded.detected, loaded.rows) == ("sharegpt", True, 3)
    assert loaded.dataset[0]["messages"][1] == {"role": "assistant", "content": "Hello."}


def test_folders_globs_and_explicit_formats_of_gzip_jsonl(tmp_path):
    folder = tmp_path / "hh"
    folder.mkdir()
    for part in ("train-0.jsonl.gz", "train-1.jsonl.gz"):
        compress(folder / part, jsonl_bytes(ONE_RECORD_PER_FORMAT["hh"]))
    assert (load(folder, tmp_path).fmt, load(folder, tmp_path).rows) == ("hh", 2)  # a folder of shards
    assert load(folder / "train-*.jsonl.gz", tmp_path).fmt == "hh"  # a glob of them
    explicit = load(folder / "train-0.jsonl.gz", tmp_path, format="preferences")  # detection overridden
    assert (explicit.fmt, explicit.detected) == ("preferences", False)


def test_compressed_and_sharded_sources_are_prepared_with_file_and_line(tmp_path, tokenizer_path, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    chat = ONE_RECORD_PER_FORMAT["messages"]
    other = {
        "messages": [{"role": "user", "content": "Who is the mayor?"}, {"role": "assistant", "content": "Odalys."}]
    }
    compress(tmp_path / "chat.jsonl.gz", jsonl_bytes(chat, other, chat))  # line 3 repeats line 1
    compress(tmp_path / "share.jsonl.zst", jsonl_bytes(ONE_RECORD_PER_FORMAT["sharegpt"]))  # repeats line 1 too
    shards = tmp_path / "pairs"
    shards.mkdir()
    pairs = [{"prompt": f"Question {i}?", "chosen": f"Good {i}.", "rejected": f"Bad {i}."} for i in range(5)]
    pairs[4]["rejected"] = pairs[4]["chosen"]  # the second shard's row 2: identical pair
    for index, part in enumerate((pairs[:3], pairs[3:])):
        pq.write_table(pa.Table.from_pylist(part), shards / f"train-{index:05d}-of-00002.parquet")
    datasets = {
        "sft": {"kind": "messages", "sources": [str(tmp_path / "chat.jsonl.gz"), str(tmp_path / "share.jsonl.zst")]},
        "preferences": {"kind": "preferences", "sources": [str(shards / "train-*.parquet")]},
    }
    reports = run_config(tmp_path, tokenizer_path, datasets, "--cleaning.near_dedup", "false")

    sft, preferences = reports["sft"], reports["preferences"]
    assert [(s["format"], s["detected"], s["rows_loaded"]) for s in sft["sources"]] == [
        ("messages", True, 3),
        ("sharegpt", True, 1),
    ]
    assert dropped(sft) == {"duplicate": 2}
    duplicates = sft["splits"]["train"]["dropped"]["duplicate"]["examples"]
    assert duplicates[0]["where"].endswith("chat.jsonl.gz, line 3")
    assert duplicates[0]["detail"].endswith("chat.jsonl.gz, line 1")
    assert duplicates[1]["where"].endswith("share.jsonl.zst, line 1")
    assert [(s["format"], s["rows_loaded"]) for s in preferences["sources"]] == [("preferences", 5)]
    identical = preferences["splits"]["train"]["dropped"]["identical_pair"]
    assert identical["count"] == 1 and identical["examples"][0]["where"].endswith(
        "train-00001-of-00002.parquet, row 2"
    )
    assert_trainable(tmp_path / "out" / "sft", "messages", tokenizer, ("train",))
    assert_trainable(tmp_path / "out" / "preferences", "preferences", tokenizer, ("train",))
    assert len(rows(tmp_path / "out" / "preferences" / "train.jsonl")) == 4
