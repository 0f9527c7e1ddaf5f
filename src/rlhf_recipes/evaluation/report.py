"""The evaluation's outputs: `report.md` (tables, targets, the RL comparison, side-by-side answers), PNG plots and
`eval.json`, written last (atomically), so its presence marks a finished evaluation."""

from __future__ import annotations

from pathlib import Path

from ..models import read_lineage

COMPARISON_COLUMNS = (  # (metric, heading)
    ("mean_reward", "held-out mean reward (95% CI)"),
    ("reward_effect_size", "reward gain / baseline SD"),
    ("judge_score", "judge score (95% CI)"),
    ("judge_gain", "judge gain (95% CI)"),
    ("judge_gain_equal_length", "judge gain at equal length (95% CI)"),
    ("kl_per_token", "KL to baseline / token"),
    ("accuracy", "domain accuracy"),
    ("mean_length", "mean answer tokens"),
    ("cut_share", "cut without EOS"),
    ("refusal_share", "refusals"),
    ("common_phrase_share", "most common 4 words' share"),
    ("reward_length_corr", "reward-length corr."),
    ("judge_length_corr", "judge-length corr."),
)


def _cell(result: dict | None) -> str:
    if result is None or result.get("value") is None:
        return ""
    text = f"{result['value']:.4g}"
    if result.get("low") is not None:
        text += f" ({result['low']:.3g} to {result['high']:.3g})"
    return text


def _find(results, model, metric):
    return next((r for r in results if r["stage"] == model and r["metric"] == metric), None)


def summary_table(report: dict) -> str:
    """Markdown: one row per metric, one column per model; then the targets."""
    models = list(dict.fromkeys(r["stage"] for r in report["results"]))
    metrics = list(
        dict.fromkeys((r["task"], r["metric"]) for r in report["results"] if not r["task"].startswith("vs-"))
    )
    lines = ["| task | metric | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    for task, metric in metrics:
        cells = [
            _cell(
                next(
                    (r for r in report["results"] if r["stage"] == m and r["task"] == task and r["metric"] == metric),
                    None,
                )
            )
            for m in models
        ]
        lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
    lines += ["", "| target | measured | threshold | met |", "|---|---|---|---|"]
    for t in report["targets"]:
        mark = {True: "yes", False: "NO", None: "not measured"}[t["met"]]
        lines.append(f"| {t['target']} | {_measured(t['measured'])} | {t['threshold']} | {mark} |")
    return "\n".join(lines)


def _measured(value) -> str:
    """A target's measurement as a cell: a compound one (e.g. effect size and interval) as 'name value; ...'."""
    if isinstance(value, dict):
        return "; ".join(f"{key.replace('_', ' ')} {item:g}" for key, item in value.items())
    return "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _run_facts(path: str | None) -> dict:
    lineage = read_lineage(path) if path and Path(path).is_dir() else None
    if not lineage:
        return {}
    metrics, algorithm = lineage.get("metrics", {}), lineage.get("algorithm") or {}
    speed = metrics.get("eps") or metrics.get("train_samples_per_second")
    return {
        "algorithm": algorithm.get("name", lineage.get("stage")),
        "wall": metrics.get("train_runtime"),
        "rss": metrics.get("peak_rss_mib"),
        "speed": speed,
        "speed_unit": "episodes/s" if "eps" in metrics else "samples/s",
    }


def comparison_table(report: dict) -> str:
    """The RL models side by side with their baseline as the first row (empty when no RL model was evaluated)."""
    models = report["models"]
    rl = [n for n, m in models.items() if m.get("role") == "rl"]
    if not rl:
        return ""
    baselines = list(dict.fromkeys(models[n]["baseline"] for n in rl if models[n].get("baseline")))
    rows = baselines + rl
    head = [h for _, h in COMPARISON_COLUMNS] + ["train wall s", "peak RSS MiB", "speed"]
    lines = ["| model | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for name in rows:
        cells = [_cell(_find(report["results"], name, metric)) for metric, _ in COMPARISON_COLUMNS]
        facts = _run_facts(models[name]["path"]) if name not in baselines else {}
        cells += [
            f"{facts['wall']:.0f}" if facts.get("wall") else "",
            f"{facts['rss']:.0f}" if facts.get("rss") else "",
            f"{facts['speed']:.3g} {facts['speed_unit']}" if facts.get("speed") else "",
        ]
        label = f"{name} (baseline)" if name in baselines else f"{name} ({facts.get('algorithm', '')})"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(report: dict) -> str:
    """The `paired:` comparisons (feedback rounds: each round against the one before), one row each, with the
    reward model accuracy each model's RL stage trained against (its lineage)."""
    if not report.get("paired"):
        return ""
    head = "| model | compared with | judge gain (95% CI) | reward gain (95% CI) | judge score | KL to SFT / token "
    lines = [head + "| its reward model's held-out accuracy |", "|---|---|---|---|---|---|---|"]
    for name, other in report["paired"].items():
        task = f"vs-{other}"
        gain = {r["metric"]: r for r in report["results"] if r["stage"] == name and r["task"] == task}
        lineage = read_lineage(report["models"][name]["path"]) if Path(report["models"][name]["path"]).is_dir() else {}
        accuracy = ((lineage or {}).get("algorithm") or {}).get("reward_model_accuracy")
        cells = [
            _cell(gain.get("judge_gain")), _cell(gain.get("reward_gain")),
            _cell(_find(report["results"], name, "judge_score")), _cell(_find(report["results"], name, "kl_per_token")),
            f"{accuracy:.3f}" if isinstance(accuracy, int | float) else "",
        ]  # fmt: skip
        lines.append(f"| {name} | {other} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _scores(scores: dict | None) -> str:
    if not scores:
        return ""
    parts = [f"{key} {value:.3g}" for key, value in scores.items() if key != "tokens" and value is not None]
    if scores.get("tokens") is not None:
        parts.append(f"{scores['tokens']} tokens")
    return f" ({', '.join(parts)})"


def phrase_lines(report: dict) -> list[str]:
    """Each sampled model's most common 4-word phrase and its share of answers (a fixed phrase is a hack's mark)."""
    return [
        f'Most common 4 words in {r["stage"]}\'s answers: "{r["phrase"]}" (in {r["value"]:.0%} of them).'
        for r in report["results"]
        if r["metric"] == "common_phrase_share" and r.get("phrase")
    ]


def plot_comparison(report: dict, path: Path) -> bool:
    """Mean reward and judge score with their 95% intervals, one bar per sampled model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("mean_reward", "held-out mean reward"), ("judge_score", "judge score (0-100)")]
    data = []
    for metric, title in panels:
        rows = [r for r in report["results"] if r["metric"] == metric and r.get("value") is not None]
        if rows:
            data.append((title, rows))
    if not data:
        return False
    figure, axes = plt.subplots(1, len(data), figsize=(5 * len(data), 3.2), squeeze=False)
    for axis, (title, rows) in zip(axes[0], data):
        values = [r["value"] for r in rows]
        errors = [
            [r["value"] - r.get("low", r["value"]) for r in rows],
            [r.get("high", r["value"]) - r["value"] for r in rows],
        ]
        axis.bar([r["stage"] for r in rows], values, yerr=errors, capsize=4, color="#4c78a8")
        axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def write_report(report: dict, args) -> None:
    from .. import fs
    from .curves import TRAINING_CURVES, plot_training_curves

    output_dir = fs.claim(args.output_dir, "eval")
    lineages = [lineage for m in report["models"].values() if m.get("path") and Path(m["path"]).is_dir()
                and (lineage := read_lineage(m["path"]))]  # fmt: skip
    report["plots"] = [TRAINING_CURVES] if plot_training_curves(lineages, output_dir / TRAINING_CURVES) else []
    if plot_comparison(report, output_dir / "rl_comparison.png"):
        report["plots"].append("rl_comparison.png")
    lines = [
        "# Evaluation",
        "",
        f"Rows evaluated: {report['rows']}; judge: {report['judge']}."
        + (f" Not measured (`skip`): {', '.join(report['skipped'])}." if report.get("skipped") else ""),
        "",
        summary_table(report),
    ]
    comparison = comparison_table(report)
    if comparison:
        lines += ["", "## RL algorithms against their baseline", "", comparison]
        report["comparison_table"] = comparison
    paired = paired_table(report)
    if paired:
        lines += ["", "## Paired comparisons (feedback rounds: each round against the one before)", "", paired]
    lines += ["", "## Side by side (greedy answers to held-out questions)", ""]
    for row in report["side_by_side"]:
        lines.append(f"**Q:** {row['question']}  \n*reference:* {row['reference']}")
        lines += [f"- **{name}:** {row[name]}" for name in report["models"] if name in row]
        lines.append("")
    if report.get("sampled_examples"):
        lines += ["## Sampled answers to held-out prompts", "", *phrase_lines(report), ""]
        for row in report["sampled_examples"]:
            turns = row.get("turns", 1)
            lines.append(f"**Prompt** (last user turn{f' of {turns} messages' if turns > 1 else ''}): {row['prompt']}")
            for name, text in row.items():
                if name not in ("prompt", "turns", "scores"):
                    lines.append(f"- **{name}**{_scores(row.get('scores', {}).get(name))}: {text}")
            lines.append("")
    lines += [f"![{p}]({p})" for p in report["plots"]]
    fs.atomic_write_text(output_dir / "report.md", "\n".join(lines) + "\n")
    fs.atomic_write_json(output_dir / "eval.json", report)  # written last: its presence marks a finished evaluation
