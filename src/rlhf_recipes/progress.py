"""Time that tells the truth early: every training stage reports its measured seconds per step and time left after
its first steps, and the pipeline turns that into an estimate for itself, so a slow machine shows in the first
minute, not the first hour.

- `StepTimer` (a TrainerCallback, added by train/common.py) prints `[progress] stage=... step=S/N elapsed=E eta=R`
  lines after steps 2 and 4, then every 10% or at least every minute (the first step, with its warm-up, is not
  used for the rate).
- `PipelineClock` forecasts each stage before it starts (its `expected_seconds` from pipeline.yaml, scaled by how fast
  this machine multiplies float32 matrices against the machine those were measured on, or bf16 ones where bf16 is
  emulated). While a
  stage runs, the time left is its own measured time left plus the later stages' scaled expected times: one stage's
  pace says little about the next (the data stage is I/O, PPO generates), so a running stage never rescales them.
  A matmul's rate is a rough guide to a 135M model's stages (float32: 309 against 163 GFLOP/s, the demo 1.2x
  faster, not 1.9x), so once stages of a minute or more have finished, the later forecasts are also scaled by how
  long those finished stages took against their own forecasts.
"""

from __future__ import annotations

import logging
import time

from transformers import TrainerCallback

logger = logging.getLogger(__name__)


def _minutes(seconds: float) -> str:
    return f"{seconds:,.0f} s" if seconds < 120 else f"{seconds / 60:,.1f} min"


class StepTimer(TrainerCallback):
    def __init__(self, stage: str):
        self.stage, self.first_step_done, self.last_report, self.started = stage, None, 0.0, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.initial_step = time.perf_counter(), state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        now, step, total = time.perf_counter(), state.global_step, state.max_steps
        done = step - self.initial_step
        if done == 1:
            self.first_step_done = now
            return
        if not state.is_world_process_zero or self.first_step_done is None or not total:
            return
        per_step = (now - self.first_step_done) / (done - 1)
        eta = per_step * max(total - step, 0)
        due = done in (2, 4) or now - self.last_report > 60 or (step * 10 // total) != ((step - 1) * 10 // total)
        if due and step < total:
            self.last_report = now
            elapsed = now - self.started
            print(f"[progress] stage={self.stage} step={step}/{total} elapsed={elapsed:.1f} eta={eta:.1f}", flush=True)
            logger.info("%s: %.2f s/step measured; %d of %d steps left, about %s", self.stage, per_step,
                        total - step, total, _minutes(eta))  # fmt: skip


class PipelineClock:
    """The pipeline's forecasts (see the module docstring)."""

    def __init__(self, config, only, manifest):
        self.config, self.only, self.manifest = config, only, manifest
        self.started, self.stage_started = time.time(), None
        self.remaining = [run for run in config.stages if not only or run.name in only]
        self.finished: list[tuple[float, float]] = []  # (forecast, measured) seconds of stages of a minute or more
        self.machine_factor = self._machine_factor()

    def _machine_factor(self) -> float | None:
        """Reference float32 GFLOP/s / this machine's (its bf16 GFLOP/s where bf16 is forced and emulated)."""
        if not self.config.expected_at_gflops or not any(run.expected_seconds for run in self.remaining):
            return None  # nothing to scale: no forecast rather than "about 0 s"
        import torch

        if torch.cuda.is_available():
            return None  # the expected seconds are CPU timings
        from . import precision

        chosen = precision.resolve({"auto": "auto", "bf16": True, "float32": False}[self.config.precision], True)
        # Machines are compared as the reference was measured: float32 against float32. Native bf16 is not scaled
        # by its matmul rate: a 1024 x 1024 bf16 product ran 5.5x float32's on AMX while the demo's stages ran
        # 1.2x to 2x (bench/README.md; the matmuls are a third of a bf16 step), and scaling by it forecast the demo
        # at 3.8 min for a 13 min run. Emulated bf16 (forced on a CPU without it) is that slow in every product:
        # its own rate, on a small matrix (slow enough that the size matters little).
        dtype, size = ("float32", 1024) if chosen.dtype == "float32" or chosen.native_bf16 else ("bfloat16", 128)
        rate = precision.matmul_rate(dtype, size=size, seconds=0.5)
        factor = self.config.expected_at_gflops / max(rate, 1e-9)
        total = sum(run.expected_seconds or 0 for run in self.remaining) * factor
        print(
            f"━━ this machine: {dtype} matmul {rate:,.1f} GFLOP/s against {self.config.expected_at_gflops:g} "
            f"where the stage times were measured; computing in {chosen.dtype} ({chosen.reason}); the pipeline "
            f"should take about {_minutes(total)}",
            flush=True,
        )
        return factor

    def elapsed(self) -> float:
        return time.time() - self.started

    @property
    def drift(self) -> float:
        """Finished stages' measured seconds over their forecast seconds (1 before any has finished)."""
        return sum(m for _, m in self.finished) / sum(f for f, _ in self.finished) if self.finished else 1.0

    @property
    def scale(self) -> float | None:
        """Seconds per expected second: the machine factor times the drift."""
        return None if self.machine_factor is None else self.machine_factor * self.drift

    def left_after(self, run) -> float | None:
        """The later stages' expected seconds, scaled by the machine's measured rate and by how the finished stages
        kept to their forecasts (None: nothing to scale by)."""
        scale = self.scale
        if scale is None:
            return None
        later = self.remaining[self.remaining.index(run) + 1 :] if run in self.remaining else self.remaining
        return sum((r.expected_seconds or 0) * scale for r in later)

    def forecast(self, run) -> str:
        scale = self.scale
        if scale is None or not run.expected_seconds:
            return "starting"
        this = run.expected_seconds * scale
        return f"expected ~{_minutes(this)}; pipeline ~{_minutes(this + (self.left_after(run) or 0))} left"

    def skipped(self, run) -> None:
        if run in self.remaining:
            self.remaining.remove(run)

    def start(self, run) -> None:
        self.stage_started, self.current = time.time(), run

    def progress(self, stage: str, step: str, total: str, elapsed: str, eta: str) -> None:
        left = self.left_after(self.current)
        tail = f"; pipeline ~{_minutes(float(eta) + left)} left" if left is not None else ""
        print(f"━━ {stage}: step {step}/{total}, ~{_minutes(float(eta))} left in this stage{tail}", flush=True)

    def stop(self, run) -> float:
        self.skipped(run)
        seconds = round(time.time() - self.stage_started, 1)
        if self.machine_factor is not None and run.expected_seconds and seconds >= 60:
            self.finished.append((run.expected_seconds * self.machine_factor, seconds))
            if self.remaining and not 0.8 <= self.drift <= 1.25:
                print(f"━━ the stages so far took {self.drift:.1f}x their forecast: the later stages' forecasts are scaled "
                      "by it", flush=True)  # fmt: skip
        return seconds
