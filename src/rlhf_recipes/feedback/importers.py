"""Rankings made elsewhere, into the same store, each with its ranker named (`import:oasst`, `import:ranking`).

- OpenAssistant message trees (oasst1/oasst2 `*.trees.jsonl`, or the Hub dataset): at every prompter message with
  two or more ranked assistant replies, the conversation up to it is the prompt, the replies are the candidates and
  their `rank` (0 = best) is the ranking. Deleted replies and replies without a rank are left out and counted.
- A ranking dataset: rows of `prompt` (text or messages), `responses` (texts) and `ranks` (1 = best, equal = tie),
  optional `labeller`; or an Argilla export of a ranking question: the answers in columns named by the question's
  values and `<question>.responses` holding each user's `[{"value": column, "rank": n}, ...]`.
"""

from __future__ import annotations

from collections import Counter

from ..cli import UserError

ROLES = {"prompter": "user", "assistant": "assistant"}


def _load(path: str, split: str):
    from pathlib import Path

    from datasets import load_dataset

    try:
        if Path(path).is_file():
            return load_dataset("json", data_files=path, split="train")
        return load_dataset(path, split=split)
    except Exception as error:  # datasets raises many kinds for unreadable data; all are the user's to fix
        raise UserError(f"import_path: cannot load {path}: {' '.join(str(error).split())[:200]}") from None


def oasst_items(tree: dict, counts: Counter):
    """(messages, replies, ranks) for every prompter node of one message tree with 2+ ranked replies."""

    def walk(node, history):
        messages = history + [{"role": ROLES.get(node.get("role"), "user"), "content": node.get("text", "")}]
        replies = [r for r in node.get("replies") or [] if not r.get("deleted")]
        counts["deleted_replies"] += len(node.get("replies") or []) - len(replies)
        if node.get("role") == "prompter":
            ranked = [r for r in replies if r.get("role") == "assistant" and r.get("rank") is not None]
            counts["unranked_replies"] += sum(r.get("role") == "assistant" and r.get("rank") is None for r in replies)
            if len(ranked) >= 2:
                yield messages, [r["text"] for r in ranked], [int(r["rank"]) + 1 for r in ranked]
            elif ranked:
                counts["prompts_with_one_ranked_reply"] += 1
        for reply in replies:
            yield from walk(reply, messages)

    root = tree.get("prompt") or tree
    yield from walk(root, [])


def ranking_items(row: dict, index: int, counts: Counter):
    """(messages, responses, ranks, labeller) of one ranking-dataset row (one per Argilla user)."""
    prompt = row.get("prompt") if row.get("prompt") is not None else row.get("instruction")
    if prompt is None:
        raise UserError(f"import_path row {index + 1} has no `prompt` (or `instruction`) column.")
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if row.get("responses") is not None and row.get("ranks") is not None:
        responses, ranks = list(row["responses"]), list(row["ranks"])
        if len(responses) != len(ranks):
            raise UserError(f"import_path row {index + 1}: {len(responses)} responses but {len(ranks)} ranks.")
        yield messages, responses, _whole(ranks, index), row.get("labeller") or "import"
        return
    questions = [k for k in row if k.endswith(".responses") and isinstance(row[k], list) and row[k]]
    if not questions:
        raise UserError(
            f"import_path row {index + 1} has neither `responses` and `ranks` nor an Argilla `<question>.responses` "
            "column; see import_format in --help."
        )
    users = row.get(f"{questions[0]}.users") or []
    for n, answer in enumerate(row[questions[0]] or []):
        if not answer:
            counts["empty_user_responses"] += 1
            continue
        values = [item["value"] for item in answer]
        missing = [v for v in values if v not in row]
        if missing:
            raise UserError(f"import_path row {index + 1}: the ranking names column(s) {missing} that it lacks.")
        labeller = str(users[n]) if n < len(users) else f"argilla-{n}"
        yield messages, [row[v] for v in values], _whole([item["rank"] for item in answer], index), labeller


def _whole(ranks: list, index: int) -> list[int]:
    if not all(isinstance(r, int) and not isinstance(r, bool) for r in ranks):
        raise UserError(f"import_path row {index + 1}: ranks must be whole numbers (1 = best), not {ranks}.")
    return ranks


def import_rankings(store, path: str, kind: str, round: int, split: str = "train") -> dict:
    from .store import tiers_from_ranks

    dataset = _load(path, split)
    counts, ranker = Counter(), f"import:{kind}"
    for index, row in enumerate(dataset):
        if kind == "oasst":
            items = ((m, r, k, "oasst") for m, r, k in oasst_items(row, counts))
        else:
            items = ranking_items(row, index, counts)
        for messages, responses, ranks, labeller in items:
            dense = {level: n + 1 for n, level in enumerate(sorted(set(ranks)))}  # 0,2,5 -> 1,2,3
            prompt_id = store.add_prompt(messages, source=path)
            ids = store.add_candidates(prompt_id, round, list(responses), ranker, {"imported_from": path})
            tiers = tiers_from_ranks([dense[r] for r in ranks], len(ids))
            store.record(prompt_id, round, ranker, labeller, [[ids[i] for i in tier] for tier in tiers])
            counts["rankings"] += 1
            counts["candidates"] += len(ids)
    if not counts["rankings"]:
        raise UserError(f"import_path: {path} holds no ranking of two or more answers ({dict(counts) or 'no rows'}).")
    return {"source": ranker, "import_path": path, **dict(counts)}
