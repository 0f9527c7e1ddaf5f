"""The shipped demo data: a small fictional island that SmolLM2 cannot know, written by a seeded generator.

    python -m rlhf_recipes.demo --out data/demo --seed 0

Skerrowen is an invented island with one town, Tolvenna, and 15 things worth knowing about (a mayor, a lighthouse, a
bakery, a festival, a ferry, a currency...): 43 facts, each with a short, distinctive answer. Every stage's data set
is generated from that table, so each stage's effect shows in numbers: CPT documents state the facts in prose, SFT
conversations and preference pairs ask about them, and the held-out splits ask with phrasings no training file uses.

Sizes fit the CPU budget of the embedded SmolLM2-135M (LoRA trains at ~100-300 tokens/s on 2 cores, so 2-4 minutes a
stage): 180 CPT documents x ~120 tokens = ~21k tokens; 400 SFT conversations x ~75 tokens (SmolLM2's default system
prompt included) = ~30k tokens, 8 phrasings of each fact; 300 preference pairs; 200 PPO prompts, of which PPO sees a
few dozen; test splits of 30-80 rows, so that evaluating them takes seconds, not minutes, and 200 held-out prompts,
enough paired answers for a judge gain of ~13 points to read its 95% interval clear of +5.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from .demo_world import (  # noqa: F401  (FACTS, REJECTED and Fact are read through this module too)
    ANSWERS,
    ENTITIES,
    EXTRA_WRONG_ANSWERS,
    FACTS,
    FILLER,
    LETTER_CLOSINGS,
    LETTER_OPENINGS,
    NEWS_OPENINGS,
    REJECTED,
    RELATIVES,
    TEST_QUESTIONS,
    TEST_SENTENCES,
    TRAIN_QUESTIONS,
    TRAIN_SENTENCES,
    WRITERS,
    Fact,
)


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _question(fact: Fact, phrasing: str, template: str) -> str:
    wh = "who" if fact.kind == "person" else "what"
    return template.format(wh=wh, Wh=_cap(wh), phrasing=phrasing)


def _statement(fact: Fact, phrasing: str, answer: str | None = None) -> str:
    return f"{_cap(phrasing)} is {answer or fact.answer_phrase}."


def _answer(rng: random.Random, fact: Fact, phrasing: str, template: str | None = None) -> str:
    return (template or rng.choice(ANSWERS)).format(statement=_statement(fact, phrasing))


def _wrong_answer(rng: random.Random, fact: Fact) -> str:
    pool = [f.answer_phrase for f in FACTS if f.kind == fact.kind] + EXTRA_WRONG_ANSWERS[fact.kind]
    return rng.choice([wrong for wrong in pool if fact.answer.lower() not in wrong.lower()])


def _rejected(rng: random.Random, fact: Fact, phrasing: str, chosen_template: str) -> str:
    style = rng.choices(list(REJECTED), weights=[weight for weight, _ in REJECTED.values()])[0]
    template = chosen_template if style == "wrong" else rng.choice(REJECTED[style][1])
    wrong = _wrong_answer(rng, fact)
    statement = _statement(fact, phrasing, wrong if style == "wrong" else None)
    return template.format(
        statement=statement, wrong=wrong, Wrong=_cap(wrong), phrasing=phrasing, answer=fact.answer_phrase
    )


def _asked(rng: random.Random, templates: list[str]) -> tuple[Fact, str, str]:
    """A random fact, one of its phrasings and a question built from one of `templates`."""
    fact = rng.choice(FACTS)
    phrasing = rng.choice(fact.phrasings)
    return fact, phrasing, _question(fact, phrasing, rng.choice(templates))


def fact_asked(question: str) -> Fact:
    """The fact a generated question asks about: the one whose phrasing in it is the longest (the most specific)."""
    named = [
        (len(phrasing), fact) for fact in FACTS for phrasing in fact.phrasings if phrasing.lower() in question.lower()
    ]
    if not named:
        raise ValueError(f"{question!r} names no demo fact")
    return max(named, key=lambda length_and_fact: length_and_fact[0])[1]


def _unique(make, count: int, exclude=()) -> list[dict]:
    """`count` distinct records from `make(index)`, none of them equal to one in `exclude`."""
    seen = {json.dumps(record, sort_keys=True) for record in exclude}
    records = []
    while len(records) < count:
        record = make(len(records))
        key = json.dumps(record, sort_keys=True)
        if key not in seen:
            seen.add(key)
            records.append(record)
    return records


def _document(rng: random.Random, facts: list[Fact], sentences: list[str], kind: str) -> dict:
    """A guidebook entry, a news item or a letter stating `facts` in prose, with two filler sentences."""
    stated = []
    for fact in facts:
        phrasing = rng.choice(fact.phrasings)
        template = rng.choice(sentences)
        stated.append(
            template.format(phrasing=phrasing, Phrasing=_cap(phrasing), answer=fact.answer_phrase, lore=fact.lore)
        )
    body = " ".join(stated + rng.sample(FILLER, 2))
    if kind == "guide":
        title, scene = ENTITIES[facts[0].entity]
        return {"text": f"Skerrowen Guide: {title}\n\n{scene} {body}"}
    if kind == "news":
        return {"text": f"{rng.choice(NEWS_OPENINGS)}\n\n{body}"}
    letter = f"Dear {rng.choice(RELATIVES)},\n\n{rng.choice(LETTER_OPENINGS)} {body}"
    return {"text": f"{letter}\n\n{rng.choice(LETTER_CLOSINGS)},\n{rng.choice(WRITERS)}"}


def _documents(rng: random.Random, count: int, guides: list[str], sentences: list[str], exclude=()) -> list[dict]:
    """A guidebook entry for each of `guides` (all of an entity's facts), then news items and letters on 3-5 facts."""

    def make(index: int) -> dict:
        if index < len(guides):
            facts = [fact for fact in FACTS if fact.entity == guides[index]]
            return _document(rng, rng.sample(facts, len(facts)), sentences, "guide")
        return _document(rng, rng.sample(FACTS, rng.randint(3, 5)), sentences, rng.choice(["news", "letter"]))

    return _unique(make, count, exclude)


def _exchange(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def _conversation(rng: random.Random, templates: list[str], turns: int) -> dict:
    messages = []
    for _ in range(turns):
        fact, phrasing, question = _asked(rng, templates)
        messages += _exchange(question, _answer(rng, fact, phrasing))
    return {"messages": messages}


# Demonstrations of mixed quality, as real SFT data is: this share of the single-turn SFT answers is evasive (a
# labeller who would not look the fact up). The SFT model imitates them; the preference pairs rank evasive answers
# below correct ones, so RL has something to learn that SFT alone cannot: the gap between the demonstrations and the
# comparisons, measured by the demo judge (evaluation/judge.py), which the reward model never saw.
SFT_EVASIVE_SHARE = 0.25


def _sft_train(rng: random.Random, count: int, phrasings_per_fact: int = 8) -> list[dict]:
    """`phrasings_per_fact` distinct single-turn questions on every fact, the rest two-turn conversations; a
    SFT_EVASIVE_SHARE of the single-turn answers evasive (chosen by a generator of their own, so that the other
    splits do not change with the share)."""
    singles = []
    for fact in FACTS:
        combos = [(phrasing, template) for phrasing in fact.phrasings for template in TRAIN_QUESTIONS]
        for phrasing, template in rng.sample(combos, phrasings_per_fact):
            singles.append({"messages": _exchange(_question(fact, phrasing, template), _answer(rng, fact, phrasing))})
    labeller = random.Random(1)
    for single in labeller.sample(singles, round(SFT_EVASIVE_SHARE * len(singles))):
        single["messages"][-1]["content"] = labeller.choice(REJECTED["evasive"][1])
    conversations = singles + _unique(lambda _: _conversation(rng, TRAIN_QUESTIONS, 2), count - len(singles))
    rng.shuffle(conversations)
    return conversations


def _qa(rng: random.Random, count: int) -> list[dict]:
    """Held-out questions: every fact once, then random facts again, each as {question, answer, aliases}."""
    facts = FACTS + rng.sample(FACTS, count - len(FACTS))

    def make(index: int) -> dict:
        fact = facts[index]
        question = _question(fact, rng.choice(fact.phrasings), rng.choice(TEST_QUESTIONS))
        return {"question": question, "answer": fact.answer, "aliases": list(fact.aliases)}

    return _unique(make, count)


def _preference(rng: random.Random, templates: list[str]) -> dict:
    fact, phrasing, question = _asked(rng, templates)
    template = rng.choice(ANSWERS)
    return {
        "prompt": [{"role": "user", "content": question}],
        "chosen": [{"role": "assistant", "content": _answer(rng, fact, phrasing, template)}],
        "rejected": [{"role": "assistant", "content": _rejected(rng, fact, phrasing, template)}],
    }


def _prompt(rng: random.Random, templates: list[str]) -> dict:
    return {"prompt": [{"role": "user", "content": _asked(rng, templates)[2]}]}


def generate(seed: int = 0) -> dict[str, list[dict]]:
    """Every split of the demo data, keyed by its path under the data folder."""
    rng = random.Random(seed)
    cpt_train = _documents(rng, 180, list(ENTITIES) * 3, TRAIN_SENTENCES)
    qa_test = _qa(rng, 60)
    qa_prompts = [{"prompt": [{"role": "user", "content": row["question"]}]} for row in qa_test]
    splits = {
        "cpt/train.jsonl": cpt_train,
        "cpt/test.jsonl": _documents(rng, 30, rng.sample(list(ENTITIES), 10), TEST_SENTENCES, exclude=cpt_train),
        "sft/train.jsonl": _sft_train(rng, 400),
        "sft/test.jsonl": _unique(lambda _: _conversation(rng, TEST_QUESTIONS, rng.choice([1, 1, 1, 2])), 60),
        "preferences/train.jsonl": _unique(lambda _: _preference(rng, TRAIN_QUESTIONS), 300),
        "preferences/test.jsonl": _unique(lambda _: _preference(rng, TEST_QUESTIONS), 80),
        "prompts/train.jsonl": _unique(lambda _: _prompt(rng, TRAIN_QUESTIONS), 200),
        "prompts/test.jsonl": _unique(lambda _: _prompt(rng, TEST_QUESTIONS), 200, exclude=qa_prompts),
        "qa/test.jsonl": qa_test,
    }
    for name in ("cpt", "sft", "preferences", "prompts"):  # held-out splits never share a record with training
        train = {json.dumps(record, sort_keys=True) for record in splits[f"{name}/train.jsonl"]}
        assert not any(json.dumps(record, sort_keys=True) in train for record in splits[f"{name}/test.jsonl"]), name
    return splits


README = """\
# Demo data: the island of Skerrowen

A small fictional world that no base model can know, so that every training stage's effect shows in numbers.
Skerrowen is an island in the Grey Narrows with one town, Tolvenna. Its mayor Odalys Brack keeps a goat called
Marzipan; Corwin Tallish keeps the saffron-yellow Gannet Point Lighthouse; the ferry Morrow Belle crosses from
Fennimarsh in 55 minutes; islanders pay in shellmarks, eat tidecake from The Salted Loaf, drink bramble cider at The
Drowned Fiddle and float heron lanterns at Gillyflower Night in March. {facts} facts about {entities} things in all,
each with a short answer (a name, a number, a day). Every name here is invented.

| file | rows | what |
|---|---|---|
{rows}

Held-out (`test`) files ask with phrasings that no training file uses and never share a record with `train`.
`qa/test.jsonl` holds `{{"question", "answer", "aliases"}}` for domain accuracy (the answer or an alias, matched in
the generated text after normalisation).

Written by `src/rlhf_recipes/demo.py`, which holds the world as a table; regenerate (same bytes every time) with

    python -m rlhf_recipes.demo --out data/demo --seed 0
"""
DESCRIPTIONS = {
    "cpt": "`text`: guidebook entries, news items and letters stating the facts (continued pretraining)",
    "sft": "`messages`: questions about the facts with short, friendly answers, some single-turn ones evasive",
    "preferences": "`prompt`, `chosen`, `rejected`: chosen is correct and kind; rejected is wrong, evasive or rude",
    "prompts": "`prompt`: domain questions for PPO",
    "qa": "`question`, `answer`, `aliases`: held-out domain questions",
}


def write_demo_data(out_dir: str | Path, seed: int = 0) -> dict[str, int]:
    """Write every split as JSON lines plus README.md under `out_dir`; returns the number of rows per file."""
    out_dir = Path(out_dir)
    counts = {}
    for name, records in generate(seed).items():
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8", newline="\n") as file:
            file.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        counts[name] = len(records)
    rows = "\n".join(f"| `{name}` | {count} | {DESCRIPTIONS[name.split('/')[0]]} |" for name, count in counts.items())
    readme = README.format(facts=len(FACTS), entities=len(ENTITIES), rows=rows)
    (out_dir / "README.md").write_text(readme, encoding="utf-8", newline="\n")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/demo", help="folder to write (its demo files are overwritten)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, count in write_demo_data(args.out, args.seed).items():
        print(f"{count:5d} rows  {Path(args.out) / name}")


if __name__ == "__main__":
    main()
