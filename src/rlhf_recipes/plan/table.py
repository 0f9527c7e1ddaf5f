"""A stage's plan as the table `recipes/plan.py` prints (or JSON), with what to change when it does not fit."""

from __future__ import annotations

from dataclasses import dataclass, field

from .device import GIB, Device


@dataclass
class Item:
    component: str
    bytes: float
    note: str = ""
    fixed: bool = False  # there whatever the batch: the process or context, weights, trainable state


@dataclass
class StagePlan:
    stage: str
    config_path: str | None
    device: Device
    items: list[Item] = field(default_factory=list)
    models: list[str] = field(default_factory=list)  # one line per model: name, architecture, size, config source
    precision: str = ""  # the compute precision the run resolved, and why
    setup: str = ""
    notes: list[str] = field(default_factory=list)
    tokens_per_row: int | None = None  # the sequence length planned for (max_length unless given)
    checkpointing: bool = False

    @property
    def total(self) -> float:
        return sum(item.bytes for item in self.items)

    @property
    def fits(self) -> bool | None:
        return None if self.device.capacity is None else self.total <= self.device.capacity

    def to_dict(self) -> dict:
        return {
            "stage": self.stage,
            "config": self.config_path,
            "device": self.device.label,
            "capacity_gib": None if self.device.capacity is None else round(self.device.capacity / GIB, 3),
            "total_gib": round(self.total / GIB, 3),
            "fits": self.fits,
            "models": self.models,
            "precision": self.precision,
            "setup": self.setup,
            "items": [{"component": i.component, "gib": round(i.bytes / GIB, 3), "note": i.note} for i in self.items],
            "notes": self.notes,
        }

    def advice(self) -> str:
        """What to change when the plan does not fit: the fixed part (weights, training state) or the per-step part."""
        fixed = sum(item.bytes for item in self.items if item.fixed)
        if fixed > self.device.capacity:
            return (
                f"Weights and training state alone need {fixed / GIB:.1f} GiB: train LoRA adapters (use_peft: true) "
                "on a 4-bit base (load_in_4bit: true, dtype: bfloat16), an 8-bit optimizer (optim: paged_adamw_8bit), "
                "a smaller model, or a larger device."
            )
        steps = ["lower per_device_train_batch_size (raise gradient_accumulation_steps to keep the batch)"]
        if self.tokens_per_row:
            steps.append("lower max_length")
        if not self.checkpointing:
            steps.append("turn on gradient_checkpointing")
        advice = "Per-step memory is the excess: " + ", ".join(steps) + "."
        if self.tokens_per_row:
            advice += (
                f" Planned for rows of {self.tokens_per_row} tokens; if your longest batch is shorter, plan with "
                "--sequence_length."
            )
        return advice

    def format(self) -> str:
        width = max(len(i.component) for i in self.items + [Item("component", 0)])
        lines = [f"== {self.stage}" + (f": {self.config_path}" if self.config_path else "") + " =="]
        lines += [f"model     {m}" for m in self.models]
        if self.precision:
            lines.append(f"precision {self.precision}")
        lines.append(f"setup     {self.setup}")
        lines.append(f"  {'component'.ljust(width)}  {'GiB':>7}")
        lines.append(f"  {'-' * width}  {'-' * 7}")
        for item in self.items:
            note = f"  {item.note}" if item.note else ""
            lines.append(f"  {item.component.ljust(width)}  {item.bytes / GIB:7.2f}{note}")
        lines.append(f"  {'-' * width}  {'-' * 7}")
        lines.append(f"  {'total (estimated peak)'.ljust(width)}  {self.total / GIB:7.2f}")
        lines.append(f"device    {self.device.label}")
        lines += [f"note      {n}" for n in self.notes]
        if self.fits is False:
            lines.append(
                f"WARNING: {self.stage} needs ~{self.total / GIB:.1f} GiB but the device has "
                f"{self.device.capacity / GIB:.1f} GiB: it will not fit. {self.advice()}"
            )
        elif self.fits:
            lines.append(
                f"fits: ~{self.total / GIB:.1f} of {self.device.capacity / GIB:.1f} GiB "
                f"({100 * self.total / self.device.capacity:.0f}%)"
            )
        return "\n".join(lines)
