"""The one synthetic data generator of the benches: rows of chosen token lengths, deterministic by seed.

`Synthetic(tokenizer, seed)` cuts text from the demo domain's prose (data/demo/cpt) and questions from the demo
conversations (data/demo/sft), and builds rows whose rendering with the tokenizer's chat template is a chosen number
of tokens long (the longest that fits, within a token or two of the target):

- `conversations`: system + user + assistant, `{"messages": [...]}` (SFT);
- `pairs`: two answers to one prompt, `{"prompt": [...], "chosen": [...], "rejected": [...]}` (reward model);
- `prompts`: `{"prompt": [user]}`, counted with the generation prompt (PPO);
- `texts`: `{"text": ...}` (continued pretraining).

Without a target, each row's length is drawn log-uniform in [20, 500] tokens: many short rows, some long ones, as
in real chat data. `for_columns` picks the kind a stage trains on from the registry's `columns`.

`records_to_clean` makes what data preparation is for (exact and near duplicates, empty and over-long answers,
leaks of held-out questions), and `reward_model` the benches' PPO reward model: the embedded model with a seeded
one-output score head, no training needed for a measurement of speed or memory.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from bench.harness import REPO

MIN_TOKENS, MAX_TOKENS = 20, 500
DEMO = REPO / "data" / "demo"
SYSTEM = "Be helpful."


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_split(folder: Path, rows: list[dict], split: str = "train") -> str:
    """`rows` as `<folder>/<split>.jsonl`, a folder that `load_dataset(folder)` and every stage read."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(folder)


class Synthetic:
    def __init__(self, tokenizer, seed: int = 0):
        self.tokenizer = tokenizer
        self.rng = random.Random(seed)
        prose = " ".join(row["text"] for row in _read_jsonl(DEMO / "cpt" / "train.jsonl"))
        self.stream = tokenizer(prose, add_special_tokens=False)["input_ids"]
        self.questions = [row["messages"][0]["content"] for row in _read_jsonl(DEMO / "sft" / "train.jsonl")]

    # ------------------------------------------------------------------------------------------- lengths
    def length(self, low: int = MIN_TOKENS, high: int = MAX_TOKENS) -> int:
        """A length drawn log-uniform in [low, high]."""
        return round(math.exp(self.rng.uniform(math.log(low), math.log(high))))

    def _span(self, count: int) -> list[int]:
        """`count` consecutive tokens of the prose from a random start (wrapping around its end)."""
        start = self.rng.randrange(len(self.stream))
        repeats = (start + count) // len(self.stream) + 1
        return (self.stream * repeats)[start : start + count]

    def _count(self, messages: list[dict], generation_prompt: bool = False) -> int:
        rendered = self.tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, add_generation_prompt=generation_prompt
        )
        return len(rendered["input_ids"])

    @staticmethod
    def _fit(build, target: int):
        """The row of `build(n)` (n >= 1 content tokens) with the longest rendering of at most `target` tokens.

        Decoding and re-encoding can merge or split a token at the seams, so the count is checked, not assumed."""
        _, shortest = build(1)
        n = max(1, target - shortest + 1)
        row, length = build(n)
        while length > target and n > 1:
            n = max(1, n - max(1, length - target))
            row, length = build(n)
        while True:
            longer, longer_length = build(n + 1)
            if longer_length > target:
                return row, length
            row, length, n = longer, longer_length, n + 1

    # ---------------------------------------------------------------------------------------------- rows
    def _user(self, target: int, question: str | None = None) -> list[int]:
        """The user turn's tokens for a conversation of `target` tokens: a demo question, cut to a quarter of it."""
        question_ids = self.tokenizer(question or self.rng.choice(self.questions), add_special_tokens=False)
        overhead = self._count([{"role": "system", "content": SYSTEM}, {"role": "user", "content": ""}])
        return question_ids["input_ids"][: max(1, (target - overhead) // 4)]

    def conversation(self, target: int, user_ids: list[int] | None = None) -> list[dict]:
        """System + user + assistant, rendered in (at most) `target` tokens; the answer takes most of them."""
        decode = self.tokenizer.decode
        user_ids = user_ids or self._user(target)
        answer = self._span(target + 8)

        def build(n):
            messages = [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": decode(user_ids)},
                {"role": "assistant", "content": decode(answer[:n])},
            ]
            return messages, self._count(messages)

        return self._fit(build, target)[0]

    def conversations(self, count: int, target: int | None = None) -> tuple[list[dict], list[int], list[int]]:
        """(rows, rendered lengths, assistant (loss) tokens per row)."""
        rows, lengths, loss_tokens = [], [], []
        for _ in range(count):
            messages = self.conversation(target or self.length())
            rendered = self.tokenizer.apply_chat_template(
                messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
            )
            rows.append({"messages": messages})
            lengths.append(len(rendered["input_ids"]))
            loss_tokens.append(sum(rendered["assistant_masks"]))
        return rows, lengths, loss_tokens

    def pairs(self, count: int, target: int | None = None) -> tuple[list[dict], list[int]]:
        """(rows, lengths of every chosen and rejected conversation): two answers to one prompt, in TRL's explicit
        prompt format `{"prompt": [system, user], "chosen": [assistant], "rejected": [assistant]}`."""
        rows, lengths = [], []
        for _ in range(count):
            targets = (target or self.length(), target or self.length())
            user_ids = self._user(min(targets))
            chosen, rejected = (self.conversation(t, user_ids) for t in targets)
            rows.append({"prompt": chosen[:2], "chosen": chosen[2:], "rejected": rejected[2:]})
            lengths += [self._count(chosen), self._count(rejected)]
        return rows, lengths

    def prompts(self, count: int, target: int | None = None) -> tuple[list[dict], list[int]]:
        """(rows, lengths with the generation prompt): one user turn each."""
        rows, lengths = [], []
        for _ in range(count):
            goal = target or self.length()
            text = self._span(goal + 8)

            def build(n, text=text):
                prompt = [{"role": "user", "content": self.tokenizer.decode(text[:n])}]
                return {"prompt": prompt}, self._count(prompt, generation_prompt=True)

            row, length = self._fit(build, goal)
            rows.append(row)
            lengths.append(length)
        return rows, lengths

    def texts(self, count: int, target: int | None = None) -> tuple[list[dict], list[int]]:
        """(rows, token lengths): plain prose."""
        rows = [{"text": self.tokenizer.decode(self._span(target or self.length()))} for _ in range(count)]
        return rows, [len(self.tokenizer(r["text"], add_special_tokens=False)["input_ids"]) for r in rows]

    def for_columns(self, columns: tuple[str, ...], count: int, target: int | None = None) -> list[dict]:
        """Rows of the kind a stage trains on, by the columns the registry says it needs."""
        kinds = {("messages",): self.conversations, ("chosen", "rejected"): self.pairs}  # the registry's columns
        kinds.update({("prompt",): self.prompts, ("text",): self.texts})
        if tuple(columns) not in kinds:
            raise ValueError(f"no synthetic rows with columns {columns}; known: {', '.join(map(str, kinds))}")
        return kinds[tuple(columns)](count, target)[0]

    # --------------------------------------------------------------------------------- data preparation
    def records_to_clean(self, rows: int, kind: str = "messages") -> tuple[list[dict], list[dict]]:
        """(training records, 1,000 held-out records) of random sentences of real words, with what cleaning is for:
        5% exact duplicates (case and spacing changed), 5% near duplicates (one word changed), 1% empty answers,
        1% too long, 1% that repeat a held-out question. `kind` is `messages` or `text`."""
        rng = self.rng
        words = sorted(  # real words: lower-case alphabetic single tokens, about one token per word as in English
            {
                t[1:]
                for t in self.tokenizer.get_vocab()
                if t.startswith("Ġ") and t[1:].isalpha() and t[1:].islower() and 3 <= len(t) <= 10
            }
        )
        words = rng.sample(words, min(5000, len(words)))

        def sentence(low: int, high: int) -> str:
            return " ".join(rng.choice(words) for _ in range(rng.randint(low, high))).capitalize() + "."

        def record(question: str, answer: str) -> dict:
            if kind == "text":
                return {"text": f"{question}\n\n{answer}"}
            return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}

        held_out = [(sentence(14, 20), sentence(10, 30)) for _ in range(1000)]
        made: list[tuple[str, str]] = []
        for _ in range(rows):
            roll = rng.random()
            if roll < 0.05 and made:  # exact duplicate up to case and spacing
                question, answer = rng.choice(made)
                made.append((question.upper(), answer.replace(" ", "  ")))
            elif roll < 0.10 and made:  # near duplicate: one word changed
                question, answer = rng.choice(made)
                tokens = answer.split() or [""]
                tokens[rng.randrange(len(tokens))] = rng.choice(words)
                made.append((question, " ".join(tokens)))
            elif roll < 0.11:
                made.append((sentence(5, 15), "   "))
            elif roll < 0.12:
                made.append((sentence(5, 15), sentence(1500, 1600)))
            elif roll < 0.13:
                made.append((rng.choice(held_out)[0], sentence(20, 60)))
            else:
                made.append((sentence(6, 20), " ".join(sentence(8, 20) for _ in range(3))))
        return [record(q, a) for q, a in made], [record(q, a) for q, a in held_out]


def hh_rows(path: str, pairs: int, conversations: int, tokenizer, max_length: int = 512) -> tuple:
    """Real rows instead of generated ones: the first `pairs` Anthropic HH-RLHF pairs of a JSON Lines file in the `hh`
    format (.gz too) that RewardTrainer keeps at `max_length` and that have no empty turn (the data stage drops
    those), with the lengths of every chosen and rejected conversation; and the first `conversations` of them as SFT
    conversations (prompt + chosen), with their rendered lengths and assistant (loss) tokens."""
    import gzip

    from rlhf_recipes.data.formats import convert
    from rlhf_recipes.scoring import training_ids

    rows, lengths = [], []
    with (gzip.open if str(path).endswith(".gz") else open)(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            pair = convert(json.loads(line), "hh", "preferences", {})
            if any(not m["content"].strip() for side in pair.values() for m in side):
                continue
            sides = [len(training_ids(tokenizer, pair["prompt"], pair[side])) for side in ("chosen", "rejected")]
            if max(sides) <= max_length:
                rows.append(pair)
                lengths += sides
            if len(rows) == max(pairs, conversations):
                break
    chats, chat_lengths, loss_tokens = [], [], []
    for pair in rows[:conversations]:
        messages = pair["prompt"] + pair["chosen"]
        rendered = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        chats.append({"messages": messages})
        chat_lengths.append(len(rendered["input_ids"]))
        loss_tokens.append(sum(rendered["assistant_masks"]))
    return rows[:pairs], lengths[: 2 * pairs], chats, chat_lengths, loss_tokens


def reward_model(base: str, folder: Path, seed: int = 0) -> str:
    """A full-weight reward model for PPO measurements: `base` with a seeded one-output score head, saved once."""
    folder = Path(folder)
    if (folder / "config.json").is_file():
        return str(folder)
    import torch
    from transformers import AutoModelForSequenceClassification

    from rlhf_recipes.models import load_tokenizer

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32)
    tokenizer = load_tokenizer(base)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)
