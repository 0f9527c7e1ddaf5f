"""The PPO loop: one `PPOTrainer.train()` runs `updates` PPO updates, each read top to bottom in `ppo_update`:

1. rollout: the policy answers a batch of prompts; log-probs (policy, reference), values and scores (`rollout.py`);
2. rewards: the KL penalty per token plus the score at the answer's end (`losses.kl_penalty`, `shaped_rewards`);
3. advantages: GAE over the values, then whitened (`losses.gae`, `whiten`);
4. `num_ppo_epochs` passes over the rollouts in shuffled mini-batches: the clipped policy loss plus `vf_coef` times
   the clipped value loss, one optimizer step per mini-batch (its micro-batches of `per_device_train_batch_size`
   rows accumulated);
5. the statistics TRL 1.12 logged, under the same names.

`PPOTrainer` is a transformers `Trainer` for what Trainer already does well (the optimizer and scheduler from
`optim`, `learning_rate`, `warmup_*`, `lr_scheduler_type`; the accelerator, DDP included; logging to `report_to`;
checkpoints with optimizer, scheduler and RNG states, `save_total_limit`); its `train` is this loop. Four models
take part: the policy (a LoRA adapter on the SFT model, or the whole model), the reference (the policy with its
adapter disabled, or a frozen copy), the frozen reward model, and the value model (initialised from the reward
model, trained through LoRA and its score head, or whole). With `bf16` the loop runs under bf16 autocast (CPU or
GPU); log-probs, ratios and KL are float32 whatever the autocast.

What differs from TRL 1.12's PPOTrainer, on purpose: the reward is read where the reward model learned it
(`scoring.py`), in the reward model's own chat template; the no-grad and update passes skip the padding; the
checkpoint's sampling settings are cleared; the data order comes from the run's own generator and a killed run
resumes (`checkpoints.py`); one optimizer step per mini-batch (TRL stepped every `gradient_accumulation_steps`
micro-batches across mini-batch boundaries); `max_grad_norm` is honoured (TRL ignored it; the default here is off,
as TRL's was); `gradient_checkpointing` takes effect; under bf16 the rollout's log-probs come from the same
forward pass the update uses (the sampler's bf16 logits differ by ~1e-3 per token).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from transformers import Trainer, set_seed
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import TrainOutput

from ...errors import UserError
from ...scoring import RewardScorer
from .. import heap
from ..unpad import forward_rows, rollout_inputs
from . import checkpoints, losses
from .prompts import prompt_loader
from .rollout import Rollout, collect, sampling_config, token_logprobs

logger = logging.getLogger(__name__)


class PolicyAndValue(torch.nn.Module):
    """The two trained models as one module (one optimizer, one DDP wrapper). Its forward is the update's pass: the
    policy's float32 logits and the value model's values at the last `logits_to_keep` positions, without padding."""

    def __init__(self, policy, value_model):
        super().__init__()
        self.policy, self.value_model = policy, value_model
        self.critic_backbone = getattr(value_model, value_model.base_model_prefix)
        self.is_gradient_checkpointing = False  # TRL's `unwrap_model_for_generation` turns it off to generate

    def _trained_bases(self):
        return (self.policy.get_base_model() if hasattr(self.policy, "get_base_model") else self.policy,
                self.value_model)  # fmt: skip

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        for module in self._trained_bases():
            module.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)
        if hasattr(self.policy, "enable_input_require_grads"):  # LoRA: checkpointed blocks need a grad at the input
            self.policy.enable_input_require_grads()
        self.is_gradient_checkpointing = True

    def gradient_checkpointing_disable(self):
        for module in self._trained_bases():
            module.gradient_checkpointing_disable()
        self.is_gradient_checkpointing = False

    def forward(self, input_ids, attention_mask, position_ids, logits_to_keep):
        def both(**rows):
            hidden = self.critic_backbone(**rows, use_cache=False).last_hidden_state[:, -logits_to_keep:]
            logits = self.policy(**rows, logits_to_keep=logits_to_keep, use_cache=False).logits.float()
            return logits, self.value_model.score(hidden)

        logits, values = forward_rows(input_ids, attention_mask, position_ids, logits_to_keep, both)
        return CausalLMOutputWithPast(logits=logits), values


@dataclass(frozen=True)
class Batches:
    """How many prompts each update answers and how they split (TRL 1.12's arithmetic)."""

    local: int  # rollouts per process per update: per_device_train_batch_size x gradient_accumulation_steps
    total: int  # rollouts per update over every process
    local_mini: int  # rows per mini-batch on each process: local / num_mini_batches
    updates: int  # ceil(total_episodes / total)

    @classmethod
    def of(cls, args, world_size: int, prompts: int) -> Batches:
        local = args.per_device_train_batch_size * args.gradient_accumulation_steps  # num_mini_batches divides it
        episodes = args.total_episodes or int(args.num_train_epochs * prompts)
        return cls(
            local, local * world_size, local // args.num_mini_batches, math.ceil(episodes / (local * world_size))
        )


class PPOTrainer(Trainer):
    """PPO on a policy, a reference, a reward model and a value model; see the module docstring."""

    def __init__(
        self, args, processing_class, model, ref_model, reward_model, value_model, train_dataset,
        eval_dataset=None, peft_config=None, reward_processing_class=None, callbacks=None,
    ):  # fmt: skip
        from peft import PeftModel, get_peft_model
        from trl.trainer.utils import disable_dropout_in_model

        from ...models import clean_generation_config

        if peft_config is not None:
            model = get_peft_model(model, peft_config)
        self.is_peft_model = isinstance(model, PeftModel)
        if ref_model is None and not self.is_peft_model:
            raise ValueError("without a LoRA adapter PPO needs a reference model (a frozen copy of the policy)")
        if args.stop_token and args.stop_token_id is not None:
            raise UserError("stop_token and stop_token_id are both set; keep one of them.")
        self.stop_token_id = processing_class.eos_token_id if args.stop_token == "eos" else args.stop_token_id
        for module in (model, ref_model, value_model, reward_model):
            if module is not None:
                disable_dropout_in_model(module)
        clean_generation_config(model, processing_class, self.stop_token_id)
        super().__init__(
            model=PolicyAndValue(model, value_model), args=args, processing_class=processing_class,
            train_dataset=train_dataset, eval_dataset=eval_dataset, callbacks=callbacks,
        )  # fmt: skip
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            raise UserError(
                "the project's PPO runs on one process or under DDP, not under FSDP or DeepSpeed; launch it with "
                "configs/accelerate/ddp.yaml (with LoRA and 4-bit reward and value models on a smaller GPU)."
            )
        device = self.accelerator.device
        self.ref_model = ref_model.to(device) if ref_model is not None else None
        self.reward_model = (
            reward_model if getattr(reward_model, "is_loaded_in_4bit", False) else reward_model.to(device)
        )
        self.scorer = RewardScorer(
            self.reward_model, reward_processing_class or processing_class, args.reward_batch_size
        )
        self.sampling = sampling_config(args, self.stop_token_id, processing_class.pad_token_id)
        self.recompute_logprobs = bool(args.bf16)
        self.batches = Batches.of(args, self.accelerator.num_processes, len(train_dataset))
        self.local_seed = args.seed + self.accelerator.process_index * 100003  # a prime: every rank samples its own
        if args.gradient_checkpointing:
            self.unwrapped.gradient_checkpointing_enable(args.gradient_checkpointing_kwargs)

    @property
    def unwrapped(self) -> PolicyAndValue:
        return self.accelerator.unwrap_model(self.model)

    @property
    def policy_model(self):
        return self.unwrapped.policy

    @property
    def value_model(self):
        return self.unwrapped.value_model

    @contextlib.contextmanager
    def generation_context(self):
        """The policy and value model unwrapped for `generate`, gradient checkpointing off meanwhile (TRL's utility)."""
        from trl.models.utils import unwrap_model_for_generation

        with unwrap_model_for_generation(
            self.model_wrapped, self.accelerator, gather_deepspeed3_params=self.args.ds3_gather_for_generation,
            gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
        ) as unwrapped:  # fmt: skip
            yield unwrapped

    @contextlib.contextmanager
    def reference(self):
        """The reference policy: the policy with its adapter disabled, or the frozen copy."""
        if self.ref_model is not None:
            yield self.ref_model
            return
        policy = self.unwrapped.policy
        with policy.disable_adapter():
            yield policy

    def autocast(self):
        return torch.autocast(self.accelerator.device.type, dtype=torch.bfloat16, enabled=bool(self.args.bf16))

    # ------------------------------------------------------------------------------------------------ the loop
    def train(self, resume_from_checkpoint: str | None = None, **_) -> TrainOutput:
        args, batches = self.args, self.batches
        self.create_optimizer_and_scheduler(num_training_steps=batches.updates)
        loader = prompt_loader(
            self.train_dataset, self.processing_class, batches.local, args.train_sampling_strategy, args.seed
        )
        self.model_wrapped, self.optimizer, loader = self.accelerator.prepare(self.model, self.optimizer, loader)
        self.state = checkpoints.PPOState(
            stateful_callbacks=[c for c in self.callback_handler.callbacks + [self.control] if isinstance(c, ExportableState)]
        )  # fmt: skip
        self.state.max_steps, self.state.logging_steps = batches.updates, args.logging_steps
        self.state.save_steps, self.state.train_batch_size = args.save_steps, batches.local
        self.state.num_train_epochs = batches.updates * batches.total / len(self.train_dataset)
        done = 0
        if resume_from_checkpoint:
            saved = checkpoints.resume(self, resume_from_checkpoint)  # restores the RNG states of the checkpoint
            done, self.state.episode, self.state.log_history = saved.global_step, saved.episode, saved.log_history
            self.state.global_step, self.state.epoch = done, saved.epoch
        else:  # every RNG from a known state, whatever loading drew before
            set_seed(self.local_seed)
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        prompts = checkpoints.replay(loader, done)
        started = time.time()
        for _ in range(done, batches.updates):
            batch = next(prompts)
            self.state.episode += batches.total
            with self.autocast():
                rollout, stats = self.ppo_update(batch)
            self.state.global_step += 1
            self.state.epoch = self.state.episode / len(self.train_dataset)
            self._log_update(rollout, stats, started)
            self.lr_scheduler.step()
            self.control = self.callback_handler.on_step_end(args, self.state, self.control)
            if self.control.should_save:
                self._save_checkpoint(self.model_wrapped, trial=None)
                self.control = self.callback_handler.on_save(args, self.state, self.control)
        self.control = self.callback_handler.on_train_end(args, self.state, self.control)
        metrics = {"train_runtime": round(time.time() - started, 3), "episodes": self.state.episode}
        return TrainOutput(self.state.global_step, 0.0, metrics)

    def ppo_update(self, batch: dict) -> tuple[Rollout, dict]:
        """One PPO update on one batch of prompts, top to bottom."""
        args, model, batches = self.args, self.model_wrapped, self.batches
        # 1. Rollout: answers, log-probs of policy and reference, scores, values (no gradient). With one mini-batch
        #    on one process, the update's first forward pass runs at the rollout's weights: it gives the values (and
        #    under bf16 the log-probs) instead of a pass of its own, and keeps its graph for the first optimizer step
        model.eval()
        fused = batches.local_mini == batches.local and self.accelerator.num_processes == 1
        rollout = collect(self, batch["input_ids"], batch["prompt"], values=not fused)
        model.train()
        order = np.random.permutation(batches.local)  # the first epoch's order of rows
        first = self._first_pass(model, rollout, order) if fused else []
        mask, value_mask = rollout.mask, rollout.value_mask

        # 2. Rewards: -kl_coef x KL per token, and the score on the token after the answer's end
        with torch.no_grad():
            kl = losses.kl_penalty(rollout.logprobs, rollout.ref_logprobs, args.kl_estimator)
            rewards = losses.shaped_rewards(rollout.scores, kl, args.kl_coef, rollout.last)
            if args.whiten_rewards:
                rewards = torch.masked_fill(losses.whiten(rewards, value_mask, shift_mean=False), ~value_mask, 0)

            # 3. Advantages and returns (GAE), the advantages whitened over the answers' tokens
            advantages, returns = losses.gae(rewards, rollout.values, args.gamma, args.lam)
            advantages = torch.masked_fill(losses.whiten(advantages, mask), ~mask, 0)

        # 4. num_ppo_epochs passes in shuffled mini-batches, one optimizer step each
        stats = {key: [] for key in ("approxkl", "clipfrac", "policy_loss", "value_loss", "value_clipfrac",
                                     "entropy", "ratio")}  # fmt: skip
        for epoch in range(args.num_ppo_epochs):
            order = order if epoch == 0 else np.random.permutation(batches.local)
            for start in range(0, batches.local, batches.local_mini):
                pieces = self._pieces(order[start : start + batches.local_mini])
                for index, rows in enumerate(pieces):
                    sync = index == len(pieces) - 1  # DDP reduces the gradients once, on the last micro-batch
                    with contextlib.nullcontext() if sync else self.accelerator.no_sync(model):
                        output = first.pop(0) if first else self._forward(model, rollout, rows)
                        step = self._loss(output, rollout, rows, advantages, returns)
                        self.accelerator.backward(step.pop("loss") / len(pieces))
                    for key, value in step.items():
                        stats[key].append(value)
                if args.max_grad_norm:
                    self.accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad()
                heap.trim()  # the backward's freed activations: their pages back to the system (heap.py)
        return rollout, {key: torch.stack(values) for key, values in stats.items()}

    def _pieces(self, rows) -> list:
        """A mini-batch's rows in micro-batches of `per_device_train_batch_size`."""
        micro = self.args.per_device_train_batch_size
        return [rows[i : i + micro] for i in range(0, len(rows), micro)]

    def _first_pass(self, model, rollout: Rollout, order) -> list[dict]:
        """The first mini-batch's forward passes, graphs kept; their values (and under bf16 their log-probs) become the
        rollout's, which are then exactly what the first optimizer step's ratio and value clip start from."""
        outputs = [self._forward(model, rollout, rows) for rows in self._pieces(order)]
        values = torch.zeros(rollout.responses.shape, device=rollout.responses.device)
        for rows, output in zip(self._pieces(order), outputs):
            values[rows] = output["values"].detach().float()
            if self.recompute_logprobs:
                rollout.logprobs[rows] = output["logprobs"].detach()
        rollout.values = values
        return outputs

    def _forward(self, model, rollout: Rollout, rows) -> dict:
        """The update's pass over some rows: float32 logits, masked log-probs of the answers and values."""
        args, context = self.args, rollout.context_length
        query_responses = rollout.query_responses[rows]
        keep = query_responses.shape[1] - context + 1
        output, values = model(**rollout_inputs(query_responses, self.processing_class.pad_token_id),
                               logits_to_keep=keep)  # fmt: skip
        logits = output.logits[:, context - 1 : -1]
        logprobs = token_logprobs(logits, rollout.responses[rows], args.temperature)
        heap.trim()  # the pass's freed temporaries (its graph's saved tensors stay)
        return {
            "logits": logits,
            "logprobs": torch.masked_fill(logprobs, ~rollout.mask[rows], losses.INVALID_LOGPROB),
            "values": torch.masked_fill(values[:, context - 1 : -1].squeeze(-1), ~rollout.value_mask[rows], 0),
        }

    def _loss(self, output: dict, rollout: Rollout, rows, advantages, returns) -> dict:
        """The clipped policy loss plus vf_coef x the clipped value loss on some rows of the rollout."""
        args, mask, value_mask = self.args, rollout.mask[rows], rollout.value_mask[rows]
        policy = losses.policy_loss(output["logprobs"], rollout.logprobs[rows], advantages[rows], mask, args.cliprange)
        value = losses.value_loss(
            output["values"], rollout.values[rows], returns[rows], value_mask, args.cliprange_value
        )
        with torch.no_grad():
            entropy = losses.entropy(output["logits"] / (args.temperature + 1e-7)).mean()
        return {
            "loss": policy["loss"] + args.vf_coef * value["loss"],
            "approxkl": policy["approxkl"].detach(), "clipfrac": policy["clipfrac"].detach(),
            "policy_loss": policy["loss"].detach(), "value_loss": value["loss"].detach(),
            "value_clipfrac": value["clipfrac"].detach(), "entropy": entropy, "ratio": policy["ratio"].detach().mean(),
        }  # fmt: skip

    # ------------------------------------------------------------------------------------------- logging, saving
    def _log_update(self, rollout: Rollout, stats: dict, started: float) -> None:
        """TRL 1.12's statistics, under its names, averaged over every process."""
        args, mean = self.args, lambda value: self.accelerator.gather_for_metrics(value).float().mean().item()
        with torch.no_grad():
            kl = losses.kl_penalty(rollout.logprobs, rollout.ref_logprobs, args.kl_estimator)
            non_score = (-args.kl_coef * kl).sum(1).mean()
            answer_entropy = (-rollout.logprobs * rollout.mask).sum(1).mean()
        ratio = self.accelerator.gather_for_metrics(stats["ratio"])
        self.log({
            "eps": int(self.state.episode / max(time.time() - started, 1e-9)),
            "objective/kl": mean(kl.sum(1).mean()), "objective/entropy": mean(answer_entropy),
            "objective/non_score_reward": mean(non_score),
            "objective/rlhf_reward": mean(non_score + rollout.scores.mean()),
            "objective/scores": mean(rollout.scores.mean()),
            "policy/approxkl_avg": mean(stats["approxkl"]), "policy/clipfrac_avg": mean(stats["clipfrac"]),
            "loss/policy_avg": mean(stats["policy_loss"]), "loss/value_avg": mean(stats["value_loss"]),
            "val/clipfrac_avg": mean(stats["value_clipfrac"]), "policy/entropy_avg": mean(stats["entropy"]),
            "val/ratio": ratio.mean().item(), "val/ratio_var": ratio.var().item() if ratio.numel() > 1 else 0.0,
            "val/num_eos_tokens": (rollout.responses == self.processing_class.eos_token_id).sum().item(),
            "lr": self.lr_scheduler.get_last_lr()[0], "episode": self.state.episode,
        })  # fmt: skip
        every = max(1, self.batches.updates // args.num_sample_generations) if args.num_sample_generations else 0
        if every and (self.state.global_step - 1) % every == 0 and self.accelerator.is_main_process:
            for answer, score in list(zip(rollout.answers, rollout.scores.tolist()))[:3]:
                logger.info("update %d sample (score %.3f): %r", self.state.global_step, score, answer[:200])

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """The policy alone (its adapter, or the whole model) and the tokenizer: what the next stage loads."""
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        self.unwrapped.policy.save_pretrained(output_dir)
        self.processing_class.save_pretrained(output_dir)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        if _internal_call and self.args.should_save:  # a checkpoint: the value model's trained part goes too
            checkpoints.save_value_weights(self.unwrapped.value_model, output_dir)


def final_metrics(trainer) -> dict:
    """The last logged PPO statistics (reward, KL, losses); the run's time is added by `train_and_save`."""
    logged = [entry for entry in trainer.state.log_history if "objective/scores" in entry]
    return dict(logged[-1]) if logged else {}
