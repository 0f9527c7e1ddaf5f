"""Answers into the store: K sampled answers per prompt from a stage's model, or prompts, answers and rankings
imported from elsewhere (importers.py). Each prompt is one transaction: a killed run keeps what it committed and a
rerun adds only what is missing."""

from __future__ import annotations

import logging
import time

from ..errors import UserError
from .config import CollectArguments
from .database import display_name
from .store import Store

logger = logging.getLogger(__name__)


def round_prompts(args: CollectArguments) -> list:
    """Round r's slice of the prompt split (wrapping around when the split runs out)."""
    from ..evaluation.run import load_split

    dataset = load_split(args.prompt_dataset, args.split, ("prompt",))
    count = min(args.prompts_per_round, len(dataset))
    start = (args.round - 1) * count
    return [dataset[(start + i) % len(dataset)]["prompt"] for i in range(count)]


def model_summary(model: str) -> dict:
    """What the store keeps about the model that wrote an answer: its stage and base, and a fingerprint of its files
    (a model retrained at the same path is another model)."""
    from pathlib import Path

    from ..models import _hash_files, read_lineage

    lineage = read_lineage(model) or {}
    summary = {k: lineage[k] for k in ("stage", "model_name_or_path", "base_model", "algorithm") if k in lineage}
    folder = Path(model)
    names = ("adapter_config.json", "adapter_model.safetensors", "config.json", "model.safetensors")
    if folder.is_dir():
        summary["fingerprint"] = _hash_files(folder, tuple(n for n in names if (folder / n).is_file()))
    return summary


def check_round_model(store: Store, args: CollectArguments, ids: list[int], summary: dict) -> None:
    """A round's answers all come from one model: answers from another (or an earlier version at the same path) are
    refused with one sentence, never mixed into the same rankings; `replace_round` deletes the old round first."""
    import json

    for prompt_id in ids:
        for row in store.candidates(prompt_id, args.round):
            if row["model"] == args.model and json.loads(row["lineage"]).get("fingerprint") == summary.get(
                "fingerprint"
            ):
                continue
            if args.replace_round:
                logger.warning("round %d: deleting the answers of %s and their rankings: %s", args.round, row["model"],
                               store.clear_round(args.round))  # fmt: skip
                return
            people = sum(r["ranker"] == "human" for r in store.rankings([args.round]))
            raise UserError(
                f"round {args.round} of {store.url} already holds answers from {row['model']} (another model, or an "
                f"earlier version of {args.model}) with {people} rankings by people; collect into a new round, use a "
                "new store, or pass --replace_round true to delete that round's answers and rankings."
            )


def sample_round(args: CollectArguments, store: Store, prompts: list) -> dict:
    import torch
    from tqdm.auto import tqdm

    from ..evaluation.loaded import LoadedModel, as_messages

    if not args.model:
        raise UserError(
            "model is not set; give the stage output to sample answers from, e.g. outputs/smollm2-135m/ppo."
        )
    prompts = [as_messages(p) for p in prompts]
    ids = [store.add_prompt(p, source=f"{args.prompt_dataset}:{args.split}") for p in prompts]
    summary = model_summary(args.model)
    check_round_model(store, args, ids, summary)
    todo = [(i, p) for i, p in zip(ids, prompts) if len(store.candidates(i, args.round)) < args.k]
    sampling = {"k": args.k, "temperature": args.temperature, "max_new_tokens": args.max_new_tokens, "seed": args.seed}
    counts = {
        "prompts": len(prompts),
        "already_collected": len(prompts) - len(todo),
        "candidates": 0,
        "cut_without_eos": 0,
    }
    if todo:
        device = "cuda" if torch.cuda.is_available() and not args.use_cpu else "cpu"
        loaded = LoadedModel(args.model, device)
        torch.manual_seed(args.seed + args.round)
        per_call = max(1, args.batch_size // args.k)
        for start in tqdm(range(0, len(todo), per_call), desc=f"Sampling {args.k} answers per prompt", unit="batch"):
            chunk = todo[start : start + per_call]
            repeated = [p for _, p in chunk for _ in range(args.k)]
            answers = loaded.answers(repeated, args.max_new_tokens, args.batch_size, args.temperature)
            for n, (prompt_id, _) in enumerate(chunk):
                mine = answers[n * args.k : (n + 1) * args.k]
                cut = [not a.ended for a in mine]  # stopped at max_new_tokens: the ranking page marks it
                store.add_candidates(prompt_id, args.round, [a.text for a in mine], args.model, summary, sampling, cut)
                counts["candidates"] += len(mine)
                counts["cut_without_eos"] += sum(not a.ended for a in mine)
    return {"source": "model", "model": args.model, "sampling": sampling, **counts}


def run_collect(args: CollectArguments) -> dict:
    """Sample (or import) into the store: what can be checked without it (the prompts, the import file) is checked
    before the store is opened or created, so a mistake leaves no new, empty store behind."""
    from pathlib import Path

    from .. import fs

    started = time.time()
    if args.import_path:
        from .importers import read_rankings, save_rankings

        items, counts = read_rankings(args.import_path, args.import_format, args.import_split)
        report = save_rankings(_open(args.store), items, counts, args.import_path, args.import_format, args.round)
    else:
        prompts = round_prompts(args)
        report = sample_round(args, _open(args.store), prompts)
    report.update(round=args.round, store=display_name(args.store), seconds=round(time.time() - started, 1))
    with fs.build_aside(args.output_dir, what="collect", replace=True) as folder:
        fs.atomic_write_json(Path(folder) / "collect.json", report)
    logger.info("round %d: %s", args.round, report)
    return report


def _open(location: str) -> Store:
    store = Store(location)
    store.check_usable()  # a damaged, read-only or full store: one sentence now, not after the sampling
    return store
