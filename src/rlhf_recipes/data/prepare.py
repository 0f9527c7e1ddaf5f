"""Data preparation: one YAML config -> cleaned datasets in TRL's standard formats, with a report of every dropped row.

    python recipes/prepare_data.py --config configs/smollm2-135m/data.yaml [--dotted.key VALUE ...]

For each dataset of the config: load its sources (`sources.py`), convert them into one output kind (`formats.py`),
clean them (`cleaning.py`), mix the training sources by weight, and write `train.jsonl` (+ `test.jsonl` from the
held-out `eval_sources`) and the report (`report.py`) into a folder built aside (`fs.build_aside`) that is renamed
into place only when every dataset is done.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from .. import fs
from ..config import Origin
from ..errors import UserError
from ..models import DEFAULT_MODEL, load_tokenizer, resolve_model_path
from .cleaning import NearDuplicateIndex, ReferenceSet, Thresholds, annotate_batch, deduplicate, normalize_record
from .config import CleaningConfig, DataConfig, check_only
from .formats import FEATURES, FIELDS, FORMATS
from .report import Split, build_report, write_report
from .sources import Loaded, check_invalid, fresh_fingerprint, load_source, worker_count

logger = logging.getLogger(__name__)

GROUPS = {"train": "sources", "test": "eval_sources", "reference": "decontaminate_against"}  # split -> config key


def prepare(config: DataConfig, where: Origin, only: list[str] | None = None) -> list[dict]:
    """Prepare every (or every `only`) dataset of the config; returns their reports. Nothing appears in an output
    folder until all of them succeeded."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    check_only(config, where, only)
    names = only or list(config.datasets)
    for name in names:
        _check_output(config, name, where)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="prepare-data-") as cache_dir, contextlib.ExitStack() as outputs:
        # Load and convert every source first: malformed data fails fast, before any slow step
        loaded = {name: _load_dataset_sources(config, name, where, cache_dir) for name in names}
        tokenizer = _tokenizer(config, where, {config.datasets[n].kind for n in names})

        # Clean, mix and write each dataset into a folder built aside; all are renamed into place together at the end
        reports = []
        for name in names:
            target = config.datasets[name].output_dir
            folder = outputs.enter_context(fs.build_aside(target, what="data", replace=config.overwrite))
            reports.append(_prepare_one(name, loaded[name], config, tokenizer, folder, where))
    _claim_root(config, names)  # once every output is in place: a failed run leaves nothing behind
    logger.info("Prepared %d dataset(s) in %.1f s", len(names), time.time() - started)
    return reports


def _check_output(config: DataConfig, name: str, where: Origin) -> None:
    """Refuse, before any work, an output folder this run may not replace."""
    key = f"datasets.{name}.output_dir"
    folder = fs.check_output_folder(
        config.datasets[name].output_dir, key, where(key), what="data", replace=config.overwrite
    )
    if not config.overwrite and folder.is_dir() and any(folder.iterdir()):
        raise UserError(
            f"the output folder {folder} ({key} {where(key)}) already exists and is not empty; choose another "
            "output_dir, remove it yourself, or set overwrite: true to replace an earlier run."
        )


def _claim_root(config: DataConfig, names: list[str]) -> None:
    """Mark output_root as the data stage's folder (`fs.claim`), so that a pipeline may set it aside when its settings
    change, as it does every stage's output; one holding anything but the data stage's outputs is left unmarked."""
    root = Path(config.output_root) if config.output_root else None
    if root is None or not any(Path(config.datasets[name].output_dir).parent == root for name in names):
        return  # every dataset writes elsewhere (its own output_dir)
    entries = [p for p in root.iterdir() if not p.name.startswith(".")] if root.is_dir() else []
    if any(getattr(fs.owner(p), "stage", None) != "data" for p in entries):
        return
    fs.claim(root, "data")


def _load_dataset_sources(config: DataConfig, name: str, where: Origin, cache_dir: str) -> dict[str, list[Loaded]]:
    """Every source of one dataset by split (train, test, reference), converted; a malformed record stops here."""
    spec = config.datasets[name]
    loaded = {}
    for split, group in GROUPS.items():
        loaded[split] = [
            load_source(
                source,
                f"datasets.{name}.{group}[{i}]",
                where,
                index=i,
                kind=None if split == "reference" else spec.kind,  # a reference keeps its own kind
                cache_dir=cache_dir,
                num_proc=config.num_proc,
            )
            for i, source in enumerate(getattr(spec, group))
        ]
    for part in (p for parts in loaded.values() for p in parts):
        check_invalid(part, config.on_invalid)
    return loaded


def _tokenizer(config: DataConfig, where: Origin, kinds: set[str]):
    """The tokenizer that measures lengths, with the chat template the kinds need."""
    try:
        tokenizer = load_tokenizer(resolve_model_path(config.tokenizer, "tokenizer", where("tokenizer")))
    except (OSError, ValueError) as error:
        raise UserError(
            f"cannot load the tokenizer '{config.tokenizer}' (key 'tokenizer' {where('tokenizer')}): "
            f"{str(error).splitlines()[0]}; pass a local model folder or {DEFAULT_MODEL}."
        ) from None
    if kinds - {"text"} and not tokenizer.chat_template:
        raise UserError(
            f"the tokenizer '{config.tokenizer}' (key 'tokenizer' {where('tokenizer')}) has no chat "
            "template, which every kind but text needs; use a chat model's."
        )
    if "messages" in kinds and not re.search(r"\{%-?\s*generation\s*-?%\}", tokenizer.chat_template):
        raise UserError(
            f"the chat template of '{config.tokenizer}' (key 'tokenizer' {where('tokenizer')}) has no "
            "{% generation %} markers, so SFT cannot mask assistant turns; use a training template."
        )
    return tokenizer


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
    """Normalise, filter and deduplicate the rows of one split (decontaminated against `reference`)."""
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
        num_proc=worker_count(num_proc, dataset),
        features=Features({**FEATURES[kind], **meta}),
        load_from_cache_file=False,
        fn_kwargs={
            "kind": kind,
            "fields": FIELDS[kind],
            "thresholds": thresholds,
            "tokenizer": tokenizer,
            "reference": reference,
        },
        new_fingerprint=fresh_fingerprint(name, "annotate", len(dataset)),
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


def _reference(
    parts: list[Loaded], test_parts: list[Loaded], kind: str, cleaning: CleaningConfig
) -> ReferenceSet | None:
    """What the held-out records (eval_sources and decontaminate_against) ask, as n-grams and exact keys."""
    if not parts and not test_parts:
        return None
    reference = ReferenceSet(cleaning.decontamination_ngram, cleaning.decontamination_min_overlap)
    # a reference source keeps its format's own kind; a held-out split has the dataset's
    with_fields = [(p, FIELDS[FORMATS[p.fmt][2][0]]) for p in parts] + [(p, FIELDS[kind]) for p in test_parts]
    for part, fields in with_fields:
        for batch in part.dataset.iter(batch_size=1000):
            for i, error in enumerate(batch["_error"]):
                if error is None:
                    reference.add(normalize_record({f: batch[f][i] for f in fields}, cleaning.unicode_form))
    return reference


def _write(split: Split, path: Path, kind: str, num_proc: int | None) -> None:
    rows = split.dataset.select(split.written).select_columns(list(FIELDS[kind]))
    rows.to_json(path, lines=True, force_ascii=False, num_proc=worker_count(num_proc, rows))


def _prepare_one(
    name: str, loaded: dict[str, list[Loaded]], config: DataConfig, tokenizer, folder: Path, where: Origin
) -> dict:
    """Clean, mix and write one dataset (train.jsonl, test.jsonl, the report) into `folder`; returns its report."""
    started = time.time()
    spec = config.datasets[name]
    kind, cleaning, num_proc = spec.kind, spec.cleaning, config.num_proc
    logger.info("Dataset '%s' (%s): cleaning %d training rows", name, kind, sum(p.rows for p in loaded["train"]))
    splits = []
    if loaded["test"]:  # held-out rows are cleaned but never mixed: test.jsonl is what the evaluation reads
        test = clean_split("test", loaded["test"], kind, cleaning, tokenizer, reference=None, num_proc=num_proc)
        test.written = test.kept
        splits.append(test)
    reference = _reference(loaded["reference"], loaded["test"], kind, cleaning)
    train = clean_split("train", loaded["train"], kind, cleaning, tokenizer, reference=reference, num_proc=num_proc)
    mix(train, config.seed, spec.shuffle)
    splits.insert(0, train)
    for split in splits:
        if not split.written:
            summary = ", ".join(f"{r}: {n}" for r, n in Counter(r for r in split.reasons if r).most_common())
            raise UserError(
                f"dataset '{name}' has no {split.name} rows left after cleaning ({summary}); loosen "
                f"datasets.{name}.cleaning {where(f'datasets.{name}.cleaning')} or fix the sources."
            )
        _write(split, folder / f"{split.name}.jsonl", kind, num_proc)
        logger.info("Dataset '%s': %s.jsonl has %d rows", name, split.name, len(split.written))
    report = build_report(name, config, splits, loaded["reference"], reference, time.time() - started)
    write_report(folder, report, splits, cleaning)
    return report
