"""Where a stage runs and how much memory the plan must fit into: this machine's RAM, a visible GPU, or a given size."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

GIB = 2**30
_UNITS = {"gib": GIB, "gb": 10**9, "mib": 2**20, "mb": 10**6, "tib": 2**40, "tb": 10**12}


def parse_size(text: str) -> int:
    """`24GiB`, `24GB`, `16000MiB` or a bare number of GiB, in bytes; anything else (or 0) is one sentence."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(gib|gb|mib|mb|tib|tb)?\s*", text.lower())
    size = int(float(match.group(1)) * _UNITS[match.group(2) or "gib"]) if match else 0
    if size <= 0:
        raise UserError(
            f"--device: cannot read memory size '{text}'; write a size above 0 like cuda:24GiB or cpu:16000MiB."
        )
    return size


def system_memory() -> tuple[int | None, int | None]:
    """(available, total) RAM in bytes: psutil when it is installed, else /proc/meminfo, else (None, None)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        memory = psutil.virtual_memory()
        return memory.available, memory.total
    values = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                values[key] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    except OSError:
        pass
    return values.get("MemAvailable"), values.get("MemTotal")


@dataclass
class Device:
    """Where a stage runs: `kind` is "cpu" or "cuda"; `capacity` is what the plan must fit into, in bytes."""

    kind: str
    capacity: int | None
    label: str

    @classmethod
    def cpu(cls, capacity: int | None = None) -> Device:
        if capacity is not None:
            return cls("cpu", capacity, f"CPU, {capacity / GIB:.1f} GiB (given)")
        available, total = system_memory()
        if available is None:
            return cls("cpu", None, "CPU, RAM unknown (no psutil, no /proc/meminfo)")
        return cls("cpu", available, f"CPU, {available / GIB:.1f} GiB available of {total / GIB:.1f} GiB RAM")

    @classmethod
    def cuda(cls, capacity: int | None = None) -> Device:
        if capacity is not None:
            return cls("cuda", capacity, f"CUDA GPU, {capacity / GIB:.1f} GiB (given)")
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda needs a CUDA GPU, and none is visible; give its size, e.g. cuda:24GiB.")
        free, total = torch.cuda.mem_get_info()
        name = torch.cuda.get_device_name()
        return cls("cuda", total, f"{name}, {total / GIB:.1f} GiB ({free / GIB:.1f} GiB free now)")

    @classmethod
    def parse(cls, spec: str | None, use_cpu: bool = False) -> Device:
        """`auto` (the config's `use_cpu`, else a visible GPU, else CPU), `cpu`, `cpu:64GiB`, `cuda`, `cuda:24GiB`."""
        spec = (spec or "auto").strip()
        kind, _, size = spec.partition(":")
        kind = kind.lower()
        if kind == "auto" and not size:
            if use_cpu:
                return cls.cpu()
            import torch

            return cls.cuda() if torch.cuda.is_available() else cls.cpu()
        if kind in ("cpu", "cuda", "gpu"):
            capacity = parse_size(size) if size else None
            return cls.cpu(capacity) if kind == "cpu" else cls.cuda(capacity)
        raise UserError(f"unknown --device '{spec}'; use auto, cpu, cpu:64GiB, cuda or cuda:24GiB.")
