"""The bad-input catalogue of recipes/prepare_data.py: every malformed input or config gives exit code 2, one `error:`
line naming the file, line and field (or config key), no traceback, and no output folder that looks complete."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

import rlhf_recipes.data.prepare  # noqa: F401  (imports `datasets` now: its stderr handler must not bind to a capsys)
from rlhf_recipes import stages
from rlhf_recipes.cli import run

REPO = Path(__file__).resolve().parents[1]
GOOD_CHAT = {
    "messages": [
        {"role": "user", "content": "Who keeps the lighthouse?"},
        {"role": "assistant", "content": "Corwin Tallish."},
    ]
}


def jsonl(*records) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def chat(*turns) -> dict:
    return {"messages": list(turns)}


def config(sources, kind: str = "messages", **dataset) -> dict:
    return {"output_root": "out", "datasets": {"sft": {"kind": kind, "sources": sources, **dataset}}}


@dataclass
class Case:
    name: str
    files: dict  # relative path -> str (UTF-8 text), bytes, or None (an empty folder)
    config: dict | str | None  # the YAML (None: no config file at all)
    expect: list[str]  # fragments of the one error line
    args: list[str] = field(default_factory=list)


HH = "\n\nHuman: {q}\n\nAssistant: {a}"
CATALOGUE = [
    # ---- malformed data files: file, line and field
    Case(
        "invalid_json_line",
        {"sft.jsonl": jsonl(GOOD_CHAT, '{"messages": [')},
        config(["sft.jsonl"]),
        ["sft.jsonl, line 2", "not valid JSON"],
    ),
    Case(
        "line_is_not_an_object",
        {"sft.jsonl": jsonl(GOOD_CHAT, "[1, 2]")},
        config(["sft.jsonl"]),
        ["sft.jsonl, line 2", "expected a JSON object, got list"],
    ),
    Case(
        "missing_field",
        {"alpaca.json": '[\n{"instruction": "a", "output": "b"},\n{"instruction": "c"}\n]\n'},
        config(["alpaca.json"]),
        ["alpaca.json, line 3", "field 'output'", "missing"],
    ),
    Case(
        "missing_column",
        {"qa.csv": "prompt\nhello\n"},
        config([{"path": "qa.csv", "format": "prompt_response"}]),
        ["qa.csv, line 2", "field 'response' is missing", "needs prompt, response"],
    ),
    Case(
        "unknown_role",
        {
            "chat.jsonl": jsonl(
                {"conversations": [{"from": "human", "value": "hi"}, {"from": "narrator", "value": "Once upon"}]}
            )
        },
        config(["chat.jsonl"]),
        ["chat.jsonl, line 1", "field 'conversations[1].from'", "unknown role 'narrator'", "roles:"],
    ),
    Case(
        "non_string_content",
        {
            "sft.jsonl": jsonl(
                GOOD_CHAT, chat({"role": "user", "content": "How many?"}, {"role": "assistant", "content": 42})
            )
        },
        config(["sft.jsonl"]),
        ["sft.jsonl, line 2", "field 'messages[1].content'", "must be a string, not int"],
    ),
    Case(
        "null_content",
        {"sft.jsonl": jsonl(chat({"role": "user", "content": None}))},
        config(["sft.jsonl"]),
        ["sft.jsonl, line 1", "field 'messages[0].content'", "missing or null"],
    ),
    Case(
        "empty_conversation",
        {"sft.jsonl": jsonl(GOOD_CHAT, GOOD_CHAT, {"messages": []})},
        config(["sft.jsonl"]),
        ["sft.jsonl, line 3", "field 'messages'", "empty conversation"],
    ),
    Case(
        "messages_not_a_list",
        {"sft.jsonl": jsonl({"messages": "hello"})},
        config(["sft.jsonl"]),
        ["sft.jsonl, line 1", "field 'messages'", "must be a list of messages"],
    ),
    Case(
        "message_not_an_object",
        {"sft.jsonl": jsonl({"messages": ["hello"]})},
        config(["sft.jsonl"]),
        ["sft.jsonl, line 1", "field 'messages[0]'", "not str"],
    ),
    Case(
        "message_without_role",
        {"sft.jsonl": jsonl(chat({"content": "hello"}))},
        config(["sft.jsonl"]),
        ["sft.jsonl, line 1", "field 'messages[0].role'", "needs a role"],
    ),
    Case(
        "non_utf8_bytes",
        {"cpt.jsonl": b'{"text": "fine"}\n{"text": "caf\xe9"}\n'},
        config(["cpt.jsonl"], "text"),
        ["cpt.jsonl, line 2", "byte 0xe9", "not valid UTF-8"],
    ),
    Case("empty_file", {"sft.jsonl": ""}, config(["sft.jsonl"]), ["sft.jsonl is empty"]),
    Case("blank_lines_only", {"sft.jsonl": "\n  \n\n"}, config(["sft.jsonl"]), ["sft.jsonl is empty"]),
    Case(
        "hh_without_assistant",
        {"hh.jsonl": jsonl({"chosen": "\n\nHuman: hi", "rejected": HH.format(q="hi", a="x")})},
        config([{"path": "hh.jsonl", "format": "hh"}], "preferences"),
        ["hh.jsonl, line 1", "field 'chosen'", "Assistant:"],
    ),
    Case(
        "hh_without_shared_prompt",
        {"hh.jsonl": jsonl({"chosen": HH.format(q="a", a="b"), "rejected": HH.format(q="c", a="d")})},
        config(["hh.jsonl"], "preferences"),
        ["hh.jsonl, line 1", "field 'chosen'", "shares no prompt"],
    ),
    Case(
        "preference_without_rejected",
        {"pairs.jsonl": jsonl({"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q2", "chosen": "a2"})},
        config(["pairs.jsonl"], "preferences"),
        ["pairs.jsonl, line 2", "field 'rejected'", "missing"],
    ),
    Case(
        "json_array_syntax_error",
        {"cpt.json": '[{"text": "a"},\n{"text": "b",,}]\n'},
        config(["cpt.json"], "text"),
        ["cpt.json, line 2", "not valid JSON"],
    ),
    Case(
        "json_single_object",
        {"cpt.json": '{\n  "data": [{"text": "a"}]\n}\n'},
        config(["cpt.json"], "text"),
        ["cannot tell the format of cpt.json", "columns (data)"],
    ),  # one object = one record
    Case(
        "csv_not_utf8",
        {"qa.csv": 'prompt,response\n"caf\u00e9",x\n'.encode("latin-1")},
        config(["qa.csv"]),
        ["qa.csv, line 2", "not valid UTF-8"],
    ),
    Case(
        "text_file_not_utf8",
        {"docs/a.txt": "fine\n", "docs/b.txt": b"one\ntwo\nthr\xffee\n"},
        config(["docs"], "text"),
        ["b.txt, line 3", "byte 0xff", "not valid UTF-8"],
    ),
    Case(
        "unknown_format",
        {"data.jsonl": jsonl({"foo": 1, "bar": 2})},
        config(["data.jsonl"]),
        ["cannot tell the format of data.jsonl", "columns (foo, bar)", "datasets.sft.sources[0].format"],
    ),
    Case(
        "unsupported_extension",
        {"data.xlsx": "x"},
        config(["data.xlsx"]),
        ["data.xlsx", "unsupported extension '.xlsx'", "datasets.sft.sources[0].path"],
    ),
    Case(
        "format_cannot_become_kind",
        {"cpt.jsonl": jsonl({"text": "hello"})},
        config(["cpt.jsonl"], "preferences"),
        ["cpt.jsonl is in format 'text'", "cannot become 'preferences'"],
    ),
    Case(
        "path_does_not_exist",
        {},
        config(["data/missing.jsonl"]),
        ["data/missing.jsonl", "datasets.sft.sources[0].path", "does not exist"],
    ),
    Case(
        "hub_id_while_offline",
        {},
        config(["someorg/some-dataset"]),
        ["someorg/some-dataset", "datasets.sft.sources[0].path", "HF_HUB_OFFLINE"],
    ),
    Case("empty_folder", {"docs": None}, config(["docs"], "text"), ["folder docs", "has no data files"]),
    Case(
        "folder_mixing_file_types",
        {"docs/a.jsonl": jsonl({"text": "a"}), "docs/b.csv": "text\nb\n"},
        config(["docs"], "text"),
        ["docs", "mixes csv and json files"],
    ),
    Case(
        "column_mapping_to_absent_column",
        {"qa.jsonl": jsonl({"question": "q", "answer": "a"})},
        config([{"path": "qa.jsonl", "columns": {"prompt": "query"}}]),
        ["qa.jsonl has no column 'query'", "datasets.sft.sources[0].columns.prompt"],
    ),
    Case(
        "format_field_absent",
        {"cpt.jsonl": jsonl({"text": "hello"})},
        config([{"path": "cpt.jsonl", "format": "alpaca"}]),
        ["cpt.jsonl, line 1", "field 'instruction' is missing"],
    ),
    # ---- compressed and sharded sources
    Case(
        "invalid_json_line_in_gzip",
        {"sft.jsonl.gz": gzip.compress(jsonl(GOOD_CHAT, GOOD_CHAT, '{"messages": [').encode())},
        config(["sft.jsonl.gz"]),
        ["sft.jsonl.gz, line 3", "not valid JSON"],
    ),
    Case(
        "bad_field_in_gzip",
        {"sft.jsonl.gz": gzip.compress(jsonl(GOOD_CHAT, chat({"role": "user", "content": 7})).encode())},
        config(["sft.jsonl.gz"]),
        ["sft.jsonl.gz, line 2", "field 'messages[0].content'", "must be a string, not int"],
    ),
    Case(
        "not_gzip_at_all",
        {"sft.jsonl.gz": jsonl(GOOD_CHAT)},
        config(["sft.jsonl.gz"]),
        ["sft.jsonl.gz is not a valid .gz file"],
    ),
    Case(
        "compressed_file_does_not_exist",
        {},
        config(["test.jsonl.gz"]),
        ["test.jsonl.gz", "datasets.sft.sources[0].path", "does not exist"],
    ),  # a missing file, not a Hub id
    Case(
        "compressed_csv",
        {"qa.csv.gz": gzip.compress(b"prompt,response\nq,a\n")},
        config(["qa.csv.gz"]),
        ["qa.csv.gz", "unsupported extension '.csv.gz'", ".jsonl and .json also as .gz"],
    ),
    Case(
        "glob_matches_no_shard",
        {"shards/readme.txt": "x"},
        config(["shards/train-*.parquet"]),
        ["the pattern shards/train-*.parquet", "matches no file"],
    ),
    # ---- bad configs: file and key
    Case(
        "unknown_format_name",
        {},
        config([{"path": "x.jsonl", "format": "sharegtp"}]),
        ["datasets.sft.sources[0].format", "'sharegtp'", "did you mean 'sharegpt'"],
    ),
    Case(
        "negative_weight",
        {"a.jsonl": jsonl(GOOD_CHAT)},
        config([{"path": "a.jsonl", "weight": -1}]),
        ["datasets.sft.sources[0].weight", "data.yaml", "positive number"],
    ),
    Case(
        "zero_weight",
        {"a.jsonl": jsonl(GOOD_CHAT)},
        config([{"path": "a.jsonl", "weight": 0}]),
        ["datasets.sft.sources[0].weight", "positive number, not 0"],
    ),
    Case(
        "unknown_top_level_key",
        {},
        {**config(["a.jsonl"]), "tokeniser": "x"},
        ["unknown key 'tokeniser'", "data.yaml", "did you mean 'tokenizer'"],
    ),
    Case(
        "unknown_cleaning_key",
        {},
        {**config(["a.jsonl"]), "cleaning": {"min_token": 3}},
        ["unknown key 'cleaning.min_token'", "did you mean 'min_tokens'"],
    ),
    Case(
        "wrong_type",
        {},
        {**config(["a.jsonl"]), "cleaning": {"max_tokens": "lots"}},
        ["cleaning.max_tokens", "must be an integer or null, not 'lots'"],
    ),
    Case(
        "min_tokens_above_max_tokens",
        {},
        {**config(["a.jsonl"]), "cleaning": {"min_tokens": 100, "max_tokens": 10}},
        ["datasets.sft.cleaning.max_tokens", "must be >= min_tokens (100)"],
    ),
    Case("invalid_yaml", {}, "datasets: [unclosed\n", ["data.yaml is not valid YAML"]),
    Case("missing_config_file", {}, None, ["config file data.yaml does not exist"]),
    Case("unknown_kind", {}, config(["a.jsonl"], "chat"), ["datasets.sft.kind", "'chat'", "messages"]),
    Case("no_sources", {}, config([]), ["datasets.sft.sources", "at least one source"]),
    Case("no_datasets", {}, {"output_root": "out", "datasets": {}}, ["'datasets'", "at least one dataset"]),
    Case(
        "weight_on_eval_source",
        {},
        config(["a.jsonl"], eval_sources=[{"path": "b.jsonl", "weight": 2}]),
        ["datasets.sft.eval_sources[0].weight", "training sources only"],
    ),
    Case(
        "bad_role_mapping",
        {},
        config([{"path": "a.jsonl", "roles": {"bot": "robot"}}]),
        ["datasets.sft.sources[0].roles.bot", "must map to one of"],
    ),
    Case("zero_max_rows", {}, config([{"path": "a.jsonl", "max_rows": 0}]), ["datasets.sft.sources[0].max_rows"]),
    Case(
        "unknown_key_on_command_line",
        {},
        config(["a.jsonl"]),
        ["'cleaning.min_tokenz'", "on the command line", "did you mean"],
        ["--cleaning.min_tokenz", "3"],
    ),
    Case(  # a bare flag is `true`, which only a true/false key takes
        "command_line_key_without_value",
        {},
        config(["a.jsonl"]),
        ["key 'seed' on the command line", "must be an integer, not True"],
        ["--seed"],
    ),
    Case(
        "only_names_unknown_dataset",
        {"a.jsonl": jsonl(GOOD_CHAT)},
        config(["a.jsonl"]),
        ["--only names 'ppo'", "not a dataset"],
        ["--only", "ppo"],
    ),
    Case(
        "tokenizer_not_found",
        {"a.jsonl": jsonl(GOOD_CHAT)},
        {**config(["a.jsonl"]), "tokenizer": "no/such-tokenizer"},
        ["tokenizer=no/such-tokenizer in", "is a Hub model id", "HF_HUB_OFFLINE", "hf download"],
    ),
    Case(
        "everything_dropped",
        {"a.jsonl": jsonl(GOOD_CHAT)},
        {**config(["a.jsonl"]), "cleaning": {"min_tokens": 5000, "max_tokens": None}},
        ["dataset 'sft' has no train rows left", "too_short: 1", "datasets.sft.cleaning"],
    ),
]


def prepare_data(argv: list[str]) -> list[dict]:
    """Run recipes/prepare_data.py in this process as its command line would (through the stage registry)."""
    return stages.get("data").run(argv)


def materialise(case: Case, root: Path, tokenizer_path: Path) -> list[str]:
    """Write the case's files and config under root; return the recipe's arguments."""
    for name, content in case.files.items():
        path = root / name
        if content is None:
            path.mkdir(parents=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    if isinstance(case.config, dict):
        data = {"tokenizer": str(tokenizer_path), **case.config}
        (root / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    elif isinstance(case.config, str):
        (root / "data.yaml").write_text(case.config)
    return ["--config", "data.yaml", *case.args]


def assert_nothing_complete(root: Path) -> None:
    out = root / "out"
    if out.exists():
        assert [p.name for p in out.iterdir()] == [], "a failed run left something in the output root"


@pytest.mark.parametrize("case", CATALOGUE, ids=[c.name for c in CATALOGUE])
def test_bad_input(case, tmp_path, monkeypatch, capsys, tokenizer_path):
    monkeypatch.chdir(tmp_path)
    args = materialise(case, tmp_path, tokenizer_path)
    with pytest.raises(SystemExit) as exit_info:
        run(lambda: prepare_data(args))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    message = errors[0]
    assert message.endswith((".", "?")), message
    for fragment in case.expect:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert_nothing_complete(tmp_path)


def test_catalogue_is_large_enough():
    assert len(CATALOGUE) >= 25 and len({c.name for c in CATALOGUE}) == len(CATALOGUE)


@pytest.mark.parametrize("overwrite", [False, True])
def test_existing_output_is_left_alone(overwrite, tmp_path, monkeypatch, capsys, tokenizer_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.jsonl").write_text(jsonl(GOOD_CHAT))
    (tmp_path / "out" / "sft").mkdir(parents=True)
    (tmp_path / "out" / "sft" / "mine.txt").write_text("keep me")
    args = materialise(
        Case("existing", {}, {**config(["a.jsonl"]), "overwrite": overwrite}, []), tmp_path, tokenizer_path
    )
    with pytest.raises(SystemExit) as exit_info:
        run(lambda: prepare_data(args))
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "out/sft" in message and "datasets.sft.output_dir" in message
    assert "is a folder this project did not write (mine.txt is in it)" in message  # with or without overwrite
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["sft"]
    assert [p.name for p in (tmp_path / "out" / "sft").iterdir()] == ["mine.txt"]


def test_the_script_itself_exits_2_without_traceback(tmp_path, tokenizer_path):
    (tmp_path / "sft.jsonl").write_text(jsonl(GOOD_CHAT, chat({"role": "user", "content": 7})))
    args = materialise(Case("script", {}, config(["sft.jsonl"]), []), tmp_path, tokenizer_path)
    result = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "prepare_data.py"), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: sft.jsonl, line 2: field 'messages[0].content' must be a string, not int (7); fix the record, or set "
        "on_invalid: drop to count and skip such records."
    )
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
