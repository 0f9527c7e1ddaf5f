"""PPO's checkpoints: every `save_steps` updates a `checkpoint-N` folder holds the policy (its adapter, or the whole
model), the value model's trained part, the optimizer, scheduler and RNG states and `trainer_state.json` (with the
update and episode counts), written last by Trainer's `_save_checkpoint`. A rerun of the same command resumes from
the last complete one: weights and states loaded, and the prompt batches already trained on replayed (the order
comes from the run's own seeded generator), so that the resumed run ends where an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from transformers import TrainerState

logger = logging.getLogger(__name__)
VALUE_WEIGHTS = "value_model.safetensors"  # the value model's trained part (LoRA + score head, or all of it)


@dataclasses.dataclass
class PPOState(TrainerState):
    """Trainer's state plus the episodes (answered prompts) so far."""

    episode: int = 0


def trained_state(model) -> dict[str, torch.Tensor]:
    names = {name for name, param in model.named_parameters() if param.requires_grad}
    return {name: tensor for name, tensor in model.state_dict().items() if name in names}


def save_value_weights(value_model, folder: str | Path) -> None:
    from safetensors.torch import save_file

    trained = {k: v.detach().cpu().contiguous() for k, v in trained_state(value_model).items()}
    save_file(trained, str(Path(folder) / VALUE_WEIGHTS))


def load_weights(trainer, folder: Path) -> None:
    """The policy's and the value model's trained weights from a checkpoint folder."""
    from safetensors.torch import load_file

    wrapper = trainer.unwrapped
    if trainer.is_peft_model:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(wrapper.policy, load_file(str(folder / "adapter_model.safetensors")))
    else:
        from transformers.modeling_utils import load_sharded_checkpoint

        load_sharded_checkpoint(wrapper.policy, str(folder), strict=True)
    saved = load_file(str(folder / VALUE_WEIGHTS))
    missing = set(trained_state(wrapper.value_model)) - set(saved)
    if missing:
        raise RuntimeError(f"{folder} lacks value-model weights {sorted(missing)[:3]}")
    wrapper.value_model.load_state_dict(saved, strict=False)


def resume(trainer, checkpoint: str) -> PPOState:
    """Load a complete checkpoint into `trainer` (weights, optimizer, scheduler, RNG) and return its saved state."""
    folder = Path(checkpoint)
    load_weights(trainer, folder)
    trainer._load_optimizer_and_scheduler(str(folder))
    trainer._load_rng_state(str(folder))
    state = PPOState.load_from_json(str(folder / "trainer_state.json"))
    logger.info("Resuming PPO after update %d of %d from %s", state.global_step, trainer.batches.updates, folder)
    return state


def replay(dataloader, batches: int):
    """Every batch of `dataloader`, endlessly, epoch after epoch, after skipping the first `batches` (already
    trained on): each skipped epoch draws its order from the sampler as the interrupted run did."""
    for _ in range(batches // len(dataloader)):
        for _ in dataloader:
            pass
    iterator = iter(dataloader)
    for _ in range(batches % len(dataloader)):
        next(iterator)
    yield from iterator
    while True:
        yield from dataloader
