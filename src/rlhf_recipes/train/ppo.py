"""PPO, from TRL 1.12's `trl.experimental.ppo`: the only module that imports it (TRL 1.13 removed PPOTrainer).

Four models take part; each can be made small:

- policy: the SFT model with a fresh LoRA adapter (`use_peft`), its base in 4-bit with `load_in_4bit` (QLoRA);
- reference: the same weights with that adapter disabled, so no second copy is held;
- reward model: the reward stage's output, frozen; 4-bit NF4 with `reward_model_load_in_4bit`;
- value model: initialised from the reward model. With `use_peft` it trains through LoRA (the policy's r, alpha and
  targets) plus its `score` head, its base frozen; that base is 4-bit with `value_model_load_in_4bit`.

The 4-bit models use the policy's `bnb_4bit_*` settings and `dtype` as compute dtype; bitsandbytes runs them on CPU too.

What this module changes in TRL's loop, each because the number PPO optimises must be the number it reports:

- the reward is read by `scoring.RewardScorer`, the one scoring path: the conversation rendered as RewardTrainer
  rendered its pairs (TRL's `get_reward` reads the score at `<|im_end|>`, one token before where the head learned);
- reference and policy log-probs come from float32 logits whatever the autocast (a bf16 `log_softmax` gives a phantom
  KL of ~0.3 nats per answer at identical weights);
- the reference, value and update passes skip the padding (`unpad.py`): each row without the left padding of its
  batch, the heads only at the answer's positions; with `train_sampling_strategy: group_by_length` a batch holds
  prompts of similar length, so generation pads less too;
- rollouts sample with the configured settings only: the checkpoint's `generation_config` (a `repetition_penalty`,
  say) would add logits processors that the log-probs of the update never apply;
- checkpoints every `save_steps` updates hold the policy adapter, the value adapter and head, optimizer, scheduler
  and RNG states and the update count (trainer_state.json, written last), and a rerun resumes from the last
  complete one with the data order replayed (the sampler has its own seeded generator).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast
from trl.experimental.ppo import PPOConfig as TRLPPOConfig
from trl.experimental.ppo import PPOTrainer as TRLPPOTrainer
from trl.experimental.ppo import ppo_trainer as trl_ppo_module

from ..scoring import RewardScorer
from .unpad import forward_rows, rollout_inputs

logger = logging.getLogger(__name__)
VALUE_WEIGHTS = "value_model.safetensors"  # the value model's trainable part (LoRA + score head) in a checkpoint

__all__ = ["PPOConfig", "PPOTrainer", "TRLPPOConfig", "TRLPPOTrainer", "final_metrics", "tokenize_prompts"]


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
    min_reward_accuracy: float = field(
        default=0.6,
        metadata={
            "help": "Refuse to start when the reward model's held-out pairwise accuracy (its lineage's "
            "eval_accuracy) is below this: RL against a reward model near chance optimises noise. 0 disables."
        },
    )


class _ResumeAt:
    """A dataloader that, on its first pass, replays (and discards) the batches already trained on."""

    def __init__(self, dataloader, batches: int):
        self.dataloader, self.batches = dataloader, batches

    def __len__(self):
        return len(self.dataloader)

    def __iter__(self):
        skip, self.batches = self.batches, 0
        for _ in range(skip // len(self.dataloader)):  # whole epochs: each draws its order from the sampler
            for _ in self.dataloader:
                pass
        iterator = iter(self.dataloader)
        for _ in range(skip % len(self.dataloader)):
            next(iterator)
        yield from iterator


class PPOTrainer(TRLPPOTrainer):
    """TRL's PPOTrainer with the corrections listed in the module docstring, plus:

    - bf16 on CPU: the whole loop runs under bf16 autocast when `bf16: true` (its own Accelerator never enables
      mixed precision). Weights keep their dtype; log-probs are float32 regardless.
    - `gradient_checkpointing: true` takes effect: TRL's PPOTrainer never calls Trainer's setup that turns it on.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in ("policy", "config"):  # DDP hides PolicyAndValueWrapper's attributes (huggingface/trl#2375);
            if not hasattr(self.model, name):  # `config` is read by the model card TRL writes into each checkpoint
                self.model.__dict__[name] = getattr(self.accelerator.unwrap_model(self.model), name)
        self.accelerator.unwrap_model(self.model).__class__ = _UnpaddedPolicyAndValue  # DDP calls its forward
        if not hasattr(self, "is_distributed_loading_by_transformers"):  # set by Trainer.__init__, which TRL skips
            self.is_distributed_loading_by_transformers = False
        if self.args.activation_checkpointing:  # `gradient_checkpointing` is its deprecated alias; both are set
            self._enable_activation_checkpointing()
        self._clean_generation_config()
        self._seed_data_order()
        self.scorer = RewardScorer(
            self.reward_model, self.processing_class, self.args.local_rollout_forward_batch_size
        )

    def _clean_generation_config(self) -> None:
        """Rollouts sample with TRL's temperature, top-k and top-p only (models.clean_generation_config)."""
        from ..models import clean_generation_config

        policy = self.accelerator.unwrap_model(self.model).policy
        clean_generation_config(policy, self.processing_class, self.stop_token_id)

    def _seed_data_order(self) -> None:
        """The prompt order from a generator of its own (seeded by `seed`), so a resumed run can replay it; with
        `train_sampling_strategy: group_by_length` (TRL's loop ignores it) batches of prompts of similar length."""
        from torch.utils.data import DataLoader, RandomSampler

        from .rl import LengthGroupedBatches

        order = torch.Generator().manual_seed(self.args.seed)
        batch = {"batch_size": self.local_dataloader_batch_size, "drop_last": True}  # TRL's loop needs full batches
        if self.args.train_sampling_strategy == "group_by_length":
            lengths = [len(ids) for ids in self.train_dataset["input_ids"]]
            batch = {"batch_sampler": LengthGroupedBatches(lengths, batch["batch_size"], order)}
        else:
            batch["sampler"] = RandomSampler(self.train_dataset, generator=order)
        loader = DataLoader(
            self.train_dataset,
            collate_fn=self.data_collator,
            # each new iterator draws a worker seed: from this generator, not from the global RNG of the sampling
            generator=torch.Generator().manual_seed(self.args.seed + 1),
            **batch,
        )
        self.dataloader = self.accelerator.prepare(loader)

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

    # ------------------------------------------------------------------------------------- the corrected loop
    @contextlib.contextmanager
    def _corrected_loop(self, autocast_bf16: bool = False):
        """TRL's loop with its reward read by the scoring path and its log-probs from float32 logits.

        Under bf16 autocast the rollout's log-probs are recomputed by the same forward pass the update uses: the
        sampler's cached, token-by-token bf16 logits differ from a full forward pass by up to ~1e-3 per token, so at
        identical weights the importance ratio would not be 1 (float32 agrees to the rounding of the sampler's masked
        attention over the padding, ~1e-5, and skips this pass).
        """
        from accelerate.utils import extract_model_from_parallel

        module = trl_ppo_module
        original = module.get_reward, module.forward, module.batch_generation
        reward_model, scorer = self.reward_model, self.scorer
        temperature = self.args.temperature + 1e-7  # TRL's own epsilon, in sampling and in the update alike
        batch = {}  # the context length (padded prompt width) of the batch being trained on

        def get_reward(model, query_responses, pad_token_id, context_length):
            if model is reward_model:
                queries, answers = query_responses[:, :context_length], query_responses[:, context_length:]
                return None, scorer.score_rollouts(queries, answers, pad_token_id).to(query_responses.device), None
            backbone, keep = getattr(model, model.base_model_prefix), query_responses.shape[1] - context_length + 1

            def values(**inputs):  # the value model: TRL reads its per-token values from the last prompt token on
                return (model.score(backbone(**inputs, use_cache=False).last_hidden_state[:, -keep:]),)

            return forward_rows(**rollout_inputs(query_responses, pad_token_id), keep=keep, call=values)[0], None, None

        def forward(model, query_responses, pad_token_id):
            keep = query_responses.shape[1] - batch["context"] + 1  # TRL reads logits[:, context - 1 : -1]
            inputs = rollout_inputs(query_responses, pad_token_id)
            if isinstance(extract_model_from_parallel(model), _UnpaddedPolicyAndValue):  # the update
                return model(**inputs, logits_to_keep=keep)

            def logits(**rows):  # float32, before TRL divides by the temperature and takes log_softmax
                return (model(**rows, logits_to_keep=keep, use_cache=False).logits.float(),)

            return CausalLMOutputWithPast(logits=forward_rows(**inputs, keep=keep, call=logits)[0])

        def batch_generation(model, queries, batch_size, pad_token_id, generation_config):
            batch["context"] = context = queries.shape[1]
            query_responses, logits = original[2](model, queries, batch_size, pad_token_id, generation_config)
            if not autocast_bf16:
                return query_responses, logits
            recomputed = []
            with torch.no_grad():
                for start in range(0, len(query_responses), batch_size):
                    output = forward(model, query_responses[start : start + batch_size], pad_token_id)
                    recomputed.append(output.logits[:, context - 1 : -1] / temperature)
            return query_responses, torch.cat(recomputed)

        module.get_reward, module.forward, module.batch_generation = get_reward, forward, batch_generation
        try:
            yield
        finally:
            module.get_reward, module.forward, module.batch_generation = original

    def train(self, resume_from_checkpoint: str | None = None):
        total = self.args.num_total_batches
        if resume_from_checkpoint:
            self._resume(resume_from_checkpoint)  # restores the RNG states saved with the checkpoint
        else:  # every RNG from a known state here, whatever loading (a datasets cache hit or miss) drew before
            from transformers import set_seed

            set_seed(self.local_seed)
        enabled = bool(self.args.bf16) and self.accelerator.device.type == "cpu"
        try:
            with self._corrected_loop(enabled), torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
                return super().train()
        finally:
            self.args.num_total_batches = total

    # ---------------------------------------------------------------------------------------- checkpoints
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        super().save_model(output_dir, _internal_call)
        if _internal_call and self.args.should_save:  # a checkpoint: the value model's trained part goes too
            from safetensors.torch import save_file

            value_model = self.accelerator.unwrap_model(self.model).value_model
            trained = {k: v.detach().cpu().contiguous() for k, v in _trainable_state(value_model).items()}
            save_file(trained, str(Path(output_dir) / VALUE_WEIGHTS))

    def _resume(self, checkpoint: str) -> None:
        """Load a complete checkpoint (see `save_model` and Trainer's `_save_checkpoint`) and continue after it."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file
        from transformers import TrainerCallback

        wrapper = self.accelerator.unwrap_model(self.model)
        folder = Path(checkpoint)
        if self.is_peft_model:
            set_peft_model_state_dict(wrapper.policy, load_file(str(folder / "adapter_model.safetensors")))
        else:
            from transformers.modeling_utils import load_sharded_checkpoint

            load_sharded_checkpoint(wrapper.policy, str(folder), strict=True)
        missing = set(_trainable_state(wrapper.value_model)) - set(load_file(str(folder / VALUE_WEIGHTS)))
        wrapper.value_model.load_state_dict(load_file(str(folder / VALUE_WEIGHTS)), strict=False)
        if missing:
            raise RuntimeError(f"{folder} lacks value-model weights {sorted(missing)[:3]}")
        # Trainer's own loaders expect attributes that TRL's PPOTrainer (which skips Trainer.__init__) never sets
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=self.accelerator.device))
        self.lr_scheduler.load_state_dict(torch.load(folder / "scheduler.pt"))
        self._load_rng_state(str(folder))
        state = type(self.state).load_from_json(str(folder / "trainer_state.json"))  # with `episode`
        done, total = state.global_step, self.args.num_total_batches
        logger.info("Resuming PPO after update %d of %d from %s", done, total, folder)
        self.args.num_total_batches = total - done
        self.dataloader = _ResumeAt(self.dataloader, done)

        class RestoreState(TrainerCallback):  # TRL's train() zeroes the state first; this runs right after
            def on_train_begin(self, args, trainer_state, control, **kwargs):
                trainer_state.global_step, trainer_state.episode = done, state.episode
                trainer_state.log_history, trainer_state.max_steps = state.log_history, total
                trainer_state.epoch = state.epoch

        self.callback_handler.callbacks.insert(0, RestoreState())


class _UnpaddedPolicyAndValue(trl_ppo_module.PolicyAndValueWrapper):
    """TRL's policy-and-value wrapper, whose update pass skips the padding (`unpad.forward_rows`) and computes the
    policy's logits and the values only at the `logits_to_keep` positions TRL reads."""

    def forward(self, input_ids, attention_mask, position_ids, logits_to_keep, **_):
        def both(**rows):
            hidden = self.critic_backbone(**rows, use_cache=False).last_hidden_state[:, -logits_to_keep:]
            logits = self.policy(**rows, logits_to_keep=logits_to_keep, use_cache=False).logits.float()
            return logits, self.value_model.score(hidden)

        logits, values = forward_rows(input_ids, attention_mask, position_ids, logits_to_keep, both)
        return CausalLMOutputWithPast(logits=logits), values


def _trainable_state(model) -> dict:
    names = {name for name, param in model.named_parameters() if param.requires_grad}
    return {name: tensor for name, tensor in model.state_dict().items() if name in names}


def tokenize_prompts(dataset, tokenizer, num_proc: int | None = None):
    """`{"prompt": [messages] | str}` rows -> `{"input_ids"}` ending with the assistant generation prompt."""
    from .rl import check_prompts

    check_prompts(dataset, "PPO")  # before any work: a bad row is one sentence, not a traceback

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
