"""Will it fit? The peak memory of one training stage, from its parsed configs and its models' shapes.

The registry (`stages/catalog.py`) names a stage's planner hook; both hooks here take the same arguments:

    hook(stage, configs, device, *, outputs=None, sequence_length=None, prompt_tokens=None) -> StagePlan

`configs` is what `stage.parse_args` returned (ScriptArguments, the training config, ModelConfig), `outputs` maps
earlier stages' output folders (not written yet) to the model each starts from. The stage's registry entry says the
rest: the model keys it reads, the kind it makes (a reward model gets a score head), its columns (chosen + rejected
rows train as pairs). The arithmetic, per item of the table:

- weights: bytes per parameter of the configured dtype; 4-bit NF4 for the linear layers with `load_in_4bit`
  (embeddings, `lm_head` and the score head stay unquantized, as transformers leaves them);
- what trains: LoRA matrices (or every weight) with their gradients and optimizer states;
- autocast copies of float32 weights, only when the resolved precision is bf16/fp16;
- activations the backward pass keeps, per layer and token (or only each layer's input with gradient
  checkpointing), for the largest batch the config allows: `max_length` tokens per row (twice for pairs);
- logits and cross-entropy; PPO adds generation (KV cache, the kept generation scores) and its four models;
- the device: CUDA context on GPUs; the Python process itself and glibc's allocator on CPU (calibration.json).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import UserError
from ..models import CAUSAL_LM, REWARD_MODEL
from . import calibration
from .device import GIB, Device
from .footprint import Footprint, optimizer_bytes_per_param, quantization
from .shapes import model_shape
from .table import Item, StagePlan

# TRL 1.12 SFTTrainer's default `loss_type: chunked_nll` computes lm_head + cross-entropy 256 tokens at a time
# (trl.trainer.sft_trainer._CHUNKED_LM_HEAD_CHUNK_SIZE); logits for a chunk: compute-dtype output, float32 upcast,
# log-softmax and its gradient.
CHUNKED_CE_TOKENS = 256
# PPO prompts have no length key: without `--prompt_length`, local prompt files are measured in characters, at 3
# characters per token (English BPE averages ~4: 3 errs on the long side) plus the chat template's own tokens
# (role markers, a default system prompt: 20 tokens on SmolLM2, ~20 on Qwen2.5), and Hub data sets get 256.
CHARS_PER_TOKEN = 3
TEMPLATE_TOKENS = 32
TEMPLATE_TOKENS_PER_MESSAGE = 6
DEFAULT_PROMPT_TOKENS = 256


def split_configs(configs: tuple) -> tuple:
    """(script_args, training_args, model_args) out of a stage's parsed configs, whatever their order."""
    from transformers import TrainingArguments
    from trl import ModelConfig, ScriptArguments

    found = [next((c for c in configs if isinstance(c, kind)), None) for kind in (ScriptArguments, TrainingArguments)]
    found.append(next((c for c in configs if isinstance(c, ModelConfig)), None))
    if any(c is None for c in found):
        raise TypeError(
            "a planned stage's config classes must include ScriptArguments, a TrainingArguments and ModelConfig"
        )
    return tuple(found)


def _model_name(stage, configs, kind: str) -> tuple[str, str]:
    """(config key, model name) of the stage's input model of `kind` (registry `model_keys`)."""
    keys = [
        key for key, wanted in stage.model_keys.items() if kind in ((wanted,) if isinstance(wanted, str) else wanted)
    ]
    keys = keys or ["model_name_or_path"]
    value = next((getattr(c, keys[0]) for c in configs if hasattr(c, keys[0])), None)
    if not value:
        raise UserError(f"`{keys[0]}` is not set for the {stage.name} stage; set it in its YAML or with --{keys[0]}.")
    return keys[0], value


def _base_items(plan: StagePlan, device: Device) -> None:
    if device.kind == "cpu":
        baseline = calibration.value("CPU_PROCESS_BASELINE")
        plan.items.append(Item("process (Python, torch, transformers, trl; data)", baseline, "measured", True))
    else:
        plan.items.append(Item("CUDA context", calibration.value("CUDA_CONTEXT"), "driver + kernels", True))


def _trainable_items(plan: StagePlan, model: Footprint, optim, role: str) -> None:
    count = model.trainable_params()
    if not count:
        return
    param_bytes = model.trainable_param_bytes()
    optimizer_bytes, optimizer_note = optimizer_bytes_per_param(optim, param_bytes)
    role = f"{role} " if role else ""
    if model.trainable == "lora":  # the LoRA matrices are new memory; a full fine-tune's are the weights above
        plan.items.append(
            Item(f"{role}LoRA weights + gradients", 2 * count * param_bytes, f"{count / 1e6:,.1f}M params", True)
        )
    else:
        plan.items.append(
            Item(f"{role}gradients (every weight)", count * param_bytes, f"{count / 1e6:,.1f}M params", True)
        )
    plan.items.append(Item(f"{role}optimizer state", count * optimizer_bytes, optimizer_note, True))


def _step_overhead(plan: StagePlan, device: Device, step_bytes: float) -> None:
    name = "CPU_STEP_MEMORY_FACTOR" if device.kind == "cpu" else "CUDA_STEP_MEMORY_FACTOR"
    factor = calibration.value(name)
    what = "glibc heap fragments" if device.kind == "cpu" else "caching allocator"
    plan.items.append(Item(f"allocator overhead on per-step memory ({what})", (factor - 1) * step_bytes, f"x{factor}"))


def _sequence(training_args, stage_name: str, sequence_length: int | None) -> tuple[int, str]:
    if sequence_length:
        return sequence_length, "given"
    max_length = getattr(training_args, "max_length", None)
    if not max_length:
        raise UserError(
            f"{stage_name} has no max_length, so its longest batch is unbounded; set max_length in the YAML."
        )
    return max_length, "max_length"


def plan_lm_stage(stage, configs, device, *, outputs=None, sequence_length=None, prompt_tokens=None) -> StagePlan:
    """One model trained with LoRA (or fully) on batches of at most max_length tokens (cpt, sft, reward, ...).

    A stage that makes a reward model trains a score head; one whose columns are chosen + rejected runs each pair
    as two rows. `prompt_tokens` is PPO's and unused here."""
    _, training_args, model_args = split_configs(configs)
    head = REWARD_MODEL if stage.makes == REWARD_MODEL else CAUSAL_LM
    pairs = {"chosen", "rejected"} <= set(stage.columns)
    _, model_name = _model_name(stage, configs, CAUSAL_LM)
    shape = model_shape(model_name, head, outputs)
    trainable = "lora" if model_args.use_peft else "full"
    model = Footprint.of(
        model_args,
        training_args,
        shape,
        trainable=trainable,
        quant=quantization(model_args),
        score_head_trains=head == REWARD_MODEL,
    )
    seq, seq_source = _sequence(training_args, stage.name, sequence_length)
    rows = training_args.per_device_train_batch_size * (2 if pairs else 1)
    # Only `wrapped` packing gives rows without a mask; padded rows and `bfd` packing (padding-free, documents kept
    # apart by position ids) give sdpa a mask, and transformers then repeats k and v to every attention head
    wrapped = getattr(training_args, "packing", False) and getattr(training_args, "packing_strategy", "") == "wrapped"
    padded = pairs or not wrapped
    plan = StagePlan(stage.name, None, device, tokens_per_row=seq, checkpointing=model.checkpointing)
    plan.models.append(model.describe("model"))
    what = f"LoRA r={model_args.lora_r} on {len(model.lora_linears)} Linear layers" if trainable == "lora" else None
    storage = f"{model.weight_dtype} weights" + (", bf16/fp16 autocast" if model.mixed_precision else "")
    if model.quant:
        storage = f"{model.quant.replace('bit', '-bit')} base, {model.weight_dtype} compute"
    plan.setup = (
        f"{what or 'full fine-tune'}; {storage}; batch {rows} x {seq} tokens ({seq_source}"
        + (", pairs" if pairs else "")
        + f"); gradient checkpointing {'on' if model.checkpointing else 'off'}"
    )
    _base_items(plan, device)
    plan.items.append(Item("weights", model.weights(), model.precision, True))
    _trainable_items(plan, model, training_args.optim, "")
    copies = model.frozen_weight_copies()
    if copies:
        plan.items.append(Item("bf16/fp16 copies of float32 weights (autocast)", copies, "held until backward"))
    if model.quant:
        copies = model.largest_linear() * model.compute_bytes
        name = f"{model.quant.replace('bit', '-bit')} dequantization buffer"
        plan.items.append(Item(name, copies, "largest linear, one at a time"))
    activations = model.activations(rows, seq, padded)
    label = f"activations ({rows} x {seq} tokens, {shape.layers} layers)"
    plan.items.append(Item(label, activations, "checkpointed" if model.checkpointing else ""))
    c = model.compute_bytes
    if head == REWARD_MODEL:
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


def _prompt_rows(file: Path) -> list:
    """The rows of a local JSON / JSON Lines prompt file; a malformed one is one sentence naming file and line."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read prompt file {file} ({error}); fix it or pass --prompt_length.") from None
    if file.suffix != ".jsonl":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise UserError(f"{file}:{error.lineno} is not valid JSON ({error.msg}); fix the file.") from None
        return rows if isinstance(rows, list) else []
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise UserError(f"{file}:{number} is not valid JSON ({error.msg}); fix the line.") from None
    return rows


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
        for row in _prompt_rows(file):
            prompt = row.get("prompt", "") if isinstance(row, dict) else ""
            messages = prompt if isinstance(prompt, list) else [{"content": str(prompt)}]
            chars = sum(len(str(m.get("content", ""))) for m in messages if isinstance(m, dict))
            tokens = math.ceil(chars / CHARS_PER_TOKEN) + TEMPLATE_TOKENS + TEMPLATE_TOKENS_PER_MESSAGE * len(messages)
            longest = max(longest, tokens)
    if longest:
        return longest, f"longest prompt in {folder}, ~{CHARS_PER_TOKEN} chars/token + template"
    return DEFAULT_PROMPT_TOKENS, "assumed; pass --prompt_length"


def plan_ppo_stage(stage, configs, device, *, outputs=None, sequence_length=None, prompt_tokens=None) -> StagePlan:
    """PPO's four models (policy, reference, reward, value), its rollout and its update; `sequence_length` unused."""
    from ..train.scoring_models import check_model_options

    script_args, training_args, model_args = split_configs(configs)
    check_model_options(training_args, model_args)  # the recipe's own refusals (a 4-bit value model without LoRA)
    _, policy_name = _model_name(stage, configs, CAUSAL_LM)
    _, reward_name = _model_name(stage, configs, REWARD_MODEL)
    policy_shape = model_shape(policy_name, CAUSAL_LM, outputs)
    reward_shape = model_shape(reward_name, REWARD_MODEL, outputs)
    peft = bool(model_args.use_peft)
    # TRL's PPOTrainer never enables mixed precision on its Accelerator; the project's subclass adds bf16 autocast on
    # CPU only. Its value model trains through LoRA under use_peft (TRL's own trains every value-model weight).
    autocast = device.kind == "cpu"
    value_lora = peft and hasattr(training_args, "value_model_load_in_4bit")
    value_4bit = bool(getattr(training_args, "value_model_load_in_4bit", False))
    reward_4bit = bool(getattr(training_args, "reward_model_load_in_4bit", False))
    policy = Footprint.of(
        model_args,
        training_args,
        policy_shape,
        trainable="lora" if peft else "full",
        quant=quantization(model_args),
        autocast=autocast,
    )
    value = Footprint.of(
        model_args,
        training_args,
        reward_shape,
        trainable="lora" if value_lora else "full",
        quant="4bit" if value_4bit else None,
        autocast=autocast,
        score_head_trains=True,
    )
    reward = Footprint.of(
        model_args,
        training_args,
        reward_shape,
        trainable="frozen",
        quant="4bit" if reward_4bit else None,
        autocast=autocast,
    )
    prompt, prompt_source = prompt_length(script_args, prompt_tokens)
    response = training_args.response_length
    seq = prompt + response
    micro = training_args.per_device_train_batch_size
    rollout = micro * training_args.gradient_accumulation_steps  # prompts answered per update, on each device
    generation_batch = min(rollout, training_args.local_rollout_forward_batch_size)
    s = policy_shape
    c = policy.compute_bytes

    plan = StagePlan(stage.name, None, device, checkpointing=policy.checkpointing)
    plan.models.append(policy.describe("policy"))
    plan.models.append(reward.describe("reward/value"))
    plan.setup = (
        f"policy {'LoRA r=' + str(model_args.lora_r) if peft else 'full fine-tune'}, value "
        f"{'LoRA' if value_lora else 'full fine-tune'}; {rollout} prompts per update, generated {generation_batch} at a "
        f"time; {prompt} prompt tokens ({prompt_source}) + {response} response tokens; train micro-batch {micro}; "
        f"gradient checkpointing {'on' if policy.checkpointing else 'off'}"
    )
    _base_items(plan, device)
    plan.items.append(Item("policy weights", policy.weights(), policy.precision, True))
    if not peft:
        plan.items.append(Item("reference model weights (a frozen copy)", policy.weights(), "", True))
    else:
        plan.items.append(Item("reference model (policy with its adapter disabled)", 0.0, "no copy"))
    plan.items.append(Item("reward model weights", reward.weights(), reward.precision, True))
    plan.items.append(Item("value model weights", value.weights(), value.precision, True))
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
    vocab_note = f"{rollout} x {response} x {s.vocab} fp32"
    if train_phase >= rollout_phase:
        label = f"activations, policy + value ({micro} x {seq} tokens)"
        plan.items.append(Item(label, activations, "checkpointed" if policy.checkpointing else ""))
        plan.items.append(Item("policy logits + log-softmax", logits, f"{micro} x {seq} x {s.vocab}"))
        plan.items.append(Item("generation scores kept for the update", scores, vocab_note))
        plan.notes.append(f"rollout phase (generation) peaks lower: {rollout_phase / GIB:.2f} GiB of step memory")
        step = train_phase
    else:
        plan.items.append(Item(f"KV cache ({generation_batch} x {seq} tokens)", kv_cache, ""))
        plan.items.append(Item("generation scores (stacked + padded)", 2 * scores, vocab_note))
        label = f"{generation_batch} x {seq} x {s.vocab}"
        plan.items.append(Item("rollout logits (reference pass)", rollout_logits, label))
        plan.items.append(Item("rollout hidden states (value, reward passes)", hidden_states, "every layer's output"))
        plan.notes.append(f"training phase peaks lower: {train_phase / GIB:.2f} GiB of step memory")
        step = rollout_phase
    plan.items.append(Item("rollout buffers", buffers, ""))
    dequant = 0.0
    if any(model.quant for model in (policy, value, reward)):
        dequant = policy.largest_linear() * c
        plan.items.append(Item("4-bit dequantization buffer", dequant, "largest linear, one at a time"))
    _step_overhead(plan, device, step + copies + dequant)
    return plan


def plan_online_stage(stage, configs, device, *, outputs=None, sequence_length=None, prompt_tokens=None) -> StagePlan:
    """GRPO, RLOO, online DPO: the policy trained on its own sampled completions (one batch of prompt + completion
    rows, as plan_lm_stage counts them; online DPO answers each prompt twice), plus the frozen reward model that
    scores them. The KL reference is the policy with its adapter disabled (LoRA) or a frozen copy."""
    script_args, training_args, model_args = split_configs(configs)
    prompt, prompt_source = prompt_length(script_args, prompt_tokens)
    completion = getattr(training_args, "max_completion_length", None) or training_args.max_new_tokens
    plan = plan_lm_stage(
        stage, configs, device, outputs=outputs, sequence_length=sequence_length or prompt + completion
    )
    if stage.name == "online_dpo":  # two completions per prompt go through the policy at once
        activations = next(item for item in plan.items if item.component.startswith("activations"))
        activations.bytes *= 2
        activations.component += " x 2 completions per prompt"
    _, reward_name = _model_name(stage, configs, REWARD_MODEL)
    reward_shape = model_shape(reward_name, REWARD_MODEL, outputs)
    quant = "4bit" if getattr(training_args, "reward_model_load_in_4bit", False) else None
    reward = Footprint.of(model_args, training_args, reward_shape, trainable="frozen", quant=quant)
    plan.models.append(reward.describe("reward"))
    plan.items.append(Item("reward model weights", reward.weights(), reward.precision, True))
    if not model_args.use_peft and getattr(training_args, "beta", 0):
        weights = next(item for item in plan.items if item.component == "weights")
        plan.items.append(Item("reference model weights (a frozen copy)", weights.bytes, "", True))
    if getattr(training_args, "use_vllm", False) and getattr(training_args, "vllm_mode", "colocate") == "colocate":
        share = training_args.vllm_gpu_memory_utilization  # vLLM takes this share of the GPU for weights and KV cache
        if device.capacity:
            plan.items.append(
                Item(f"vLLM generation (colocate: {share} of the GPU)", share * device.capacity, "", True)
            )
        else:
            plan.notes.append(f"vLLM (use_vllm, colocate) takes {share} of the GPU's memory on top of this plan.")
    plan.setup += f"; {prompt} prompt tokens ({prompt_source}) + {completion} completion tokens"
    return plan
