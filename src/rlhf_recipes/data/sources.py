"""Sources: a source found (`find.py`: its files or its Hub id), read with `datasets`, its format detected, every
record converted into the output kind; a malformed record is named by its file and line (`files.locate`).

`data_dir` reads a subfolder (a Hub id's `data_dir`, as `load_dataset(path, data_dir=...)`; HH-RLHF's
`harmless-base`), and `split` may be a slice in `datasets`' own syntax (`test[0:800]`, `train[:10%]`): a Hub source
passes it to `load_dataset`, a local one reads the split and keeps those rows; the report says which rows were read,
and a malformed record is still named by its line in the file.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import time
from dataclasses import dataclass

from .. import offline
from ..config import Origin
from ..errors import UserError
from .config import SourceConfig
from .files import load_problem, locate
from .find import Source, find, split_name
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
class Loaded(Source):
    """A source after loading and conversion: its rows as `FIELDS[kind]` + `_source`, `_row`, `_error` columns."""

    fmt: str = ""
    detected: bool = False
    rows: int = 0
    dataset: object = None


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
