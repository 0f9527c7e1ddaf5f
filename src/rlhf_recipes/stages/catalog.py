"""The catalogue: one `register(Stage(...))` per stage, in pipeline order. Adding a stage is one entry here, its recipe
(`recipes/<name>.py`) and its YAML per model folder (CONTRIBUTING.md walks through KTO); everything else (the pipeline,
the evaluation, the planner, bench, the config tests, the bad-input catalogue) reads the registry.
"""

from __future__ import annotations

from ..models import CAUSAL_LM, REWARD_MODEL
from .registry import register
from .stage import RECIPES, Stage, nested, types

TRL_SCRIPT, TRL_MODEL = "trl.ScriptArguments", "trl.ModelConfig"
RL_TARGETS = ("reward_gain", "judge_gain", "accuracy_kept", "kl_bound")

register(
    Stage(
        "data",
        "clean, deduplicate and decontaminate sources into the training formats (TRL's dataset types)",
        types("rlhf_recipes.data.config.DataConfig"),
        role="data",
        recipe=str(RECIPES / "prepare_data.py"),
        output_key="output_root",
        parse=nested("rlhf_recipes.data.config:parse_argv"),
    )
)
register(
    Stage(
        "cpt",
        "continued pretraining: next-token loss on raw domain text, packed",
        types(TRL_SCRIPT, "rlhf_recipes.train.sft.SFTConfig", TRL_MODEL),
        model_keys={"model_name_or_path": CAUSAL_LM},
        makes=CAUSAL_LM,
        columns=("text",),
        plan="rlhf_recipes.plan.estimate:plan_lm_stage",
        targets=("perplexity_vs_base",),
    )
)
register(
    Stage(
        "sft",
        "supervised fine-tuning: conversations, loss on assistant tokens only",
        types(TRL_SCRIPT, "rlhf_recipes.train.sft.SFTConfig", TRL_MODEL),
        model_keys={"model_name_or_path": CAUSAL_LM},
        makes=CAUSAL_LM,
        columns=("messages",),
        plan="rlhf_recipes.plan.estimate:plan_lm_stage",
        targets=("accuracy_vs_base",),
    )
)
register(
    Stage(
        "reward",
        "reward model: a score head trained on (prompt, chosen, rejected) pairs with the pairwise loss",
        types(TRL_SCRIPT, "rlhf_recipes.train.reward.RewardConfig", TRL_MODEL),
        # a causal LM (a new score head), or an earlier reward model trained further (the feedback rounds)
        model_keys={"model_name_or_path": (CAUSAL_LM, REWARD_MODEL)},
        makes=REWARD_MODEL,
        columns=("chosen", "rejected"),
        plan="rlhf_recipes.plan.estimate:plan_lm_stage",
        targets=("pairwise_accuracy",),
    )
)
register(
    Stage(
        "ppo",
        "PPO: the SFT policy against the reward model, with a value model and a KL penalty",
        types(TRL_SCRIPT, "rlhf_recipes.train.ppo.PPOConfig", TRL_MODEL),
        role="rl",
        model_keys={"model_name_or_path": CAUSAL_LM, "reward_model_path": REWARD_MODEL},
        makes=CAUSAL_LM,
        columns=("prompt",),
        plan="rlhf_recipes.plan.estimate:plan_ppo_stage",
        baseline="sft",
        targets=RL_TARGETS,
    )
)
ONLINE_RL = dict(
    role="rl",
    model_keys={"model_name_or_path": CAUSAL_LM, "reward_model_path": REWARD_MODEL},
    makes=CAUSAL_LM,
    columns=("prompt",),
    plan="rlhf_recipes.plan.estimate:plan_online_stage",
    baseline="sft",
    targets=RL_TARGETS,
)
register(
    Stage(
        "grpo",
        "GRPO: groups of sampled answers per prompt, each scored by the reward model against its group's mean",
        types(TRL_SCRIPT, "rlhf_recipes.train.online.GRPOConfig", TRL_MODEL),
        **ONLINE_RL,
    )
)
register(
    Stage(
        "rloo",
        "RLOO: REINFORCE with the other answers to the same prompt as each answer's baseline",
        types(TRL_SCRIPT, "rlhf_recipes.train.online.RLOOConfig", TRL_MODEL),
        **ONLINE_RL,
    )
)
register(
    Stage(
        "online_dpo",
        "online DPO: two sampled answers per prompt, ranked by the reward model, and the DPO loss on the pair",
        types(TRL_SCRIPT, "rlhf_recipes.train.online_dpo.OnlineDPOConfig", TRL_MODEL),
        **ONLINE_RL,
    )
)
register(
    Stage(
        "dpo",
        "DPO: the SFT policy trained on the preference pairs directly, against itself as reference",
        types(TRL_SCRIPT, "trl.DPOConfig", TRL_MODEL),
        role="rl",
        model_keys={"model_name_or_path": CAUSAL_LM},
        makes=CAUSAL_LM,
        columns=("chosen", "rejected"),
        plan="rlhf_recipes.plan.estimate:plan_lm_stage",
        baseline="sft",
        targets=RL_TARGETS,
    )
)
register(
    Stage(
        "kto",
        "KTO: the SFT policy trained on unpaired feedback (each answer a thumbs up or down), against itself as reference",
        types(TRL_SCRIPT, "trl.KTOConfig", TRL_MODEL),
        role="rl",
        model_keys={"model_name_or_path": CAUSAL_LM},
        makes=CAUSAL_LM,
        columns=("prompt", "completion", "label"),
        plan="rlhf_recipes.plan.estimate:plan_lm_stage",
        baseline="sft",
        targets=RL_TARGETS,
    )
)
register(
    Stage(
        "collect",
        "K sampled answers per prompt from a stage's model (or rankings imported) into the comparison store",
        types("rlhf_recipes.feedback.config.CollectArguments"),
        role="feedback",
        model_keys={"model": CAUSAL_LM},
    )
)
register(
    Stage(
        "label",
        "the answers ranked by people in a web page or by a model, exported as preference pairs grouped by prompt",
        types("rlhf_recipes.feedback.config.LabelArguments"),
        role="feedback",
    )
)
register(
    Stage(
        "eval",
        "evaluation of every stage against the one before it, on held-out data",
        types("rlhf_recipes.evaluation.config.EvaluationArguments"),
        role="eval",
    )
)
register(
    Stage(
        "publish",
        "merge, check, card and push a finished stage's output",
        types("rlhf_recipes.publish.hub.PublishArguments"),
        role="publish",
    )
)
register(
    Stage(
        "pipeline",
        "every stage in order, each its own recipe in a subprocess",
        types("rlhf_recipes.pipeline.spec.PipelineConfig"),
        role="pipeline",
        parse=nested("rlhf_recipes.pipeline.spec:parse_argv"),
    )
)
