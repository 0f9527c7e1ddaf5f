"""The memory of one model taking part in a stage: weights in their dtype or 4/8-bit, what trains (LoRA or every
weight) with its gradients and optimizer state, autocast copies, and the activations autograd keeps per token.

The precision is the one the loader resolved for the run (`precision.py`): `training_args.bf16` / `fp16` say whether
autocast runs, `model_args.dtype` (with `dtype: compute` already replaced) what the unquantized weights are stored in.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from .shapes import ModelShape

DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "float64": 8}
# bitsandbytes NF4/FP4: two 4-bit values per byte plus one absmax per 64-value block: float32 (4 bytes / 64), or with
# double quantization (`use_bnb_nested_quant`) one byte per block plus one float32 per 256 blocks.
NF4_BYTES_PER_PARAM = 0.5 + 4 / 64
NF4_NESTED_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)
# LLM.int8: one byte per weight plus a float32 scale per output row (negligible).
INT8_BYTES_PER_PARAM = 1.0


def _dtype_name(value) -> str:
    return str(value).removeprefix("torch.") if value is not None else "float32"


def weight_dtype(model_args, shape: ModelShape) -> str:
    """The dtype `from_pretrained(dtype=...)` gives the unquantized weights: `auto` means the checkpoint's own."""
    dtype = model_args.dtype
    if dtype in (None, "auto"):
        dtype = _dtype_name(getattr(shape.config, "dtype", None) or getattr(shape.config, "torch_dtype", None))
    if dtype not in DTYPE_BYTES:
        raise UserError(f"dtype: {dtype} is not one the planner knows; use float32, bfloat16 or float16.")
    return dtype


def optimizer_bytes_per_param(optim, param_bytes: int) -> tuple[float, str]:
    """Optimizer state per trainable parameter: torch's AdamW keeps two states in the parameter's dtype."""
    name = str(getattr(optim, "value", optim)).lower()
    if "8bit" in name:
        states = 1 if "lion" in name else 2
        return states * 1.0, f"{name}: {states} state(s), 8-bit"
    if "4bit" in name:
        return 1.0, f"{name}: 2 4-bit states"
    if name.startswith("sgd"):
        return 0.0, f"{name}: no state"
    if "adafactor" in name:
        return 0.1 * param_bytes, f"{name}: factored second moment (~0.1 state)"
    if "lion" in name:
        return float(param_bytes), f"{name}: 1 state"
    if "32bit" in name:
        return 8.0, f"{name}: 2 float32 states"
    return 2.0 * param_bytes, f"{name}: 2 states in the weights' dtype"


def lora_linears(model_args, shape: ModelShape) -> list[tuple[str, int, int]]:
    """The Linear layers LoRA wraps: names ending with a target (peft's suffix match), `all-linear` = all but heads."""
    targets = model_args.lora_target_modules
    if targets is None:
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

        targets = defaults.get(getattr(shape.config, "model_type", ""), ["q_proj", "v_proj"])
    if targets == "all-linear" or targets == ["all-linear"]:
        return shape.layer_linears
    targets = [targets] if isinstance(targets, str) else list(targets)
    return [(n, i, o) for n, i, o in shape.linears if any(n == t or n.endswith("." + t) for t in targets)]


def quantization(model_args) -> str | None:
    return "4bit" if model_args.load_in_4bit else ("8bit" if model_args.load_in_8bit else None)


@dataclass
class Footprint:
    """How one model takes part in a stage: its dtype, quantization, what trains and in what compute dtype."""

    shape: ModelShape
    weight_dtype: str
    quant: str | None  # "4bit", "8bit" or None
    nested_quant: bool
    trainable: str  # "lora", "full" or "frozen"
    lora_linears: list[tuple[str, int, int]]
    lora_r: int
    compute_bytes: int
    mixed_precision: bool  # float32 weights computed in bf16/fp16 (autocast)
    checkpointing: bool
    score_head_trains: bool = False  # a new score head (reward model) or the value model's head

    @classmethod
    def of(cls, model_args, training_args, shape, *, trainable, quant, autocast=True, score_head_trains=False):
        """`autocast=False` for a trainer that never enables mixed precision whatever `bf16` says."""
        dtype = weight_dtype(model_args, shape)
        mixed = autocast and bool(training_args.bf16 or training_args.fp16)
        if quant:
            compute = 2 if dtype in ("bfloat16", "float16") else 4  # bnb_4bit_compute_dtype = dtype
            mixed = False
        else:
            mixed = mixed and dtype == "float32"
            compute = 2 if mixed or dtype in ("bfloat16", "float16") else 4
        return cls(
            shape=shape,
            weight_dtype=dtype,
            quant=quant,
            nested_quant=bool(getattr(model_args, "use_bnb_nested_quant", False)),
            trainable=trainable,
            lora_linears=lora_linears(model_args, shape) if trainable == "lora" else [],
            lora_r=model_args.lora_r,
            compute_bytes=compute,
            mixed_precision=mixed,
            checkpointing=bool(training_args.gradient_checkpointing),
            score_head_trains=score_head_trains,
        )

    @property
    def weight_bytes(self) -> int:
        return DTYPE_BYTES[self.weight_dtype]

    @property
    def residual_bytes(self) -> int:
        """The residual stream between layers: float32 with float32 weights (autocast or not), else the compute dtype."""
        return 4 if self.weight_bytes == 4 or self.mixed_precision else self.compute_bytes

    @property
    def precision(self) -> str:
        """The weights' storage, short: "4-bit linears", "bfloat16", ..."""
        return {"4bit": "4-bit linears", "8bit": "8-bit linears"}.get(self.quant or "", self.weight_dtype)

    def describe(self, role: str) -> str:
        s = self.shape
        storage = {"4bit": "4-bit NF4", "8bit": "8-bit"}.get(self.quant or "", self.weight_dtype)
        return f"{role}: {s.name} ({s.architecture}, {s.params / 1e6:,.1f}M params, {storage}; config: {s.source})"

    def weights(self) -> float:
        other = self.shape.params - self.shape.linear_params
        if self.quant == "4bit":
            per = NF4_NESTED_BYTES_PER_PARAM if self.nested_quant else NF4_BYTES_PER_PARAM
            return self.shape.linear_params * per + other * self.weight_bytes
        if self.quant == "8bit":
            return self.shape.linear_params * INT8_BYTES_PER_PARAM + other * self.weight_bytes
        return self.shape.params * self.weight_bytes

    def trainable_params(self) -> int:
        if self.trainable == "full":
            return self.shape.params
        if self.trainable == "lora":
            count = sum(self.lora_r * (fan_in + fan_out) for _, fan_in, fan_out in self.lora_linears)
            if self.score_head_trains:
                count += self.shape.hidden  # score: hidden x 1
            return count
        return 0

    def trainable_param_bytes(self) -> int:
        """peft keeps LoRA matrices in float32 (autocast_adapter_dtype); TRL casts them to bf16 on a 4/8-bit base."""
        if self.trainable == "full":
            return self.weight_bytes
        return 2 if self.quant and self.weight_bytes == 2 else 4

    def frozen_weight_copies(self) -> float:
        """Compute-dtype copies of float32 Linear weights made by autocast and kept for backward (frozen weights are
        saved by each matmul; trainable ones are cached by autocast for the step). One layer's worth when
        checkpointing recomputes layers one at a time. None without autocast (bf16 resolved false)."""
        if not self.mixed_precision or self.quant:
            return 0.0
        total = self.shape.linear_params * self.compute_bytes
        return total / self.shape.layers if self.checkpointing else total

    def saved_per_token_per_layer(self, padded: bool) -> float:
        """Bytes autograd keeps per token in one decoder layer (checked against saved_tensors_hooks: 27.1 KB
        predicted vs 27.5 KB counted for SmolLM2-135M, LoRA on all 7 projections, bf16 autocast)."""
        s = self.shape
        c = self.compute_bytes
        q_dim, kv_dim = s.heads * s.head_dim, s.kv_heads * s.head_dim
        norms = 2 * 4 * s.hidden  # RMSNorm upcasts its input to float32 and keeps it (both norms of the layer)
        # sdpa keeps q, k, v, the output and a float32 logsumexp per head; with a padding mask transformers repeats
        # k and v to all heads and sdpa keeps the mask (one element per key position)
        kv_kept = q_dim if padded else kv_dim
        attention = c * (2 * q_dim + 2 * kv_kept) + 4 * s.heads
        mlp = 3 * c * s.intermediate  # gated MLP: gate output, activation output and up output
        trainable_inputs = 0.0
        # each trainable Linear keeps its own compute-dtype copy of its input (and LoRA its rank-r intermediate)
        if self.trainable == "full":
            trainable_inputs = sum(c * fan_in for _, fan_in, _ in s.layer_linears) / s.layers
        elif self.trainable == "lora":
            wrapped = {name for name, _, _ in self.lora_linears}
            inputs = [fan_in for name, fan_in, _ in s.layer_linears if name in wrapped]
            trainable_inputs = sum(c * (fan_in + self.lora_r) for fan_in in inputs) / s.layers
        return norms + attention + mlp + trainable_inputs

    def activations(self, batch: int, seq: int, padded: bool) -> float:
        tokens = batch * seq
        s = self.shape
        mask = self.compute_bytes * seq if padded else 0  # (batch, 1, seq, seq) mask kept by every layer
        one_layer = tokens * (self.saved_per_token_per_layer(padded) + mask)
        final = tokens * 4 * s.hidden  # the final norm's float32 input
        if self.checkpointing:
            kept = s.layers * tokens * self.residual_bytes * s.hidden  # each layer's input
            # one layer is rebuilt at a time, and its backward needs gradients of the same size
            return kept + 2 * one_layer + final
        return s.layers * one_layer + final

    def largest_linear(self) -> int:
        """Elements of the largest quantized Linear (dequantized one at a time for each matmul)."""
        return max((fan_in * fan_out for _, fan_in, fan_out in self.shape.layer_linears), default=0)
