"""The data preparation config: its dataclasses, the rules their types do not say, `--help`'s schema, and
`parse_argv`, which the stage registry calls for the stage "data" (`stages/catalog.py`).

The YAML is read by the project's one loader (`rlhf_recipes.config.load_nested`): unknown keys, wrong types and
command-line overrides (`--datasets.sft.cleaning.max_tokens 512`, list items by index: `--datasets.sft.sources.1.weight
2`) behave as in every other config. The top-level `cleaning:` is spread into each dataset's own `cleaning:` before the
config is built, so a dataset overrides single keys of it.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..config import Origin, build, load_nested
from ..config import help_field as _help
from ..errors import UserError, suggest
from ..models import DEFAULT_MODEL
from .formats import FORMATS, KINDS, ROLES

STANDARD_COLUMNS = sorted({c for required, optional, _ in FORMATS.values() for c in required + optional} | {"text"})


@dataclass
class SourceConfig:
    path: str = _help(
        "local file (.jsonl .json .csv .parquet .txt .md; .jsonl/.json also as .gz .bz2 .xz .zst), folder (read as "
        "datasets.load_dataset reads it: one split of it, see split), glob (data/train-*.parquet: one table), or Hub "
        "dataset id"
    )
    format: Literal["auto", *FORMATS] = _help(
        "input format; auto detects it from the columns and logs it", default="auto"
    )
    weight: float = _help(
        "training mixture: 0.5 keeps a random half of the cleaned rows, 2.0 repeats them", default=1.0
    )
    split: str = _help(
        "the split to read from a Hub dataset or a local folder: splits come from file and folder names "
        "(data/train-*.parquet, test.jsonl) or the folder's README.md `configs`; a folder without split names is all "
        "train; a file or glob has no splits. A slice in datasets' syntax reads those rows only: test[0:800], "
        "test[800:], train[:10%]",
        default="train",
    )
    data_dir: str | None = _help(
        "a subfolder of a Hub dataset or local folder to read (load_dataset's data_dir), e.g. harmless-base of "
        "Anthropic/hh-rlhf",
        default=None,
    )
    subset: str | None = _help(
        "config name of a Hub dataset (or of a local folder's README.md `configs`)", default=None
    )
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

    @classmethod
    def from_string(cls, path: str) -> dict:
        """A source given as a bare path (`sources: [a.jsonl]`) is `{path: a.jsonl}`."""
        return {"path": path}


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
        "output format: text (CPT), messages (SFT), preferences (reward model, DPO), prompts (PPO, GRPO, RLOO, "
        "online DPO), unpaired (prompt, completion, label: KTO)"
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


# ------------------------------------------------------------------------------------------------------- loading
OPTIONS = """\
options of data preparation:
  --only NAME,...   comma-separated names of the datasets to prepare (default: all of them), e.g. --only sft
  --KEY VALUE       any key below, dotted for nested keys and list items
                    (--datasets.sft.cleaning.max_tokens 512, --datasets.sft.sources.1.weight 2)
"""


def parse_argv(argv: list[str] | None = None) -> tuple[DataConfig, Origin, list[str] | None]:
    """The config, where each key came from, and the `--only` dataset names (None: all) of a command line.

    `--help` prints the usage and the schema and exits 0; every user mistake is one UserError sentence.
    """
    from .. import stages, usage

    argv = list(sys.argv[1:] if argv is None else argv)
    argv, only = _take_only(argv)
    if usage.requested(argv):
        usage.print_and_exit(stages.get("data"), (DataConfig,), argv, OPTIONS)
    config, where = load_nested(DataConfig, argv, prepare=_spread_cleaning)
    validate(config, where)
    check_only(config, where, only)
    return config, where, only


def _take_only(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """The command line without `--only`, and the names it gave (`--only a,b`, `--only a b` or `--only=a,b`)."""
    rest, only, index = [], None, 0
    while index < len(argv):
        token = argv[index]
        name, has_value, value = token.partition("=")
        index += 1
        if name != "--only":
            rest.append(token)
            continue
        values = [value] if has_value else []
        while not has_value and index < len(argv) and not argv[index].startswith("--"):
            values.append(argv[index])
            index += 1
        only = [n.strip() for v in values for n in v.split(",") if n.strip()]
        if not only:
            raise UserError("--only takes the names of the datasets to prepare, e.g. --only sft,prompts.")
    return rest, only


def check_only(config: DataConfig, where: Origin, only: list[str] | None) -> None:
    for name in only or ():
        if name not in config.datasets:
            raise UserError(
                f"--only names '{name}', which is not a dataset in {where.path}{suggest(name, list(config.datasets))}"
                f" The datasets are: {', '.join(config.datasets)}."
            )


def _spread_cleaning(raw: dict, where: Origin) -> dict:
    """Give every dataset the top-level `cleaning:` keys it does not set itself (checked first where they are)."""
    shared = build(CleaningConfig, raw.get("cleaning") or {}, "cleaning", where)
    datasets = raw.get("datasets")
    for name, spec in datasets.items() if isinstance(datasets, dict) else ():
        if isinstance(spec, dict):
            own = spec.get("cleaning") or {}
            build(CleaningConfig, own, f"datasets.{name}.cleaning", where)  # a bad key is named where it is
            spec["cleaning"] = {**dataclasses.asdict(shared), **own}
    return raw


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
                _validate_source(source, f"{key}.{group}[{i}]", where, training=group == "sources")
        _validate_cleaning(spec.cleaning, f"{key}.cleaning", where)
        if spec.output_dir is None:
            _check(
                config.output_root is not None, f"{key}.output_dir", where, "is not set and there is no output_root"
            )
            spec.output_dir = str(Path(config.output_root) / name)
        resolved = Path(spec.output_dir).resolve()
        _check(resolved not in outputs, f"{key}.output_dir", where, f"is also the output of '{outputs.get(resolved)}'")
        outputs[resolved] = name


def _validate_source(source: SourceConfig, key: str, where: Origin, *, training: bool) -> None:
    if training:
        _check(source.weight > 0, f"{key}.weight", where, f"must be a positive number, not {source.weight:g}")
    else:
        _check(source.weight == 1.0, f"{key}.weight", where, "applies to training sources only; remove it")
    _check(source.max_rows is None or source.max_rows >= 1, f"{key}.max_rows", where, "must be >= 1")
    for alias, role in source.roles.items():
        _check(role in ROLES, f"{key}.roles.{alias}", where, f"must map to one of {', '.join(ROLES)}")
    for column in source.columns:
        _check(
            column in STANDARD_COLUMNS,
            f"{key}.columns.{column}",
            where,
            f"must name a standard field ({', '.join(STANDARD_COLUMNS)})",
        )


def _validate_cleaning(c: CleaningConfig, key: str, where: Origin) -> None:
    _check(c.min_tokens >= 0, f"{key}.min_tokens", where, "must be >= 0")
    _check(
        c.max_tokens is None or c.max_tokens >= max(c.min_tokens, 1),
        f"{key}.max_tokens",
        where,
        f"must be >= min_tokens ({c.min_tokens}) and >= 1, or null",
    )
    _check(0 < c.minhash_threshold <= 1, f"{key}.minhash_threshold", where, "must be in (0, 1]")
    _check(c.minhash_num_perm >= 16, f"{key}.minhash_num_perm", where, "must be >= 16")
    _check(c.minhash_ngram >= 1, f"{key}.minhash_ngram", where, "must be >= 1")
    _check(c.decontamination_ngram >= 0, f"{key}.decontamination_ngram", where, "must be >= 0")
    _check(0 <= c.decontamination_min_overlap <= 1, f"{key}.decontamination_min_overlap", where, "must be in [0, 1]")
    _check(c.examples_per_reason >= 0, f"{key}.examples_per_reason", where, "must be >= 0")
