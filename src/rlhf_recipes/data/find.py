"""Finding a source: its local files and the `datasets` builder that reads them, or its Hub dataset id.

Local files: `.jsonl` `.json` `.csv` `.parquet` `.txt` `.md`; JSON and JSON Lines also compressed as `.gz`, `.bz2`,
`.xz` or `.zst` (how HH-RLHF and most corpora ship; `datasets` reads them natively, zstd through `zstandard`); a
folder, whose files are split as `datasets.load_dataset(folder)` splits them (`folder_split`: a Hub snapshot's
`data/train-*.parquet` and `data/test-*.parquet` are two splits, its README.md is the card, not data); or a glob
(`data/train-*.parquet`: the shards of one table). Anything else that looks like `org/name` is a Hub dataset id.

`data_dir` reads a subfolder (a Hub id's `data_dir`, as `load_dataset(path, data_dir=...)`; HH-RLHF's
`harmless-base`), and `split` may be a slice in `datasets`' own syntax (`test[0:800]`, `train[:10%]`): `split_name`
is the split without it (`sources.py` reads those rows).
"""

from __future__ import annotations

import glob
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Origin
from ..errors import UserError
from .config import SourceConfig
from .files import COMPRESSIONS, EXTENSIONS, SUPPORTED, builder_of

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
