"""Local data files: which extensions and compressions are read, and the walk over a source's files record by record
that names the file and line of a row.

The happy path never uses the walk: `datasets` reads the files (`sources.read`). Only when it fails, or a record is
malformed or dropped, are the files read again here, decompressed and decoded the same way, to say where.
"""

from __future__ import annotations

import bisect
import csv
import json
from pathlib import Path

EXTENSIONS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text", ".md": "text"}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")  # of JSON and JSON Lines files
SUPPORTED = f"{', '.join(EXTENSIONS)} files (.jsonl and .json also as {', '.join(COMPRESSIONS)})"


def split_suffix(file: Path) -> tuple[str, str | None]:
    """(data extension, compression or None): ('.jsonl', '.gz') for test.jsonl.gz, ('.csv', None) for a.csv."""
    parts = [s.lower() for s in file.suffixes]
    if len(parts) >= 2 and parts[-1] in COMPRESSIONS:
        return parts[-2], parts[-1]
    return (parts[-1] if parts else ""), None


def builder_of(file: Path) -> str | None:
    """The `datasets` builder that reads a file (json, csv, parquet, text), None for an unsupported one."""
    extension, compression = split_suffix(file)
    if compression and EXTENSIONS.get(extension) != "json":
        return None
    return EXTENSIONS.get(extension)


def _read_bytes(file: Path) -> bytes:
    """A file's bytes, decompressed as its extension says."""
    compression = split_suffix(file)[1]
    if compression is None:
        return file.read_bytes()
    if compression == ".zst":
        import zstandard

        with zstandard.open(file, "rb") as handle:
            return handle.read()
    import bz2
    import gzip
    import lzma

    with {".gz": gzip, ".bz2": bz2, ".xz": lzma}[compression].open(file, "rb") as handle:
        return handle.read()


def _decode(file: Path, allow_empty: bool = False) -> tuple[str | None, str | None]:
    """(text, None), or (None, problem) when the file is empty, not UTF-8, or not decompressible."""
    try:
        data = _read_bytes(file)
    except Exception as error:  # gzip.BadGzipFile, lzma.LZMAError, zstandard.ZstdError, EOFError, ...
        message = " ".join(str(error).split())[:200] or type(error).__name__
        return (
            None,
            f"{file} is not a valid {split_suffix(file)[1]} file ({message}); re-compress it or use the plain file",
        )
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
    """(line number, record) of a .json/.jsonl file; a syntax error is a ValueError naming the line."""
    stripped, is_json = text.lstrip(), split_suffix(file)[0] == ".json"
    if is_json and stripped.startswith("["):
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
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as error:
                if number == 1 and is_json and stripped.startswith("{"):
                    raise ValueError(
                        f"{file}, line {error.lineno}: holds one JSON object, not a list of records; "
                        "write a JSON list or one object per line (.jsonl)"
                    ) from None
                raise ValueError(
                    f"{file}, line {number}: not valid JSON ({error.msg} at column {error.colno}); "
                    "every line must be one JSON object"
                ) from None


def _rows(files: list[Path], builder: str, text_unit: str):
    """(file, "line N" / "row N", record) for every row, in the order `datasets` reads them (error paths only)."""
    for file in files:
        text, problem = (None, None) if builder == "parquet" else _decode(file, allow_empty=builder == "text")
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


def load_problem(files: list[Path], builder: str, text_unit: str) -> str | None:
    """The first line-level problem of files that `datasets` failed to load, as a sentence (None if none found)."""
    try:
        for _ in _rows(files, builder, text_unit):
            pass
    except ValueError as error:
        return str(error)
    except Exception as error:  # a Parquet file pyarrow cannot read at all
        return f"{files[0]} cannot be read ({' '.join(str(error).split())[:200]})"
    return None


def _parquet_places(files: list[Path], rows: set[int]) -> dict[int, str]:
    """'shard, row N' for row indices over several Parquet files, from their footers (no data is read)."""
    import pyarrow.parquet as pq

    starts = [0]
    for file in files:
        starts.append(starts[-1] + pq.ParquetFile(file).metadata.num_rows)
    places = {}
    for row in rows:
        shard = min(bisect.bisect_right(starts, row) - 1, len(files) - 1)
        places[row] = f"{files[shard]}, row {row - starts[shard] + 1}"
    return places


def locate(source, rows: set[int]) -> dict[int, str]:
    """'file, line N' for each requested row index of a source (a `find.Source`; one pass over its files); the index
    counts from the start of a sliced split (`test[800:1000]`: row 0 is the split's row 800)."""
    offset = getattr(source, "first_row", 0)
    if offset:
        places = _locate(source, {row + offset for row in rows})
        return {row: places[row + offset] for row in rows}
    return _locate(source, rows)


def _locate(source, rows: set[int]) -> dict[int, str]:
    fallback = {row: f"{source.config.path}, row {row + 1}" for row in rows}
    if source.files is None or (source.builder == "text" and source.config.text_unit == "paragraph"):
        return fallback
    if source.builder == "parquet":
        try:
            return _parquet_places(source.files, rows)
        except Exception:  # an unreadable footer: the row index is all there is
            return fallback
    found, wanted = {}, max(rows, default=-1)
    try:
        for index, (file, where, _) in enumerate(_rows(source.files, source.builder, source.config.text_unit)):
            if index in rows:
                found[index] = f"{file}, {where}" if where else str(file)
            if index >= wanted:
                break
    except ValueError:
        pass
    return {**fallback, **found}
