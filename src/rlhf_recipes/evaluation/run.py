"""Measure every model against the one before it, on held-out data, and say only what was measured.

Each model given in `models:` is evaluated as the stage that made it (its lineage.json; the registry says what that
stage is): every causal LM on held-out perplexity and domain accuracy (greedy, normalised answer matching); RL
outputs and their baselines on sampled answers to held-out prompts: mean reward (the one scoring path), the judge
the reward model never saw, KL to the baseline, answer length, the share cut without an end-of-turn token and the
reward-length correlation; the reward model on held-out pairs. Targets whose inputs are missing are "not measured".
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from .. import stages
from ..errors import UserError
from ..models import CAUSAL_LM, REWARD_MODEL, model_kind, read_lineage
from ..stages.validation import check_model
from . import pairs as held_out
from .config import EvaluationArguments
from .loaded import LoadedModel, as_messages
from .probes import common_phrase, correlation, gain_at_equal_length, mean_interval, paired_difference, refusal_share
from .targets import check_targets, reward_label

logger = logging.getLogger(__name__)
METRICS = Path(__file__).parent / "metrics"
SKIPPABLE = ("held-out-perplexity", "domain-qa")


def load_metric(name: str):
    import evaluate

    return evaluate.load(str(METRICS / name))


def load_split(name: str, split: str, columns: tuple[str, ...], max_rows: int | None = None):
    """One held-out split, checked for `columns`, cut to its first `max_rows` rows."""
    from datasets import load_dataset

    try:
        dataset = load_dataset(name, split=split)
    except Exception as error:  # datasets raises many kinds for unreadable data; all are the user's to fix
        raise UserError(f"cannot load the '{split}' split of {name}: {' '.join(str(error).split())[:200]}") from None
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise UserError(
            f"{name} ({split}) lacks column(s) {', '.join(missing)}; it has {', '.join(dataset.column_names)}."
        )
    if len(dataset) == 0:
        raise UserError(f"{name} ({split}) has no rows.")
    return dataset.select(range(min(max_rows, len(dataset)))) if max_rows else dataset


def _result(model, task, dataset, metric, value, low=None, high=None, n=None) -> dict:
    entry = {"stage": model, "task": task, "dataset": dataset, "metric": metric, "value": _round(value)}
    if low is not None and not math.isnan(low):
        entry.update(low=_round(low), high=_round(high))
    if n is not None:
        entry["n"] = n
    return entry


def _round(value):
    return round(float(value), 4) if value is not None and not math.isnan(float(value)) else None


def describe_models(args: EvaluationArguments) -> dict[str, dict]:
    """name -> {path, stage (registry name or None for a base model), role}; every model checked for its kind."""
    described = {}
    for name, path in args.models.items():
        if not path:
            continue
        check_model(path, f"models.{name}", CAUSAL_LM, "")
        if model_kind(path) == REWARD_MODEL:
            raise UserError(
                f"models.{name}={path} is a reward model; give it as reward_model, not as a model to answer."
            )
        lineage = read_lineage(path) if Path(path).is_dir() else None
        stage = lineage.get("stage") if lineage else None
        spec = stages.get(stage) if stage in stages.names() else None
        described[name] = {"path": path, "stage": stage, "role": spec.role if spec else "base", "spec": spec}
    if args.reward_model:
        check_model(args.reward_model, "reward_model", REWARD_MODEL, "")
    for name, info in described.items():  # an RL model is compared with the model of its baseline stage
        spec = info["spec"]
        info["baseline"] = None
        if spec is not None and spec.baseline:
            info["baseline"] = next((n for n, i in described.items() if i["stage"] == spec.baseline), None)
        if spec is not None and spec.role == "rl" and info["baseline"] is None:  # no SFT here: where RL started
            info["baseline"] = starting_model(name, info, described)
    # baselines first, whatever the order of `models:`: an RL model's KL needs its baseline's log-probs at hand
    return dict(sorted(described.items(), key=lambda item: item[1]["baseline"] is not None))


def placement(args: EvaluationArguments) -> tuple:
    """(device, weights' dtype) of every evaluated model: on a GPU (unless use_cpu) in bf16 when `bf16`, else the CPU
    in float32 with bf16 autocast where chosen (log-probs and KL come from float32 logits either way)."""
    import torch

    if torch.cuda.is_available() and not args.use_cpu:
        return "cuda", torch.bfloat16 if args.bf16 else torch.float32
    return "cpu", torch.float32


def starting_model(name: str, info: dict, described: dict) -> str | None:
    """The evaluated model an RL model started from (its lineage's input model), when no model of its baseline stage
    is evaluated: the HH recipe runs RL on the instruct model itself, with no SFT stage."""
    start = ((read_lineage(info["path"]) if Path(info["path"]).is_dir() else None) or {}).get("model_name_or_path")

    def same(path: str) -> bool:
        return path == start or (Path(path).exists() and Path(path).resolve() == Path(start).resolve())

    return next((n for n, i in described.items() if n != name and start and same(i["path"])), None)


def run_evaluation(args: EvaluationArguments) -> dict:
    import torch

    from .. import fs
    from .report import write_report

    fs.check_output_folder(args.output_dir, "output_dir", "", what="evaluation")  # before any work, not after
    from .judge import check_judge

    check_judge(args.judge, args.reward_model)
    on_cpu = not torch.cuda.is_available() or args.use_cpu
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(args.bf16) and on_cpu):
        report = evaluate_models(args)
    write_report(report, args)
    return report


def evaluate_models(args: EvaluationArguments) -> dict:
    import torch
    from tqdm.auto import tqdm

    described = describe_models(args)
    for name, other in args.paired.items():
        if name not in described or other not in described:
            raise UserError(f"paired: {name}: {other} must name two of the models ({', '.join(described)}).")
    sampled_names = {n for n, i in described.items() if i["role"] == "rl"} | {
        i["baseline"] for i in described.values() if i["baseline"]
    }
    sampled_names |= {n for pair in args.paired.items() for n in pair}
    texts, qa = [], {"question": []}  # null datasets: those tasks are not measured (skipped below)
    if args.text_dataset:
        texts = load_split(args.text_dataset, args.eval_split, ("text",), args.max_rows)["text"]
    if args.qa_dataset:
        qa = load_split(args.qa_dataset, args.eval_split, ("question", "answer"), args.max_rows)
    references = [[row["answer"], *(row.get("aliases") or [])] for row in qa] if args.qa_dataset else []
    prompts = []
    if sampled_names:
        prompts = list(load_split(args.prompt_dataset, args.eval_split, ("prompt",), args.max_rows)["prompt"])
    sample_prompts = [p for p in prompts for _ in range(args.samples_per_prompt)]
    perplexity, accuracy = load_metric("token_perplexity"), load_metric("domain_accuracy")
    results, greedy, sampled, kept = [], {}, {}, {}
    counts = {"text": len(texts), "qa": len(qa["question"]), "prompts": len(prompts)}  # qa: a dict when not given
    counts["sampled_answers"] = len(sample_prompts)

    skipped = check_skip(args, described)
    for task, dataset in (("held-out-perplexity", args.text_dataset), ("domain-qa", args.qa_dataset)):
        skipped |= {(name, task) for name in described} if not dataset else set()
    for name, info in tqdm(described.items(), desc="Evaluating models", unit="model"):
        logger.info("Evaluating %s (%s): %s", name, info["stage"] or "base model", info["path"])
        loaded = LoadedModel(info["path"], *placement(args))
        if (name, "held-out-perplexity") not in skipped:
            nll_sums, token_counts = loaded.perplexity_terms(texts, args.max_length, args.batch_size)
            value = perplexity.compute(nll_sums=nll_sums, token_counts=token_counts)["perplexity"]
            results.append(_result(name, "held-out-perplexity", args.text_dataset, "perplexity", value, n=len(texts)))
        if (name, "domain-qa") not in skipped:
            greedy[name], _ = loaded.generate(qa["question"], args.qa_max_new_tokens, args.batch_size)
            value = accuracy.compute(predictions=greedy[name], references=references)["accuracy"]
            results.append(_result(name, "domain-qa", args.qa_dataset, "accuracy", value, n=len(qa)))
        if name in sampled_names:
            torch.manual_seed(args.seed)  # every model samples with the same seeds: paired comparisons
            sampled[name] = loaded.answers(sample_prompts, args.max_new_tokens, args.batch_size, args.temperature)
            baseline = info["baseline"]
            if baseline in kept:
                results += kl_results(name, loaded, kept[baseline], sampled[name], args)
            if any(i["baseline"] == name for i in described.values()):
                kept[name] = loaded  # RL models after it need its log-probs for their KL
    kept.clear()

    scores = {}
    if args.reward_model:
        from ..scoring import RewardScorer

        device, dtype = placement(args)
        scorer = RewardScorer.from_path(args.reward_model, args.batch_size, dtype)
        scorer.model.to(device)
        pairs = load_split(args.preference_dataset, args.eval_split, ("prompt", "chosen", "rejected"), args.max_rows)
        found = held_out.reward_accuracy(args, scorer, pairs)
        results.append(
            _result(reward_label(args), "preference-pairs", args.preference_dataset, "accuracy", found["accuracy"],
                    found["low"], found["high"], found["n"])
        )  # fmt: skip
        counts["pairs"] = len(pairs)
        judged_pairs = held_out.judge_accuracy(args.judge)
        if judged_pairs is not None:
            results.append(
                _result("judge", "preference-pairs", judged_pairs["dataset"], "accuracy", judged_pairs["accuracy"],
                        judged_pairs["low"], judged_pairs["high"], judged_pairs["n"])
            )  # fmt: skip
        for name, answers in sampled.items():
            scores[name] = scorer.score(sample_prompts, [a.text for a in answers])
    judged = judge_answers(args, sample_prompts, sampled)
    lengths = {name: [len(a.answer_ids) for a in answers] for name, answers in sampled.items()}
    for name, answers in sampled.items():
        results += sample_results(name, answers, scores.get(name), judged.get(name), args)
    for name, info in described.items():
        if info["baseline"] in sampled and name in sampled:
            results += comparison_results(name, info["baseline"], scores, judged, lengths, args)
    for name, other in args.paired.items():
        results += comparison_results(name, other, scores, judged, lengths, args)

    side_by_side = [
        {"question": q, "reference": ref[0], **{name: greedy[name][i] for name in greedy}}
        for i, (q, ref) in enumerate(zip(qa["question"][: args.num_side_by_side], references))
    ]
    examples = []
    for i in range(
        0, min(len(sample_prompts), args.num_side_by_side * args.samples_per_prompt), args.samples_per_prompt
    ):
        row = {"prompt": as_messages(sample_prompts[i])[-1]["content"], "turns": len(as_messages(sample_prompts[i]))}
        row.update({name: sampled[name][i].text for name in sampled})
        row["scores"] = example_scores(i, sampled, scores, judged)
        examples.append(row)
    models = {name: {k: info[k] for k in ("path", "stage", "role", "baseline")} for name, info in described.items()}
    return {
        "paired": dict(args.paired),
        "models": {
            **models,
            reward_label(args): {"path": args.reward_model, "stage": reward_label(args), "role": "reward"},
        },
        "judge": args.judge,
        "rows": counts,
        "skipped": sorted(f"{model}.{task}" for model, task in skipped),
        "results": results,
        "targets": check_targets(results, described, args),
        "side_by_side": side_by_side,
        "sampled_examples": examples,
    }


def example_scores(i: int, sampled: dict, scores: dict, judged: dict) -> dict:
    """What a reader weighs the i-th sampled answer of each model by: the judge, the reward, its length in tokens."""
    out = {}
    for name, answers in sampled.items():
        verdict = (judged.get(name) or [None] * len(answers))[i]
        reward = scores[name][i] if name in scores else None
        out[name] = {
            "judge": verdict["score"] if verdict else None,
            "reward": reward,
            "tokens": len(answers[i].answer_ids),
        }
    return out


def check_skip(args: EvaluationArguments, described: dict) -> set[tuple[str, str]]:
    """`skip` entries as (model, task). MODEL is a model's name, a stage's name (every model that stage made) or
    `rl` (every RL model); one that names none of these, or an unknown task, is one sentence. An entry for a stage
    with no model here skips nothing (eval.yaml's defaults hold when fewer models are evaluated)."""
    skipped = set()
    for entry in args.skip:
        name, _, task = str(entry).partition(".")
        known = name in described or name == "rl" or name in stages.names()
        if not known or task not in SKIPPABLE:
            raise UserError(
                f"skip: '{entry}' must be MODEL.TASK with MODEL a model ({', '.join(described)}), a stage or rl, and "
                f"TASK one of {', '.join(SKIPPABLE)}."
            )
        skipped |= {
            (n, task)
            for n, info in described.items()
            if name in (n, info["stage"]) or (name == "rl" and info["role"] == "rl")
        }
    return skipped


def prompt_ids(count: int, args) -> list[int]:
    """Which held-out prompt each of `count` sampled answers answers (`samples_per_prompt` in a row each): the unit
    every interval over sampled answers resamples."""
    return [i // args.samples_per_prompt for i in range(count)]


def kl_results(name: str, model: LoadedModel, baseline: LoadedModel, answers, args) -> list[dict]:
    """KL(model || baseline) estimated on the model's own samples (k1, float32 log-probs at the sampling temperature)."""
    own = model.answer_logprobs(answers, args.temperature, args.batch_size)
    base = baseline.answer_logprobs(answers, args.temperature, args.batch_size)
    per_answer = [sum(o) - sum(b) for o, b in zip(own, base)]
    tokens = sum(len(o) for o in own)
    mean, low, high = mean_interval(per_answer, args.bootstrap_samples, args.seed, prompt_ids(len(per_answer), args))
    return [
        _result(name, "held-out-prompts", args.prompt_dataset, "kl_to_baseline", mean, low, high, len(per_answer)),
        _result(name, "held-out-prompts", args.prompt_dataset, "kl_per_token", sum(per_answer) / max(tokens, 1)),
    ]


def judge_answers(args, prompts, sampled) -> dict[str, list[dict | None]]:
    from .judge import judge_all, load_judge

    judge = load_judge(args.judge, args.reward_model, *placement(args)) if sampled else None
    if judge is None:
        return {}
    return {name: judge_all(judge, prompts, [a.text for a in answers]) for name, answers in sampled.items()}


def sample_results(name: str, answers, rewards, judged, args) -> list[dict]:
    dataset = args.prompt_dataset
    lengths = [len(a.answer_ids) for a in answers]
    texts = [a.text for a in answers]
    phrase, phrase_share = common_phrase(texts)
    out = [
        _result(name, "held-out-prompts", dataset, "mean_length", sum(lengths) / max(len(lengths), 1)),
        _result(
            name, "held-out-prompts", dataset, "cut_share", sum(not a.ended for a in answers) / max(len(answers), 1)
        ),
        _result(name, "held-out-prompts", dataset, "refusal_share", refusal_share(texts)),
        {**_result(name, "held-out-prompts", dataset, "common_phrase_share", phrase_share), "phrase": phrase},
    ]
    if rewards is not None:
        mean, low, high = mean_interval(rewards, args.bootstrap_samples, args.seed, prompt_ids(len(rewards), args))
        out.append(_result(name, "held-out-prompts", dataset, "mean_reward", mean, low, high, len(rewards)))
        out.append(_result(name, "held-out-prompts", dataset, "reward_length_corr", correlation(rewards, lengths)))
    if judged:
        kept = [(i, j["score"]) for i, j in enumerate(judged) if j is not None]
        scores = [score for _, score in kept]
        if scores:
            prompt_of = prompt_ids(len(judged), args)
            mean, low, high = mean_interval(scores, args.bootstrap_samples, args.seed, [prompt_of[i] for i, _ in kept])
            out.append(_result(name, "held-out-prompts", dataset, "judge_score", mean, low, high, len(scores)))
            # a judge that favours short (or long) answers turns a length change into a gain: say how much it does
            judged_lengths = [lengths[i] for i, _ in kept]
            judge_length = correlation(scores, judged_lengths)
            out.append(_result(name, "held-out-prompts", dataset, "judge_length_corr", judge_length))
            for flag in ("correct", "evasive", "rude"):
                flags = [j[flag] for j in judged if j is not None and flag in j]
                if flags:
                    out.append(_result(name, "held-out-prompts", dataset, f"judge_{flag}", sum(flags) / len(flags)))
    return out


def comparison_results(name: str, baseline: str, scores, judged, lengths, args) -> list[dict]:
    """Paired differences against the baseline (same prompts, same sampling seeds), with 95% intervals; the judge's
    gain also at equal length (`probes.gain_at_equal_length`), so that a gain bought by shortening shows."""
    out = []
    task = f"vs-{baseline}"
    if name in scores and baseline in scores:
        groups = prompt_ids(len(scores[name]), args)
        diff = paired_difference(scores[name], scores[baseline], args.bootstrap_samples, args.seed, groups)
        out.append(
            _result(
                name,
                task,
                args.prompt_dataset,
                "reward_gain",
                diff["difference"],
                diff["low"],
                diff["high"],
                diff["n"],
            )
        )
        out.append(_result(name, task, args.prompt_dataset, "reward_effect_size", diff["effect_size"]))
    if name in judged and baseline in judged:
        pairs = [
            (i, a["score"], b["score"]) for i, (a, b) in enumerate(zip(judged[name], judged[baseline])) if a and b
        ]
        if pairs:
            treated, baseline_scores = [a for _, a, _ in pairs], [b for _, _, b in pairs]
            prompt_of = prompt_ids(len(judged[name]), args)
            groups = [prompt_of[i] for i, _, _ in pairs]
            diff = paired_difference(treated, baseline_scores, args.bootstrap_samples, args.seed, groups)
            out.append(
                _result(
                    name,
                    task,
                    args.prompt_dataset,
                    "judge_gain",
                    diff["difference"],
                    diff["low"],
                    diff["high"],
                    diff["n"],
                )
            )
            rows = [i for i, _, _ in pairs]
            equal = gain_at_equal_length(
                treated, baseline_scores, [lengths[name][i] for i in rows], [lengths[baseline][i] for i in rows],
                args.bootstrap_samples, args.seed, groups,
            )  # fmt: skip
            out.append(
                _result(name, task, args.prompt_dataset, "judge_gain_equal_length", equal["difference"], equal["low"],
                        equal["high"], equal["n"]) | {"judge_points_per_token": equal["slope"]}
            )  # fmt: skip
    return out
