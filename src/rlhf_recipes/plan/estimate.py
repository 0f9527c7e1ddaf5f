"""Will it fit? Peak memory of a training stage, estimated from its config before anything is loaded.

The estimate reads what the recipe would read: the stage's YAML through the same dataclasses (ScriptArguments +
SFTConfig / RewardConfig / PPOConfig + ModelConfig, so defaults and unknown-key checks are the recipes' own) and the
model's `config.json`. Parameter shapes come from building the model on PyTorch's `meta` device: no memory, no
weights, exact for any architecture transformers knows. Everything else is arithmetic on those shapes:

- weights: bytes per parameter of the configured dtype; 4-bit NF4 for the linear layers with `load_in_4bit`
  (embeddings, `lm_head` and the score head stay unquantized, as transformers leaves them);
- what trains: LoRA matrices (or every weight) with their gradients and optimizer states;
- activations the backward pass keeps, per layer and token (or only each layer's input with gradient
  checkpointing), for the largest batch the config allows: `max_length` tokens per row (twice for reward pairs);
- logits and cross-entropy; PPO adds generation (KV cache, the kept generation scores) and its four models;
- the device: CUDA context on GPUs; the Python process itself and glibc's allocator on CPU.

Calibration (CPU, embedded SmolLM2-135M-Instruct) lives in bench/memory.py, which compares these numbers with the
peak RSS of real runs of every stage. GPU numbers follow the same arithmetic but were not measured here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..cli import UserError

GIB = 2**30
KNOWN_MODELS = Path(__file__).resolve().parents[1] / "assets" / "known_models"
RECIPES = Path(__file__).resolve().parents[2] / "recipes"  # the source checkout's recipes (not in a wheel)
TRAINING_STAGES = ("cpt", "sft", "reward", "ppo")

# --- Constants, each with what it is and where its value comes from --------------------------------------------------

# RSS of a recipe process at its first training step, before any model weight page is touched: Python, torch,
# transformers, trl, peft and datasets imported, tokenizer and dataset loaded. Measured with a 20 ms /proc/self/status
# sampler inside recipes/cpt.py, sft.py and reward.py on this project's venv: 1,015-1,027 MB = 0.945-0.956 GiB.
CPU_PROCESS_BASELINE = 0.95 * GIB
# glibc's malloc keeps freed per-layer temporaries (float32 casts of LoRA inputs, RMSNorm and RoPE intermediates,
# attention workspaces) as fragmented heap that later steps cannot fully reuse, so a CPU run's steady-state RSS for
# per-step memory (activations, logits, bf16 weight copies) is a multiple of the bytes autograd holds at once (those
# bytes are what saved_per_token_per_layer counts; it matches torch.autograd.graph.saved_tensors_hooks). The multiple,
# (peak RSS - process - weights - trainable state) / per-step bytes, in bench/results/memory.json: cpt 1.57, sft 1.40,
# reward 1.63, ppo 1.59 (held out: 1.50-1.67 for other batch sizes and lengths; 0.98 for a full fine-tune, whose
# optimizer state reuses those fragments; 2.0 with gradient checkpointing, which churns more). 1.6 is the middle.
CPU_STEP_MEMORY_FACTOR = 1.6
# What the CUDA driver and kernels take before the first tensor (nvidia-smi shows it; torch's allocator does not).
# 0.3-0.6 GiB on recent GPUs and CUDA 12 with lazy module loading; 0.5 GiB is the conservative middle. Not measured
# here (no GPU on the development machine).
CUDA_CONTEXT = 0.5 * GIB
# PyTorch's caching allocator rounds and splits blocks; reserved memory runs 5-20% above allocated in training loops.
# Applied to per-step memory like the CPU factor. An assumption, not a measurement from this project.
CUDA_STEP_MEMORY_FACTOR = 1.15
# TRL 1.12 SFTTrainer's default `loss_type: chunked_nll` computes lm_head + cross-entropy 256 tokens at a time
# (trl.trainer.sft_trainer._CHUNKED_LM_HEAD_CHUNK_SIZE); logits for a chunk: compute-dtype output, float32 upcast,
# log-softmax and its gradient.
CHUNKED_CE_TOKENS = 256
# bitsandbytes NF4/FP4: two 4-bit values per byte plus one absmax per 64-value block: float32 (4 bytes / 64), or with
# double quantization (`use_bnb_nested_quant`) one byte per block plus one float32 per 256 blocks.
NF4_BYTES_PER_PARAM = 0.5 + 4 / 64
NF4_NESTED_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)
# LLM.int8: one byte per weight plus a float32 scale per output row (negligible).
INT8_BYTES_PER_PARAM = 1.0
# PPO prompts have no length key: without `--prompt_length`, local prompt files are measured in characters, at 3
# characters per token (English BPE averages ~4: 3 errs on the long side) plus the chat template's own tokens
# (role markers, a default system prompt: 20 tokens on SmolLM2, ~20 on Qwen2.5), and Hub data sets get 256.
CHARS_PER_TOKEN = 3
TEMPLATE_TOKENS = 32
TEMPLATE_TOKENS_PER_MESSAGE = 6
DEFAULT_PROMPT_TOKENS = 256

DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "float64": 8}


# --- Devices ---------------------------------------------------------------------------------------------------------


def _parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*([0-9.]+)\s*(gib|gb|mib|mb|tib|tb)?\s*", text.lower())
    if not match:
        raise UserError(f"cannot read memory size '{text}'; write it like 24GiB, 24GB or 16000MiB.")
    number, unit = float(match.group(1)), match.group(2) or "gib"
    scale = {"gib": GIB, "gb": 10**9, "mib": 2**20, "mb": 10**6, "tib": 2**40, "tb": 10**12}[unit]
    return int(number * scale)


def _meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes (psutil is not a dependency)."""
    values = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                values[key] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    except OSError:
        pass
    return values


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
        info = _meminfo()
        available = info.get("MemAvailable")
        total = info.get("MemTotal")
        if available is None:
            return cls("cpu", None, "CPU, RAM unknown (no /proc/meminfo)")
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
            capacity = _parse_size(size) if size else None
            return cls.cpu(capacity) if kind == "cpu" else cls.cuda(capacity)
        raise UserError(f"unknown --device '{spec}'; use auto, cpu, cpu:64GiB, cuda or cuda:24GiB.")


# --- Models ----------------------------------------------------------------------------------------------------------


@dataclass
class ModelShape:
    """What the plan needs to know about one model, from its config alone."""

    name: str
    source: str  # where the config came from, for the table
    config: object  # transformers PretrainedConfig
    architecture: str
    head: str  # "causal_lm" or "reward_model"
    params: int  # all parameters (tied ones once)
    linear_params: int  # weights of the Linear layers that 4-bit/8-bit loading quantizes
    linears: list[tuple[str, int, int]]  # (module name, in_features, out_features) of every Linear
    skipped_linears: set[str]  # not quantized: output embeddings, the last module, tied weights
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @property
    def layer_linears(self) -> list[tuple[str, int, int]]:
        return [item for item in self.linears if item[0] not in self.skipped_linears]


def _known_model_file(name: str) -> Path:
    return KNOWN_MODELS / (name.replace("embedded:", "embedded--").replace("/", "--") + ".json")


def _config_from_dict(values: dict):
    from transformers import AutoConfig

    values = {k: v for k, v in values.items() if k not in ("transformers_version",)}
    return AutoConfig.for_model(**values)


def _load_config(name: str, outputs: dict[str, str] | None = None, depth: int = 0) -> tuple[object, str]:
    """(transformers config, where it came from) for a model name as a recipe would receive it; no weights read."""
    from ..models import EMBEDDED_PREFIX, adapter_base, cache_dir

    if depth > 10:
        raise UserError(f"{name}: adapter folders refer to each other in a loop; check their lineage.json.")
    outputs = outputs or {}
    if name.startswith(EMBEDDED_PREFIX):
        converted = cache_dir() / "embedded" / name.removeprefix(EMBEDDED_PREFIX) / "config.json"
        if converted.is_file():
            return _config_from_dict(json.loads(converted.read_text())), f"{converted}"
        shipped = _known_model_file(name)
        if shipped.is_file():
            return _config_from_dict(json.loads(shipped.read_text())), "shipped copy (the GGUF is not converted yet)"
        raise UserError(f"unknown embedded model '{name}'; the planner knows {EMBEDDED_PREFIX}SmolLM2-135M-Instruct.")
    folder = Path(name)
    if folder.is_dir():
        if (folder / "adapter_config.json").is_file():  # an earlier stage's output: its base model's architecture
            config, source = _load_config(adapter_base(folder), outputs, depth + 1)
            return config, source if "; base model of " in source else f"{source}; base model of {name}"
        if (folder / "config.json").is_file():
            return _config_from_dict(json.loads((folder / "config.json").read_text())), f"{folder}/config.json"
        raise UserError(f"{name} has neither config.json nor adapter_config.json; pass a model folder or a Hub id.")
    key = os.path.normpath(name)
    if key in outputs:  # an earlier stage's output that does not exist yet: the model that stage starts from
        config, source = _load_config(outputs[key], outputs, depth + 1)
        return config, source if "; base model of " in source else f"{source}; base model of {name} (not written yet)"
    if folder.is_absolute() or name.startswith((".", "~")) or name.count("/") != 1:
        raise UserError(
            f"model {name} does not exist yet and is no Hub id, and no stage config next to this one writes it; run "
            "the stage that writes it first, or plan the whole pipeline YAML so that the planner follows the stages."
        )
    return _hub_config(name)


def _hub_config(model_id: str) -> tuple[object, str]:
    """A Hub model's config: the local Hub cache, else the copy shipped here, else a download (when online)."""
    from huggingface_hub import constants
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_id, local_files_only=True), "Hugging Face Hub cache"
    except (OSError, ValueError):
        pass
    shipped = _known_model_file(model_id)
    if shipped.is_file():
        return _config_from_dict(json.loads(shipped.read_text())), f"shipped copy of {model_id}/config.json, offline"
    if not constants.HF_HUB_OFFLINE:
        try:
            return AutoConfig.from_pretrained(model_id), "Hugging Face Hub"
        except (OSError, ValueError) as error:
            raise UserError(
                f"cannot read the config of {model_id} from the Hub: {str(error).splitlines()[0]}"
            ) from None
    raise UserError(
        f"no config for {model_id}: it is not in the Hub cache and HF_HUB_OFFLINE is set; run once online or pass "
        "a local model folder."
    )


@functools.lru_cache(maxsize=32)
def _shape_from_config_json(config_json: str, head: str) -> tuple:
    """Parameter counts from the model built on the `meta` device (cached: building takes ~2 s the first time)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    config = _config_from_dict(json.loads(config_json))
    if head == "reward_model":
        config.num_labels = 1
    with _quiet(), torch.device("meta"):
        model_class = AutoModelForSequenceClassification if head == "reward_model" else AutoModelForCausalLM
        model = model_class.from_config(config)
    linears = [(n, m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    skipped = set()
    output = model.get_output_embeddings()
    for module_name, module in model.named_modules():
        if output is not None and module is output:
            skipped.add(module_name)
    skipped.add(list(model.named_parameters())[-1][0].rsplit(".", 1)[0])  # the last module (a score head)
    for tied in getattr(model, "all_tied_weights_keys", {}) or {}:
        skipped.add(tied.removesuffix(".weight"))
    params = sum(p.numel() for p in model.parameters())
    linear_params = sum(i * o for n, i, o in linears if n not in skipped)
    return type(model).__name__, params, linear_params, tuple(linears), frozenset(skipped)


def model_shape(name: str, head: str = "causal_lm", outputs: dict[str, str] | None = None) -> ModelShape:
    config, source = _load_config(name, outputs)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    architecture, params, linear_params, linears, skipped = _shape_from_config_json(
        json.dumps(config.to_dict(), sort_keys=True, default=str), head
    )
    heads = text.num_attention_heads
    return ModelShape(
        name=name,
        source=source,
        config=config,
        architecture=architecture,
        head=head,
        params=params,
        linear_params=linear_params,
        linears=list(linears),
        skipped_linears=set(skipped),
        layers=text.num_hidden_layers,
        hidden=text.hidden_size,
        intermediate=getattr(text, "intermediate_size", None) or 4 * text.hidden_size,
        heads=heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
        vocab=text.vocab_size,
    )


# --- The plan --------------------------------------------------------------------------------------------------------


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
            "setup": self.setup,
            "items": [{"component": i.component, "gib": round(i.bytes / GIB, 3), "note": i.note} for i in self.items],
            "notes": self.notes,
        }

    def advice(self) -> str:
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
        lines += [f"model  {m}" for m in self.models]
        lines.append(f"setup  {self.setup}")
        lines.append(f"  {'component'.ljust(width)}  {'GiB':>7}")
        lines.append(f"  {'-' * width}  {'-' * 7}")
        for item in self.items:
            note = f"  {item.note}" if item.note else ""
            lines.append(f"  {item.component.ljust(width)}  {item.bytes / GIB:7.2f}{note}")
        lines.append(f"  {'-' * width}  {'-' * 7}")
        lines.append(f"  {'total (estimated peak)'.ljust(width)}  {self.total / GIB:7.2f}")
        lines.append(f"device {self.device.label}")
        lines += [f"note   {n}" for n in self.notes]
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


def _dtype_name(value) -> str:
    return str(value).removeprefix("torch.") if value is not None else "float32"


def _weight_dtype(model_args, shape: ModelShape) -> str:
    """The dtype `from_pretrained(dtype=...)` gives the unquantized weights: `auto` means the checkpoint's own."""
    dtype = model_args.dtype
    if dtype in (None, "auto"):
        dtype = _dtype_name(getattr(shape.config, "dtype", None) or getattr(shape.config, "torch_dtype", None))
    if dtype not in DTYPE_BYTES:
        raise UserError(f"dtype: {dtype} is not one the planner knows; use float32, bfloat16 or float16.")
    return dtype


def _optimizer_bytes_per_param(optim: str, param_bytes: int) -> tuple[float, str]:
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


def _target_names(model_args, shape: ModelShape) -> list[str] | str:
    targets = model_args.lora_target_modules
    if targets is None:
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

        targets = defaults.get(getattr(shape.config, "model_type", ""), ["q_proj", "v_proj"])
    return targets


def _lora_linears(model_args, shape: ModelShape) -> list[tuple[str, int, int]]:
    """The Linear layers LoRA wraps: names ending with a target (peft's suffix match), `all-linear` = all but heads."""
    targets = _target_names(model_args, shape)
    if targets == "all-linear" or targets == ["all-linear"]:
        return shape.layer_linears
    targets = [targets] if isinstance(targets, str) else list(targets)
    chosen = []
    for name, fan_in, fan_out in shape.linears:
        if any(name == t or name.endswith("." + t) for t in targets):
            chosen.append((name, fan_in, fan_out))
    return chosen


@dataclass
class _Training:
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

    @property
    def weight_bytes(self) -> int:
        return DTYPE_BYTES[self.weight_dtype]

    @property
    def residual_bytes(self) -> int:
        """The residual stream between layers: float32 with float32 weights (autocast or not), else the compute dtype."""
        return 4 if self.weight_bytes == 4 or self.mixed_precision else self.compute_bytes

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
        checkpointing recomputes layers one at a time."""
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


def _training(model_args, training_args, shape, device, *, trainable, quant, stage, score_head_trains=False):
    weight_dtype = _weight_dtype(model_args, shape)
    wants_mixed = bool(training_args.bf16 or training_args.fp16)
    # PPOTrainer's own Accelerator never enables mixed precision; this project's subclass adds bf16 autocast on CPU only
    autocast = wants_mixed and (stage != "ppo" or device.kind == "cpu")
    if quant:
        compute = 2 if weight_dtype in ("bfloat16", "float16") else 4  # bnb_4bit_compute_dtype = dtype
        mixed = False
    else:
        mixed = autocast and weight_dtype == "float32"
        compute = 2 if mixed or weight_dtype in ("bfloat16", "float16") else 4
    return _Training(
        shape=shape,
        weight_dtype=weight_dtype,
        quant=quant,
        nested_quant=bool(getattr(model_args, "use_bnb_nested_quant", False)),
        trainable=trainable,
        lora_linears=_lora_linears(model_args, shape) if trainable == "lora" else [],
        lora_r=model_args.lora_r,
        compute_bytes=compute,
        mixed_precision=mixed,
        checkpointing=bool(training_args.gradient_checkpointing),
        score_head_trains=score_head_trains,
    )


def _quant(model_args) -> str | None:
    return "4bit" if model_args.load_in_4bit else ("8bit" if model_args.load_in_8bit else None)


def _precision(training: _Training) -> str:
    return {"4bit": "4-bit linears", "8bit": "8-bit linears"}.get(training.quant or "", training.weight_dtype)


def _describe(training: _Training, role: str) -> str:
    s = training.shape
    precision = {"4bit": "4-bit NF4", "8bit": "8-bit"}.get(training.quant or "", training.weight_dtype)
    return f"{role}: {s.name} ({s.architecture}, {s.params / 1e6:,.1f}M params, {precision}; config: {s.source})"


def _gib(value: float) -> str:
    return f"{value / GIB:.2f} GiB"


def _base_items(plan: StagePlan, device: Device) -> None:
    if device.kind == "cpu":
        plan.items.append(
            Item("process (Python, torch, transformers, trl; data)", CPU_PROCESS_BASELINE, "measured", True)
        )
    else:
        plan.items.append(Item("CUDA context", CUDA_CONTEXT, "driver + kernels", True))


def _trainable_items(plan: StagePlan, training: _Training, optim, role: str) -> None:
    count = training.trainable_params()
    if not count:
        return
    param_bytes = training.trainable_param_bytes()
    optimizer_bytes, optimizer_note = _optimizer_bytes_per_param(optim, param_bytes)
    role = f"{role} " if role else ""
    if training.trainable == "lora":  # the LoRA matrices are new memory; a full fine-tune's are the weights above
        plan.items.append(
            Item(f"{role}LoRA weights + gradients", 2 * count * param_bytes, f"{count / 1e6:,.1f}M params", True)
        )
    else:
        plan.items.append(
            Item(f"{role}gradients (every weight)", count * param_bytes, f"{count / 1e6:,.1f}M params", True)
        )
    plan.items.append(Item(f"{role}optimizer state", count * optimizer_bytes, optimizer_note, True))


def _step_overhead(plan: StagePlan, device: Device, step_bytes: float) -> None:
    factor = CPU_STEP_MEMORY_FACTOR if device.kind == "cpu" else CUDA_STEP_MEMORY_FACTOR
    what = "glibc heap fragments" if device.kind == "cpu" else "caching allocator"
    plan.items.append(Item(f"allocator overhead on per-step memory ({what})", (factor - 1) * step_bytes, f"x{factor}"))


def _sequence(training_args, stage: str, sequence_length: int | None) -> tuple[int, str]:
    if sequence_length:
        return sequence_length, "given"
    max_length = getattr(training_args, "max_length", None)
    if not max_length:
        raise UserError(f"{stage} has no max_length, so its longest batch is unbounded; set max_length in the YAML.")
    return max_length, "max_length"


def _plan_lm_stage(stage, training_args, model_args, model_name, device, outputs, sequence_length) -> StagePlan:
    """cpt, sft and reward: one model, trained with LoRA (or fully) on batches of at most max_length tokens."""
    head = "reward_model" if stage == "reward" else "causal_lm"
    shape = model_shape(model_name, head, outputs)
    trainable = "lora" if model_args.use_peft else "full"
    training = _training(
        model_args,
        training_args,
        shape,
        device,
        trainable=trainable,
        quant=_quant(model_args),
        stage=stage,
        score_head_trains=stage == "reward",
    )
    seq, seq_source = _sequence(training_args, stage, sequence_length)
    rows = training_args.per_device_train_batch_size * (2 if stage == "reward" else 1)  # chosen + rejected
    # Only `wrapped` packing gives rows without a mask; padded rows and `bfd` packing (padding-free, documents kept
    # apart by position ids) give sdpa a mask, and transformers then repeats k and v to every attention head
    wrapped = getattr(training_args, "packing", False) and getattr(training_args, "packing_strategy", "") == "wrapped"
    padded = stage == "reward" or not wrapped
    plan = StagePlan(
        stage=stage, config_path=None, device=device, tokens_per_row=seq, checkpointing=training.checkpointing
    )
    plan.models.append(_describe(training, "model"))
    what = (
        f"LoRA r={model_args.lora_r} on {len(training.lora_linears)} Linear layers"
        if trainable == "lora"
        else "full fine-tune"
    )
    precision = f"{training.weight_dtype} weights" + (", bf16/fp16 autocast" if training.mixed_precision else "")
    if training.quant:
        precision = f"{training.quant.replace('bit', '-bit')} base, {training.weight_dtype} compute"
    plan.setup = (
        f"{what}; {precision}; batch {rows} x {seq} tokens ({seq_source}"
        + (", pairs" if stage == "reward" else "")
        + f"); gradient checkpointing {'on' if training.checkpointing else 'off'}"
    )
    _base_items(plan, device)
    plan.items.append(Item("weights", training.weights(), _precision(training), True))
    _trainable_items(plan, training, training_args.optim, "")
    copies = training.frozen_weight_copies()
    if copies:
        plan.items.append(Item("bf16/fp16 copies of float32 weights (autocast)", copies, "held until backward"))
    if training.quant:
        largest = max((fan_in * fan_out for _, fan_in, fan_out in shape.layer_linears), default=0)
        copies = largest * training.compute_bytes
        plan.items.append(
            Item(
                f"{training.quant.replace('bit', '-bit')} dequantization buffer",
                copies,
                "largest linear, one at a time",
            )
        )
    activations = training.activations(rows, seq, padded)
    plan.items.append(
        Item(
            f"activations ({rows} x {seq} tokens, {shape.layers} layers)",
            activations,
            "checkpointed" if training.checkpointing else "",
        )
    )
    c = training.compute_bytes
    if stage == "reward":
        logits = rows * seq * 4  # one score per token
        label = "scores (one per token)"
    elif getattr(training_args, "loss_type", None) == "chunked_nll" and not getattr(
        training_args, "use_liger_kernel", False
    ):
        logits = min(CHUNKED_CE_TOKENS, rows * seq) * shape.vocab * (c + 4 + 4 + 4)
        label = f"logits + cross-entropy (chunks of {CHUNKED_CE_TOKENS} tokens)"
    else:
        logits = rows * seq * shape.vocab * (c + 4 + 4 + 4)
        label = f"logits + cross-entropy ({rows} x {seq} x {shape.vocab} vocab)"
    plan.items.append(Item(label, logits, ""))
    _step_overhead(plan, device, activations + logits + copies)
    return plan


def prompt_length(script_args, given: int | None = None) -> tuple[int, str]:
    """Tokens in the longest PPO prompt: given, estimated from a local data folder's characters, or a default."""
    if given:
        return given, "given"
    folder = Path(script_args.dataset_name or "")
    files = []
    if folder.is_dir():
        split = script_args.dataset_train_split
        files = sorted(folder.glob(f"{split}*.jsonl")) + sorted(folder.glob(f"{split}*.json"))
    elif folder.is_file() and folder.suffix in (".json", ".jsonl"):
        files = [folder]
    longest = 0
    for file in files:
        text = file.read_text()
        rows = (
            [json.loads(line) for line in text.splitlines() if line.strip()]
            if file.suffix == ".jsonl"
            else json.loads(text)
        )
        for row in rows if isinstance(rows, list) else []:
            prompt = row.get("prompt", "") if isinstance(row, dict) else ""
            messages = prompt if isinstance(prompt, list) else [{"content": str(prompt)}]
            chars = sum(len(str(m.get("content", ""))) for m in messages if isinstance(m, dict))
            tokens = math.ceil(chars / CHARS_PER_TOKEN) + TEMPLATE_TOKENS + TEMPLATE_TOKENS_PER_MESSAGE * len(messages)
            longest = max(longest, tokens)
    if longest:
        return longest, f"longest prompt in {folder}, ~{CHARS_PER_TOKEN} chars/token + template"
    return DEFAULT_PROMPT_TOKENS, "assumed; pass --prompt_length"


def _value_trains_with_lora(model_args, training_args) -> bool:
    """The project's PPOConfig (with `value_model_load_in_4bit`) trains the value model through LoRA under use_peft;
    TRL's own PPOConfig trains every value-model weight."""
    return bool(model_args.use_peft) and any(
        f.name == "value_model_load_in_4bit" for f in dataclasses.fields(training_args)
    )


def _plan_ppo(training_args, model_args, script_args, device, outputs, prompt_tokens) -> StagePlan:
    policy_shape = model_shape(model_args.model_name_or_path, "causal_lm", outputs)
    reward_shape = model_shape(training_args.reward_model_path, "reward_model", outputs)
    peft = bool(model_args.use_peft)
    policy = _training(
        model_args,
        training_args,
        policy_shape,
        device,
        trainable="lora" if peft else "full",
        quant=_quant(model_args),
        stage="ppo",
    )
    value_lora = _value_trains_with_lora(model_args, training_args)
    value_4bit = bool(getattr(training_args, "value_model_load_in_4bit", False))
    reward_4bit = bool(getattr(training_args, "reward_model_load_in_4bit", False))
    value = _training(
        model_args,
        training_args,
        reward_shape,
        device,
        trainable="lora" if value_lora else "full",
        quant="4bit" if value_4bit else None,
        stage="ppo",
        score_head_trains=True,
    )
    reward = _training(
        model_args,
        training_args,
        reward_shape,
        device,
        trainable="frozen",
        quant="4bit" if reward_4bit else None,
        stage="ppo",
    )
    prompt, prompt_source = prompt_length(script_args, prompt_tokens)
    response = training_args.response_length
    seq = prompt + response
    micro = training_args.per_device_train_batch_size
    rollout = micro * training_args.gradient_accumulation_steps  # prompts answered per update, on each device
    generation_batch = min(rollout, training_args.local_rollout_forward_batch_size)
    s = policy_shape
    c = policy.compute_bytes

    plan = StagePlan(stage="ppo", config_path=None, device=device, checkpointing=policy.checkpointing)
    plan.models.append(_describe(policy, "policy"))
    plan.models.append(_describe(reward, "reward/value"))
    plan.setup = (
        f"policy {'LoRA r=' + str(model_args.lora_r) if peft else 'full fine-tune'}, value "
        f"{'LoRA' if value_lora else 'full fine-tune'}; {rollout} prompts per update, generated {generation_batch} at a "
        f"time; {prompt} prompt tokens ({prompt_source}) + {response} response tokens; train micro-batch {micro}; "
        f"gradient checkpointing {'on' if policy.checkpointing else 'off'}"
    )
    _base_items(plan, device)
    plan.items.append(Item("policy weights", policy.weights(), _precision(policy), True))
    if not peft:
        plan.items.append(Item("reference model weights (a frozen copy)", policy.weights(), "", True))
    else:
        plan.items.append(Item("reference model (policy with its adapter disabled)", 0.0, "no copy"))
    plan.items.append(Item("reward model weights", reward.weights(), _precision(reward), True))
    plan.items.append(Item("value model weights", value.weights(), _precision(value), True))
    _trainable_items(plan, policy, training_args.optim, "policy")
    _trainable_items(plan, value, training_args.optim, "value")
    copies = policy.frozen_weight_copies() + value.frozen_weight_copies()
    if copies:
        plan.items.append(Item("bf16/fp16 copies of float32 weights (autocast)", copies, "policy + value"))

    # Training phase: policy and value forward with autograd on a micro-batch; generation scores are still alive
    activations = policy.activations(micro, seq, padded=True) + value.activations(micro, seq, padded=True)
    # lm_head output over the whole sequence, then a log-softmax (kept for backward) over the response positions
    logits = micro * seq * s.vocab * c + micro * response * s.vocab * (c + 4)
    scores = rollout * response * s.vocab * 4  # generate(output_scores=True): float32, kept through the update
    # Rollout phase: KV cache of one generation batch, the scores (stacked, then padded: two copies), then no-grad
    # forwards of the reference/policy (logits for every position) and of value and reward models, which TRL runs
    # with output_hidden_states=True (every layer's output kept until the call returns)
    kv_cache = 2 * s.layers * generation_batch * s.kv_heads * s.head_dim * seq * c
    rollout_logits = generation_batch * seq * s.vocab * c
    hidden_states = (s.layers + 1) * generation_batch * seq * s.hidden * value.residual_bytes
    buffers = rollout * response * 4 * 10  # responses, log-probs, values, rewards, advantages, returns, masks...
    train_phase = activations + logits + scores
    rollout_phase = kv_cache + 2 * scores + rollout_logits + hidden_states
    if train_phase >= rollout_phase:
        plan.items.append(
            Item(
                f"activations, policy + value ({micro} x {seq} tokens)",
                activations,
                "checkpointed" if policy.checkpointing else "",
            )
        )
        plan.items.append(Item("policy logits + log-softmax", logits, f"{micro} x {seq} x {s.vocab}"))
        plan.items.append(
            Item("generation scores kept for the update", scores, f"{rollout} x {response} x {s.vocab} fp32")
        )
        plan.notes.append(f"rollout phase (generation) peaks lower: {_gib(rollout_phase)} of step memory")
        step = train_phase
    else:
        plan.items.append(Item(f"KV cache ({generation_batch} x {seq} tokens)", kv_cache, ""))
        plan.items.append(
            Item("generation scores (stacked + padded)", 2 * scores, f"{rollout} x {response} x {s.vocab} fp32")
        )
        plan.items.append(
            Item("rollout logits (reference pass)", rollout_logits, f"{generation_batch} x {seq} x {s.vocab}")
        )
        plan.items.append(Item("rollout hidden states (value, reward passes)", hidden_states, "every layer's output"))
        plan.notes.append(f"training phase peaks lower: {_gib(train_phase)} of step memory")
        step = rollout_phase
    plan.items.append(Item("rollout buffers", buffers, ""))
    dequant = 0.0
    if any(t.quant for t in (policy, value, reward)):
        largest = max((fan_in * fan_out for _, fan_in, fan_out in s.layer_linears), default=0)
        dequant = largest * c
        plan.items.append(Item("4-bit dequantization buffer", dequant, "largest linear, one at a time"))
    _step_overhead(plan, device, step + copies + dequant)
    return plan


def plan_stage(
    stage: str,
    script_args,
    training_args,
    model_args,
    device: Device | None = None,
    *,
    outputs: dict[str, str] | None = None,
    config_path: str | None = None,
    sequence_length: int | None = None,
    prompt_tokens: int | None = None,
) -> StagePlan:
    """The estimated peak memory of one training stage on one device (per process; DDP runs one per GPU)."""
    if stage not in TRAINING_STAGES:
        raise UserError(f"stage '{stage}' is not a training stage the planner knows ({', '.join(TRAINING_STAGES)}).")
    device = device or Device.parse("auto", use_cpu=bool(training_args.use_cpu))
    if not model_args.model_name_or_path:
        raise UserError(f"{config_path or stage}: model_name_or_path is not set.")
    if stage == "ppo":
        if not training_args.reward_model_path:
            raise UserError(f"{config_path or 'ppo'}: reward_model_path is not set.")
        from ..train import ppo

        if hasattr(ppo, "check_model_options"):  # the recipe's own refusals (e.g. a 4-bit value model without LoRA)
            ppo.check_model_options(training_args, model_args)
        plan = _plan_ppo(training_args, model_args, script_args, device, outputs, prompt_tokens)
    else:
        plan = _plan_lm_stage(
            stage, training_args, model_args, model_args.model_name_or_path, device, outputs, sequence_length
        )
    plan.config_path = config_path
    if plan.device.kind == "cpu" and not training_args.use_cpu:
        plan.notes.append("planned for CPU, but the config does not set use_cpu: true; a GPU would be used if present")
    return plan


# --- Configs ---------------------------------------------------------------------------------------------------------


def stage_of(config_path: str | Path) -> str:
    """Which stage a YAML configures: the recipe its header comment runs (the project's convention), else its keys."""
    path = Path(config_path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; pass an existing YAML file to --config.")
    text = path.read_text()
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        match = re.search(r"recipes/(\w+)\.py", line)
        if match:
            return match.group(1)
    import yaml

    try:
        keys = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise UserError(
            f"{path} is not valid YAML ({' '.join(str(error).split())}); fix the file and rerun."
        ) from None
    if not isinstance(keys, dict):
        raise UserError(f"{path} is not a mapping of keys to values.")
    if "stages" in keys:
        return "pipeline"
    if "reward_model_path" in keys or "response_length" in keys:
        return "ppo"
    if keys.get("lora_task_type") == "SEQ_CLS" or "center_rewards_coefficient" in keys:
        return "reward"
    if "assistant_only_loss" in keys:
        return "sft"
    if keys.get("packing") or keys.get("dataset_text_field"):
        return "cpt"
    if "max_length" in keys:
        return "sft"
    raise UserError(f"cannot tell which stage {path} configures; pass --stage cpt|sft|reward|ppo.")


def _recipe_config_types(recipe: Path) -> tuple | None:
    """The dataclasses a recipe passes to `cli.parse_config((...))`, resolved through its own `from X import Y` lines
    (the recipe itself is not imported: its imports are what it trains with, its config classes are all we need)."""
    import ast
    import importlib

    tree = ast.parse(recipe.read_text())
    sources = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                sources[alias.asname or alias.name] = (node.module, alias.name)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "parse_config"
            and node.args
            and isinstance(node.args[0], ast.Tuple | ast.List)
        ):
            names = [element.id for element in node.args[0].elts if isinstance(element, ast.Name)]
            if names and all(name in sources for name in names):
                return tuple(getattr(importlib.import_module(sources[n][0]), sources[n][1]) for n in names)
    return None


def config_types(stage: str, recipe: str | Path | None = None) -> tuple:
    """The (ScriptArguments, training config, ModelConfig) classes the stage's recipe parses its YAML with."""
    recipe = Path(recipe) if recipe else RECIPES / f"{stage}.py"
    if recipe.is_file():
        types = _recipe_config_types(recipe)
        if types:
            return types
    from trl import ModelConfig, ScriptArguments, SFTConfig

    if stage in ("cpt", "sft"):
        return ScriptArguments, SFTConfig, ModelConfig
    if stage == "reward":
        from ..train.reward import RewardConfig

        return ScriptArguments, RewardConfig, ModelConfig
    if stage == "ppo":
        from ..train.ppo import PPOConfig

        return ScriptArguments, PPOConfig, ModelConfig
    raise UserError(f"stage '{stage}' is not a training stage ({', '.join(TRAINING_STAGES)}).")


def sibling_outputs(config_path: str | Path) -> dict[str, str]:
    """`output_dir` -> `model_name_or_path` of the stage YAMLs next to a config, so that a stage whose input is an
    earlier stage's output folder (not written yet) is planned with the model that stage starts from."""
    import yaml

    outputs = {}
    for path in sorted(Path(config_path).parent.glob("*.yaml")):
        try:
            values = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(values, dict) and values.get("output_dir") and values.get("model_name_or_path"):
            outputs[os.path.normpath(str(values["output_dir"]))] = str(values["model_name_or_path"])
    return outputs


def parse_stage_config(stage: str, config_path: str, overrides=(), recipe: str | Path | None = None) -> tuple:
    """(script_args, training_args, model_args) exactly as the stage's recipe would parse them."""
    from ..cli import parse_config

    args = ["--config", str(config_path), *overrides]
    with _quiet():
        types = config_types(stage, recipe)
        try:
            return parse_config(types, args)
        except UserError as error:
            if "support bf16/gpu" not in str(error):
                raise
            # TrainingArguments refuses `bf16: true` for a GPU run on a machine without a bf16 GPU; planning such a
            # config elsewhere is the point, so parse it as a CPU run and put `use_cpu` back.
            parsed = parse_config(types, [*args, "--use_cpu", "true"])
            parsed[1].use_cpu = False
            return parsed


class _quiet:
    """Keep transformers' own chatter (bf16-on-CPU warnings while parsing, config dumps while building on `meta`) out
    of the planner's output: the plan is the output."""

    def __enter__(self):
        import logging
        import warnings

        from transformers.utils import logging as hf_logging

        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        self._verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        self._logger = logging.getLogger("transformers")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        from transformers.utils import logging as hf_logging

        self._logger.setLevel(self._level)
        hf_logging.set_verbosity(self._verbosity)
        self._warnings.__exit__(*exc)


def plan_config(
    config_path: str,
    overrides=(),
    device: Device | str | None = None,
    stage: str | None = None,
    outputs: dict[str, str] | None = None,
    sequence_length: int | None = None,
    prompt_tokens: int | None = None,
) -> StagePlan:
    """Plan one stage YAML (with recipe-style `--key value` overrides)."""
    stage = stage or stage_of(config_path)
    if stage == "pipeline":
        raise UserError(f"{config_path} is a pipeline config; plan it with plan_file or recipes/plan.py.")
    script_args, training_args, model_args = parse_stage_config(stage, config_path, overrides)
    outputs = {**sibling_outputs(config_path), **(outputs or {})}
    if not isinstance(device, Device):
        device = Device.parse(device, use_cpu=bool(training_args.use_cpu))
    return plan_stage(
        stage,
        script_args,
        training_args,
        model_args,
        device,
        outputs=outputs,
        config_path=str(config_path),
        sequence_length=sequence_length,
        prompt_tokens=prompt_tokens,
    )


def _overrides_for(types: tuple, overrides) -> list[str]:
    """The `--key value` overrides whose key one of `types` has (a pipeline's stages take different keys)."""
    known = {f.name for t in types for f in dataclasses.fields(t)}
    kept, items = [], list(overrides)
    for index, token in enumerate(items):
        if token.startswith("--"):
            key = token[2:].split("=", 1)[0]
            if key in known:
                kept.append(token)
                if "=" not in token and index + 1 < len(items) and not items[index + 1].startswith("--"):
                    kept.append(items[index + 1])
    return kept


def plan_pipeline(pipeline_path: str, overrides=(), device: Device | str | None = None, **kwargs) -> list[StagePlan]:
    """Plan every training stage of a pipeline YAML, following each stage's output into the next stage's input.

    Each `--key value` override goes to the stages that have that key (`max_length` is no PPO key, for example)."""
    from ..pipeline import load_pipeline_config

    config = load_pipeline_config(pipeline_path)
    overrides = list(overrides)
    outputs: dict[str, str] = {}
    plans, used = [], set()
    for stage in config.stages:
        name = Path(stage.recipe).stem
        if name not in TRAINING_STAGES or not stage.config:
            continue
        args = [item for key, value in stage.args.items() for item in (f"--{key}", value)]
        if stage.output:
            args += [f"--{stage.output_arg}", stage.output]
        with _quiet():
            mine = _overrides_for(config_types(name, stage.recipe), overrides)
        used.update(token for token in mine if token.startswith("--"))
        parsed = parse_stage_config(name, stage.config, [*args, *mine], recipe=stage.recipe)
        model_name = parsed[2].model_name_or_path
        stage_device = device if isinstance(device, Device) else Device.parse(device, use_cpu=bool(parsed[1].use_cpu))
        plan = plan_stage(name, *parsed, stage_device, outputs=outputs, config_path=stage.config, **kwargs)
        plan.stage = stage.name
        plans.append(plan)
        if stage.output and model_name:
            outputs[os.path.normpath(stage.output)] = model_name
    unused = [token for token in overrides if token.startswith("--") and token not in used]
    if unused:
        raise UserError(f"no training stage of {pipeline_path} has the key '{unused[0][2:]}'; check its spelling.")
    return plans


def plan_file(path: str, overrides=(), device: Device | str | None = None, stage: str | None = None, **kwargs):
    """A list of plans for a stage YAML (one) or a pipeline YAML (one per training stage)."""
    kind = stage or stage_of(path)
    if kind == "pipeline":
        return plan_pipeline(path, overrides, device, **kwargs)
    if kind not in TRAINING_STAGES:
        raise UserError(
            f"{path} configures recipes/{kind}.py, which trains nothing; plan one of {', '.join(TRAINING_STAGES)} "
            "or a pipeline YAML."
        )
    return [plan_config(path, overrides, device, stage=kind, **kwargs)]
