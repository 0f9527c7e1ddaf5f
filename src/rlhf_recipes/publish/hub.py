"""Publishing: what `recipes/publish.py` reads, the merge check, the staged folder, and the push to the Hub.

The staged folder is exactly what is pushed: model files (merged full weights, or the stage output's own files), a
`lineage.json` with commands redacted, `publish.json` (what was checked), the plots and the card. It is built in a
temporary sibling and renamed into place, so a failed run never leaves half a folder, and a failed push leaves it
intact for the next try. The token comes from `HF_TOKEN` or the cached login (`huggingface_hub.get_token`); it is
never a config key, so it cannot end up in a YAML file, a lineage, a log or the card.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

from .. import fs
from ..errors import UserError
from ..models import adapter_base, load_tokenizer, read_lineage, resolve_model_path
from ..stages.parse import parse_config
from .cards import redact, write_stage_card

logger = logging.getLogger(__name__)

MANIFEST = "publish.json"  # marks a folder staged by publish.py: only such a folder is ever replaced
MODEL_FILES = (
    "*.safetensors",
    "*.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "adapter_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "vocab.*",
    "merges.txt",
    "*.model",
)
STAGE_IGNORE = ["_*", "checkpoint-*", "training_args.bin", "*.pt", "*.pth"]  # optimizer state, pickled arguments
QUANTIZATION_KEYS = ("load_in_4bit", "bnb_4bit_quant_type", "use_bnb_nested_quant", "bnb_4bit_quant_storage", "dtype")


@dataclass
class PublishArguments:
    """`recipes/publish.py`: which stage output to publish, how to check it, what goes in the card, where it goes."""

    model_path: str | None = field(default=None, metadata={"help": "A finished stage's output folder (lineage.json)."})
    output_dir: str | None = field(
        default=None, metadata={"help": "Staging folder: exactly what is pushed. Default: <model_path>-publish."}
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace an earlier publish.py staging folder (only)."})
    merge: bool = field(default=True, metadata={"help": "Merge a LoRA/QLoRA adapter into its float32 base."})
    merge_tolerance: float = field(
        default=1e-3,
        metadata={
            "help": "Largest allowed |logit(merged) - logit(base + adapter)|, both float32, per unit of the adapter's "
            "own largest logit change (at least 1)."
        },
    )
    parity_prompts: str | None = field(
        default=None,
        metadata={"help": "JSONL of held-out prompts (question / prompt / messages) for the merge check."},
    )
    parity_samples: int = field(default=8, metadata={"help": "How many of those prompts the merge check runs."})
    parity_max_new_tokens: int = field(default=32, metadata={"help": "Greedy answer length compared per prompt."})
    eval_path: str | None = field(default=None, metadata={"help": "eval.json of the evaluation stage (optional)."})
    data_report_path: str | None = field(
        default=None, metadata={"help": "report.json of data preparation (optional)."}
    )
    plots: list[str] = field(default_factory=list, metadata={"help": "PNG files copied next to the card and linked."})
    license: str | None = field(default=None, metadata={"help": "Card license; default: the base model's, if known."})
    description: str | None = field(default=None, metadata={"help": "A paragraph at the top of the card."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Target repo, `user/name` or `org/name`."})
    private: bool = field(default=True, metadata={"help": "Create the repo private (no effect if it exists)."})
    revision: str | None = field(default=None, metadata={"help": "Branch to push to (created if missing)."})
    commit_message: str = field(default="Upload model, lineage and card (rlhf-recipes)")
    dry_run: bool = field(default=False, metadata={"help": "Stage and print files and card; push nothing."})


def load_publish_config(path: str | Path, args: list[str] | None = None) -> PublishArguments:
    return parse_config((PublishArguments,), ["--config", str(path), *(args or [])])[0]


# -------------------------------------------------------------------------------------------------- merge check
def check_merge(adapter_folder: str, merged_path: str, conversations: list, tolerance: float, max_new_tokens: int):
    """Compare the merged model with base + adapter on the same float32 base: max |logit difference| and how many
    greedy answers are identical; a UserError above `tolerance`. A QLoRA adapter is also compared with its 4-bit
    training-time model, reported only: that difference is quantization error, not a faulty merge."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from trl import ModelConfig, get_quantization_config

    folder = Path(adapter_folder)
    is_reward = json.loads((folder / "adapter_config.json").read_text()).get("task_type") == "SEQ_CLS"
    model_class, extra = (
        (AutoModelForSequenceClassification, {"num_labels": 1}) if is_reward else (AutoModelForCausalLM, {})
    )
    tokenizer = load_tokenizer(merged_path)
    merged = model_class.from_pretrained(merged_path, dtype=torch.float32, **extra).eval()
    base_path = resolve_model_path(adapter_base(folder))

    def base_plus_adapter(**kwargs):
        base = model_class.from_pretrained(base_path, **extra, **kwargs)
        base.config.pad_token_id = (
            base.config.pad_token_id if base.config.pad_token_id is not None else tokenizer.pad_token_id
        )
        return PeftModel.from_pretrained(base, folder).eval()

    unmerged = base_plus_adapter(dtype=torch.float32)
    lineage = read_lineage(folder) or {}
    quantized = None
    if (lineage.get("adapter") or {}).get("method") == "qlora":
        config = lineage["config"]
        model_config = ModelConfig(**{k: config[k] for k in QUANTIZATION_KEYS if k in config})
        quantized = base_plus_adapter(
            quantization_config=get_quantization_config(model_config), dtype=model_config.dtype
        )
    settings = {
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    difference, effect, quantized_difference, identical = 0.0, 0.0, None, 0
    with torch.no_grad():
        for messages in conversations:
            inputs = tokenizer.apply_chat_template(
                messages, add_generation_prompt=not is_reward, return_tensors="pt", return_dict=True
            )
            logits, reference = merged(**inputs).logits, unmerged(**inputs).logits
            difference = max(difference, (logits - reference).abs().max().item())
            with unmerged.disable_adapter():  # how far the adapter moves the base: what a lost merge would miss
                effect = max(effect, (reference - unmerged(**inputs).logits).abs().max().item())
            if quantized is not None:
                gap = (logits - quantized(**inputs).logits.float()).abs().max().item()
                quantized_difference = max(quantized_difference or 0.0, gap)
        if not is_reward:  # one left-padded batch per model: the same padding on both sides of the comparison
            tokenizer.padding_side = "left"
            batch = tokenizer.apply_chat_template(
                conversations, add_generation_prompt=True, return_tensors="pt", return_dict=True, padding=True
            )
            answers, expected = merged.generate(**batch, **settings), unmerged.generate(**batch, **settings)
            width = max(answers.shape[1], expected.shape[1])
            answers, expected = (
                torch.nn.functional.pad(a, (0, width - a.shape[1]), value=tokenizer.pad_token_id)
                for a in (answers, expected)
            )
            identical = int((answers == expected).all(dim=1).sum())
    result = {
        "max_abs_logit_diff": difference,
        "tolerance": tolerance,
        "adapter_effect": effect,
        "prompts": len(conversations),
        "greedy_identical": None if is_reward else identical,
        "max_new_tokens": None if is_reward else max_new_tokens,
        "quantized_base_diff": quantized_difference,
    }
    allowed = tolerance * max(1.0, effect)  # float32 rounding grows with how far the adapter moves the logits
    result["allowed"] = allowed
    logger.info("Merge check: %s", result)
    if difference > allowed:
        raise UserError(
            f"the merged model's logits differ from base + adapter by {difference:.3g}, above merge_tolerance "
            f"{tolerance:g} x max(1, the adapter's own effect {effect:.3g}) = {allowed:.3g}, on {len(conversations)} "
            "prompts; the merge is not faithful: publish the adapter with merge: false, or report the model and "
            "adapter as a bug."
        )
    return result


# ------------------------------------------------------------------------------------------------ staged folder
@contextlib.contextmanager
def staging(output_dir: str, overwrite: bool):
    """A folder to fill, built aside and renamed into place on success (fs.build_aside); an existing non-empty
    `output_dir` is replaced only with `overwrite` and only if publish.py staged it (`check_staging`)."""
    check_staging(output_dir, overwrite)
    with fs.build_aside(output_dir, what="publish", replace=overwrite) as folder:
        yield folder


def check_staging(output_dir: str, overwrite: bool) -> None:
    """Refuse a staging folder publish.py may not fill: another stage's output, a store, a user's folder, or (without
    `overwrite`) an earlier staging."""
    fs.check_output_folder(output_dir, "output_dir", "", what="publish staging", replace=overwrite)


def copy_model_files(source: str | Path, target: Path, adapter_base_id: str | None = None) -> None:
    """Weights, configs and tokenizer of a model folder (no checkpoints, optimizer state or pickled arguments)."""
    for path in sorted(Path(source).iterdir()):
        if path.is_file() and any(fnmatch(path.name, pattern) for pattern in MODEL_FILES):
            shutil.copy2(path, target / path.name)
    if adapter_base_id and (target / "adapter_config.json").is_file():  # point the adapter at a loadable base
        config = json.loads((target / "adapter_config.json").read_text())
        (target / "adapter_config.json").write_text(
            json.dumps({**config, "base_model_name_or_path": adapter_base_id}, indent=2)
        )


def copy_report(report_path: str | None, target: Path, images_key: str, token: str | None) -> tuple[str | None, list]:
    """A report's JSON, its `report.md` and the images its `images_key` names into `target` (a subfolder of the staged
    folder); returns the card's link to the report and the images' paths relative to the staged folder."""
    if not report_path:
        return None, []
    source = Path(report_path).parent
    images = json.loads(Path(report_path).read_text()).get(images_key) or []
    target.mkdir()
    for path in (Path(report_path), source / "report.md"):
        if path.is_file():
            (target / path.name).write_text(redact(path.read_text(), token))
    copied = []
    for name in [images] if isinstance(images, str) else images:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
            copied.append(f"{target.name}/{name}")
    link = "report.md" if (target / "report.md").is_file() else Path(report_path).name
    return f"{target.name}/{link}", copied


def write_json(path: Path, data: dict, token: str | None) -> None:
    path.write_text(redact(json.dumps(data, indent=2), token) + "\n")


def list_files(folder: Path) -> str:
    rows = [(str(p.relative_to(folder)), p.stat().st_size) for p in sorted(folder.rglob("*")) if p.is_file()]
    width = max((len(name) for name, _ in rows), default=0)
    return "\n".join(f"  {name:<{width}}  {size / 1e6:10.3f} MB" for name, size in rows)


# -------------------------------------------------------------------------------------------------------- push
def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None,
    revision: str | None = None,
    commit_message: str,
    token: str | None = None,
    ignore_patterns: list[str] | None = None,
) -> str:
    """create_repo + (create_branch) + upload_folder with the given or cached token; one sentence on any failure."""
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError, HTTPError, OfflineModeIsEnabled  # HTTPError: httpx2's base

    kept = f"the staged folder {folder} is kept intact for the next try"
    token = token or get_token()
    if not token:
        raise UserError(f"no Hugging Face token: set HF_TOKEN or run `hf auth login`, then rerun; {kept}.")
    if constants.is_offline_mode():
        raise UserError(f"cannot push to the Hub while HF_HUB_OFFLINE is set; unset it when online and rerun; {kept}.")
    api = HfApi(token=token)
    try:
        api.whoami()  # a rejected token fails here, before a repo is created
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            revision=revision,
            commit_message=commit_message,
            ignore_patterns=ignore_patterns,
        )
    except OfflineModeIsEnabled:
        raise UserError(f"cannot push to the Hub while HF_HUB_OFFLINE is set; unset it and rerun; {kept}.") from None
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        reason = {
            401: "the Hub rejected the token (401); log in again with `hf auth login`",
            403: f"the token may not write to {repo_id} (403); use a write token or another hub_model_id",
        }.get(status, f"the Hub refused the push ({redact(' '.join(str(error).split()), token)[:200]})")
        raise UserError(f"{reason}; {kept}.") from None
    except HTTPError as error:  # no route, DNS failure, refused connection, timeout
        raise UserError(f"cannot reach the Hugging Face Hub at {api.endpoint} ({error}); {kept}.") from None
    logger.info("Pushed %s to %s", folder, commit.commit_url)
    return commit.commit_url


def publish_stage_output(trainer, training_args) -> None:
    """After a stage: its card into `output_dir/README.md`, then one push of the folder when `push_to_hub` is set
    (the Trainer's own end-of-training push is switched off around `save_model`, so it never overwrites this card)."""
    repo_id = getattr(trainer, "hub_model_id", None) or training_args.hub_model_id
    write_stage_card(training_args.output_dir, hub_model_id=repo_id if training_args.push_to_hub else None)
    if training_args.push_to_hub:
        getattr(trainer, "_finish_current_push", lambda: None)()  # checkpoint pushes (hub_strategy) finish first
        push_folder(
            training_args.output_dir,
            repo_id or Path(training_args.output_dir).resolve().name,
            private=training_args.hub_private_repo,
            revision=training_args.hub_revision,
            commit_message="End of training: model, lineage and card (rlhf-recipes)",
            token=training_args.hub_token,
            ignore_patterns=STAGE_IGNORE,
        )
