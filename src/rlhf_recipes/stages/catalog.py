"""The catalogue: one `register(Stage(...))` per stage, in pipeline order. Adding a stage is one entry here, its recipe
(`recipes/<name>.py`) and its YAML per model folder (CONTRIBUTING.md walks through KTO); everything else (the pipeline,
the evaluation, the planner, bench, the config tests, the bad-input catalogue) reads the registry. `stage.py` says
what each field means; the dicts below hold what several stages share.
"""

from __future__ import annotations

from collections.abc import Callable

from ..models import CAUSAL_LM, REWARD_MODEL
from .registry import register
from .stage import RECIPES, Stage, nested, types

TRL_SCRIPT, TRL_MODEL = "trl.ScriptArguments", "trl.ModelConfig"
RL_TARGETS = ("reward_gain", "judge_gain", "accuracy_kept", "kl_bound")
PLAN_LM, PLAN_PPO, PLAN_ONLINE = (f"rlhf_recipes.plan.estimate:plan_{kind}_stage" for kind in ("lm", "ppo", "online"))
# A causal LM in, a causal LM out (LoRA or full fine-tuning), planned as one model on batches of max_length tokens
LM = dict(model_keys={"model_name_or_path": CAUSAL_LM}, makes=CAUSAL_LM, plan=PLAN_LM)
# RL from the SFT policy, evaluated against it: offline on data (DPO, KTO); online against the reward model
RL = dict(role="rl", makes=CAUSAL_LM, baseline="sft", targets=RL_TARGETS)
OFFLINE_RL = dict(RL, model_keys={"model_name_or_path": CAUSAL_LM}, plan=PLAN_LM)
ONLINE_RL = dict(
    RL, columns=("prompt",), model_keys={"model_name_or_path": CAUSAL_LM, "reward_model_path": REWARD_MODEL}
)


def trl_types(config: str) -> Callable[[], tuple]:
    """A training stage's dataclasses: TRL's script and model arguments around its own config class."""
    return types(TRL_SCRIPT, config, TRL_MODEL)


register(Stage(
    "data", "clean, deduplicate and decontaminate sources into the training formats (TRL's dataset types)",
    types("rlhf_recipes.data.config.DataConfig"), role="data", recipe=str(RECIPES / "prepare_data.py"),
    output_key="output_root", parse=nested("rlhf_recipes.data.config:parse_argv"),
))  # fmt: skip
register(Stage(
    "cpt", "continued pretraining: next-token loss on raw domain text, packed",
    trl_types("rlhf_recipes.train.sft.SFTConfig"), columns=("text",), targets=("perplexity_vs_base",), **LM,
))  # fmt: skip
register(Stage(
    "sft", "supervised fine-tuning: conversations, loss on assistant tokens only",
    trl_types("rlhf_recipes.train.sft.SFTConfig"), columns=("messages",), targets=("accuracy_vs_base",), **LM,
))  # fmt: skip
register(Stage(
    "reward", "reward model: a score head trained on (prompt, chosen, rejected) pairs with the pairwise loss",
    trl_types("rlhf_recipes.train.reward.RewardConfig"),
    # a causal LM (a new score head), or an earlier reward model trained further (the feedback rounds)
    model_keys={"model_name_or_path": (CAUSAL_LM, REWARD_MODEL)}, makes=REWARD_MODEL, columns=("chosen", "rejected"),
    plan=PLAN_LM, targets=("pairwise_accuracy",),
))  # fmt: skip
register(Stage(
    "ppo", "PPO: the SFT policy against the reward model, with a value model and a KL penalty",
    trl_types("rlhf_recipes.train.ppo.PPOConfig"), **{**ONLINE_RL, "plan": PLAN_PPO},
))  # fmt: skip
register(Stage(
    "grpo", "GRPO: groups of sampled answers per prompt, each scored by the reward model against its group's mean",
    trl_types("rlhf_recipes.train.online.GRPOConfig"), plan=PLAN_ONLINE, **ONLINE_RL,
))  # fmt: skip
register(Stage(
    "rloo", "RLOO: REINFORCE with the other answers to the same prompt as each answer's baseline",
    trl_types("rlhf_recipes.train.online.RLOOConfig"), plan=PLAN_ONLINE, **ONLINE_RL,
))  # fmt: skip
register(Stage(
    "online_dpo",
    "online DPO: two sampled answers per prompt, ranked by the reward model, and the DPO loss on the pair",
    trl_types("rlhf_recipes.train.online_dpo.OnlineDPOConfig"), plan=PLAN_ONLINE, **ONLINE_RL,
))  # fmt: skip
register(Stage(
    "dpo", "DPO: the SFT policy trained on the preference pairs directly, against itself as reference",
    trl_types("trl.DPOConfig"), columns=("chosen", "rejected"), **OFFLINE_RL,
))  # fmt: skip
register(Stage(
    "kto",
    "KTO: the SFT policy trained on unpaired feedback (each answer a thumbs up or down), against itself as reference",
    trl_types("trl.KTOConfig"), columns=("prompt", "completion", "label"), **OFFLINE_RL,
))  # fmt: skip
register(Stage(
    "collect", "K sampled answers per prompt from a stage's model (or rankings imported) into the comparison store",
    types("rlhf_recipes.feedback.config.CollectArguments"), role="feedback", model_keys={"model": CAUSAL_LM},
))  # fmt: skip
register(Stage(
    "label",
    "the answers ranked by people in a web page or by a model, exported as preference pairs grouped by prompt",
    types("rlhf_recipes.feedback.config.LabelArguments"), role="feedback",
))  # fmt: skip
register(Stage(
    "eval", "evaluation of every stage against the one before it, on held-out data",
    types("rlhf_recipes.evaluation.config.EvaluationArguments"), role="eval",
))  # fmt: skip
register(Stage(
    "publish", "merge, check, card and push a finished stage's output",
    types("rlhf_recipes.publish.hub.PublishArguments"), role="publish",
))  # fmt: skip
register(Stage(
    "pipeline", "every stage in order, each its own recipe in a subprocess",
    types("rlhf_recipes.pipeline.spec.PipelineConfig"), role="pipeline",
    parse=nested("rlhf_recipes.pipeline.spec:parse_argv"),
))  # fmt: skip
