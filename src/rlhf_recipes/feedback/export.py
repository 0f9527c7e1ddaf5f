"""Rankings -> preference pairs: every K-wise ranking gives its C(K,2) pairs (tied ones skipped), in the project's
preferences format, each pair tagged with its `group` (one ranking of one prompt) so that the reward stage puts a
prompt's pairs in the same batch (train/reward.py, `group_by_prompt`). The report counts rankings, skips, unsafe
flags, pairs and ties per round and ranker, and the agreement between rankers who ranked the same prompt.

Rankings -> thumbs up and down (`write_thumbs`, the unpaired kind KTO trains on): each ranking's best answers
desirable, its worst undesirable, the ones between left out.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from pathlib import Path


def ranking_pairs(tiers: list[list[int]]) -> tuple[list[tuple[int, int]], int]:
    """(chosen id, rejected id) for every pair in different tiers, and how many pairs were ties."""
    pairs = [(a, b) for i, upper in enumerate(tiers) for lower in tiers[i + 1 :] for a in upper for b in lower]
    ties = sum(len(t) * (len(t) - 1) // 2 for t in tiers)
    return pairs, ties


def order_of(tiers: list[list[int]]) -> dict[int, int]:
    return {c: level for level, tier in enumerate(tiers) for c in tier}


def agreement(rankings: list[dict]) -> dict:
    """On prompts ranked by two or more rankers: the share of answer pairs that both ordered the same way, over the
    pairs that both ordered (a tie by either is left out), pooled over every two rankers of a prompt."""
    by_prompt = defaultdict(list)
    for r in rankings:
        if r["status"] == "ranked":
            by_prompt[(r["prompt_id"], r["round"])].append(order_of(r["ranking"]))
    agree = total = shared = 0
    for orders in by_prompt.values():
        if len(orders) < 2:
            continue
        shared += 1
        for one, two in itertools.combinations(orders, 2):
            for a, b in itertools.combinations(sorted(one), 2):
                x, y = one[a] - one[b], two[a] - two[b]
                if x and y:
                    total += 1
                    agree += (x > 0) == (y > 0)
    return {"shared_prompts": shared, "compared_pairs": total, "agreement": agree / total if total else None}


def export_rows(store, rounds: list[int]) -> tuple[list[dict], dict]:
    """The pairs of every ranking of `rounds` and the counts per round and ranker."""
    rankings = store.rankings(rounds)
    texts = store.texts([c for r in rankings for tier in r["ranking"] for c in tier])
    rows, counts = [], defaultdict(Counter)
    for r in rankings:
        count = counts[f"round {r['round']} · {r['ranker']}"]
        count["rankings"] += 1
        if r["status"] != "ranked":
            count[r["status"]] += 1  # skipped / unsafe: no pairs, counted
            continue
        pairs, ties = ranking_pairs(r["ranking"])
        count["pairs"] += len(pairs)
        count["ties_skipped"] += ties
        messages = store.messages(r["prompt_id"])
        for chosen, rejected in pairs:
            rows.append(
                {
                    "prompt": messages,
                    "chosen": [{"role": "assistant", "content": texts[chosen]}],
                    "rejected": [{"role": "assistant", "content": texts[rejected]}],
                    "group": f"r{r['round']}-p{r['prompt_id']}-k{r['id']}",
                    "round": r["round"],
                    "ranker": r["ranker"],
                }
            )
    return rows, {"by_round_and_ranker": {k: dict(v) for k, v in sorted(counts.items())}, **agreement(rankings)}


def thumb_rows(store, rounds: list[int]) -> list[dict]:
    """(prompt, completion, label) rows: in every ranking of `rounds` with two tiers or more, the answers of its best
    tier `label: true` and those of its worst `false`."""
    rankings = [r for r in store.rankings(rounds) if r["status"] == "ranked" and len(r["ranking"]) > 1]
    texts = store.texts([c for r in rankings for tier in (r["ranking"][0], r["ranking"][-1]) for c in tier])
    rows = []
    for r in rankings:
        messages = store.messages(r["prompt_id"])
        for label, tier in ((True, r["ranking"][0]), (False, r["ranking"][-1])):
            rows += [{"prompt": messages, "completion": [{"role": "assistant", "content": texts[c]}], "label": label,
                      "round": r["round"], "ranker": r["ranker"]} for c in tier]  # fmt: skip
    return rows


def _nothing_ranked(rounds: list[int]):
    from ..errors import UserError

    return UserError(
        f"the store has no ranked answers in round(s) {', '.join(map(str, rounds))}; rank some first "
        "(recipes/label.py), then export."
    )


def write_thumbs(store, rounds: list[int], output_dir: str) -> dict:
    """An unpaired data folder (KTO's): train.jsonl of the thumbs of `rounds` (`thumb_rows`), and report.json."""
    from datasets import Dataset

    from .. import fs

    rows = thumb_rows(store, rounds)
    if not rows:
        raise _nothing_ranked(rounds)
    report = {"rounds": rounds, "answers": len(rows), "desirable": sum(r["label"] for r in rows)}
    with fs.build_aside(output_dir, what="label", replace=True) as folder:
        Dataset.from_list(rows).to_json(str(Path(folder) / "train.jsonl"), lines=True, force_ascii=False)
        fs.atomic_write_json(Path(folder) / "report.json", report)
    return report


def write_pairs(store, rounds: list[int], output_dir: str, heldout: str | None, split: str = "test") -> dict:
    """A preferences data folder: train.jsonl from the store's rankings of `rounds`, test.jsonl the held-out pairs of
    `heldout` (the same pairs every round, so reward model accuracy compares across rounds); report.json/.md."""
    from datasets import Dataset, load_dataset

    from .. import fs
    from ..errors import UserError

    rows, report = export_rows(store, rounds)
    if not rows:
        raise _nothing_ranked(rounds)
    report.update(rounds=rounds, pairs=len(rows), groups=len({r["group"] for r in rows}), heldout=heldout)
    with fs.build_aside(output_dir, what="label", replace=True) as folder:
        Dataset.from_list(rows).to_json(str(Path(folder) / "train.jsonl"), lines=True, force_ascii=False)
        if heldout:
            try:
                test = load_dataset(heldout, split=split)
            except Exception as error:  # datasets raises many kinds for unreadable data
                raise UserError(f"heldout_pairs: cannot load the '{split}' split of {heldout}: {error}") from None
            test.to_json(str(Path(folder) / "test.jsonl"), lines=True, force_ascii=False)
            report["heldout_rows"] = len(test)
        fs.atomic_write_json(Path(folder) / "report.json", report)
        fs.atomic_write_text(Path(folder) / "report.md", report_markdown(report))
    return report


def report_markdown(report: dict) -> str:
    lines = ["# Exported comparisons", "", "| round · ranker | rankings | skipped | unsafe | pairs | ties skipped |"]
    lines.append("|---|---|---|---|---|---|")
    for key, c in report["by_round_and_ranker"].items():
        cells = [c.get(k, 0) for k in ("rankings", "skipped", "unsafe", "pairs", "ties_skipped")]
        lines.append(f"| {key} | " + " | ".join(map(str, cells)) + " |")
    share = report.get("agreement")
    lines += [
        "",
        f"{report['pairs']} pairs in {report['groups']} groups (one group per ranking; the reward stage batches a "
        "group together).",
        f"Agreement between rankers on {report['shared_prompts']} shared prompts: "
        + (f"{share:.2f} of {report['compared_pairs']} answer pairs ordered alike." if share is not None else "none."),
        f"Held-out pairs: {report.get('heldout') or 'none'} ({report.get('heldout_rows', 0)} rows).",
    ]
    return "\n".join(lines) + "\n"
