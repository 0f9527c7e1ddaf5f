"""Sources: finding a source's files (or its Hub id), reading them with `datasets`, detecting their format, converting
every record into the output kind; a malformed record is named by its file and line (`files.locate`).

Local files: `.jsonl` `.json` `.csv` `.parquet` `.txt` `.md`; JSON and JSON Lines also compressed as `.gz`, `.bz2`,
`.xz` or `.zst` (how HH-RLHF and most corpora ship; `datasets` reads them natively, zstd through `zstandard`); a
folder, whose files are split as `datasets.load_dataset(folder)` splits them (`folder_split`: a Hub snapshot's
`data/train-*.parquet` and `data/test-*.parquet` are two splits, its README.md is the card, not data); or a glob
(`data/train-*.parquet`: the shards of one table). Anything else that looks like `org/name` is a Hub dataset id.

`data_dir` reads a subfolder (a Hub id's `data_dir`, as `load_dataset(path, data_dir=...)`; HH-RLHF's
`harmless-base`), and `split` may be a slice in `datasets`' own syntax (`test[0:800]`, `train[:10%]`): a Hub source
passes it to `load_dataset`, a local one reads the split and keeps those rows; the report says which rows were read,
and a malformed record is still named by its line in the file.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import offline
from ..config import Origin
from ..errors import UserError
from .config import SourceConfig
from .files import COMPRESSIONS, EXTENSIONS, SUPPORTED, builder_of, load_problem, locate
from .formats import (
    FEATURES,
    FIELDS,
    FORMATS,
    ROLE_ALIASES,
    RecordError,
    convert,
    detect_format,
    empty_record,
    prompt_response_columns,
)

logger = logging.getLogger(__name__)


@dataclass
class Source:
    """One configured source, found: its config, its key in the YAML, its index in its group, its local files (None
    for a Hub dataset) and the `datasets` builder that reads them."""

    config: SourceConfig
    key: str
    index: int
    files: list[Path] | None
    builder: str
    other_splits: dict[str, int] = field(default_factory=dict)  # a folder's splits not read: name -> file count
    first_row: int = 0  # a sliced split (`test[800:1000]`): the rows before the slice, for naming lines
    split_rows: int | None = None  # a sliced local split: its rows before slicing

    @property
    def name(self) -> str:
        """How messages name it: the file itself when there is one, else the configured path or id."""
        return str(self.files[0]) if self.files and len(self.files) == 1 else self.config.path


@dataclass
class Loaded(Source):
    """A source after loading and conversion: its rows as `FIELDS[kind]` + `_source`, `_row`, `_error` columns."""

    fmt: str = ""
    detected: bool = False
    rows: int = 0
    dataset: object = None


def find(config: SourceConfig, key: str, where: Origin, index: int) -> Source:
    """The local files of a source and their builder, or a Hub dataset id (files None, builder "hub")."""
    path = Path(config.path).expanduser()
    split = split_name(config, key, where)
    if config.data_dir is not None and (path.is_dir() or path.is_file() or any(ch in config.path for ch in "*?[")):
        path = _data_dir(path, config, key, where)
    if any(ch in config.path for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise UserError(f"the pattern {config.path} ({key}.path {where(key)}) matches no file; fix the path.")
    elif path.is_dir():
        files, other_splits = folder_split(path, config, key, where)
    elif path.is_file():
        files = [path]
    elif re.fullmatch(r"[\w.-]+(/[\w.-]+)?", config.path) and path.suffix.lower() not in (*EXTENSIONS, *COMPRESSIONS):
        return Source(config, key, index, None, "hub")
    else:
        raise UserError(f"the source {config.path} ({key}.path {where(key)}) does not exist; fix the path.")
    if not path.is_dir() and split != "train":
        raise UserError(
            f"{key}.split {where(key)} is '{config.split}', but {config.path} is a file or pattern, which has no "
            "splits; point path at the dataset's folder (its file names or README.md name the splits) or remove split."
        )
    for file in files:
        if builder_of(file) is None:
            extension = "".join(file.suffixes[-2:]) if file.suffix.lower() in COMPRESSIONS else file.suffix
            raise UserError(
                f"{file} ({key}.path {where(key)}) has the unsupported extension '{extension}'; use {SUPPORTED}."
            )
    builders = sorted({builder_of(f) for f in files})
    if len(builders) > 1:
        raise UserError(
            f"{config.path} ({key}.path {where(key)}) mixes {' and '.join(builders)} files; "
            "give each kind of file its own source."
        )
    source = Source(config, key, index, files, builders[0], other_splits if path.is_dir() else {})
    if source.other_splits:
        logger.info(
            "%s: read split '%s' (%d files); not read: %s (held-out rows belong in eval_sources, with split: NAME)",
            config.path, split, len(files), ", ".join(f"{k} ({n} files)" for k, n in source.other_splits.items()),
        )  # fmt: skip
    return source


def split_name(config: SourceConfig, key: str, where: Origin) -> str:
    """The split a source reads, without its slice (`test` of `test[0:800]`); a malformed split is one sentence."""
    from datasets import ReadInstruction

    match = re.fullmatch(r"([\w.-]+)(\[.*\])?", config.split.strip())
    try:
        ReadInstruction.from_spec(config.split) if match and match.group(2) else None
    except (ValueError, AssertionError):
        match = None
    if match is None:
        raise UserError(
            f"{key}.split {where(key)} is '{config.split}'; give one split, optionally sliced as datasets slices it: "
            "test, test[0:800], test[800:], train[:10%]."
        )
    return match.group(1)


def _data_dir(path: Path, config: SourceConfig, key: str, where: Origin) -> Path:
    """The subfolder `data_dir` of a local folder; on a file or pattern, or where it does not exist, one sentence."""
    if not path.is_dir():
        raise UserError(
            f"{key}.data_dir {where(key)} is '{config.data_dir}', but {config.path} is a file or pattern; data_dir "
            "names a subfolder of a dataset folder or Hub id: point path at the folder or remove data_dir."
        )
    folder = path / config.data_dir
    if not folder.is_dir():
        found = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise UserError(
            f"{key}.data_dir {where(key)} is '{config.data_dir}', which is not a folder in {config.path} (its "
            f"folders: {', '.join(found) or 'none'}); fix data_dir or remove it."
        )
    return folder


def _slice(source: Source, dataset, where: Origin):
    """The rows of a sliced split (`test[0:800]`) of a local source, remembering where the slice starts."""
    from datasets import ReadInstruction

    config = source.config
    if "[" not in config.split:
        return dataset
    name = split_name(config, source.key, where)
    (part,) = ReadInstruction.from_spec(config.split).to_absolute({name: len(dataset)})
    if part.from_ >= part.to:
        raise UserError(
            f"{source.key}.split {where(source.key)} is '{config.split}', which selects no row of {config.path}: its "
            f"split '{name}' has {len(dataset)} rows; fix the slice."
        )
    source.first_row, source.split_rows = part.from_, len(dataset)
    logger.info("%s: rows %d-%d of the %d in split '%s'", config.path, part.from_, part.to - 1, len(dataset), name)
    return dataset.select(range(part.from_, part.to))


def _card_configs(folder: Path):
    """The `configs` of a folder's dataset card (README.md YAML), as `datasets` reads them; empty without a card."""
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, DatasetCardData

    card = folder / "README.md"
    has_yaml = card.is_file() and card.read_text(encoding="utf-8", errors="replace").startswith("---")
    return MetadataConfigs.from_dataset_card_data(DatasetCard.load(card).data if has_yaml else DatasetCardData())


def folder_split(folder: Path, config: SourceConfig, key: str, where: Origin) -> tuple[list[Path], dict[str, int]]:
    """The files of `config.split` in a local folder, split exactly as `datasets.load_dataset(folder)` splits them
    (its own data-files resolution): by the README.md card's `configs` (`config_name`, `data_files` per split,
    `data_dir`) when it has them, else by file and folder names (`data/train-00000-of-00002.parquet`, `test.jsonl`,
    `validation/`); without split names every file is `train`. The card and hidden files are never data. Returns the
    split's files and the file counts of the splits not read."""
    from datasets.data_files import DataFilesDict, EmptyDatasetError, get_data_patterns, sanitize_patterns

    where_key = f"({key}.path {where(key)})"
    configs, base = _card_configs(folder), folder
    try:
        if configs:
            names = list(configs)
            name = config.subset or configs.get_default_config_name() or names[0]
            if name not in configs:
                raise UserError(
                    f"{folder}/README.md has no config '{name}' ({key}.subset {where(key)}); its configs are "
                    f"{', '.join(names)}."
                )
            params = configs[name]
            base = folder / params["data_dir"] if params.get("data_dir") else folder
            data_files = params.get("data_files")
            patterns = sanitize_patterns(data_files) if data_files is not None else get_data_patterns(str(base))
        elif config.subset is not None:
            raise UserError(
                f"{key}.subset {where(key)} is '{config.subset}', but {folder} has no README.md card with `configs` "
                "to name it; remove subset."
            )
        else:
            patterns = get_data_patterns(str(base))
        splits = DataFilesDict.from_patterns(patterns, base_path=str(base))
    except (EmptyDatasetError, FileNotFoundError) as error:
        problem = " ".join(str(error).split())[:200]
        raise UserError(
            f"the folder {config.path} {where_key} has no data files ({problem}); add some or fix the path."
        ) from None
    files = {str(split): sorted(Path(f) for f in found) for split, found in splits.items()}
    wanted = split_name(config, key, where)
    if wanted not in files:
        raise UserError(
            f"the folder {folder} {where_key} has no split '{wanted}' (its splits: {', '.join(files)}); "
            f"set {key}.split to one of them."
        )
    return files[wanted], {name: len(found) for name, found in files.items() if name != wanted}


# ---------------------------------------------------------------------------------------------- reading, converting
def worker_count(num_proc: int | None, dataset) -> int | None:
    """`num_proc` for a `datasets.map` over `dataset` (null in the config: all cores from 20k rows up)."""
    if num_proc is not None:
        return num_proc if num_proc > 1 else None
    return os.cpu_count() if len(dataset) >= 20_000 and (os.cpu_count() or 1) > 1 else None


def fresh_fingerprint(*parts) -> str:
    """A fingerprint no earlier run has used: every map of a run is computed, never taken from a cache."""
    return hashlib.sha256(repr((parts, time.time_ns())).encode()).hexdigest()[:16]


def read(source: Source, where: Origin, cache_dir: str):
    """The source as one `datasets.Dataset`, its columns as the files have them; a failure names the line."""
    from datasets import Features, Value, load_dataset

    config, key = source.config, source.key
    if source.files is None:
        offline.check(config.path, "dataset", f"{key}.path", where=where(key))
        try:
            return load_dataset(config.path, config.subset, data_dir=config.data_dir, split=config.split)
        except Exception as error:  # any Hub failure is the user's to fix (id, split, network, auth)
            if offline.unreachable(error):
                raise offline.refuse(config.path, "dataset", f"{key}.path", where(key)) from None
            message = " ".join(str(error).split())[:300]
            if config.data_dir and config.data_dir in message:  # e.g. "... at hf://.../NAME doesn't contain data"
                raise UserError(
                    f"the Hub dataset {config.path} has no data in data_dir '{config.data_dir}' ({key}.data_dir "
                    f"{where(key)}): {message}; fix data_dir (its dataset page lists the folders)."
                ) from None
            raise UserError(f"cannot load the Hub dataset {config.path} ({key} {where(key)}): {message}.") from None
    files, builder = source.files, source.builder
    kwargs = {"data_files": [str(f) for f in files], "split": "train", "cache_dir": cache_dir}
    if builder == "text":
        kwargs["sample_by"] = config.text_unit
    if builder == "csv":  # every cell a string ("42" stays "42"); empty cells are "" rather than NaN
        try:
            with open(files[0], encoding="utf-8", newline="") as handle:
                header = next(csv.reader(handle))
        except (StopIteration, UnicodeDecodeError, csv.Error):
            problem = load_problem(files, builder, config.text_unit) or f"{files[0]} has no header row"
            raise UserError(problem + ".") from None
        kwargs.update(features=Features({c: Value("string") for c in header}), keep_default_na=False)
    try:
        return _slice(source, load_dataset(builder, **kwargs), where)
    except UserError:
        raise
    except Exception as error:  # find the line that broke it, else report the library's words
        problem = load_problem(files, builder, config.text_unit)
        if problem:
            raise UserError(problem + ".") from None
        message = " ".join(str(error).split())[:300] or type(error).__name__
        raise UserError(f"cannot read {config.path} ({key} {where(key)}): {message}; check the file format.") from None


def _convert_batch(batch: dict, indices: list[int], *, fmt: str, kind: str, roles: dict, source_index: int) -> dict:
    out, rows, errors = {f: [] for f in FIELDS[kind]}, [], []
    for i in range(len(indices)):
        record = {column: values[i] for column, values in batch.items()}
        try:
            converted, error = convert(record, fmt, kind, roles), None
        except RecordError as problem:
            converted, error = empty_record(kind), str(problem)
        for one in converted if isinstance(converted, list) else [converted]:  # a pair read as unpaired: two rows
            for f in FIELDS[kind]:
                out[f].append(one[f])
            rows.append(indices[i])
            errors.append(error)
    return {**out, "_source": [source_index] * len(rows), "_row": rows, "_error": errors}


def load_source(
    config: SourceConfig,
    key: str,
    where: Origin,
    *,
    index: int,
    kind: str | None,
    cache_dir: str,
    num_proc: int | None,
) -> Loaded:
    """Find, read and convert one source into `kind` (None: its format's natural kind); bad data is a UserError."""
    source = find(config, key, where, index)
    dataset = read(source, where, cache_dir)
    try:
        return convert_source(source, dataset, kind=kind, where=where, num_proc=num_proc)
    except UnicodeDecodeError:  # pyarrow's JSON reader keeps invalid UTF-8 until a string is decoded
        problem = load_problem(source.files, source.builder, config.text_unit) if source.files else None
        raise UserError((problem or f"{config.path} ({key}) holds bytes that are not valid UTF-8") + ".") from None


def _standard_columns(source: Source, dataset, where: Origin):
    """Rename the source's own columns to the standard fields its `columns:` maps them to."""
    for standard, column in source.config.columns.items():
        if column not in dataset.column_names:
            raise UserError(
                f"{source.name} has no column '{column}' ({source.key}.columns.{standard} {where(source.key)}); its "
                f"columns are {', '.join(dataset.column_names)}."
            )
        if standard in dataset.column_names and standard != column:
            dataset = dataset.remove_columns(standard)
        if standard != column:
            dataset = dataset.rename_column(column, standard)
    return dataset


def convert_source(source: Source, dataset, *, kind: str | None, where: Origin, num_proc: int | None) -> Loaded:
    """Detect the format of a read source (unless configured) and convert every row into `kind`."""
    from datasets import Features, Value

    config, key, name = source.config, source.key, source.name
    if len(dataset) == 0:
        raise UserError(f"{name} ({key} {where(key)}) has no records; add some or remove the source.")
    if config.max_rows is not None:
        dataset = dataset.select(range(min(config.max_rows, len(dataset))))
    dataset = _standard_columns(source, dataset, where)
    fmt, detected = config.format, config.format == "auto"
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
    loaded = Loaded(**vars(source), fmt=fmt, detected=detected, rows=len(dataset))
    missing = [c for c in FORMATS[fmt][0] if c not in dataset.column_names]
    if missing:
        raise UserError(
            f"{locate(loaded, {0})[0]}: field '{missing[0]}' is missing (format '{fmt}' needs "
            f"{', '.join(FORMATS[fmt][0])}; the columns are {', '.join(dataset.column_names)})."
        )
    features = Features(
        {**FEATURES[kind], "_source": Value("int32"), "_row": Value("int64"), "_error": Value("string")}
    )
    loaded.dataset = dataset.map(
        _convert_batch,
        batched=True,
        with_indices=True,
        remove_columns=dataset.column_names,
        features=features,
        fn_kwargs={"fmt": fmt, "kind": kind, "roles": {**ROLE_ALIASES, **config.roles}, "source_index": source.index},
        num_proc=worker_count(num_proc, dataset),
        load_from_cache_file=False,
        new_fingerprint=fresh_fingerprint(key, "convert", len(dataset)),
        desc=f"convert {name}",
    )
    loaded.rows = len(loaded.dataset)  # the records converted (a pair read as unpaired answers is two)
    return loaded


def check_invalid(loaded: Loaded, on_invalid: str) -> int:
    """The number of malformed records (on_invalid: drop), or a UserError naming file, line and field of the first."""
    errors = loaded.dataset["_error"][:]
    first = next((i for i, e in enumerate(errors) if e is not None), None)
    if first is None:
        return 0
    if on_invalid == "drop":
        return sum(e is not None for e in errors)
    raise UserError(
        f"{locate(loaded, {first})[first]}: {errors[first]}; fix the record, or set on_invalid: drop to count and "
        "skip such records."
    )
