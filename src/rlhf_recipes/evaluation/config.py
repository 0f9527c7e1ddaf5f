"""`recipes/eval.py`'s settings: which models, which held-out data, how answers are sampled, which targets."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import help_field as _help
from ..models import DEFAULT_MODEL


@dataclass
class EvaluationArguments:
    models: dict[str, str] = _help(
        "name -> model (folder, Hub id, embedded:...). Each is evaluated as the stage that made it (its lineage.json "
        "says which, stages.py says what that stage is measured on); the one named `base` is the starting point.",
        default_factory=lambda: {"base": DEFAULT_MODEL},
    )
    reward_model: str | None = _help(
        "the reward model to score with (and whose pairwise accuracy is measured)", default=None
    )
    judge: str = _help(
        "the judge the reward model never saw: `demo` (rule-based over the demo world's facts and styles), "
        "`reward:<folder>` (a held-out reward model, not the trained one), `lm:<model>` (a judge LM with a rubric), "
        "or `none`",
        default="demo",
    )
    text_dataset: str | None = _help(
        "held-out domain text (`text` column); null: no perplexity is measured", default="data/demo/cpt"
    )
    qa_dataset: str | None = _help(
        "held-out questions (`question`, `answer`, `aliases`); null: no domain accuracy is measured",
        default="data/demo/qa",
    )
    preference_dataset: str = _help("held-out preference pairs", default="data/demo/preferences")
    prompt_dataset: str = _help("held-out prompts that RL models answer", default="data/demo/prompts")
    eval_split: str = _help("the split of every dataset above to evaluate on", default="test")
    max_rows: int | None = _help("evaluate only the first N rows of each set", default=None)
    skip: list[str] = _help(
        "MODEL.TASK measurements to leave out (tasks: held-out-perplexity, domain-qa), e.g. cpt.domain-qa when no "
        "target reads it; a skipped cell says so in the report",
        default_factory=list,
    )
    reward_accuracy_from_lineage: bool = _help(
        "take the reward model's held-out pairwise accuracy from its lineage.json when the reward stage measured it "
        "on the same split of the same data (same pairs, same scores: a test holds the two equal); false measures "
        "it again",
        default=True,
    )
    paired: dict[str, str] = _help(
        "extra paired comparisons, model -> the model it is compared with on the same prompts and sampling seeds "
        "(e.g. round2: round1 for feedback rounds): reward and judge differences with 95% bootstrap intervals",
        default_factory=dict,
    )
    samples_per_prompt: int = _help("sampled answers per held-out prompt (reward, judge, KL)", default=2)
    output_dir: str = _help("where eval.json, report.md and the plots go", default="outputs/smollm2-135m/eval")
    max_new_tokens: int = _help(
        "tokens per sampled answer to a held-out prompt (RL models: their response_length)", default=48
    )
    qa_max_new_tokens: int = _help(
        "tokens per greedy answer to a held-out question (the demo's answers take ~15)", default=32
    )
    batch_size: int = _help("sequences per forward pass or generate call", default=16)
    max_length: int = _help("longest tokenized text scored", default=512)
    temperature: float = _help("sampling temperature of the reward, judge and KL answers (PPO's)", default=0.7)
    num_side_by_side: int = _help("questions shown with every model's answer", default=5)
    seed: int = _help("seed of the sampled answers (every model samples with the same seeds)", default=0)
    bootstrap_samples: int = _help("resamples of the paired bootstrap intervals", default=2000)
    bf16: bool = _help(
        "bf16 forward passes; `auto` in the YAML (the default) means where the hardware has native bf16", default=False
    )
    use_cpu: bool = _help("evaluate on the CPU even when a GPU is visible", default=False)
    target_perplexity_ratio: float = _help("CPT: perplexity at most this x the base model's", default=0.8)
    target_sft_accuracy_gain: float = _help("SFT: domain accuracy at least the base's + this", default=0.20)
    target_reward_accuracy: float = _help("reward model: held-out pairwise accuracy at least this", default=0.80)
    target_reward_effect: float = _help(
        "RL: mean reward over its baseline's by at least this many of the baseline rewards' standard deviations, with "
        "a 95% interval that excludes zero",
        default=0.5,
    )
    target_judge_gain: float = _help(
        "RL: judge score at least its baseline's + this (the demo judge: 0-100; a reward-model judge: its own scale)",
        default=10.0,
    )
    target_judge_interval: bool = _help(
        "RL: the judge gain's paired 95% bootstrap interval must also lie above zero", default=False
    )
    target_accuracy_drop: float = _help("RL: domain accuracy at least its baseline's - this", default=0.02)
    target_kl_per_token: float = _help(
        "RL: KL to the baseline per answer token at most this (nats); see README for the bound", default=0.1
    )
