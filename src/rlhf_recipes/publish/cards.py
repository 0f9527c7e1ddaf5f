"""Model cards: the README.md of a published model and of every stage output, from `model_cards/*.md.jinja`.

Rendered with `huggingface_hub.ModelCard.from_template`. The YAML metadata (base_model, datasets, tags, library_name,
license, pipeline_tag and a model-index with the evaluation results) is a `ModelCardData` with `EvalResult`s; the body
is built from the stage's `lineage.json` and the lineage of every earlier stage still on disk, the evaluation results
(`eval.json`), the data preparation report (`report.json`), the merge check and the plots. Commands are shown with
any token redacted, and the rendered card is checked for the caller's token before it is returned.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import sys
from pathlib import Path

import yaml

from ..errors import UserError
from ..evaluation.curves import TRAINING_CURVES, plot_training_curves
from ..fs import read_json
from ..lineage import redact
from ..models import CAUSAL_LM, EMBEDDED_PREFIX, REWARD_MODEL, read_lineage

logger = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parents[1] / "assets" / "model_cards"  # also the repo's model_cards/ (a link)
TEMPLATE_FILES = {CAUSAL_LM: "causal_lm.md.jinja", REWARD_MODEL: "reward_model.md.jinja"}
PIPELINE_TAGS = {CAUSAL_LM: "text-generation", REWARD_MODEL: "text-classification"}
# Embedded models -> (the Hub checkpoint they were converted from, its license), for metadata others can follow.
HUB_BASES = {EMBEDDED_PREFIX + "SmolLM2-135M-Instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")}
HEADLINE_METRICS = ("train_loss", "eval_loss", "eval_accuracy", "objective/scores", "objective/kl")


# ------------------------------------------------------------------------------------------------------ helpers
def hub_id(name: str | None) -> str | None:
    """The Hub id a model or dataset name stands for (embedded models map to their source), None for local paths."""
    if not name:
        return None
    if name in HUB_BASES:
        return HUB_BASES[name][0]
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name) and not Path(name).exists():
        return name
    return None


def base_license(lineage: dict) -> str | None:
    return HUB_BASES.get(lineage.get("base_model"), (None, None))[1]


def display_path(path: str | None) -> str | None:
    """A path relative to the working directory when it lies under it (cards should not show home folders)."""
    if not path or not Path(path).is_absolute():
        return path
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _adapter_text(adapter: dict | None) -> str:
    if not adapter:
        return "full fine-tune"
    method = "QLoRA (4-bit base)" if adapter.get("method") == "qlora" else "LoRA"
    return f"{method} r={adapter.get('r')} alpha={adapter.get('alpha')}"


# ----------------------------------------------------------------------------------------------------- inputs
def load_evaluation(path: str | None) -> dict | None:
    """An `eval.json` (its `results` checked), None when no path is given or the file is not there yet."""
    if not path:
        return None
    if not Path(path).is_file():
        logger.warning("No evaluation results at %s: the card says 'not evaluated'.", path)
        return None
    try:
        evaluation = json.loads(Path(path).read_text())
        for result in evaluation["results"]:
            missing = [k for k in ("stage", "task", "dataset", "metric", "value") if k not in result]
            if missing:
                raise KeyError(", ".join(missing))
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(
            f"{path} is not an evaluation file ({type(error).__name__}: {error}); it needs "
            '{"results": [{"stage", "task", "dataset", "metric", "value"}, ...]} as written by recipes/evaluate.py.'
        ) from None
    return evaluation


def load_data_report(path: str | None) -> dict | None:
    """A data preparation `report.json`, None when no path is given or the file is not there yet."""
    if not path:
        return None
    if not Path(path).is_file():
        logger.warning("No data report at %s: the card says so.", path)
        return None
    try:
        report = json.loads(Path(path).read_text())
    except ValueError as error:
        raise UserError(f"{path} is not valid JSON ({error}); point data_report_path at a report.json.") from None
    if not isinstance(report, dict):
        raise UserError(f"{path} holds a JSON {type(report).__name__}; point data_report_path at a report.json.")
    return report


def stage_lineages(lineage: dict) -> list[dict]:
    """The lineage of every stage in the chain, oldest first (an earlier stage whose folder is gone keeps its entry)."""
    stages = []
    for entry in lineage.get("chain", [])[:-1]:
        path = Path(entry["output_dir"]) / "lineage.json"
        earlier = read_json(path, "an earlier stage's lineage") if path.is_file() else None
        stages.append(earlier or {**entry, "data": {"dataset_name": entry.get("data")}})
    return stages + [lineage]


def _is_rl(lineage: dict) -> bool:
    from .. import stages

    return lineage.get("stage") in stages.names("rl")


def reward_lineage(lineage: dict) -> dict | None:
    """For an RL policy: the lineage of the reward model that scored it, when its folder is still there."""
    path = lineage.get("config", {}).get("reward_model_path")
    return read_lineage(path) if _is_rl(lineage) and path and Path(path).is_dir() else None


# ------------------------------------------------------------------------------------------------------- plots
# ------------------------------------------------------------------------------------------------------ render
def _evaluation_table(results: list[dict]) -> dict:
    """Results as rows (task, dataset, metric) x columns (stages, in the order they first appear)."""
    stages = list(dict.fromkeys(r["stage"] for r in results))
    rows: dict[tuple, dict] = {}
    for r in results:
        rows.setdefault((r["task"], display_path(r["dataset"]), r["metric"]), {})[r["stage"]] = _number(r["value"])
    return {
        "stages": stages,
        "rows": [{"task": k[0], "dataset": k[1], "metric": k[2], "values": v} for k, v in rows.items()],
    }


def _stage_row(lineage: dict, token: str | None) -> dict:
    data = lineage.get("data") or {}
    metrics = lineage.get("metrics") or {}
    return {
        "stage": lineage["stage"],
        "data": display_path(data.get("dataset_name")),
        "train_rows": data.get("train_rows"),
        "adapter": _adapter_text(lineage.get("adapter")) if "adapter" in lineage else "(folder gone)",
        "metrics": ", ".join(f"{k} {_number(metrics[k])}" for k in HEADLINE_METRICS if k in metrics),
        "command": redact(lineage["command"], token) if lineage.get("command") else None,
    }


def _data_summary(report: dict) -> dict:
    splits = []
    for name, split in (report.get("splits") or {}).items():
        dropped = {reason: info.get("count") for reason, info in (split.get("dropped") or {}).items()}
        splits.append(
            {
                "name": name,
                "rows_in": split.get("rows_in"),
                "rows_out": split.get("rows_out"),
                "dropped": ", ".join(f"{r}: {n}" for r, n in dropped.items()) or "none",
            }
        )
    return {"name": report.get("name"), "kind": report.get("kind"), "splits": splits}


def render_card(
    lineage: dict,
    *,
    model_name: str,
    published: str,
    repo: str | None = None,
    license: str | None = None,
    description: str | None = None,
    evaluation: list[dict] | None = None,
    comparison: str | None = None,
    evaluation_link: str | None = None,
    data_report: dict | None = None,
    data_report_link: str | None = None,
    plots: tuple[str, ...] = (),
    merge_check: dict | None = None,
    publish_command: str | None = None,
    token: str | None = None,
):
    """The ModelCard of a stage output: `published` is "merged", "full" or "adapter" (what the folder holds), `repo`
    where users load it from (a Hub id or a folder)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData, get_token

    token = token or get_token()  # redacted wherever it could appear (a command line), and checked for at the end
    kind = lineage["model_kind"]
    stages = stage_lineages(lineage)
    reward = reward_lineage(lineage)
    evaluation = [r for r in evaluation or [] if r.get("value") is not None]  # "not measured" is no result
    own_results = [r for r in evaluation if r["stage"] == lineage["stage"]]
    eval_results = [
        EvalResult(
            task_type=PIPELINE_TAGS[kind],
            task_name=r["task"],
            dataset_type=r["dataset"],
            dataset_name=r.get("dataset_name", r["dataset"]),
            dataset_split=r.get("split"),
            metric_type=r["metric"],
            metric_name=r["metric"],
            metric_value=r["value"],
        )
        for r in own_results
    ]
    # An adapter's metadata names the model it applies to; merged and full weights name the root of the chain.
    base = hub_id(lineage.get("model_name_or_path") if published == "adapter" else lineage.get("base_model"))
    datasets = [d for d in dict.fromkeys(hub_id((s.get("data") or {}).get("dataset_name")) for s in stages) if d]
    adapter = lineage.get("adapter") or {}
    tags = ["rlhf-recipes", "trl", *(s["stage"] for s in stages), *([adapter["method"]] if adapter else [])]
    tags += ["reward-model"] if kind == REWARD_MODEL else ["rlhf"] if _is_rl(lineage) else []
    card_data = ModelCardData(
        base_model=base,
        datasets=datasets or None,
        tags=list(dict.fromkeys(tags)),
        library_name="peft" if published == "adapter" else "transformers",
        license=license or base_license(lineage),
        pipeline_tag=PIPELINE_TAGS[kind],
        model_name=model_name,
        eval_results=eval_results or None,
    )
    config = {k: v for k, v in (lineage.get("config") or {}).items() if v not in (None, "", [], {})}
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / TEMPLATE_FILES[kind]),
        model_name=model_name,
        repo=repo or model_name,
        published=published,
        description=description,
        stage=lineage["stage"],
        base_model_name=display_path(lineage.get("base_model")),
        base_hub_id=hub_id(lineage.get("base_model")),
        adapter_base=hub_id(lineage.get("model_name_or_path")) or display_path(lineage.get("model_name_or_path")),
        adapter=adapter,
        adapter_name={"lora": "LoRA", "qlora": "QLoRA"}.get(adapter.get("method"), ""),
        stages=[_stage_row(s, token) for s in stages],
        reward=_stage_row(reward, token) | {"chain": " -> ".join(s["stage"] for s in reward["chain"])}
        if reward
        else None,
        evaluation=_evaluation_table(evaluation) if evaluation else None,
        own_results=own_results,
        comparison=comparison,
        evaluation_link=evaluation_link,
        data_report=_data_summary(data_report) if data_report else None,
        data_report_link=data_report_link,
        plots=list(plots),
        merge_check=merge_check,
        config_yaml=redact(yaml.safe_dump(config, sort_keys=True, width=119), token).strip(),
        publish_command=redact(publish_command, token) if publish_command else None,
        versions=lineage.get("versions") or {},
    )
    if token and token in str(card):
        raise RuntimeError("the rendered card contains the Hub token; refusing to write it")  # a bug, never expected
    return card


def publish_command() -> str:
    """The command line of this process, as shown in the card's reproduce section."""
    return " ".join(shlex.quote(a) for a in ["python", *sys.argv])


def write_stage_card(output_dir: str, hub_model_id: str | None = None, token: str | None = None) -> Path:
    """Render the card of a finished stage into its `output_dir/README.md` (replacing the trainer's draft)."""
    folder = Path(output_dir)
    lineage = read_lineage(folder)
    plots = (TRAINING_CURVES,) if plot_training_curves(stage_lineages(lineage), folder / TRAINING_CURVES) else ()
    card = render_card(
        lineage,
        model_name=(hub_model_id or folder.resolve().name).split("/")[-1],
        published="adapter" if (folder / "adapter_config.json").is_file() else "full",
        repo=hub_model_id or display_path(str(folder.resolve())),
        plots=plots,
        token=token,
    )
    card.save(folder / "README.md")
    return folder / "README.md"
