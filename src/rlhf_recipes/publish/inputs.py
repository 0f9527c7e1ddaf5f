"""What `recipes/publish.py` reads, checked before any model loads: the stage output's lineage and model files (every
weight file whole), the chain of adapters under it, and the merge check's held-out prompts. A missing, truncated or
unreadable file is one sentence naming it and what to do.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from ..errors import UserError
from ..fs import RERUN, read_json
from ..models import CAUSAL_LM, EMBEDDED_PREFIX, REWARD_MODEL

LINEAGE_KEYS = {"stage": str, "model_kind": str, "model_name_or_path": str, "chain": list}
DEFAULT_PROMPTS = ("What can you help me with?", "Explain in one sentence what a reward model is.")


def read_stage_lineage(model_path: str) -> dict:
    """The lineage.json of a finished stage output, with the keys the card and the merge need."""
    path = Path(model_path) / "lineage.json"
    if not path.is_file():
        raise UserError(
            f"model_path={model_path} is not a finished stage output (no lineage.json); give the output_dir of a "
            "recipe run, e.g. outputs/smollm2-135m/ppo."
        )
    lineage = read_json(path, "the stage's lineage")
    for key, kind in LINEAGE_KEYS.items():
        if not isinstance(lineage.get(key), kind):
            raise UserError(f"{path} lacks `{key}` (or it is not a {kind.__name__}), so it is damaged; {RERUN}.")
    if lineage["model_kind"] not in (CAUSAL_LM, REWARD_MODEL):
        raise UserError(f"{path} names model_kind {lineage['model_kind']!r}, which is no model kind; {RERUN}.")
    if not all(isinstance(e, dict) and isinstance(e.get("output_dir"), str) for e in lineage["chain"]):
        raise UserError(f"{path}'s chain must list {{stage, output_dir}} entries, so it is damaged; {RERUN}.")
    return lineage


def safetensors_whole(path: Path) -> str | None:
    """Why a .safetensors file is not whole (its header unreadable, or shorter than the tensors it lists), else None."""
    try:
        with open(path, "rb") as handle:
            size = path.stat().st_size
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > size - 8:
                return f"its header says {length} bytes but the file has {size}"
            header = json.loads(handle.read(length))
    except (OSError, struct.error, ValueError) as error:
        return f"its header cannot be read ({error})"
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    needed = 8 + length + max(ends, default=0)
    return f"it is truncated ({size} of {needed} bytes)" if size < needed else None


def check_model_folder(folder: str | Path, key: str = "model_path") -> None:
    """A model or adapter folder holds its config and whole weights, and an adapter's base (recursively) is there."""
    folder = Path(folder)
    adapter = folder / "adapter_config.json"
    if adapter.is_file():
        config = read_json(adapter, "the adapter's configuration")
        weights = [folder / "adapter_model.safetensors"]
    elif (folder / "config.json").is_file():
        read_json(folder / "config.json", "the model's configuration")
        index = folder / "model.safetensors.index.json"
        shards = read_json(index, "the weight index").get("weight_map", {}).values() if index.is_file() else []
        weights = sorted({folder / name for name in shards}) or [folder / "model.safetensors"]
    else:
        raise UserError(f"{key}={folder} holds neither config.json nor adapter_config.json, so no model; {RERUN}.")
    for path in weights:
        if not path.is_file() and path.with_suffix(".bin").is_file():
            continue  # pickled weights of an older save: loaded as they are, not checked here
        if not path.is_file():
            raise UserError(f"{key}={folder} lacks its weights {path.name}; {RERUN}.")
        problem = safetensors_whole(path)
        if problem:
            raise UserError(f"{path} is damaged: {problem}; {RERUN}.")
    if adapter.is_file():
        base = _adapter_base(folder, config)
        if Path(base).is_dir():
            check_model_folder(base, f"{key}'s base model")
        elif not base.startswith(EMBEDDED_PREFIX) and (base.startswith((".", "/", "~")) or base.count("/") > 1):
            raise UserError(f"{key}={folder} is an adapter on {base}, which does not exist any more; {RERUN}.")


def _adapter_base(folder: Path, adapter_config: dict) -> str:
    lineage = folder / "lineage.json"
    base = read_json(lineage, "the stage's lineage").get("model_name_or_path") if lineage.is_file() else None
    base = base or adapter_config.get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise UserError(f"{folder}/adapter_config.json names no base model (base_model_name_or_path); {RERUN}.")
    return base


def read_prompts(path: str | None, limit: int) -> list[list[dict]]:
    """Up to `limit` conversations ending in a user turn, from a JSONL of questions, prompts or conversations."""
    if not path:
        return [[{"role": "user", "content": p}] for p in DEFAULT_PROMPTS][:limit]
    if not Path(path).is_file():
        raise UserError(f"parity_prompts={path} does not exist; point it at a JSONL of held-out prompts.")
    conversations = []
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"parity_prompts={path} cannot be read ({error}); point it at a JSONL of prompts.") from None
    for number, line in enumerate(lines, start=1):
        if len(conversations) == limit:
            break
        if not line.strip():
            continue
        where = f"parity_prompts {path} line {number}"
        try:
            row = json.loads(line)
        except ValueError as error:
            raise UserError(f"{where} is not valid JSON ({error}); fix that line.") from None
        text = (row.get("question") or row.get("prompt")) if isinstance(row, dict) else None
        messages = (row.get("prompt") or row.get("messages")) if isinstance(row, dict) else None
        if isinstance(text, str) and text.strip():
            conversations.append([{"role": "user", "content": text}])
            continue
        good = isinstance(messages, list) and all(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
            and isinstance(m.get("content"), str) for m in messages
        )  # fmt: skip
        while good and messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        if not good or not messages:
            raise UserError(
                f"{where} has no 'question' or 'prompt' text nor 'messages' of {{role, content}} ending in a user "
                "turn; the merge check needs one per line."
            )
        conversations.append([{"role": m["role"], "content": m["content"]} for m in messages])
    if not conversations:
        raise UserError(f"parity_prompts={path} holds no prompt; point it at a JSONL of held-out prompts.")
    return conversations
