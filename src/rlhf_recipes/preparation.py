"""Data preparation: one YAML config -> cleaned datasets in TRL's standard formats, with a report of every dropped row.

    python recipes/prepare_data.py --config configs/smollm2-135m/data.yaml [--dotted.key VALUE ...]

For each dataset of the config: load its sources (local JSONL/JSON/CSV/Parquet files, folders of plain text, Hub
ids), convert them into one output kind (`formats.py`), clean them (`cleaning.py`), mix the training sources by
weight, and write `train.jsonl` (+ `test.jsonl` from the held-out `eval_sources`), `report.md`, `report.json` and
token-length histograms into a temporary sibling folder that is renamed into place only when every dataset is done.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import glob
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
import types
import typing
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from .cleaning import (
    REASONS,
    STEPS,
    NearDuplicateIndex,
    ReferenceSet,
    Thresholds,
    annotate_batch,
    deduplicate,
    normalize_record,
)
from .cli import UserError
from .formats import (
    FEATURES,
    FIELDS,
    FORMATS,
    KINDS,
    ROLE_ALIASES,
    ROLES,
    RecordError,
    convert,
    detect_format,
    empty_record,
    prompt_response_columns,
)
from .models import DEFAULT_MODEL, load_tokenizer, resolve_model_path

logger = logging.getLogger(__name__)

REPORT_MARKER = "rlhf_recipes.prepare_data"
EXTENSIONS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text", ".md": "text"}
STANDARD_COLUMNS = sorted({c for required, optional, _ in FORMATS.values() for c in required + optional} | {"text"})


def _help(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


# ----------------------------------------------------------------------------------------------------------- config
@dataclass
class SourceConfig:
    path: str = _help("local file (.jsonl .json .csv .parquet .txt .md), folder, glob, or Hub dataset id")
    format: Literal["auto", *FORMATS] = _help(
        "input format; auto detects it from the columns and logs it", default="auto"
    )
    weight: float = _help(
        "training mixture: 0.5 keeps a random half of the cleaned rows, 2.0 repeats them", default=1.0
    )
    split: str = _help("split of a Hub dataset (local files have one: train)", default="train")
    subset: str | None = _help("config name of a Hub dataset", default=None)
    columns: dict[str, str] = _help(
        "standard field -> this source's column, e.g. {prompt: question}", default_factory=dict
    )
    roles: dict[str, str] = _help(
        "extra role names -> system/user/assistant/tool, e.g. {bot: assistant}", default_factory=dict
    )
    text_unit: Literal["document", "paragraph", "line"] = _help(
        "one record per text file, paragraph or line", default="document"
    )
    max_rows: int | None = _help("read only the first N rows (a slice of a large corpus)", default=None)


@dataclass
class CleaningConfig:
    unicode_form: Literal["NFC", "NFKC"] = _help(
        "Unicode normal form; NFKC also folds compatibility characters", default="NFC"
    )
    min_tokens: int = _help(
        "drop records shorter than this, in tokens of `tokenizer` (chat template applied)", default=1
    )
    max_tokens: int | None = _help("drop records longer than this (null: no limit)", default=2048)
    exact_dedup: bool = _help("drop records identical to an earlier one up to case and whitespace", default=True)
    near_dedup: bool = _help("drop near-duplicates: datasketch MinHash LSH over word n-grams", default=True)
    minhash_threshold: float = _help(
        "estimated Jaccard similarity from which two records are near-duplicates", default=0.8
    )
    minhash_num_perm: int = _help("MinHash permutations (more: better estimates, slower)", default=128)
    minhash_ngram: int = _help("words per MinHash shingle", default=5)
    decontamination_ngram: int = _help(
        "drop training records sharing a word n-gram this long with what a held-out "
        "record asks (its text, or its user turns; 0: exact matches only)",
        default=13,
    )
    decontamination_min_overlap: float = _help(
        "...only when at least this fraction of the record's n-grams are shared (0: any one n-gram)", default=0.0
    )
    examples_per_reason: int = _help("examples of dropped rows per reason in the report", default=3)


@dataclass
class DatasetConfig:
    kind: Literal[KINDS] = _help(
        "output format: text (CPT), messages (SFT), preferences (reward model), prompts (PPO)"
    )
    sources: list[SourceConfig] = _help("training sources (a bare string is a path), mixed by weight")
    eval_sources: list[SourceConfig] = _help(
        "held-out sources: written to test.jsonl, and train is decontaminated against them", default_factory=list
    )
    decontaminate_against: list[SourceConfig] = _help(
        "more held-out sets (any format) that train must not overlap", default_factory=list
    )
    output_dir: str | None = _help("where to write (default: <output_root>/<name>)", default=None)
    cleaning: CleaningConfig = _help("overrides of the top-level cleaning keys for this dataset", default=None)
    shuffle: bool = _help("shuffle the mixed training rows (seeded)", default=True)


@dataclass
class DataConfig:
    datasets: dict[str, DatasetConfig] = _help("the datasets to prepare, by name")
    tokenizer: str = _help("tokenizer that measures lengths and renders chat templates", default=DEFAULT_MODEL)
    output_root: str | None = _help("parent folder of each dataset's output_dir", default=None)
    overwrite: bool = _help(
        "replace an earlier prepare_data.py output in output_dir (never any other folder)", default=False
    )
    num_proc: int | None = _help("worker processes for datasets.map (null: all cores from 20k rows up)", default=None)
    seed: int = _help("seed of mixture sampling and shuffling", default=42)
    on_invalid: Literal["error", "drop"] = _help(
        "a malformed record stops the run (error) or is dropped and counted", default="error"
    )
    cleaning: CleaningConfig = _help("cleaning thresholds shared by every dataset", default_factory=CleaningConfig)


def _describe(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_describe(a) for a in args if a is not type(None)) + " | null"
    if origin is list:
        return f"list of {_describe(args[0])}"
    if origin is dict:
        return f"mapping of {_describe(args[1])}"
    return getattr(tp, "__name__", str(tp))


class Origin:
    """Where a config key came from, for error messages: the YAML file, or the command line for overridden keys."""

    def __init__(self, path: str, overridden: set[str] = frozenset()):
        self.path, self.overridden = path, overridden

    def __call__(self, key: str) -> str:
        hit = any(key == o or key.startswith(o + ".") or key.startswith(o + "[") for o in self.overridden)
        return "on the command line" if hit else f"in {self.path}"


def _coerce(tp, value, key: str, where: Origin, label: str | None = None):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    wrong = f"key '{key}' {where(key)} must be {label or _describe(tp)}, not {type(value).__name__} ({repr(value)[:60]}); fix it"
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        return _coerce(next(a for a in args if a is not type(None)), value, key, where, _describe(tp))
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f"; did you mean '{close[0]}'?" if close else "."
            raise UserError(f"key '{key}' {where(key)} is '{value}', which is not one of: {', '.join(args)}{hint}")
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key, where)
    if origin is list:
        if not isinstance(value, list):
            raise UserError(wrong + " (a YAML list).")
        return [_coerce(args[0], item, f"{key}[{i}]", where) for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(wrong + " (a YAML mapping).")
        return {str(k): _coerce(args[1], v, f"{key}.{k}", where) for k, v in value.items()}
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (str, bool) and isinstance(value, tp):
        return value
    raise UserError(wrong + ".")


def build(cls, data, key: str, where: Origin):
    """A config dataclass from YAML data; unknown keys, missing keys and wrong types are UserErrors naming the key."""
    if cls is SourceConfig and isinstance(data, str):
        data = {"path": data}
    prefix = f"{key}." if key else ""
    if not isinstance(data, dict):
        raise UserError(
            f"key '{key}' {where(key)} must be a mapping of {', '.join(f.name for f in dataclasses.fields(cls))}."
        )
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for name in data:
        if name not in names:
            close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.6)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys: {', '.join(names)}."
            raise UserError(f"unknown key '{prefix}{name}' {where(prefix + str(name))}{hint}")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            values[f.name] = _coerce(hints[f.name], data[f.name], prefix + f.name, where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise UserError(
                f"key '{prefix}{f.name}' is missing {where(prefix + f.name)}; it is required ({f.metadata['help']})."
            )
    return cls(**values)


def _check(condition: bool, key: str, where: Origin, rule: str) -> None:
    if not condition:
        raise UserError(f"key '{key}' {where(key)} {rule}.")


def validate(config: DataConfig, where: Origin) -> None:
    """Rules the types alone do not express (positive weights, min <= max, where outputs go)."""
    _check(bool(config.datasets), "datasets", where, "must name at least one dataset")
    _check(config.num_proc is None or config.num_proc >= 1, "num_proc", where, "must be at least 1 (or null)")
    outputs = {}
    for name, spec in config.datasets.items():
        key = f"datasets.{name}"
        _check(bool(spec.sources), f"{key}.sources", where, "must list at least one source")
        groups = (
            ("sources", spec.sources),
            ("eval_sources", spec.eval_sources),
            ("decontaminate_against", spec.decontaminate_against),
        )
        for group, sources in groups:
            for i, source in enumerate(sources):
                skey = f"{key}.{group}[{i}]"
                if group == "sources":
                    _check(
                        source.weight > 0, f"{skey}.weight", where, f"must be a positive number, not {source.weight}"
                    )
                else:
                    _check(
                        source.weight == 1.0, f"{skey}.weight", where, "applies to training sources only; remove it"
                    )
                _check(source.max_rows is None or source.max_rows >= 1, f"{skey}.max_rows", where, "must be >= 1")
                for alias, role in source.roles.items():
                    _check(role in ROLES, f"{skey}.roles.{alias}", where, f"must map to one of {', '.join(ROLES)}")
                for column in source.columns:
                    _check(
                        column in STANDARD_COLUMNS,
                        f"{skey}.columns.{column}",
                        where,
                        f"must name a standard field ({', '.join(STANDARD_COLUMNS)})",
                    )
        c, ckey = spec.cleaning, f"{key}.cleaning"
        _check(c.min_tokens >= 0, f"{ckey}.min_tokens", where, "must be >= 0")
        _check(
            c.max_tokens is None or c.max_tokens >= max(c.min_tokens, 1),
            f"{ckey}.max_tokens",
            where,
            f"must be >= min_tokens ({c.min_tokens}) and >= 1, or null",
        )
        _check(0 < c.minhash_threshold <= 1, f"{ckey}.minhash_threshold", where, "must be in (0, 1]")
        _check(c.minhash_num_perm >= 16, f"{ckey}.minhash_num_perm", where, "must be >= 16")
        _check(c.minhash_ngram >= 1, f"{ckey}.minhash_ngram", where, "must be >= 1")
        _check(c.decontamination_ngram >= 0, f"{ckey}.decontamination_ngram", where, "must be >= 0")
        _check(
            0 <= c.decontamination_min_overlap <= 1, f"{ckey}.decontamination_min_overlap", where, "must be in [0, 1]"
        )
        _check(c.examples_per_reason >= 0, f"{ckey}.examples_per_reason", where, "must be >= 0")
        if spec.output_dir is None:
            _check(
                config.output_root is not None, f"{key}.output_dir", where, "is not set and there is no output_root"
            )
            spec.output_dir = str(Path(config.output_root) / name)
        resolved = Path(spec.output_dir).resolve()
        _check(resolved not in outputs, f"{key}.output_dir", where, f"is also the output of '{outputs.get(resolved)}'")
        outputs[resolved] = name


def _set(tree: dict, dotted: str, value) -> None:
    """Set `a.b.0.c` in the raw YAML tree (list items by index; a bare source path becomes {path: ...})."""
    parts = dotted.split(".")
    node = tree
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise UserError(
                    f"command-line key '--{dotted}' has '{part}' where an index below {len(node)} belongs."
                )
            index = int(part)
        elif isinstance(node, dict):
            index = part
        else:
            raise UserError(f"command-line key '--{dotted}' goes inside '{parts[depth - 1]}', which is not a mapping.")
        if last:
            node[index] = value
        elif isinstance(node, list) and isinstance(node[index], str):
            node[index] = {"path": node[index]}  # a source given as a bare path
        elif isinstance(node, dict) and node.get(index) is None:
            node[index] = [] if parts[depth + 1].isdigit() else {}
        node = node[index]


def load_config(path: str, overrides: list[str] = ()) -> tuple[DataConfig, Origin]:
    """Read the YAML config, apply `--dotted.key value` overrides, and build and validate a DataConfig."""
    import yaml

    if not Path(path).is_file():
        raise UserError(f"config file {path} does not exist; pass an existing YAML file to --config.")
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise UserError(
            f"{path} is not valid YAML ({' '.join(str(error).split())}); fix the file and rerun."
        ) from None
    if not isinstance(raw, dict):
        raise UserError(f"{path} must hold a YAML mapping (datasets:, tokenizer:, ...), not {type(raw).__name__}.")
    i, overridden = 0, set()
    while i < len(overrides):
        arg = overrides[i]
        if not arg.startswith("--") or len(arg) < 3:
            raise UserError(f"unexpected command-line argument '{arg}'; overrides look like --dotted.key VALUE.")
        key, has_value, value = arg[2:].partition("=")
        if not has_value:
            if i + 1 >= len(overrides):
                raise UserError(f"command-line key '--{key}' has no value; pass --{key} VALUE.")
            i, value = i + 1, overrides[i + 1]
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        _set(raw, key, parsed)
        overridden.add(re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", key))
        i += 1
    where = Origin(path, overridden)
    top_cleaning = build(CleaningConfig, raw.get("cleaning") or {}, "cleaning", where)
    for name, spec in (raw.get("datasets") or {}).items() if isinstance(raw.get("datasets"), dict) else ():
        if isinstance(spec, dict):
            own = spec.get("cleaning") or {}
            build(CleaningConfig, own, f"datasets.{name}.cleaning", where)  # names a bad key where it is
            spec["cleaning"] = {**dataclasses.asdict(top_cleaning), **own}
    config = build(DataConfig, raw, "", where)
    validate(config, where)
    return config, where


def schema_help() -> str:
    """The config schema, generated from the dataclasses (so --help never drifts from the loader)."""
    lines = [
        "config schema (YAML; any key can be overridden as --dotted.key VALUE, e.g. --datasets.sft.cleaning."
        "max_tokens 512):"
    ]

    seen: dict[type, str] = {CleaningConfig: "the top-level cleaning below"}

    def walk(cls, indent: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            inner = typing.get_args(tp)[-1] if typing.get_origin(tp) in (list, dict) else tp
            default = "" if f.default in (dataclasses.MISSING, None) else f" = {f.default!r}"
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            note = ("(required) " if required else "") + f.metadata["help"]
            if not dataclasses.is_dataclass(inner):
                lines.append(f"{indent}{f.name}: {_describe(tp)}{default}  {note}")
                continue
            shape = {list: "list of ", dict: "name -> "}.get(typing.get_origin(tp), "")
            if inner in seen and indent != "  ":  # the top level lists everything
                lines.append(f"{indent}{f.name}: {shape}{{same keys as {seen[inner]}}}  {note}")
                continue
            seen[inner] = f.name
            lines.append(f"{indent}{f.name}: {shape}{{...}}  {note}")
            walk(inner, indent + "    ")

    walk(DataConfig, "  ")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------- sources
@dataclass
class Loaded:
    """One source after loading and conversion: its rows as `FIELDS[kind]` + `_source`, `_row`, `_error` columns."""

    config: SourceConfig
    key: str
    files: list[Path] | None  # None for a Hub dataset
    builder: str
    fmt: str
    detected: bool
    rows: int
    dataset: object = None


def _offline() -> bool:
    from huggingface_hub import constants

    flags = (os.environ.get(v, "").upper() for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return bool(constants.HF_HUB_OFFLINE) or any(f in ("1", "ON", "YES", "TRUE") for f in flags)


def _files(source: SourceConfig, key: str, where: Origin) -> tuple[list[Path] | None, str]:
    """The local files of a source and their `datasets` builder, or (None, "hub") for a Hub dataset id."""
    path = Path(source.path).expanduser()
    if any(ch in source.path for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise UserError(f"the pattern {source.path} ({key}.path {where(key)}) matches no file; fix the path.")
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.parts))
        if not files:
            raise UserError(
                f"the folder {source.path} ({key}.path {where(key)}) has no data files; add some or fix the path."
            )
    elif path.is_file():
        files = [path]
    elif re.fullmatch(r"[\w.-]+(/[\w.-]+)?", source.path) and Path(source.path).suffix not in EXTENSIONS:
        return None, "hub"
    else:
        raise UserError(f"the source {source.path} ({key}.path {where(key)}) does not exist; fix the path.")
    for file in files:
        if file.suffix.lower() not in EXTENSIONS:
            raise UserError(
                f"{file} ({key}.path {where(key)}) has the unsupported extension '{file.suffix}'; "
                f"use {', '.join(EXTENSIONS)} files."
            )
    builders = sorted({EXTENSIONS[f.suffix.lower()] for f in files})
    if len(builders) > 1:
        raise UserError(
            f"{source.path} ({key}.path {where(key)}) mixes {' and '.join(builders)} files; "
            "give each kind of file its own source."
        )
    return files, builders[0]


def _decode(file: Path, allow_empty: bool = False) -> tuple[str | None, str | None]:
    """(text, None), or (None, problem) when the file is empty or not UTF-8."""
    data = file.read_bytes()
    if not data.strip() and not allow_empty:
        return None, f"{file} is empty; add records or remove it from the sources"
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        column = error.start - data.rfind(b"\n", 0, error.start)
        return None, (
            f"{file}, line {line}: byte 0x{data[error.start]:02x} at column {column} is not valid UTF-8; "
            "re-save the file as UTF-8"
        )


def _json_records(file: Path, text: str):
    """(line number, record) of a .json/.jsonl file; JSONDecodeError/RecordError-style problems raise ValueError."""
    stripped = text.lstrip()
    if file.suffix == ".json" and stripped.startswith("["):
        decoder, position = json.JSONDecoder(), text.index("[") + 1
        try:
            json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{file}, line {error.lineno}: not valid JSON ({error.msg} at column {error.colno})"
            ) from None
        while True:
            while position < len(text) and text[position] in " \t\r\n,":
                position += 1
            if position >= len(text) or text[position] == "]":
                return
            record, end = decoder.raw_decode(text, position)
            yield text.count("\n", 0, position) + 1, record
            position = end
    else:
        for number, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as error:
                    if number == 1 and file.suffix == ".json" and stripped.startswith("{"):
                        raise ValueError(
                            f"{file}, line {error.lineno}: holds one JSON object, not a list of records; "
                            "write a JSON list or one object per line (.jsonl)"
                        ) from None
                    raise ValueError(
                        f"{file}, line {number}: not valid JSON ({error.msg} at column {error.colno}); "
                        "every line must be one JSON object"
                    ) from None


def _rows(files: list[Path], builder: str, text_unit: str):
    """(file, "line N" / "record N", record) for every row, in the order `datasets` reads them (error paths only)."""
    for file in files:
        text, problem = _decode(file, allow_empty=builder == "text")
        if problem:
            raise ValueError(problem)
        if builder == "json":
            for number, record in _json_records(file, text):
                if not isinstance(record, dict):
                    raise ValueError(f"{file}, line {number}: expected a JSON object, got {type(record).__name__}")
                yield file, f"line {number}", record
        elif builder == "csv":
            reader = csv.DictReader(text.splitlines(keepends=True))
            try:
                for record in reader:
                    yield file, f"line {reader.line_num}", record
            except csv.Error as error:
                raise ValueError(f"{file}, line {reader.line_num}: not valid CSV ({error})") from None
        elif builder == "parquet":
            import pyarrow.parquet as pq

            for number, record in enumerate(pq.read_table(file).to_pylist(), start=1):
                yield file, f"row {number}", record
        elif text_unit == "line":
            for number, line in enumerate(text.splitlines(), start=1):
                yield file, f"line {number}", {"text": line}
        else:
            yield file, "", {"text": text}


def _load_problem(files: list[Path], builder: str, text_unit: str) -> str | None:
    """The first line-level problem of files that `datasets` failed to load, as a sentence (None if none found)."""
    try:
        for _ in _rows(files, builder, text_unit):
            pass
    except ValueError as error:
        return str(error)
    except Exception as error:  # a Parquet file pyarrow cannot read at all
        return f"{files[0]} cannot be read ({' '.join(str(error).split())[:200]})"
    return None


def locate(loaded: Loaded, rows: set[int]) -> dict[int, str]:
    """'file, line N' for each requested row index of a source (one pass over its files)."""
    if loaded.files is None or loaded.builder == "parquet" or loaded.config.text_unit == "paragraph":
        return {row: f"{loaded.config.path}, row {row + 1}" for row in rows}
    found, wanted = {}, max(rows, default=-1)
    try:
        for index, (file, where, _) in enumerate(_rows(loaded.files, loaded.builder, loaded.config.text_unit)):
            if index in rows:
                found[index] = f"{file}, {where}" if where else str(file)
            if index >= wanted:
                break
    except ValueError:
        pass
    return {row: found.get(row, f"{loaded.config.path}, row {row + 1}") for row in rows}


def _read(source: SourceConfig, key: str, where: Origin, files, builder: str, cache_dir: str):
    from datasets import Features, Value, load_dataset

    if files is None:
        if _offline():
            raise UserError(
                f"the source {source.path} ({key}.path {where(key)}) is not a local file or folder, and as a Hub dataset "
                "id it cannot be downloaded while HF_HUB_OFFLINE is set; fix the path or point it at a local copy."
            )
        try:
            return load_dataset(source.path, source.subset, split=source.split)
        except Exception as error:  # any Hub failure is the user's to fix (id, split, network, auth)
            message = " ".join(str(error).split())[:300]
            raise UserError(f"cannot load the Hub dataset {source.path} ({key} {where(key)}): {message}.") from None
    kwargs = {"data_files": [str(f) for f in files], "split": "train", "cache_dir": cache_dir}
    if builder == "text":
        kwargs["sample_by"] = source.text_unit
    if builder == "csv":  # every cell a string ("42" stays "42"); empty cells are "" rather than NaN
        try:
            with open(files[0], encoding="utf-8", newline="") as handle:
                header = next(csv.reader(handle))
        except (StopIteration, UnicodeDecodeError, csv.Error):
            raise UserError(
                (_load_problem(files, builder, source.text_unit) or f"{files[0]} has no header row") + "."
            ) from None
        kwargs.update(features=Features({c: Value("string") for c in header}), keep_default_na=False)
    try:
        return load_dataset(builder, **kwargs)
    except Exception as error:  # find the line that broke it, else report the library's words
        problem = _load_problem(files, builder, source.text_unit)
        if problem:
            raise UserError(problem + ".") from None
        message = " ".join(str(error).split())[:300] or type(error).__name__
        raise UserError(f"cannot read {source.path} ({key} {where(key)}): {message}; check the file format.") from None


def _convert_batch(batch: dict, indices: list[int], *, fmt: str, kind: str, roles: dict, source_index: int) -> dict:
    out = {f: [] for f in FIELDS[kind]}
    errors = []
    for i in range(len(indices)):
        record = {column: values[i] for column, values in batch.items()}
        try:
            converted, error = convert(record, fmt, kind, roles), None
        except RecordError as problem:
            converted, error = empty_record(kind), str(problem)
        for f in FIELDS[kind]:
            out[f].append(converted[f])
        errors.append(error)
    return {**out, "_source": [source_index] * len(indices), "_row": list(indices), "_error": errors}


def load_source(
    source: SourceConfig,
    key: str,
    where: Origin,
    kind: str | None,
    index: int,
    *,
    cache_dir: str,
    num_proc: int | None,
) -> Loaded:
    """Load one source and convert it into `kind` (None: the format's natural kind); bad records raise UserError."""
    files, builder = _files(source, key, where)
    dataset = _read(source, key, where, files, builder, cache_dir)
    try:
        return _convert(source, key, where, kind, index, files, builder, dataset, num_proc)
    except UnicodeDecodeError:  # pyarrow's JSON reader keeps invalid UTF-8 until a string is decoded
        problem = _load_problem(files, builder, source.text_unit) if files else None
        raise UserError((problem or f"{source.path} ({key}) holds bytes that are not valid UTF-8") + ".") from None


def _convert(
    source: SourceConfig,
    key: str,
    where: Origin,
    kind: str | None,
    index: int,
    files,
    builder: str,
    dataset,
    num_proc: int | None,
) -> Loaded:
    from datasets import Features, Value

    name = source.path if files is None else str(files[0]) if len(files) == 1 else source.path
    if len(dataset) == 0:
        raise UserError(f"{name} ({key} {where(key)}) has no records; add some or remove the source.")
    if source.max_rows is not None:
        dataset = dataset.select(range(min(source.max_rows, len(dataset))))
    for standard, column in source.columns.items():
        if column not in dataset.column_names:
            raise UserError(
                f"{name} has no column '{column}' ({key}.columns.{standard} {where(key)}); its columns are "
                f"{', '.join(dataset.column_names)}."
            )
        if standard in dataset.column_names and standard != column:
            dataset = dataset.remove_columns(standard)
        if standard != column:
            dataset = dataset.rename_column(column, standard)
    fmt, detected = source.format, source.format == "auto"
    if detected:
        fmt = detect_format(dataset.column_names, dataset[0])
        if fmt is None:
            raise UserError(
                f"cannot tell the format of {name} from its columns ({', '.join(dataset.column_names)}); "
                f"set {key}.format {where(key)} to one of {', '.join(FORMATS)} (and `columns:` if needed)."
            )
        logger.info("%s: detected format '%s' (columns: %s)", name, fmt, ", ".join(dataset.column_names))
    if fmt == "prompt_response":
        pair = prompt_response_columns(dataset.column_names)
        if pair and pair != ("prompt", "response"):
            dataset = dataset.rename_columns({pair[0]: "prompt", pair[1]: "response"})
    kind = kind or FORMATS[fmt][2][0]
    if kind not in FORMATS[fmt][2]:
        raise UserError(
            f"{name} is in format '{fmt}', which cannot become '{kind}' records ({key} {where(key)}); "
            f"it can become: {', '.join(FORMATS[fmt][2])}."
        )
    loaded = Loaded(source, key, files, builder, fmt, detected, len(dataset))
    missing = [c for c in FORMATS[fmt][0] if c not in dataset.column_names]
    if missing:
        place = locate(loaded, {0})[0]
        raise UserError(
            f"{place}: field '{missing[0]}' is missing (format '{fmt}' needs "
            f"{', '.join(FORMATS[fmt][0])}; the columns are {', '.join(dataset.column_names)})."
        )
    features = Features(
        {**FEATURES[kind], "_source": Value("int32"), "_row": Value("int64"), "_error": Value("string")}
    )
    roles = {**ROLE_ALIASES, **source.roles}
    loaded.dataset = dataset.map(
        _convert_batch,
        batched=True,
        with_indices=True,
        remove_columns=dataset.column_names,
        features=features,
        fn_kwargs={"fmt": fmt, "kind": kind, "roles": roles, "source_index": index},
        num_proc=_procs(num_proc, dataset),
        load_from_cache_file=False,
        new_fingerprint=_fingerprint(key, "convert", len(dataset)),
        desc=f"convert {name}",
    )
    return loaded


def _procs(num_proc: int | None, dataset) -> int | None:
    if num_proc is not None:
        return num_proc if num_proc > 1 else None
    return os.cpu_count() if len(dataset) >= 20_000 and (os.cpu_count() or 1) > 1 else None


def _fingerprint(*parts) -> str:
    return hashlib.sha256(repr((parts, time.time_ns())).encode()).hexdigest()[:16]


def check_invalid(loaded: Loaded, on_invalid: str) -> int:
    """Raise a UserError naming file, line and field for the first malformed record (on_invalid: error)."""
    errors = loaded.dataset["_error"][:]
    first = next((i for i, e in enumerate(errors) if e is not None), None)
    if first is None:
        return 0
    if on_invalid == "drop":
        return sum(e is not None for e in errors)
    place = locate(loaded, {first})[first]
    raise UserError(
        f"{place}: {errors[first]}; fix the record, or set on_invalid: drop to count and skip such records."
    )


# ------------------------------------------------------------------------------------------------------- cleaning
@dataclass
class Split:
    """The outcome of cleaning one split: which rows stay, why the others went, and the numbers for the report."""

    name: str
    parts: list[Loaded]
    dataset: object
    reasons: list
    details: list
    duplicate_of: dict
    kept: list[int] = field(default_factory=list)
    written: list[int] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)


def clean_split(
    name: str,
    parts: list[Loaded],
    kind: str,
    cleaning: CleaningConfig,
    tokenizer,
    *,
    reference: ReferenceSet | None,
    num_proc: int | None,
) -> Split:
    from datasets import Features, List, Value, concatenate_datasets

    dataset = concatenate_datasets([p.dataset for p in parts]) if len(parts) > 1 else parts[0].dataset
    thresholds = Thresholds(
        cleaning.unicode_form,
        cleaning.min_tokens,
        cleaning.max_tokens,
        cleaning.minhash_num_perm,
        cleaning.minhash_ngram,
        cleaning.decontamination_ngram,
        cleaning.near_dedup,
    )
    meta = {
        "_source": Value("int32"),
        "_row": Value("int64"),
        "_text": Value("string"),
        "_key": Value("string"),
        "_tokens": Value("int64"),
        "_reason": Value("string"),
        "_detail": Value("string"),
        "_changed": Value("bool"),
        "_contamination": Value("string"),
    }
    if cleaning.near_dedup:
        meta["_minhash"] = List(Value("uint32"))
    dataset = dataset.map(
        annotate_batch,
        batched=True,
        batch_size=500,
        remove_columns=["_error"],
        num_proc=_procs(num_proc, dataset),
        features=Features({**FEATURES[kind], **meta}),
        load_from_cache_file=False,
        fn_kwargs={
            "kind": kind,
            "fields": FIELDS[kind],
            "thresholds": thresholds,
            "tokenizer": tokenizer,
            "reference": reference,
        },
        new_fingerprint=_fingerprint(name, "annotate", len(dataset)),
        desc=f"clean {name}",
    )
    near = NearDuplicateIndex(cleaning.minhash_threshold, cleaning.minhash_num_perm) if cleaning.near_dedup else None
    reasons, details, duplicate_of = deduplicate(dataset, exact=cleaning.exact_dedup, near=near)
    split = Split(name, parts, dataset, reasons, details, duplicate_of)
    split.kept = [i for i, r in enumerate(reasons) if r is None]
    return split


def mix(split: Split, seed: int, shuffle: bool) -> None:
    """Apply each training source's weight to its cleaned rows (seeded sampling), then shuffle; drops are counted."""
    rng = np.random.default_rng(seed)
    sources = np.asarray(split.dataset["_source"][:])
    kept = np.asarray(split.kept, dtype=np.int64)
    chosen = []
    for index, part in enumerate(split.parts):
        rows = kept[sources[kept] == index]
        repeats, fraction = divmod(part.config.weight, 1.0)
        extra = rng.choice(rows, size=round(fraction * len(rows)), replace=False) if len(rows) else rows
        selected = np.concatenate([np.tile(rows, int(repeats)), np.sort(extra)])
        for row in np.setdiff1d(rows, selected):
            split.reasons[row] = "downsampled"
            split.details[row] = f"weight {part.config.weight} keeps {len(selected)} of {len(rows)} rows"
        chosen.append(selected)
    written = np.concatenate(chosen) if chosen else np.array([], dtype=np.int64)
    split.written = (rng.permutation(written) if shuffle else written).tolist()


# --------------------------------------------------------------------------------------------------------- report
def _steps(split: Split) -> list[dict]:
    counts = Counter(r for r in split.reasons if r is not None)
    rows, steps = sum(p.rows for p in split.parts), []
    changed = sum(split.dataset["_changed"][:])
    for step, reasons in STEPS:
        dropped = {r: counts[r] for r in reasons if counts[r]}
        out = rows - sum(dropped.values())
        entry = {"step": step, "rows_in": rows, "rows_out": out, "dropped": dropped}
        if step == "normalise":
            entry["rows_changed"] = changed
        if step == "mixture":
            entry["rows_out"] = len(split.written)
            entry["rows_repeated"] = max(0, len(split.written) - out)
        if reasons or step in ("load", "normalise", "mixture"):
            steps.append(entry)
        rows = entry["rows_out"]
    return steps


def _preview(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _examples(split: Split, per_reason: int) -> dict:
    """For each reason: its count and the first few rows with file, line, detail and a preview."""
    by_reason: dict[str, list[int]] = {}
    counts = Counter(r for r in split.reasons if r is not None)
    for i, reason in enumerate(split.reasons):
        if reason is not None and len(by_reason.setdefault(reason, [])) < per_reason:
            by_reason[reason].append(i)
    wanted = sorted({j for rows in by_reason.values() for i in rows for j in (i, split.duplicate_of.get(i, i))})
    meta = split.dataset.select(wanted).select_columns(["_source", "_row", "_text"]) if wanted else None
    info = {i: (meta[k]["_source"], meta[k]["_row"], meta[k]["_text"]) for k, i in enumerate(wanted)}
    places: dict[tuple[int, int], str] = {}
    for index, part in enumerate(split.parts):
        rows = {row for source, row, _ in info.values() if source == index}
        places.update({(index, row): place for row, place in locate(part, rows).items()} if rows else {})
    result = {}
    for reason in sorted(counts, key=lambda r: [s for s, _ in STEPS].index(REASONS[r])):
        examples = []
        for i in by_reason.get(reason, []):
            source, row, text = info[i]
            detail = split.details[i] or ""
            if i in split.duplicate_of:
                other = info[split.duplicate_of[i]]
                detail = f"{detail} {places[(other[0], other[1])]}".strip()
            examples.append({"where": places[(source, row)], "detail": detail, "preview": _preview(text)})
        result[reason] = {"count": counts[reason], "step": REASONS[reason], "examples": examples}
    return result


def _lengths(split: Split) -> tuple[list[int], list[int]]:
    tokens = split.dataset["_tokens"][:]
    return [t for t in tokens if t is not None], [tokens[i] for i in split.kept]


def _stats(values: list[int]) -> dict:
    if not values:
        return {}
    array = np.asarray(values)
    return {
        "min": int(array.min()),
        "mean": round(float(array.mean()), 1),
        "median": int(np.median(array)),
        "p95": int(np.percentile(array, 95)),
        "max": int(array.max()),
    }


HISTOGRAM = "token_lengths.png"  # no split name in it: `load_dataset(folder)` would take token_lengths_train.* as data


def _histograms(path: Path, splits: list[Split], cleaning: CleaningConfig, title: str) -> None:
    """One panel per split: token lengths of every measured row, of the kept rows, and the length limits."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 3 * len(splits)))
    for axes, split in zip(figure.subplots(len(splits), 1, squeeze=False)[:, 0], splits, strict=True):
        measured, kept = _lengths(split)
        top = max(measured, default=1) * 1.05
        bins = np.linspace(0, top, 50)
        axes.hist(measured, bins=bins, color="lightgray", label=f"measured ({len(measured)} rows)")
        axes.hist(kept, bins=bins, color="tab:blue", label=f"kept ({len(kept)} rows)")
        for limit, name in ((cleaning.min_tokens, "min_tokens"), (cleaning.max_tokens, "max_tokens")):
            if limit and limit <= top:
                axes.axvline(limit, color="tab:red", linestyle="--", label=f"{name} {limit}")
        axes.set(ylabel="rows", title=f"{title}: {split.name}")
        axes.legend(fontsize=8)
    axes.set_xlabel("tokens per record (chat template applied)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def _split_report(split: Split, cleaning: CleaningConfig) -> dict:
    measured, kept = _lengths(split)
    return {
        "rows_in": sum(p.rows for p in split.parts),
        "rows_out": len(split.written),
        "steps": _steps(split),
        "dropped": _examples(split, cleaning.examples_per_reason),
        "token_lengths": {"kept": _stats(kept), "measured": _stats(measured)},
    }


def _markdown(report: dict) -> str:
    lines = [
        f"# Data preparation: {report['name']} ({report['kind']})",
        "",
        f"Written to `{report['output_dir']}` by `{report['command']}`; tokenizer `{report['tokenizer']}`; "
        f"{report['elapsed_s']} s, {report['rows_per_second']} rows/s.",
        "",
        "## Sources",
        "",
        "| split | source | format | weight | rows loaded | rows kept | rows written |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in report["sources"]:
        fmt = s["format"] + (" (detected)" if s["detected"] else "")
        kept, written = ("-" if s[k] is None else s[k] for k in ("rows_kept", "rows_written"))
        lines.append(
            f"| {s['split']} | `{s['path']}` | {fmt} | {s['weight']} | {s['rows_loaded']} | {kept} | {written} |"
        )
    for split, data in report["splits"].items():
        lines += [
            "",
            f"## {split}: {data['rows_in']} rows in, {data['rows_out']} rows out",
            "",
            "| step | rows in | rows out | dropped |",
            "|---|---|---|---|",
        ]
        for step in data["steps"]:
            dropped = ", ".join(f"{r}: {n}" for r, n in step["dropped"].items())
            if "rows_changed" in step:
                dropped = f"({step['rows_changed']} rows changed)"
            if step.get("rows_repeated"):
                dropped = ", ".join(filter(None, [dropped, f"{step['rows_repeated']} rows repeated by weight"]))
            lines.append(f"| {step['step']} | {step['rows_in']} | {step['rows_out']} | {dropped} |")
        for reason, info in data["dropped"].items():
            lines += ["", f"### Dropped: {reason} ({info['count']} rows, step {info['step']})", ""]
            lines += [
                f"- `{e['where']}`: {e['detail']}. `{e['preview'].replace(chr(96), chr(39))}`"
                for e in info["examples"]
            ]
        stats = data["token_lengths"]["kept"]
        lines += ["", f"Token lengths of kept rows: {', '.join(f'{k} {v}' for k, v in stats.items()) or 'none'}."]
    lines += ["", "## Token lengths", "", f"![token lengths]({report['histogram']})"]
    return "\n".join(lines) + "\n"


def _write(split: Split, path: Path, kind: str, num_proc: int | None) -> None:
    rows = split.dataset.select(split.written).select_columns(list(FIELDS[kind]))
    rows.to_json(path, lines=True, force_ascii=False, num_proc=_procs(num_proc, rows))


# ----------------------------------------------------------------------------------------------------- orchestration
def _ours(folder: Path) -> bool:
    """Whether a folder was written by prepare_data.py (its report.json says so)."""
    try:
        return json.loads((folder / "report.json").read_text()).get("generator") == REPORT_MARKER
    except (OSError, ValueError, AttributeError):
        return False


def _check_output(folder: Path, overwrite: bool, key: str, where: Origin) -> None:
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{key} {where(key)} is {folder}, which is a file; choose a folder path.")
    if folder.is_dir() and any(folder.iterdir()):
        if not overwrite:
            raise UserError(
                f"the output folder {folder} ({key} {where(key)}) already exists and is not empty; choose "
                "another output_dir, remove it yourself, or set overwrite: true to replace an earlier run."
            )
        if not _ours(folder):
            raise UserError(
                f"overwrite: true only replaces folders written by prepare_data.py, and {folder} ({key} "
                f"{where(key)}) has no such report.json; move or remove it yourself."
            )


def _publish(tmp: Path, folder: Path) -> None:
    """Rename a finished temporary folder into place; only an empty folder or an earlier output is replaced."""
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    if folder.exists():
        if not _ours(folder):  # appeared while this run was working: never touch it
            raise UserError(f"{folder} appeared while the data was being prepared; the result is left in {tmp}.")
        old = folder.parent / f".{folder.name}.old-{os.getpid()}"
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old)
    else:
        os.replace(tmp, folder)


def _versions() -> dict:
    return {lib: importlib.metadata.version(lib) for lib in ("datasets", "datasketch", "transformers", "trl")}


def prepare(config: DataConfig, where: Origin, only: list[str] | None = None) -> list[dict]:
    """Prepare every (or every `only`) dataset of the config; returns their reports. Nothing appears in an output
    folder until all of them succeeded."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    names = only or list(config.datasets)
    for name in names:
        if name not in config.datasets:
            raise UserError(
                f"--only names '{name}', which is not a dataset in {where.path} ({', '.join(config.datasets)})."
            )
    for name in names:
        _check_output(Path(config.datasets[name].output_dir), config.overwrite, f"datasets.{name}.output_dir", where)
    started = time.time()
    temporaries: dict[str, Path] = {}
    reports = []
    with tempfile.TemporaryDirectory(prefix="prepare-data-") as cache_dir:
        try:
            # Load and convert every source first: malformed data fails fast, before any slow step.
            loaded = {}
            for name in names:
                spec = config.datasets[name]
                groups = {"train": spec.sources, "test": spec.eval_sources, "reference": spec.decontaminate_against}
                keys = {"train": "sources", "test": "eval_sources", "reference": "decontaminate_against"}
                loaded[name] = {
                    group: [
                        load_source(
                            s,
                            f"datasets.{name}.{keys[group]}[{i}]",
                            where,
                            None if group == "reference" else spec.kind,
                            i,
                            cache_dir=cache_dir,
                            num_proc=config.num_proc,
                        )
                        for i, s in enumerate(sources)
                    ]
                    for group, sources in groups.items()
                }
                for part in (p for parts in loaded[name].values() for p in parts):
                    check_invalid(part, config.on_invalid)
            try:
                tokenizer = load_tokenizer(resolve_model_path(config.tokenizer))
            except (OSError, ValueError) as error:
                raise UserError(
                    f"cannot load the tokenizer '{config.tokenizer}' (key 'tokenizer' {where('tokenizer')}): "
                    f"{str(error).splitlines()[0]}; pass a local model folder or {DEFAULT_MODEL}."
                ) from None
            kinds = {config.datasets[n].kind for n in names}
            if kinds - {"text"} and not tokenizer.chat_template:
                raise UserError(
                    f"the tokenizer '{config.tokenizer}' (key 'tokenizer' {where('tokenizer')}) has no chat "
                    "template, which the messages, preferences and prompts kinds need; use a chat model's."
                )
            if "messages" in kinds and not re.search(r"\{%-?\s*generation\s*-?%\}", tokenizer.chat_template):
                raise UserError(
                    f"the chat template of '{config.tokenizer}' (key 'tokenizer' {where('tokenizer')}) has no "
                    "{% generation %} markers, so SFT cannot mask assistant turns; use a training template."
                )
            for name in names:
                spec = config.datasets[name]
                folder = Path(spec.output_dir)
                folder.parent.mkdir(parents=True, exist_ok=True)
                temporaries[name] = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
                reports.append(_prepare_one(name, spec, loaded[name], config, tokenizer, temporaries[name], where))
            for name in names:
                _publish(temporaries.pop(name), Path(config.datasets[name].output_dir))
        finally:
            for tmp in temporaries.values():
                shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Prepared %d dataset(s) in %.1f s", len(names), time.time() - started)
    return reports


def _reference(
    parts: list[Loaded], test_parts: list[Loaded], kind: str, cleaning: CleaningConfig
) -> ReferenceSet | None:
    """What the held-out records (eval_sources and decontaminate_against) ask, as n-grams and exact keys."""
    if not parts and not test_parts:
        return None
    reference = ReferenceSet(cleaning.decontamination_ngram, cleaning.decontamination_min_overlap)
    for part in parts + test_parts:
        fields = (
            FIELDS[kind] if part.key.split(".")[-1].startswith("eval_sources") else FIELDS[FORMATS[part.fmt][2][0]]
        )
        for batch in part.dataset.iter(batch_size=1000):
            for i, error in enumerate(batch["_error"]):
                if error is None:
                    reference.add(normalize_record({f: batch[f][i] for f in fields}, cleaning.unicode_form))
    return reference


def _prepare_one(
    name: str, spec: DatasetConfig, loaded: dict, config: DataConfig, tokenizer, folder: Path, where: Origin
) -> dict:
    started = time.time()
    kind, cleaning = spec.kind, spec.cleaning
    logger.info("Dataset '%s' (%s): cleaning %d training rows", name, kind, sum(p.rows for p in loaded["train"]))
    test = None
    if loaded["test"]:
        test = clean_split("test", loaded["test"], kind, cleaning, tokenizer, reference=None, num_proc=config.num_proc)
        test.written = test.kept
    reference = _reference(loaded["reference"], loaded["test"], kind, cleaning)
    train = clean_split(
        "train", loaded["train"], kind, cleaning, tokenizer, reference=reference, num_proc=config.num_proc
    )
    mix(train, config.seed, spec.shuffle)
    for split in filter(None, (train, test)):
        if not split.written:
            counts = Counter(r for r in split.reasons if r is not None)
            summary = ", ".join(f"{r}: {n}" for r, n in counts.most_common())
            raise UserError(
                f"dataset '{name}' has no {split.name} rows left after cleaning ({summary}); loosen "
                f"datasets.{name}.cleaning {where(f'datasets.{name}.cleaning')} or fix the sources."
            )
        _write(split, folder / f"{split.name}.jsonl", kind, config.num_proc)
        logger.info("Dataset '%s': %s.jsonl has %d rows", name, split.name, len(split.written))
    splits = {s.name: _split_report(s, cleaning) for s in filter(None, (train, test))}
    _histograms(folder / HISTOGRAM, list(filter(None, (train, test))), cleaning, f"{name} token lengths")
    sources = []
    for split in filter(None, (train, test)):
        origin = np.asarray(split.dataset["_source"][:])
        for index, part in enumerate(split.parts):
            mine = origin == index
            sources.append(
                {
                    "split": split.name,
                    "path": part.config.path,
                    "format": part.fmt,
                    "detected": part.detected,
                    "weight": part.config.weight,
                    "rows_loaded": part.rows,
                    "rows_kept": int(mine[split.kept].sum()),
                    "rows_written": int(mine[split.written].sum()),
                }
            )
    sources += [
        {
            "split": "decontamination",
            "path": p.config.path,
            "format": p.fmt,
            "detected": p.detected,
            "weight": 1.0,
            "rows_loaded": p.rows,
            "rows_kept": None,
            "rows_written": None,
        }
        for p in loaded["reference"]
    ]
    elapsed = time.time() - started
    rows_in = sum(s["rows_loaded"] for s in sources)
    report = {
        "generator": REPORT_MARKER,
        "name": name,
        "kind": kind,
        "output_dir": spec.output_dir,
        "command": shlex.join(["python", *sys.argv]) if sys.argv and sys.argv[0] else "prepare()",
        "tokenizer": config.tokenizer,
        "elapsed_s": round(elapsed, 2),
        "rows_per_second": round(rows_in / elapsed, 1),
        "decontamination": {
            "ngram": cleaning.decontamination_ngram,
            "reference_rows": len(reference.keys) if reference else 0,
            "reference_ngrams": len(reference.ngrams) if reference else 0,
        },
        "sources": sources,
        "splits": splits,
        "histogram": HISTOGRAM,
        "config": dataclasses.asdict(spec),
        "versions": _versions(),
    }
    (folder / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (folder / "report.md").write_text(_markdown(report), encoding="utf-8")
    return report
