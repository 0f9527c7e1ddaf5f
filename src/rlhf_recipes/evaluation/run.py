"""Measure every stage against the one before it, with local `evaluate` modules (the Hub is out of reach).

- held-out perplexity on domain text (base vs CPT, and every other model given);
- accuracy on held-out domain questions, normalised answer matching (base vs SFT vs PPO);
- the reward model's pairwise accuracy on held-out preference pairs;
- PPO: mean reward on held-out prompts against the SFT model's, and the KL to the SFT reference;
- side-by-side answers, `eval.json`, `report.md` and PNG plots (loss curves, PPO reward and KL).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..cli import UserError
from ..models import DEFAULT_MODEL, load_tokenizer, read_lineage, resolve_model_path

logger = logging.getLogger(__name__)
METRICS = Path(__file__).parent / "metrics"
CAUSAL_STAGES = ("base", "cpt", "sft", "ppo")


@dataclass
class EvaluationArguments:
    base_model: str = field(default=DEFAULT_MODEL, metadata={"help": "The starting model (embedded, Hub id, folder)."})
    cpt_model: str | None = field(default=None, metadata={"help": "Continued-pretraining output to evaluate."})
    sft_model: str | None = field(default=None, metadata={"help": "SFT output to evaluate."})
    ppo_model: str | None = field(default=None, metadata={"help": "PPO output to evaluate (needs sft_model for KL)."})
    reward_model: str | None = field(
        default=None, metadata={"help": "Reward model output to evaluate and score with."}
    )
    text_dataset: str = field(default="data/demo/cpt", metadata={"help": "Held-out domain text (`text` column)."})
    qa_dataset: str = field(default="data/demo/qa", metadata={"help": "Held-out questions (`question`, `answer`)."})
    preference_dataset: str = field(default="data/demo/preferences", metadata={"help": "Held-out preference pairs."})
    prompt_dataset: str = field(default="data/demo/prompts", metadata={"help": "Held-out PPO prompts."})
    eval_split: str = field(default="test", metadata={"help": "The split of every dataset above to evaluate on."})
    max_rows: int | None = field(default=None, metadata={"help": "Evaluate only the first N rows of each set."})
    output_dir: str = field(default="outputs/smollm2-135m/eval", metadata={"help": "Where eval.json, report.md go."})
    max_new_tokens: int = field(default=48, metadata={"help": "Tokens generated per answer."})
    batch_size: int = field(default=16, metadata={"help": "Sequences per forward pass or generate call."})
    max_length: int = field(default=512, metadata={"help": "Longest tokenized text scored."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature for the reward and KL answers."})
    num_side_by_side: int = field(default=5, metadata={"help": "Questions shown with every stage's answer."})
    seed: int = 0
    bf16: bool = field(
        default=True, metadata={"help": "On CPU, run forward passes under bf16 autocast (as training)."}
    )
    target_perplexity_ratio: float = field(default=0.8, metadata={"help": "CPT perplexity must be <= this x base."})
    target_sft_accuracy_gain: float = field(default=0.20, metadata={"help": "SFT accuracy must be >= base + this."})
    target_reward_accuracy: float = field(default=0.80, metadata={"help": "Reward model pairwise accuracy target."})
    target_ppo_accuracy_drop: float = field(
        default=0.05, metadata={"help": "PPO accuracy may fall this much below SFT."}
    )


def load_metric(name: str):
    import evaluate

    return evaluate.load(str(METRICS / name))


def _split(name: str, split: str, columns: tuple[str, ...], max_rows: int | None = None):
    from datasets import load_dataset

    try:
        dataset = load_dataset(name, split=split)
    except (FileNotFoundError, ValueError) as error:
        raise UserError(f"cannot load the '{split}' split of {name}: {' '.join(str(error).split())[:200]}") from None
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise UserError(
            f"{name} ({split}) lacks column(s) {', '.join(missing)}; it has {', '.join(dataset.column_names)}."
        )
    return dataset


def _as_messages(prompt) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


class LoadedModel:
    """A causal LM (adapters merged through the cache) with its tokenizer, padded on the left for generation."""

    def __init__(self, model_name_or_path: str):
        import torch
        from transformers import AutoModelForCausalLM

        path = resolve_model_path(model_name_or_path)
        self.tokenizer = load_tokenizer(path, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def perplexity_terms(self, texts: list[str], max_length: int, batch_size: int) -> tuple[list[float], list[int]]:
        import torch

        nll_sums, counts = [], []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                texts[start : start + batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_length,
            )
            with torch.no_grad():
                logits = self.model(**batch).logits[:, :-1].float()
            targets, mask = batch["input_ids"][:, 1:], batch["attention_mask"][:, 1:]
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none") * mask
            nll_sums += nll.sum(1).tolist()
            counts += mask.sum(1).tolist()
        return nll_sums, counts

    def generate(self, prompts: list, max_new_tokens: int, batch_size: int, temperature: float | None = None):
        """Answers (text) and the token ids of prompt + answer, greedy unless a temperature is given."""
        import torch

        answers, sequences = [], []
        for start in range(0, len(prompts), batch_size):
            chats = [_as_messages(p) for p in prompts[start : start + batch_size]]
            batch = self.tokenizer.apply_chat_template(
                chats, add_generation_prompt=True, return_tensors="pt", return_dict=True, padding=True
            )
            sampling = {"do_sample": True, "temperature": temperature} if temperature else {"do_sample": False}
            with torch.no_grad():
                output = self.model.generate(
                    **batch, max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id, **sampling
                )
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            answers += self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for row, prompt_ids, mask in zip(new_tokens, batch["input_ids"], batch["attention_mask"]):
                keep = row.tolist()
                if self.tokenizer.eos_token_id in keep:
                    keep = keep[: keep.index(self.tokenizer.eos_token_id) + 1]
                sequences.append((prompt_ids[mask.bool()].tolist(), keep))
        return [a.strip() for a in answers], sequences

    def response_logprob(self, sequences: list[tuple[list[int], list[int]]]) -> list[float]:
        """Summed log-probability of each response given its prompt."""
        import torch

        totals = []
        for prompt_ids, response_ids in sequences:
            ids = torch.tensor([prompt_ids + response_ids])
            with torch.no_grad():
                logprobs = torch.log_softmax(self.model(ids).logits[0, :-1].float(), -1)
            picked = logprobs[len(prompt_ids) - 1 :].gather(1, ids[0, len(prompt_ids) :, None])
            totals.append(picked.sum().item())
        return totals


class RewardScorer:
    def __init__(self, model_name_or_path: str):
        import torch
        from transformers import AutoModelForSequenceClassification

        path = resolve_model_path(model_name_or_path)
        self.tokenizer = load_tokenizer(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32).eval()

    def score(self, conversations: list[list[dict]], batch_size: int, max_length: int) -> list[float]:
        import torch

        scores = []
        for start in range(0, len(conversations), batch_size):
            texts = [
                self.tokenizer.apply_chat_template(c, tokenize=False)
                for c in conversations[start : start + batch_size]
            ]
            batch = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
            with torch.no_grad():
                scores += self.model(**batch).logits[:, 0].float().tolist()
        return scores


def _result(stage, task, dataset, metric, value) -> dict:
    return {"stage": stage, "task": task, "dataset": dataset, "metric": metric, "value": round(float(value), 4)}


def run_evaluation(args: EvaluationArguments) -> dict:
    import torch

    on_cpu = not torch.cuda.is_available()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16 and on_cpu):
        report = _evaluate(args)
    write_report(report, args)
    return report


def _evaluate(args: EvaluationArguments) -> dict:
    import torch
    from tqdm.auto import tqdm

    torch.manual_seed(args.seed)
    stages = {s: getattr(args, f"{s}_model") for s in CAUSAL_STAGES if getattr(args, f"{s}_model")}
    texts = _split(args.text_dataset, args.eval_split, ("text",), args.max_rows)["text"]
    qa = _split(args.qa_dataset, args.eval_split, ("question", "answer"), args.max_rows)
    references = [[row["answer"], *(row.get("aliases") or [])] for row in qa]
    prompts = (
        _split(args.prompt_dataset, args.eval_split, ("prompt",), args.max_rows)["prompt"] if "ppo" in stages else []
    )
    perplexity, accuracy = load_metric("token_perplexity"), load_metric("domain_accuracy")
    results, answers, sampled, kept = [], {}, {}, {}

    for stage, path in tqdm(stages.items(), desc="Evaluating models", unit="model"):
        logger.info("Evaluating %s: %s", stage, path)
        loaded = LoadedModel(path)
        nll_sums, counts = loaded.perplexity_terms(texts, args.max_length, args.batch_size)
        ppl = perplexity.compute(nll_sums=nll_sums, token_counts=counts)["perplexity"]
        results.append(_result(stage, "held-out-perplexity", args.text_dataset, "perplexity", ppl))
        answers[stage], _ = loaded.generate(qa["question"], args.max_new_tokens, args.batch_size)
        acc = accuracy.compute(predictions=answers[stage], references=references)["accuracy"]
        results.append(_result(stage, "domain-qa", args.qa_dataset, "accuracy", acc))
        if stage in ("sft", "ppo") and prompts:
            torch.manual_seed(args.seed)
            sampled[stage] = loaded.generate(prompts, args.max_new_tokens, args.batch_size, args.temperature)
            kept[stage] = loaded
        else:
            del loaded

    if "ppo" in sampled and "sft" in kept:  # KL(PPO || SFT) estimated on PPO's own samples
        sequences = sampled["ppo"][1]
        kl = [p - s for p, s in zip(kept["ppo"].response_logprob(sequences), kept["sft"].response_logprob(sequences))]
        results.append(_result("ppo", "held-out-prompts", args.prompt_dataset, "kl_to_sft", sum(kl) / len(kl)))
    kept.clear()

    if args.reward_model:
        scorer = RewardScorer(args.reward_model)
        pairs = _split(args.preference_dataset, args.eval_split, ("prompt", "chosen", "rejected"), args.max_rows)

        def conversations(column):
            return [
                _as_messages(r["prompt"]) + _as_messages(r[column])
                if not isinstance(r[column], str)
                else _as_messages(r["prompt"]) + [{"role": "assistant", "content": r[column]}]
                for r in pairs
            ]

        chosen = scorer.score(conversations("chosen"), args.batch_size, args.max_length)
        rejected = scorer.score(conversations("rejected"), args.batch_size, args.max_length)
        pairwise = load_metric("pairwise_accuracy").compute(chosen_rewards=chosen, rejected_rewards=rejected)
        results.append(
            _result("reward", "preference-pairs", args.preference_dataset, "accuracy", pairwise["accuracy"])
        )
        for stage, (stage_answers, _) in sampled.items():
            rewards = scorer.score(
                [_as_messages(p) + [{"role": "assistant", "content": a}] for p, a in zip(prompts, stage_answers)],
                args.batch_size,
                args.max_length,
            )
            results.append(
                _result(stage, "held-out-prompts", args.prompt_dataset, "mean_reward", sum(rewards) / len(rewards))
            )

    side_by_side = [
        {"question": q, "reference": ref[0], **{stage: answers[stage][i] for stage in answers}}
        for i, (q, ref) in enumerate(zip(qa["question"][: args.num_side_by_side], references))
    ]
    report = {
        "models": {**stages, "reward": args.reward_model},
        "results": results,
        "targets": check_targets(results, args),
        "side_by_side": side_by_side,
    }
    return report


def value(results: list[dict], stage: str, metric: str) -> float | None:
    return next((r["value"] for r in results if r["stage"] == stage and r["metric"] == metric), None)


def check_targets(results: list[dict], args: EvaluationArguments) -> list[dict]:
    """The demo's targets, each with the numbers it compares and whether it is met (None: not measured)."""

    def target(name, measured, threshold, met):
        ok = None if measured is None or threshold is None else bool(met(measured, threshold))
        return {"target": name, "measured": measured, "threshold": threshold, "met": ok}

    base_ppl, base_acc, sft_acc = (
        value(results, "base", "perplexity"),
        value(results, "base", "accuracy"),
        value(results, "sft", "accuracy"),
    )
    sft_reward = value(results, "sft", "mean_reward")
    return [
        target(
            "CPT perplexity <= ratio x base",
            value(results, "cpt", "perplexity"),
            base_ppl and round(base_ppl * args.target_perplexity_ratio, 4),
            lambda m, t: m <= t,
        ),
        target(
            "SFT accuracy >= base + gain",
            sft_acc,
            base_acc is not None and round(base_acc + args.target_sft_accuracy_gain, 4),
            lambda m, t: m >= t,
        ),
        target(
            "RM held-out pairwise accuracy",
            value(results, "reward", "accuracy"),
            args.target_reward_accuracy,
            lambda m, t: m >= t,
        ),
        target("PPO mean reward > SFT's", value(results, "ppo", "mean_reward"), sft_reward, lambda m, t: m > t),
        target(
            "PPO accuracy >= SFT - drop",
            value(results, "ppo", "accuracy"),
            sft_acc is not None and round(sft_acc - args.target_ppo_accuracy_drop, 4),
            lambda m, t: m >= t,
        ),
    ]


def summary_table(report: dict) -> str:
    """Markdown: one row per metric, one column per stage."""
    stages = [s for s in (*CAUSAL_STAGES, "reward") if any(r["stage"] == s for r in report["results"])]
    metrics = list(dict.fromkeys((r["task"], r["metric"]) for r in report["results"]))
    lines = ["| task | metric | " + " | ".join(stages) + " |", "|---|---|" + "---|" * len(stages)]
    for task, metric in metrics:
        cells = [
            next(
                (
                    f"{r['value']:.4g}"
                    for r in report["results"]
                    if r["stage"] == s and r["task"] == task and r["metric"] == metric
                ),
                "",
            )
            for s in stages
        ]
        lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
    lines += ["", "| target | measured | threshold | met |", "|---|---|---|---|"]
    for t in report["targets"]:
        mark = {True: "yes", False: "NO", None: "not measured"}[t["met"]]
        lines.append(f"| {t['target']} | {t['measured']} | {t['threshold']} | {mark} |")
    return "\n".join(lines)


def plot_training(stage_dirs: dict[str, str], output_dir: Path) -> list[str]:
    """One panel per trained stage: loss and eval loss, and for PPO its reward and KL (the model card's plot)."""
    from ..publish.cards import TRAINING_CURVES, plot_training_curves

    lineages = [lineage for folder in stage_dirs.values() if folder and (lineage := read_lineage(folder))]
    return [TRAINING_CURVES] if plot_training_curves(lineages, output_dir / TRAINING_CURVES) else []


def write_report(report: dict, args: EvaluationArguments) -> None:
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    stage_dirs = {s: getattr(args, f"{s}_model") for s in ("cpt", "sft", "reward", "ppo")}
    report["plots"] = plot_training(stage_dirs, output_dir)
    lines = ["# Evaluation", "", summary_table(report), "", "## Side by side", ""]
    for row in report["side_by_side"]:
        lines.append(f"**Q:** {row['question']}  \n*reference:* {row['reference']}")
        lines += [f"- **{stage}:** {row[stage]}" for stage in CAUSAL_STAGES if stage in row]
        lines.append("")
    lines += [f"![{p}]({p})" for p in report["plots"]]
    (output_dir / "report.md").write_text("\n".join(lines) + "\n")
    tmp = output_dir / "eval.json.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(output_dir / "eval.json")  # written last: its presence marks a finished evaluation
