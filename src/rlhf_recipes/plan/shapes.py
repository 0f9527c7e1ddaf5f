"""What the planner knows about a model: its config (never its weights) and the parameter shapes of the model built
from that config on PyTorch's `meta` device (no memory, exact for any architecture transformers knows).

A model name is followed the way `models.py` follows it when a recipe loads it, without loading or converting anything:
an embedded model is the architecture of its GGUF (the config shipped in assets/known_models/), an earlier stage's
adapter folder is its base model (`models.adapter_base`), a folder is its config.json, and a Hub id is the Hub cache,
the shipped copy, or (online) the Hub.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .. import models
from ..errors import UserError

KNOWN_MODELS = Path(__file__).resolve().parents[1] / "assets" / "known_models"


@dataclass
class ModelShape:
    """What the plan needs to know about one model, from its config alone."""

    name: str
    source: str  # where the config came from, for the table
    config: object  # transformers PretrainedConfig
    architecture: str
    head: str  # models.CAUSAL_LM or models.REWARD_MODEL
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


@contextlib.contextmanager
def quiet():
    """Keep transformers' chatter (bf16-on-CPU warnings while parsing, config dumps while building on `meta`) and the
    precision log line (the table shows the precision) out of the planner's output: the plan is the output."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    loggers = [logging.getLogger(name) for name in ("transformers", "bitsandbytes", "rlhf_recipes.precision")]
    levels, verbosity = [logger.level for logger in loggers], hf_logging.get_verbosity()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf_logging.set_verbosity_error()
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)
            hf_logging.set_verbosity(verbosity)


def _shipped(name: str) -> Path:
    """The shipped config of a Hub id or embedded model: `Qwen/Qwen2.5-7B` is `Qwen--Qwen2.5-7B.json`."""
    return KNOWN_MODELS / (name.replace(models.EMBEDDED_PREFIX, "embedded--").replace("/", "--") + ".json")


def _from_dict(values: dict):
    from transformers import AutoConfig

    return AutoConfig.for_model(**{k: v for k, v in values.items() if k != "transformers_version"})


def _from_file(path: Path):
    return _from_dict(json.loads(path.read_text(encoding="utf-8")))


def load_config(name: str, outputs: dict[str, str] | None = None, depth: int = 0) -> tuple[object, str]:
    """(transformers config, where it came from) of a model name as a recipe would receive it; no weights read.

    `outputs` maps output folders of earlier stages that are not written yet to the model each starts from."""
    if depth > 10:
        raise UserError(f"{name}: adapter folders refer to each other in a loop; check their lineage.json.")
    outputs = outputs or {}
    if name.startswith(models.EMBEDDED_PREFIX):
        if name.removeprefix(models.EMBEDDED_PREFIX) not in models.EMBEDDED_MODELS or not _shipped(name).is_file():
            known = ", ".join(models.EMBEDDED_PREFIX + n for n in models.EMBEDDED_MODELS)
            raise UserError(f"unknown embedded model '{name}'; the known ones are {known}.")
        return _from_file(_shipped(name)), "the embedded GGUF's architecture (shipped config)"
    folder, key = Path(name).expanduser(), os.path.normpath(name)
    if (folder / "adapter_config.json").is_file():  # an earlier stage's output: its base model's architecture
        config, source = load_config(models.adapter_base(folder), outputs, depth + 1)
        return config, source if "; base model of " in source else f"{source}; base model of {name}"
    if (folder / "config.json").is_file():
        return _from_file(folder / "config.json"), f"{folder}/config.json"
    if key in outputs:  # an earlier stage's output not written yet (or still being written): the model it starts from
        config, source = load_config(outputs[key], outputs, depth + 1)
        return config, source if "; base model of " in source else f"{source}; base model of {name} (not written yet)"
    if folder.is_dir():
        raise UserError(f"{name} has neither config.json nor adapter_config.json; pass a model folder or a Hub id.")
    if folder.exists():
        raise UserError(f"model path {name} is a file; pass a model folder, a Hub id or {models.DEFAULT_MODEL}.")
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
    if _shipped(model_id).is_file():
        return _from_file(_shipped(model_id)), f"shipped copy of {model_id}/config.json, offline"
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

    config = _from_dict(json.loads(config_json))
    if head == models.REWARD_MODEL:
        config.num_labels = 1
    with quiet(), torch.device("meta"):
        model_class = AutoModelForSequenceClassification if head == models.REWARD_MODEL else AutoModelForCausalLM
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


def model_shape(name: str, head: str = models.CAUSAL_LM, outputs: dict[str, str] | None = None) -> ModelShape:
    """The shape of model `name` with a language-model head (`models.CAUSAL_LM`) or a score head (`REWARD_MODEL`)."""
    config, source = load_config(name, outputs)
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
