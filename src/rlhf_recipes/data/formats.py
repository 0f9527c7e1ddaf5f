"""Input formats and their conversion into TRL's standard formats (the five output kinds).

Output kinds, one TRL dataset type each (what the stage recipes load), every message list `[{"role", "content"}]`:

- `text`        `{"text": str}`                                      language modelling: continued pretraining
- `messages`    `{"messages": [...]}`                                conversational language modelling: SFT
- `preferences` `{"prompt": [...], "chosen": [...], "rejected": [...]}`   preference, explicit prompt: reward model, DPO
- `prompts`     `{"prompt": [...]}`                                  prompt-only: PPO, GRPO, RLOO, online DPO
- `unpaired`    `{"prompt": [...], "completion": [...], "label": bool}`  unpaired preference: KTO (a preference pair
                becomes two rows: its chosen answer `label: true`, its rejected one `false`)

Input formats (`format:` of a source; `auto` detects it from the column names and logs the result). Every TRL type
is read in its standard (strings) and its conversational (message lists) form:

- `text`             `text` column (also every folder of plain-text files); TRL's language modelling
- `messages`         OpenAI-style `messages` with `role`/`content`; TRL's conversational language modelling
- `sharegpt`         `conversations` with `from`/`value` (`human`/`gpt`/`system`), optional `system` column
- `alpaca`           `instruction`, optional `input`, `output`, optional `system`
- `prompt_response`  one prompt and one answer, TRL's prompt-completion: `prompt`/`completion`, also
                     `prompt`/`response`, `question`/`answer`, `query`/`response`, `instruction`/`response`,
                     `input`/`output`; each a string or a message list (conversational prompt-completion)
- `preferences`      `prompt` (optional) / `chosen` / `rejected`, as strings or message lists (TRL's preference
                     types, explicit and implicit prompt)
- `hh`               Anthropic HH strings: `chosen`/`rejected` = `"\\n\\nHuman: ...\\n\\nAssistant: ..."`
- `prompts`          `prompt` only, as a string or a message list (TRL's prompt-only)
- `unpaired`         `prompt` / `completion` / `label` (true: a good answer), strings or message lists (TRL's
                     unpaired preference)

Converters raise `RecordError(field, problem)` for a malformed record; the caller adds the file and line.
"""

from __future__ import annotations

import re

from datasets import Features, List, Value

KINDS = ("text", "messages", "preferences", "prompts", "unpaired")
FIELDS = {
    "text": ("text",),
    "messages": ("messages",),
    "preferences": ("prompt", "chosen", "rejected"),
    "prompts": ("prompt",),
    "unpaired": ("prompt", "completion", "label"),
}

# kind -> the folder the data stage writes it to in the shipped data.yaml files (`<output_root>/<folder>`): a
# pipeline's `stage: rl` entry trains on `{rl_data}`, the folder of the kind whose columns its stage names
DATA_FOLDERS = {"text": "cpt", "messages": "sft", "preferences": "preferences", "prompts": "prompts",
                "unpaired": "unpaired"}  # fmt: skip


def data_folder(columns: tuple[str, ...]) -> str | None:
    """The prepared data folder that holds these columns (a stage's `columns`): the smallest kind that has them all,
    None when no kind does."""
    kinds = [kind for kind, fields in FIELDS.items() if set(columns) <= set(fields)]
    return DATA_FOLDERS[min(kinds, key=lambda kind: len(FIELDS[kind]))] if kinds else None


_MESSAGE = {"role": Value("string"), "content": Value("string")}
FEATURES = {
    "text": Features({"text": Value("string")}),
    "messages": Features({"messages": List(_MESSAGE)}),
    "preferences": Features({"prompt": List(_MESSAGE), "chosen": List(_MESSAGE), "rejected": List(_MESSAGE)}),
    "prompts": Features({"prompt": List(_MESSAGE)}),
    "unpaired": Features({"prompt": List(_MESSAGE), "completion": List(_MESSAGE), "label": Value("bool")}),
}

ROLES = ("system", "user", "assistant", "tool")
# Role names seen in the wild, mapped to the chat-template roles; a source adds its own with `roles:`.
ROLE_ALIASES = {"human": "user", "gpt": "assistant", "model": "assistant", "chatgpt": "assistant", "bard": "assistant"}

# (prompt column, answer column) pairs recognised as the prompt/response format, renamed to prompt/response.
PROMPT_RESPONSE_ALIASES = (
    ("prompt", "response"),
    ("prompt", "completion"),
    ("question", "answer"),
    ("query", "response"),
    ("instruction", "response"),
    ("input", "output"),
)

# format -> (required columns, optional columns, the kinds it can become; the first is its natural kind)
FORMATS = {
    "text": (("text",), (), ("text",)),
    "messages": (("messages",), (), ("messages", "prompts")),
    "sharegpt": (("conversations",), ("system",), ("messages", "prompts")),
    "alpaca": (("instruction", "output"), ("input", "system"), ("messages", "prompts")),
    "prompt_response": (("prompt", "response"), ("system",), ("messages", "prompts")),
    "preferences": (("chosen", "rejected"), ("prompt",), ("preferences", "messages", "prompts", "unpaired")),
    "hh": (("chosen", "rejected"), (), ("preferences", "messages", "prompts", "unpaired")),
    "prompts": (("prompt",), (), ("prompts",)),
    "unpaired": (("prompt", "completion", "label"), ("system",), ("unpaired", "prompts")),
}
_LABELS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}

_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")


class RecordError(ValueError):
    """A malformed record: `field` is where (e.g. `messages[2].role`), the message says what is wrong."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"field '{field}' {problem}")
        self.field = field


def detect_format(columns: list[str], first_row: dict) -> str | None:
    """The input format a table with these columns is in, or None when it matches none."""
    names = set(columns)
    if "conversations" in names:
        return "sharegpt"
    if "messages" in names:
        return "messages"
    if {"chosen", "rejected"} <= names:
        chosen = first_row.get("chosen")
        if "prompt" not in names and isinstance(chosen, str) and "Assistant:" in chosen:
            return "hh"
        return "preferences"
    if {"prompt", "completion", "label"} <= names:
        return "unpaired"
    if {"instruction", "output"} <= names:
        return "alpaca"
    if prompt_response_columns(columns):
        return "prompt_response"
    if "prompt" in names:
        return "prompts"
    if "text" in names:
        return "text"
    return None


def prompt_response_columns(columns: list[str]) -> tuple[str, str] | None:
    """The first (prompt, answer) column pair of PROMPT_RESPONSE_ALIASES present in `columns`."""
    return next(((p, r) for p, r in PROMPT_RESPONSE_ALIASES if p in columns and r in columns), None)


def _string(value, field: str, *, optional: bool = False) -> str:
    if value is None:
        if optional:
            return ""
        raise RecordError(field, "is missing or null; every record needs it")
    if not isinstance(value, str):
        raise RecordError(field, f"must be a string, not {type(value).__name__} ({repr(value)[:40]})")
    return value


def _content(value, field: str) -> str:
    """Message content: a string, or OpenAI-style text parts `[{"type": "text", "text": ...}]` joined."""
    if isinstance(value, list) and value and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        return "".join(_string(p.get("text"), f"{field}[{i}].text") for i, p in enumerate(value))
    if isinstance(value, list | dict):
        raise RecordError(
            field, f"must be a string (or text parts), not {type(value).__name__}; only text is supported"
        )
    return _string(value, field)


def to_messages(value, field: str, roles: dict[str, str]) -> list[dict]:
    """A validated conversation: a non-empty list of {"role", "content"} (or ShareGPT {"from", "value"}) objects."""
    if not isinstance(value, list):
        raise RecordError(field, f"must be a list of messages, not {type(value).__name__}")
    if not value:
        raise RecordError(field, "is an empty conversation; every conversation needs at least one message")
    messages = []
    for i, message in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise RecordError(where, f"must be an object with role and content, not {type(message).__name__}")
        role_key = "role" if message.get("role") is not None else "from"
        content_key = "content" if message.get("content") is not None or "value" not in message else "value"
        name = message.get(role_key)
        if name is None:
            raise RecordError(f"{where}.role", "is missing; every message needs a role (or a ShareGPT 'from')")
        if not isinstance(name, str):
            raise RecordError(f"{where}.{role_key}", f"must be a string, not {type(name).__name__}")
        key = name.strip().lower()
        role = roles.get(name) or roles.get(key) or (key if key in ROLES else None)
        if role not in ROLES:
            known = ", ".join(sorted(set(ROLES) | set(roles)))
            raise RecordError(
                f"{where}.{role_key}", f"has unknown role '{name}' (known: {known}); map it under `roles:`"
            )
        messages.append({"role": role, "content": _content(message.get(content_key), f"{where}.{content_key}")})
    return messages


def parse_hh(value, field: str) -> list[dict]:
    """Anthropic HH: `"\\n\\nHuman: q\\n\\nAssistant: a ..."` into a conversation."""
    text = _string(value, field)
    parts = _HH_TURN.split(text)
    if len(parts) < 3 or "Assistant" not in parts[1::2]:
        raise RecordError(
            field, "has no '\\n\\nAssistant:' turn; HH strings look like '\\n\\nHuman: ...\\n\\nAssistant: ...'"
        )
    if parts[0].strip():
        raise RecordError(field, f"has text before the first 'Human:' turn ({parts[0].strip()[:40]!r})")
    return [
        {"role": "user" if who == "Human" else "assistant", "content": said}
        for who, said in zip(parts[1::2], parts[2::2], strict=True)
    ]


def _system(record: dict) -> list[dict]:
    system = _string(record.get("system"), "system", optional=True)
    return [{"role": "system", "content": system}] if system.strip() else []


def _conversation(record: dict, fmt: str, roles: dict[str, str]) -> list[dict]:
    """A conversation format (messages, sharegpt, alpaca, prompt_response) as one message list."""
    if fmt == "messages":
        return to_messages(record.get("messages"), "messages", roles)
    if fmt == "sharegpt":
        return _system(record) + to_messages(record.get("conversations"), "conversations", roles)
    if fmt == "alpaca":
        instruction = _string(record.get("instruction"), "instruction")
        extra = _string(record.get("input"), "input", optional=True)
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        answer = _string(record.get("output"), "output")
        return _system(record) + [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    prompt = _side(_required(record, "prompt"), "prompt", roles, "user")  # a string, or messages (conversational)
    return _system(record) + prompt + _side(_required(record, "response"), "response", roles, "assistant")


def _side(value, field: str, roles: dict[str, str], role: str) -> list[dict]:
    return [{"role": role, "content": value}] if isinstance(value, str) else to_messages(value, field, roles)


def _label(value) -> bool:
    """An unpaired preference's label: true (a desirable answer) or false; 1/0 and "true"/"false" (CSV) too."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _LABELS:
        return _LABELS[value.strip().lower()]
    raise RecordError("label", f"must be true or false (1/0), not {value!r:.40}")


def _full_conversation(value) -> bool:
    """A chosen/rejected side that repeats the prompt (starts with a non-assistant turn), as in UltraFeedback."""
    return (
        isinstance(value, list) and bool(value) and isinstance(value[0], dict) and value[0].get("role") != "assistant"
    )


def _pair(record: dict, fmt: str, roles: dict[str, str]) -> dict:
    """A preference format as TRL's explicit-prompt conversational triple."""
    from trl.data_utils import extract_prompt  # here: trl imports torch, which a bad config should not wait for

    if fmt == "hh":
        sides = {side: parse_hh(record.get(side), side) for side in ("chosen", "rejected")}
        pair = extract_prompt(sides)
    elif record.get("prompt") is not None and not _full_conversation(record.get("chosen")):
        pair = {
            "prompt": _side(record["prompt"], "prompt", roles, "user"),
            "chosen": _side(_required(record, "chosen"), "chosen", roles, "assistant"),
            "rejected": _side(_required(record, "rejected"), "rejected", roles, "assistant"),
        }
    else:  # implicit prompt: two full conversations (or two texts, TRL's standard type) sharing their beginning
        chosen, rejected = _required(record, "chosen"), _required(record, "rejected")
        if isinstance(chosen, str) and isinstance(rejected, str):
            texts = extract_prompt({"chosen": chosen, "rejected": rejected})
            pair = {
                "prompt": [{"role": "user", "content": texts["prompt"].strip()}] if texts["prompt"].strip() else []
            }
            pair.update(
                {side: [{"role": "assistant", "content": texts[side].strip()}] for side in ("chosen", "rejected")}
            )
        elif isinstance(chosen, str) or isinstance(rejected, str):
            raise RecordError(
                "rejected" if isinstance(chosen, str) else "chosen", "must be a string like the other side"
            )
        else:
            sides = {
                side: to_messages(value, side, roles) for side, value in (("chosen", chosen), ("rejected", rejected))
            }
            pair = extract_prompt(sides)
    if not pair["prompt"]:
        raise RecordError("chosen", "shares no prompt with 'rejected'; both must start with the same conversation")
    if pair["chosen"] and pair["chosen"][0]["role"] != "assistant":
        raise RecordError("chosen", "must continue the prompt with an assistant turn")
    return pair


def _required(record: dict, field: str):
    if record.get(field) is None:
        raise RecordError(field, "is missing or null; every record needs it")
    return record[field]


def _prompt_of(messages: list[dict]) -> list[dict]:
    """Everything before the last assistant turn (the whole conversation when it has none)."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
    return messages[:last]


def convert(record: dict, fmt: str, kind: str, roles: dict[str, str]) -> dict | list[dict]:
    """One input record of format `fmt` as an output record of `kind` (a pair read as `unpaired`: two, its chosen answer
    desirable and its rejected one not, as TRL's `unpair_preference_dataset`); RecordError when it is malformed."""
    if fmt == "text":
        return {"text": _string(record.get("text"), "text")}
    if fmt == "prompts":
        return {"prompt": _side(_required(record, "prompt"), "prompt", roles, "user")}
    if fmt == "unpaired":
        prompt = _system(record) + _side(_required(record, "prompt"), "prompt", roles, "user")
        if kind == "prompts":
            return {"prompt": prompt}
        completion = _side(_required(record, "completion"), "completion", roles, "assistant")
        return {"prompt": prompt, "completion": completion, "label": _label(record.get("label"))}
    if fmt in ("preferences", "hh"):
        pair = _pair(record, fmt, roles)
        if kind == "messages":
            return {"messages": pair["prompt"] + pair["chosen"]}
        if kind == "unpaired":
            return [{"prompt": pair["prompt"], "completion": pair[side], "label": side == "chosen"}
                    for side in ("chosen", "rejected")]  # fmt: skip
        return pair if kind == "preferences" else {"prompt": pair["prompt"]}
    messages = _conversation(record, fmt, roles)
    return {"messages": messages} if kind == "messages" else {"prompt": _prompt_of(messages)}


def empty_record(kind: str) -> dict:
    """The placeholder written in place of a record that failed to convert."""
    return {field: "" if kind == "text" else False if field == "label" else [] for field in FIELDS[kind]}
