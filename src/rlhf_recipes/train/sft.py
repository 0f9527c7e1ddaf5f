"""SFT's config and its data check: conversations that `max_length` would leave with no loss token are counted first.

TRL's SFTTrainer drops such rows silently (unpacked) or trains on them for nothing (packed); with `max_length: 16` a
whole run can learn nothing and still finish with `train_loss 0.0`. Here every training row is rendered exactly as
SFTTrainer renders it (the chat template with its assistant mask, cut as `truncation_mode` says), and the run stops
with one sentence when the share of rows with no assistant token left exceeds `max_dropped_share` (default: any).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from trl import SFTConfig as _TRLSFTConfig

from ..config import help_field as _help
from ..errors import UserError

logger = logging.getLogger(__name__)


@dataclass
class SFTConfig(_TRLSFTConfig):
    max_dropped_share: float = _help(
        "Stop before training when more than this share of training conversations would keep no assistant (loss) "
        "token after truncation to max_length. 0 = any such row stops the run.",
        default=0.0,
    )


def loss_token_counts(dataset, tokenizer, max_length: int | None, truncation_mode: str = "keep_start") -> dict:
    """Rows, rows longer than max_length, and rows with no assistant token (before or after the cut), with the index
    of the first such row."""

    def measure(batch):
        out = {"_length": [], "_kept": []}
        for messages in batch["messages"]:
            rendered = tokenizer.apply_chat_template(
                messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
            )
            mask = rendered["assistant_masks"]
            if max_length is not None:
                mask = mask[:max_length] if truncation_mode == "keep_start" else mask[-max_length:]
            out["_length"].append(len(rendered["input_ids"]))
            out["_kept"].append(sum(mask))
        return out

    measured = dataset.select_columns(["messages"]).map(
        measure, batched=True, remove_columns=["messages"], desc="Measuring loss tokens"
    )
    lengths, kept = measured["_length"], measured["_kept"]
    empty = [i for i, k in enumerate(kept) if k == 0]
    return {
        "rows": len(kept),
        "truncated": sum(1 for n in lengths if max_length is not None and n > max_length),
        "no_loss_tokens": len(empty),
        "first_empty_row": empty[0] if empty else None,
    }


def check_loss_tokens(dataset, tokenizer, training_args, dataset_name: str) -> dict:
    """Count what max_length would cost and stop when too many rows would learn nothing (see the module docstring)."""
    if not training_args.assistant_only_loss or "messages" not in dataset.column_names:
        return {}
    counts = loss_token_counts(dataset, tokenizer, training_args.max_length, training_args.truncation_mode)
    logger.info(
        "SFT data %s: %d conversations, %d longer than max_length %s (cut), %d left with no assistant token",
        dataset_name,
        counts["rows"],
        counts["truncated"],
        training_args.max_length,
        counts["no_loss_tokens"],
    )
    share = counts["no_loss_tokens"] / max(counts["rows"], 1)
    if counts["no_loss_tokens"] and share > training_args.max_dropped_share:
        example = dataset[counts["first_empty_row"]]["messages"]
        preview = " | ".join(f"{m['role']}: {str(m['content'])[:40]}" for m in example)[:160]
        raise UserError(
            f"{counts['no_loss_tokens']} of {counts['rows']} training conversations in {dataset_name} "
            f"({share:.0%}) keep no assistant token within max_length={training_args.max_length} (e.g. row "
            f"{counts['first_empty_row']}: {preview}); raise max_length, fix those rows, or allow a share with "
            "max_dropped_share."
        )
    return counts
