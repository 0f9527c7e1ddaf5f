"""The report of one prepared dataset: `report.json` (every number, and examples of every dropped row with its file
and line), `report.md` (the same for people) and `token_lengths.png` (measured and kept lengths, and the limits).

`report.json`'s `generator` marks the folder as this project's (`fs.is_ours`), so `overwrite: true` may replace it.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import shlex
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .cleaning import REASONS, STEPS
from .sources import Loaded, locate

if TYPE_CHECKING:
    from .cleaning import ReferenceSet
    from .config import CleaningConfig, DataConfig


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


REPORT_MARKER = "rlhf_recipes.prepare_data"
HISTOGRAM = "token_lengths.png"  # no split name in it: `load_dataset(folder)` would take token_lengths_train.* as data


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


def _source_rows(splits: list[Split], references: list[Loaded]) -> list[dict]:
    """One row per source: where it is, its format, and how many of its rows were loaded, kept and written."""
    sources = []
    for split in splits:
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
                    "source_split": part.config.split,
                    "rows_in_split": part.split_rows,  # a sliced local split (test[0:800]): its rows before slicing
                    "splits_not_read": part.other_splits,  # a folder's other splits (test files are not training)
                }
            )
    for part in references:
        sources.append(
            {
                "split": "decontamination",
                "path": part.config.path,
                "format": part.fmt,
                "detected": part.detected,
                "weight": 1.0,
                "rows_loaded": part.rows,
                "rows_kept": None,
                "rows_written": None,
            }
        )
    return sources


def _versions() -> dict:
    return {lib: importlib.metadata.version(lib) for lib in ("datasets", "datasketch", "transformers", "trl")}


def build_report(
    name: str,
    config: DataConfig,
    splits: list[Split],
    references: list[Loaded],
    reference: ReferenceSet | None,
    elapsed: float,
) -> dict:
    """Everything `report.json` holds about one prepared dataset."""
    spec = config.datasets[name]
    sources = _source_rows(splits, references)
    rows_in = sum(s["rows_loaded"] for s in sources)
    return {
        "generator": REPORT_MARKER,
        "name": name,
        "kind": spec.kind,
        "output_dir": spec.output_dir,
        "command": shlex.join(["python", *sys.argv]) if sys.argv and sys.argv[0] else "prepare()",
        "tokenizer": config.tokenizer,
        "elapsed_s": round(elapsed, 2),
        "rows_per_second": round(rows_in / max(elapsed, 1e-9), 1),
        "decontamination": {
            "ngram": spec.cleaning.decontamination_ngram,
            "reference_rows": len(reference.keys) if reference else 0,
            "reference_ngrams": len(reference.ngrams) if reference else 0,
        },
        "sources": sources,
        "splits": {s.name: _split_report(s, spec.cleaning) for s in splits},
        "histogram": HISTOGRAM,
        "config": dataclasses.asdict(spec),
        "versions": _versions(),
    }


def write_report(folder: Path, report: dict, splits: list[Split], cleaning: CleaningConfig) -> None:
    """report.json, report.md and the histogram into the dataset's (not yet published) folder."""
    _histograms(folder / HISTOGRAM, splits, cleaning, f"{report['name']} token lengths")
    (folder / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (folder / "report.md").write_text(markdown(report), encoding="utf-8")


def markdown(report: dict) -> str:
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
    lines += [
        f"\n`{s['path']}`: split `{s['source_split']}` read, {s['rows_loaded']} of its {s['rows_in_split']} rows"
        for s in report["sources"]
        if s.get("rows_in_split") is not None
    ]
    lines += [
        f"\n`{s['path']}`: split `{s['source_split']}` read; not read: "
        + ", ".join(f"`{name}` ({count} files)" for name, count in s["splits_not_read"].items())
        for s in report["sources"]
        if s.get("splits_not_read")
    ]
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
