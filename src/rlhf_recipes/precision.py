"""The compute precision this machine runs fast: bf16 where the hardware has it, float32 everywhere else.

bf16 is fast on GPUs since Ampere and on CPUs with native bf16 instructions (AVX512-BF16 or AMX, ARM's BF16
extension); on an AVX2-only CPU PyTorch emulates it and a bf16 matmul runs 8-700x slower than float32. So the shipped
configs say `bf16: auto` (autocast) and PPO's `dtype: compute` (frozen weights in the compute precision), and the
recipes resolve both here before TRL sees them. An explicit `true`/`false` is honoured; an explicit bf16 on a CPU
without native bf16 is honoured with a warning that gives the measured cost.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass

logger = logging.getLogger(__name__)

AUTO = "auto"
COMPUTE_DTYPE = "compute"  # a `dtype` value: the frozen weights in whatever compute precision was resolved
_NATIVE_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")  # x86 AVX512-BF16, AMX; ARM BF16, SVE-BF16


@dataclass(frozen=True)
class Precision:
    """The resolved choice, with the facts behind it (logged at start-up and written into lineage.json)."""

    bf16: bool
    requested: str  # "auto", "true" or "false"
    device: str  # "cuda" or "cpu"
    capability: str  # e.g. "AVX2", "AVX512", "NVIDIA H100 (sm_90)"
    native_bf16: bool
    reason: str

    @property
    def dtype(self) -> str:
        return "bfloat16" if self.bf16 else "float32"

    def to_dict(self) -> dict:
        return {**asdict(self), "dtype": self.dtype}


AUTO_ENV = "RLHF_RECIPES_AUTO_BF16"  # true / false: what `bf16: auto` resolves to, whatever the machine has


def _cuda_in_use(use_cpu: bool) -> bool:
    import torch

    return not use_cpu and torch.cuda.is_available()


def machine(use_cpu: bool = False) -> tuple[str, str, bool]:
    """(device, capability, native_bf16) of the device a run with this `use_cpu` trains on."""
    import torch

    if _cuda_in_use(use_cpu):
        major, minor = torch.cuda.get_device_capability()
        return "cuda", f"{torch.cuda.get_device_name()} (sm_{major}{minor})", bool(torch.cuda.is_bf16_supported())
    capabilities = torch.cpu.get_capabilities()
    native = any(capabilities.get(flag) for flag in _NATIVE_CPU_FLAGS)
    return "cpu", torch.backends.cpu.get_cpu_capability(), native


def _requested(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip().lower()
    if text in ("auto", "true", "false"):
        return text
    raise ValueError(f"bf16 must be auto, true or false (got {value!r})")


def resolve(bf16="auto", use_cpu: bool = False) -> Precision:
    """Resolve a `bf16` setting (auto / true / false) for the device the run will use."""
    requested = _requested(bf16)
    device, capability, native = machine(use_cpu)
    hardware = f"{device} {capability}: {'native' if native else 'no native'} bf16"
    if requested == "auto" and os.environ.get(AUTO_ENV):
        try:
            bf16 = _requested(os.environ[AUTO_ENV]) == "true"
        except ValueError:
            raise ValueError(f"{AUTO_ENV} must be true or false (got {os.environ[AUTO_ENV]!r})") from None
        reason = f"auto -> {'bf16' if bf16 else 'float32'} ({AUTO_ENV}={os.environ[AUTO_ENV]}; {hardware})"
        return Precision(bf16, requested, device, capability, native, reason)
    if requested == "auto":
        reason = f"auto -> {'bf16' if native else 'float32'} ({hardware})"
        return Precision(native, requested, device, capability, native, reason)
    reason = f"bf16: {requested} as configured ({hardware})"
    return Precision(requested == "true", requested, device, capability, native, reason)


def matmul_rate(
    dtype: str = "float32", size: int = 512, seconds: float = 0.25, shape: tuple[int, int, int] | None = None
) -> float:
    """GFLOP/s of a `size` x `size` matmul in `dtype` on this CPU, measured for about `seconds`; with `shape`
    (m, k, n), of an [m, k] x [k, n] one instead."""
    import torch

    m, k, n = shape or (size, size, size)
    a = torch.randn(m, k, dtype=getattr(torch, dtype))
    b = torch.randn(k, n, dtype=getattr(torch, dtype))
    torch.mm(a, b)  # warm-up
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or count < 2:
        torch.mm(a, b)
        count += 1
    return 2 * m * k * n * count / (time.perf_counter() - started) / 1e9


def log_choice(precision: Precision, what: str = "compute") -> None:
    """One log line for the choice; a warning with the measured cost when bf16 was forced on a CPU without it."""
    logger.info("precision: %s %s (%s)", what, precision.dtype, precision.reason)
    if precision.bf16 and precision.device == "cpu" and not precision.native_bf16:
        slower = matmul_rate("float32", seconds=0.1) / max(matmul_rate("bfloat16", size=256, seconds=0.1), 1e-9)
        logger.warning(
            "bf16 is set on a CPU without native bf16 (%s), where a bf16 matmul measures %.0fx slower than float32; "
            "set bf16: auto (or false) to train in float32.",
            precision.capability,
            slower,
        )


def weights_dtype(dtype: str | None, precision: Precision) -> str | None:
    """A `dtype` setting with `compute` replaced by the resolved compute precision (other values unchanged)."""
    return precision.dtype if dtype == COMPUTE_DTYPE else dtype
