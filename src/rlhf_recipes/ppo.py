"""PPO, from TRL 1.12's `trl.experimental.ppo`: the only module that imports it (TRL 1.13 removed PPOTrainer).

Four models take part; each can be made small:

- policy: the SFT model with a fresh LoRA adapter (`use_peft`), its base in 4-bit with `load_in_4bit` (QLoRA);
- reference: the same weights with that adapter disabled, so no second copy is held;
- reward model: the reward stage's output, frozen; 4-bit NF4 with `reward_model_load_in_4bit`;
- value model: initialised from the reward model. With `use_peft` it trains through LoRA (the policy's r, alpha and
  targets) plus its `score` head, its base frozen; that base is 4-bit with `value_model_load_in_4bit`.

The 4-bit models use the policy's `bnb_4bit_*` settings and `dtype` as compute dtype; bitsandbytes runs them on CPU too.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from dataclasses import dataclass, field

import torch
from trl.experimental.ppo import PPOConfig as TRLPPOConfig
from trl.experimental.ppo import PPOTrainer as TRLPPOTrainer

from .cli import UserError

__all__ = [
    "PPOConfig",
    "PPOTrainer",
    "TRLPPOConfig",
    "TRLPPOTrainer",
    "add_value_adapter",
    "check_model_options",
    "final_metrics",
    "load_scoring_model",
    "tokenize_prompts",
]


@dataclass
class PPOConfig(TRLPPOConfig):
    """TRL's PPOConfig plus where the reward model and the value model's base live: full precision or 4-bit."""

    reward_model_load_in_4bit: bool = field(
        default=False,
        metadata={"help": "Load the frozen reward model in 4-bit (bitsandbytes, the policy's bnb_4bit_* settings)."},
    )
    value_model_load_in_4bit: bool = field(
        default=False,
        metadata={"help": "Load the value model's frozen base in 4-bit; it trains through LoRA (needs use_peft)."},
    )


def check_model_options(training_args: PPOConfig, model_args) -> None:
    """Refuse model settings that cannot train, before anything is loaded."""
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

    TRL's PPOTrainer reads `value_model.<base_model_prefix>` (the backbone) and `value_model.score`, so the value model
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
    score = value_model.score.float().requires_grad_(True)
    score.register_forward_pre_hook(lambda module, args: tuple(a.to(module.weight.dtype) for a in args))
    return value_model


class PPOTrainer(TRLPPOTrainer):
    """TRL's PPOTrainer with two additions.

    - bf16 on CPU: the whole loop (generation, reward, reference and value passes, updates) runs under bf16 autocast
      when `bf16: true`, since its own Accelerator never enables mixed precision. Weights keep their dtype.
    - `gradient_checkpointing: true` takes effect: TRL's PPOTrainer never calls Trainer's setup that turns it on.
      Policy and value backbones recompute activations in the backward pass; generation runs in eval mode, because
      checkpointed layers in training mode drop the KV cache.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not hasattr(self.model, "policy"):  # DDP hides PolicyAndValueWrapper's attributes (huggingface/trl#2375)
            self.model.__dict__["policy"] = self.accelerator.unwrap_model(self.model).policy
        if not hasattr(self, "is_distributed_loading_by_transformers"):  # set by Trainer.__init__, which TRL skips
            self.is_distributed_loading_by_transformers = False
        if self.args.activation_checkpointing:  # `gradient_checkpointing` is its deprecated alias; both are set
            self._enable_activation_checkpointing()

    def _enable_activation_checkpointing(self) -> None:
        wrapper = self.accelerator.unwrap_model(self.model)
        policy, value_model = wrapper.policy, wrapper.value_model
        base = policy.get_base_model() if self.is_peft_model else policy
        for model in (base, value_model):
            model.activation_checkpointing_enable(
                activation_checkpointing_kwargs=self.args.activation_checkpointing_kwargs
            )
        wrapper.is_gradient_checkpointing = True
        generate = policy.generate

        @functools.wraps(generate)
        def generate_in_eval_mode(*args, **kwargs):
            training = policy.training
            policy.eval()  # dropout is already off everywhere (TRL disables it), so only checkpointing changes
            try:
                return generate(*args, **kwargs)
            finally:
                policy.train(training)

        policy.generate = generate_in_eval_mode

    def train(self):
        enabled = bool(self.args.bf16) and self.accelerator.device.type == "cpu"
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            return super().train()


def tokenize_prompts(dataset, tokenizer, num_proc: int | None = None):
    """`{"prompt": [messages] | str}` rows -> `{"input_ids"}` ending with the assistant generation prompt."""
    if "prompt" not in dataset.column_names:
        raise UserError(f"PPO prompts need a 'prompt' column; this dataset has {', '.join(dataset.column_names)}.")

    def tokenize(row):
        prompt = row["prompt"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
        return {"input_ids": ids["input_ids"]}

    return dataset.map(tokenize, remove_columns=dataset.column_names, num_proc=num_proc, desc="Tokenizing prompts")


def final_metrics(trainer) -> dict:
    """The last logged PPO statistics (reward, KL, losses) plus the run's time; PPOTrainer.train returns nothing."""
    logged = [entry for entry in trainer.state.log_history if "objective/scores" in entry]
    return dict(logged[-1]) if logged else {}
