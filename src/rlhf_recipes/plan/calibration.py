"""The planner's measured constants: `calibration.json` next to this file, each value with what it is and where it was
measured. The memory bench rewrites values with `write` after comparing plans with real peaks; the planner reads
them with `value`.

    from rlhf_recipes.plan import calibration
    calibration.write({"CPU_STEP_MEMORY_FACTOR": 1.58}, "bench/memory.py at 1a2b3c4, 2-core EPYC (AVX2), float32")
"""

from __future__ import annotations

import copy
import functools
import json
import math
from pathlib import Path

from .device import GIB

PATH = Path(__file__).with_name("calibration.json")
UNITS = {"GiB": GIB, "x": 1}  # a size in GiB (the plan counts bytes), or a plain factor


@functools.lru_cache(maxsize=4)
def _read(path: str) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def load(path: str | Path | None = None) -> dict[str, dict]:
    """Every constant: name -> {value, unit, what, measured}."""
    return copy.deepcopy(_read(str(path or PATH)))


def value(name: str, path: str | Path | None = None) -> float:
    """One constant in the plan's units: bytes for a size, the number itself for a factor."""
    entry = _read(str(path or PATH))[name]
    return entry["value"] * UNITS[entry["unit"]]


def measured(name: str, path: str | Path | None = None) -> str:
    """Where a constant's value comes from."""
    return _read(str(path or PATH))[name]["measured"]


def write(values: dict[str, float], source: str, path: str | Path | None = None) -> Path:
    """Record measured `values` (in the file's units: GiB for sizes, a plain number for factors) and, for each, that
    `source` measured it (what ran, the commit, the machine). Other constants keep their values; the file is
    replaced atomically. A name the file does not hold is a bug in the caller (add the constant by hand first)."""
    from .. import fs

    path = Path(path or PATH)
    entries = load(path)
    for name, number in values.items():
        if name not in entries:
            raise KeyError(f"calibration.json has no constant {name}; known: {', '.join(entries)}")
        if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number) or number <= 0:
            raise ValueError(f"calibration constant {name} must be a positive number, not {number!r}")
        entries[name] = {**entries[name], "value": float(number), "measured": source}
    fs.atomic_write_json(path, entries)
    _read.cache_clear()
    return path
