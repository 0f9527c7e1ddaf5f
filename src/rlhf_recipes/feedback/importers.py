"""Rankings made elsewhere, into the same store, each with its ranker named (`import:oasst`, `import:ranking`).

- OpenAssistant message trees (oasst1/oasst2 `*.trees.jsonl[.gz]`, or the Hub dataset): at every prompter message
  with two or more ranked assistant replies, the conversation up to it is the prompt, the replies are the candidates
  and their `rank` (0 = best) is the ranking. Deleted replies and replies without a rank are left out and counted.
- A ranking dataset: rows of `prompt` (text or messages), `responses` (texts) and `ranks` (1 = best, equal = tie),
  optional `labeller`; or an Argilla export of a ranking question: the answers in columns named by the question's
  values and `<question>.responses` holding each user's `[{"value": column, "rank": n}, ...]`.

The whole file is read and checked before anything is written, then every ranking is saved in one transaction: a
mistake on any line is one sentence naming the file and the line, and the store is left as it was. A local JSON Lines
file is read line by line (exact line numbers); a JSON array, another format or a Hub dataset through `datasets`.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ..errors import UserError

ROLES = {"prompter": "user", "assistant": "assistant"}
CHAT_ROLES = ("system", "user", "assistant")


def _rows(path: str, split: str):
    """(where, row) for every row: `f.jsonl line 3` for local JSON Lines, `<path> (train split) row 3` otherwise."""
    import gzip

    file = Path(path)
    if file.is_file() and file.name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
        opener = gzip.open if file.suffix == ".gz" else open
        try:
            with opener(file, "rt", encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError, EOFError) as error:
            raise UserError(f"import_path: cannot read {path} ({error}); check the file.") from None
        if not text.lstrip().startswith("["):  # JSON Lines
            for number, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    try:
                        yield f"{path} line {number}", json.loads(line)
                    except ValueError as error:
                        raise UserError(f"import_path {path} line {number} is not valid JSON ({error}).") from None
            return
        try:
            items = json.loads(text)
        except ValueError as error:
            raise UserError(f"import_path {path} is not valid JSON ({error}).") from None
        for number, row in enumerate(items, start=1):
            yield f"{path} item {number}", row
        return
    from datasets import load_dataset

    try:
        if file.is_file():  # another local format: by its suffix
            builder = {".parquet": "parquet", ".csv": "csv"}.get(file.suffix, "json")
            dataset = load_dataset(builder, data_files=path, split="train")
        else:  # a folder or a Hub dataset
            dataset = load_dataset(path, split=split)
    except Exception as error:  # datasets raises many kinds for unreadable data; all are the user's to fix
        raise UserError(f"import_path: cannot load {path}: {' '.join(str(error).split())[:200]}") from None
    for number, row in enumerate(dataset, start=1):
        yield f"{path} ({split} split) row {number}", row


def _text(value, where: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        shown = "nothing" if value is None or value == "" else f"a {type(value).__name__} ({str(value)[:40]!r})"
        raise UserError(f"import_path {where}: {what} must be a non-empty text, not {shown}; fix that line.")
    return value


def _rank(value, where: str, what: str) -> int:
    """A whole-number rank (an integral float too: Arrow stores a column with gaps as floats)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise UserError(
            f"import_path {where}: {what} must be a whole number of 0 or more (the order, best first), not "
            f"{value!r}; fix that line."
        )
    return value


def _ranking(texts: list[str], ranks: list[int], where: str) -> tuple[list[str], list[list[int]]]:
    """Answer texts and their tiers of indices, best first (equal ranks tie); the same text twice is refused."""
    seen = {}
    for index, text in enumerate(texts):
        if text in seen:
            raise UserError(
                f"import_path {where}: answers {seen[text] + 1} and {index + 1} are the same text; a ranking needs "
                "distinct answers, so remove one."
            )
        seen[text] = index
    return texts, [[i for i, r in enumerate(ranks) if r == level] for level in sorted(set(ranks))]


def oasst_items(tree, where: str, counts: Counter):
    """(messages, texts, tiers) for every prompter node of one message tree with 2+ ranked replies."""
    if not isinstance(tree, dict):
        raise UserError(f"import_path {where} is not an OpenAssistant message tree (a JSON object); fix that line.")

    def walk(node, history, path):
        if not isinstance(node, dict):
            raise UserError(f"import_path {where}: message {path} is not a JSON object; fix that line.")
        role = node.get("role")
        if role not in ROLES:
            raise UserError(
                f"import_path {where}: message {path} has role {role!r}, not prompter or assistant; fix that line."
            )
        messages = history + [
            {"role": ROLES[role], "content": _text(node.get("text"), where, f"message {path}'s text")}
        ]
        replies = node.get("replies") or []
        if not isinstance(replies, list):
            raise UserError(f"import_path {where}: message {path}'s replies must be a list; fix that line.")
        kept = [r for r in replies if not (isinstance(r, dict) and r.get("deleted"))]
        counts["deleted_replies"] += len(replies) - len(kept)
        if role == "prompter":
            ranked = [
                (n, r) for n, r in enumerate(kept) if isinstance(r, dict) and r.get("role") == "assistant"
                and r.get("rank") is not None
            ]  # fmt: skip
            counts["unranked_replies"] += sum(
                isinstance(r, dict) and r.get("role") == "assistant" and r.get("rank") is None for r in kept
            )
            if len(ranked) >= 2:
                texts = [_text(r.get("text"), where, f"message {path}.{n}'s text") for n, r in ranked]
                ranks = [_rank(r["rank"], where, f"message {path}.{n}'s rank") for n, r in ranked]
                yield (messages, *_ranking(texts, ranks, where))
            elif ranked:
                counts["prompts_with_one_ranked_reply"] += 1
        for n, reply in enumerate(kept):
            yield from walk(reply, messages, f"{path}.{n}")

    root = tree.get("prompt") if isinstance(tree.get("prompt"), dict) else tree
    yield from walk(root, [], "0")


def _prompt(row: dict, where: str) -> list[dict]:
    prompt = row.get("prompt") if row.get("prompt") is not None else row.get("instruction")
    if prompt is None:
        raise UserError(f"import_path {where} has no `prompt` (or `instruction`); add one.")
    if isinstance(prompt, str):
        return [{"role": "user", "content": _text(prompt, where, "`prompt`")}]
    good = isinstance(prompt, list) and prompt and all(
        isinstance(m, dict) and m.get("role") in CHAT_ROLES and isinstance(m.get("content"), str) for m in prompt
    )  # fmt: skip
    if not good:
        raise UserError(
            f"import_path {where}: `prompt` must be a text or a list of chat messages ({{role, content}}), not "
            f"{json.dumps(prompt, default=str)[:60]}; fix that line."
        )
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def ranking_items(row, where: str, counts: Counter):
    """(messages, texts, tiers, labeller) of one ranking-dataset row (one per Argilla user)."""
    if not isinstance(row, dict):
        raise UserError(f"import_path {where} is not a JSON object with prompt, responses and ranks; fix that line.")
    messages = _prompt(row, where)
    if row.get("responses") is not None or row.get("ranks") is not None:
        responses, ranks = row.get("responses"), row.get("ranks")
        for key, value in (("responses", responses), ("ranks", ranks)):
            if not isinstance(value, list):
                shown = json.dumps(value, default=str)[:40]
                raise UserError(f"import_path {where}: `{key}` must be a list, not {shown}; fix that line.")
        if len(responses) != len(ranks):
            raise UserError(f"import_path {where}: {len(responses)} responses but {len(ranks)} ranks; fix that line.")
        texts = [_text(r, where, f"response {n + 1}") for n, r in enumerate(responses)]
        labeller = row.get("labeller") or "import"
        if not isinstance(labeller, str):
            raise UserError(f"import_path {where}: `labeller` must be a text, not {labeller!r}; fix that line.")
        ranks = [_rank(r, where, f"rank {n + 1}") for n, r in enumerate(ranks)]
        yield (messages, *_ranking(texts, ranks, where), labeller)
        return
    questions = [k for k in row if k.endswith(".responses") and isinstance(row[k], list) and row[k]]
    if not questions:
        raise UserError(
            f"import_path {where} has neither `responses` and `ranks` nor an Argilla `<question>.responses` column; "
            "see import_format in --help."
        )
    users = row.get(f"{questions[0]}.users") or []
    for n, answer in enumerate(row[questions[0]]):
        if not answer:
            counts["empty_user_responses"] += 1
            continue
        if not isinstance(answer, list) or not all(isinstance(a, dict) and "value" in a for a in answer):
            raise UserError(f"import_path {where}: {questions[0]}[{n}] must be a list of {{value, rank}}; fix it.")
        values = [item["value"] for item in answer]
        missing = [v for v in values if not isinstance(v, str) or v not in row]
        if missing:
            raise UserError(f"import_path {where}: the ranking names column(s) {missing} that it lacks.")
        texts = [_text(row[v], where, f"column {v}") for v in values]
        ranks = [_rank(item.get("rank"), where, f"{questions[0]}[{n}]'s rank") for item in answer]
        labeller = str(users[n]) if n < len(users) else f"argilla-{n}"
        yield (messages, *_ranking(texts, ranks, where), labeller)


def read_rankings(path: str, kind: str, split: str = "train") -> tuple[list, Counter]:
    """Every ranking of the file, read and checked whole before the store is touched: (where, messages, texts, tiers,
    labeller) items and the counts of what was left out."""
    from .store import prompt_key

    counts, items, first = Counter(), [], {}
    for where, row in _rows(path, split):
        found = ((m, t, k, "oasst") for m, t, k in oasst_items(row, where, counts)) if kind == "oasst" else None
        for messages, texts, tiers, labeller in found or ranking_items(row, where, counts):
            if len(texts) < 2:
                counts["rankings_of_one_answer"] += 1  # no pair to learn from: counted, not stored
                continue
            key = prompt_key(messages)
            if key in first and set(texts) != first[key][1]:
                raise UserError(
                    f"import_path {where} ranks other answers to the prompt of {first[key][0]}; a round holds one "
                    "set of answers per prompt, so import them into another round."
                )
            first.setdefault(key, (where, set(texts)))
            items.append((where, messages, texts, tiers, labeller))
    if not items:
        raise UserError(f"import_path: {path} holds no ranking of two or more answers ({dict(counts) or 'no rows'}).")
    return items, counts


def save_rankings(store, items: list, counts: Counter, path: str, kind: str, round: int) -> dict:
    """Checked against the store's round (one set of answers per prompt), then saved in one transaction."""
    from .store import prompt_key

    stored = store.answer_texts(round)
    for where, messages, texts, _, _ in items:
        known = stored.get(prompt_key(messages))
        if known is not None and set(texts) != known:
            raise UserError(
                f"import_path {where}: round {round} of {store.url} already holds other answers to this prompt; "
                "import into a new round (--round) or a new store."
            )
    ranker = f"import:{kind}"
    store.import_rankings([item[1:] for item in items], round, ranker, path)
    counts.update(rankings=len(items), candidates=sum(len(item[2]) for item in items))
    return {"source": ranker, "import_path": path, **dict(counts)}


def import_rankings(store, path: str, kind: str, round: int, split: str = "train") -> dict:
    """Read and check the whole file, then save every ranking in one transaction; returns the counts."""
    items, counts = read_rankings(path, kind, split)
    return save_rankings(store, items, counts, path, kind, round)
