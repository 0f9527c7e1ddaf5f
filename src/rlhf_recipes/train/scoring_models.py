"""The one-output models the RL stages score with, outside TRL's trainers: the reward model (PPO, GRPO, RLOO, online
DPO) and PPO's value model, each in full precision or 4-bit, and the PPO model options that cannot train."""

from __future__ import annotations

import copy
import dataclasses

import torch

from ..errors import UserError


def check_model_options(training_args, model_args) -> None:
    """Refuse PPO model settings (a `ppo.PPOConfig` and a `ModelConfig`) that cannot train, before loading anything."""
    if training_args.value_model_load_in_4bit and not model_args.use_peft:
        raise UserError(
            "value_model_load_in_4bit: true needs use_peft: true, because a 4-bit value model can only train through "
            "LoRA; set use_peft: true or value_model_load_in_4bit: false."
        )
    if model_args.load_in_4bit and not model_args.use_peft:
        raise UserError(
            "load_in_4bit: true needs use_peft: true, because a 4-bit policy can only train through LoRA; set "
            "use_peft: true or load_in_4bit: false."
        )
    if training_args.train_sampling_strategy not in ("random", "sequential", "group_by_length"):
        raise UserError(
            f"train_sampling_strategy={training_args.train_sampling_strategy} is not one PPO can use; set random, "
            "sequential or group_by_length (batches of prompts of similar length)."
        )
    four_bit = [k for k in ("reward_model_load_in_4bit", "value_model_load_in_4bit") if getattr(training_args, k)]
    if four_bit and model_args.dtype not in ("bfloat16", "float16", "float32"):
        raise UserError(
            f"{four_bit[0]}: true needs an explicit dtype for the 4-bit compute (got {model_args.dtype}); set dtype: "
            "bfloat16 on a GPU, or float32 or bfloat16 on CPU."
        )


def load_scoring_model(path: str, init_kwargs: dict, model_args, load_in_4bit: bool):
    """A one-output sequence-classification model (reward or value) from `path`, in 4-bit NF4 when asked.

    `init_kwargs` are the policy's `from_pretrained` arguments; its own quantization (QLoRA) is not carried over.
    The `score` head is the model's last module, which transformers never quantizes, so it stays trainable.
    """
    from accelerate import PartialState
    from transformers import AutoModelForSequenceClassification
    from trl import get_quantization_config

    kwargs = {k: v for k, v in init_kwargs.items() if k not in ("quantization_config", "device_map")}
    if load_in_4bit:
        kwargs["quantization_config"] = get_quantization_config(
            dataclasses.replace(model_args, load_in_4bit=True, load_in_8bit=False)
        )
        # bitsandbytes quantizes on the device the weights land on: each process's own GPU, else the CPU.
        kwargs["device_map"] = {"": PartialState().local_process_index} if torch.cuda.is_available() else None
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **kwargs)


def add_value_adapter(value_model, peft_config):
    """Put the policy's LoRA settings into the value model in place; train only LoRA and the `score` head.

    PPO reads `value_model.<base_model_prefix>` (the backbone) and `value_model.score`, so the value model
    must stay a `*ForSequenceClassification`: `peft.inject_adapter_in_model` adds LoRA layers without the `PeftModel`
    wrapper that `get_peft_model` would put around it, and freezes everything else. The score head (it starts as the
    reward head) is unfrozen again. Both trained parts are kept in float32 on a bfloat16 or 4-bit base, as
    `get_peft_model` does for the policy's adapter: a bfloat16 weight cannot take updates of a 1e-5 learning rate.
    """
    from peft import inject_adapter_in_model
    from peft.tuners.tuners_utils import cast_adapter_dtype

    config = copy.deepcopy(peft_config)
    config.modules_to_save = None  # the policy's extra modules (e.g. lm_head) do not exist here; `score` is handled
    inject_adapter_in_model(config, value_model)
    cast_adapter_dtype(value_model, "default")
    float32_head(value_model.score.requires_grad_(True))
    return value_model


def float32_head(head: torch.nn.Module) -> torch.nn.Module:
    """Keep a trained head (a `score` layer) in float32 on a bfloat16 base, in place: a bfloat16 weight cannot take
    the updates of a small learning rate. Its inputs are cast to its weights' dtype, so it runs outside autocast too
    (under autocast the matmul still computes in bf16, as the layers below it)."""
    head.float()
    head.register_forward_pre_hook(lambda module, args: tuple(a.to(module.weight.dtype) for a in args))
    return head
