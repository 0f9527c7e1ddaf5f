"""The one config loader: every YAML of the project (stage, data, evaluation, publish, pipeline) is read here.

- `--config FILE.yaml` is read once; any key can be overridden on the command line as `--key VALUE` (dotted for
  nested keys: `--datasets.sft.cleaning.max_tokens 256`, `--sft.learning_rate 1e-4`), `--key=VALUE`, several values
  for a list (`--lora_target_modules q_proj v_proj`) or a bare `--flag` for true.
- Unknown keys fail with one sentence that names the file (or the command line) and the closest known key.
- Values from the YAML and from the command line are checked against the dataclass field types the same way, so
  `learning_rate: fast` or a list for a batch size is a sentence about that key, not a traceback from torch.

Flat configs (TRL's dataclasses: ScriptArguments, SFTConfig, ModelConfig, ...) are built with
`HfArgumentParser.parse_dict`, nested ones (data preparation, pipeline) with `build`.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import sys
import types
import typing
from pathlib import Path
from typing import Literal

from .errors import UserError, suggest


def help_field(text: str, **kwargs):
    """A dataclass field with its `--help` text (every config dataclass of the project declares its keys so)."""
    return dataclasses.field(metadata={"help": text}, **kwargs)


class Text(str):
    """A value typed on the command line: converted by the type of the field it lands in, not guessed."""


class Origin:
    """Where a key came from, for error messages: the YAML file, or the command line for overridden keys."""

    def __init__(self, path: str | None, overridden: set[str] = frozenset()):
        self.path, self.overridden = path, set(overridden)

    def __call__(self, key: str) -> str:
        hit = any(key == o or key.startswith(o + ".") or key.startswith(o + "[") for o in self.overridden)
        return "on the command line" if hit or self.path is None else f"in {self.path}"


def read_yaml(path: str | Path) -> dict:
    """A YAML file's top-level mapping; a missing file, bad YAML or a non-mapping is one sentence."""
    import yaml

    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise UserError(f"config file {path} {what}; pass an existing YAML file to --config.")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise UserError(
            f"{path} is not valid YAML ({' '.join(str(error).split())}); fix the file and rerun."
        ) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{path} must hold a YAML mapping of keys to values, not a {type(raw).__name__}.")
    return raw


def split_argv(argv: list[str]) -> tuple[str | None, list[tuple[str, object]]]:
    """`--config FILE` and the `(dotted key, value)` overrides of a command line, in order.

    A key followed by no value is `True`; by one value, that value; by several, the list of them. Values stay text
    (`Text`) until the field they land in says what they are.
    """
    config, overrides, index = None, [], 0
    argv = list(argv)
    while index < len(argv):
        token = argv[index]
        if not token.startswith("--") or len(token) < 3:
            raise UserError(f"unexpected command-line argument '{token}'; overrides look like --key VALUE.")
        key, has_value, value = token[2:].partition("=")
        values = [value] if has_value else []
        index += 1
        while not has_value and index < len(argv) and not argv[index].startswith("--"):
            values.append(argv[index])
            index += 1
        if key == "config":
            if len(values) != 1:
                raise UserError("--config takes one YAML file path.")
            config = values[0]
            continue
        parsed = True if not values else Text(values[0]) if len(values) == 1 else [Text(v) for v in values]
        overrides.append((key.replace("-", "_"), parsed))
    return config, overrides


def set_dotted(tree: dict, dotted: str, value) -> None:
    """Set `a.b.0.c` in a raw YAML tree (list items by index; a bare string list item becomes {path: ...})."""
    parts = dotted.split(".")
    node = tree
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise UserError(
                    f"command-line key '--{dotted}' has '{part}' where an index below {len(node)} belongs."
                )
            index = int(part)
        elif isinstance(node, dict):
            index = part
        else:
            raise UserError(f"command-line key '--{dotted}' goes inside '{parts[depth - 1]}', which is not a mapping.")
        if last:
            node[index] = value
        elif isinstance(node, list) and isinstance(node[index], str):
            node[index] = {"path": node[index]}
        elif isinstance(node, dict) and node.get(index) is None:
            node[index] = [] if parts[depth + 1].isdigit() else {}
        node = node[index]


def describe(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(
            [describe(a) for a in args if a is not type(None)] + (["null"] if type(None) in args else [])
        )
    if origin is list:
        return f"a list of {describe(args[0])}" if args else "a list"
    if origin is dict:
        return "a mapping" + (f" of {describe(args[1])}" if args and args[1] is not typing.Any else "")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return " | ".join(str(m.value) for m in tp)
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


_BOOLS = {"true": True, "yes": True, "1": True, "on": True, "false": False, "no": False, "0": False, "off": False}


def coerce(tp, value, key: str, where: Origin, *, lenient: bool = False):
    """`value` as the type `tp` says, or a UserError naming the key, where it came from and what it must be.

    `lenient` passes through values of types this checker does not model (TRL's own classes check those).
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    def wrong(hint: str = "") -> UserError:
        shown = repr(str(value) if isinstance(value, Text) else value)[:60]
        return UserError(f"key '{key}' {where(key)} must be {describe(tp)}, not {shown}{hint}; fix it.")

    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, Text) and value.lower() == "null" and type(None) in args):
            if type(None) in args:
                return None
            raise wrong()
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:
            try:
                return coerce(members[0], value, key, where, lenient=lenient)
            except UserError:
                raise wrong() from None  # names the whole type ("an integer or null")
        for member in sorted(members, key=lambda m: m is str):  # str last: "5" for int | str is 5
            try:
                return coerce(member, value, key, where, lenient=False)
            except UserError:
                continue
        if lenient and not isinstance(value, Text) and not any(m in (int, float, bool, str) for m in members):
            return value
        raise wrong()
    if origin is Literal:
        if isinstance(value, Text):
            value = next((a for a in args if str(a) == value), value)
        if value not in args:
            raise UserError(
                f"key '{key}' {where(key)} is {str(value)!r}, which is not one of: {', '.join(map(str, args))}"
                f"{suggest(str(value), [str(a) for a in args])}"
            )
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        values = [str(m.value) for m in tp]
        if str(value) not in values:
            raise UserError(
                f"key '{key}' {where(key)} is {str(value)!r}, which is not one of: {', '.join(values)}"
                f"{suggest(str(value), values)}"
            )
        return str(value)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key, where)
    if origin is list or tp is list:
        item = args[0] if args else typing.Any
        if not isinstance(value, list):
            if isinstance(value, Text | str) and (isinstance(value, Text) or lenient):
                value = [value]  # `--lora_target_modules q_proj`, `lora_target_modules: all-linear`
            else:
                raise wrong(" (a YAML list)")
        return [coerce(item, v, f"{key}[{i}]", where, lenient=lenient) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if isinstance(value, Text):
            import yaml

            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                raise wrong(" (a mapping)") from None
        if not isinstance(value, dict):
            raise wrong(" (a YAML mapping)")
        item = args[1] if len(args) == 2 else typing.Any
        return {str(k): coerce(item, v, f"{key}.{k}", where, lenient=lenient) for k, v in value.items()}
    if tp is typing.Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, Text) and value.lower() in _BOOLS:
            return _BOOLS[value.lower()]
        raise wrong()
    if tp is int:
        if isinstance(value, Text):
            try:
                return int(value)
            except ValueError:
                raise wrong() from None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise wrong()
    if tp is float:
        if isinstance(value, Text | str):  # YAML reads 1e-4 (no dot) as a string; it is a number here
            try:
                return float(value)
            except ValueError:
                raise wrong() from None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise wrong()
    if tp is str:
        if isinstance(value, str):
            return str(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)  # `revision: 2`, `hub_model_id: 123`
        raise wrong()
    if lenient:
        return str(value) if isinstance(value, Text) else value
    raise wrong()


def build(cls, data, key: str, where: Origin):
    """A (nested) config dataclass from YAML data: unknown, missing and mistyped keys are one sentence each."""
    if isinstance(data, str) and hasattr(cls, "from_string"):
        data = cls.from_string(data)
    prefix = f"{key}." if key else ""
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    if not isinstance(data, dict):
        raise UserError(f"key '{key}' {where(key)} must be a mapping of {', '.join(names)}.")
    hints = typing.get_type_hints(cls)
    for name in data:
        if name not in names:
            raise UserError(f"unknown key '{prefix}{name}' {where(prefix + str(name))}{suggest(str(name), names)}")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            values[f.name] = coerce(hints[f.name], data[f.name], prefix + f.name, where)
        elif f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            help_text = f.metadata.get("help", "")
            raise UserError(
                f"key '{prefix}{f.name}' is missing {where(prefix + f.name)}; it is required ({help_text})."
            )
    try:
        return cls(**values)
    except (ValueError, TypeError) as error:
        raise UserError(f"invalid {key or 'configuration'} {where(key)}: {error}") from None


def load_nested(cls, argv: list[str] | None = None, path: str | None = None, prepare=None):
    """A nested config (data preparation, pipeline) from `--config FILE` (or `path`) and dotted overrides.

    `prepare(raw, where)` may rewrite the raw tree before it is built (e.g. spread shared defaults). `--help` is the
    caller's to answer first (`usage.py`).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path, overrides = split_argv(argv)
    config_path = path or config_path
    if config_path is None:
        raise UserError(
            "--config is required: pass the YAML file to run, e.g. --config configs/smollm2-135m/data.yaml."
        )
    raw = read_yaml(config_path)
    for key, value in overrides:
        set_dotted(raw, key, value)
    where = Origin(config_path, {re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", key) for key, _ in overrides})
    if prepare is not None:
        raw = prepare(raw, where)
    return build(cls, raw, "", where), where


def flat_hints(dataclass_types) -> dict[str, object]:
    """Field name -> type over several flat dataclasses (the first one that has a field decides its type)."""
    hints = {}
    for dtype in dataclass_types:
        type_hints = typing.get_type_hints(dtype)
        for f in dataclasses.fields(dtype):
            if f.init:
                hints.setdefault(f.name, type_hints[f.name])
    return hints


def _takes_bool(tp) -> bool:
    return tp is bool or bool in typing.get_args(tp)


def load_flat(dataclass_types, argv: list[str] | None = None, resolve=None) -> tuple[tuple, Origin]:
    """Flat configs (TRL's dataclasses) from `--config FILE` and `--key VALUE` overrides, one instance per type.

    Every key is checked against the union of the dataclasses' fields; `resolve(values, where)` may first replace
    project-level values (`bf16: auto`); then every value is coerced by its field's type and the dataclasses are built
    by `HfArgumentParser.parse_dict`, whose own checks (`__post_init__`) become one sentence too. `--help` is the
    caller's to answer first (`stages/parse.py`).
    """
    from transformers import HfArgumentParser

    dataclass_types = tuple(dataclass_types)
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path, overrides = split_argv(argv)
    raw = read_yaml(config_path) if config_path else {}
    hints = flat_hints(dataclass_types)
    where = Origin(config_path, {key for key, _ in overrides})
    merged, given = dict(raw), set()
    for key, value in overrides:
        if key not in hints:
            raise UserError(f"unknown key '{key}' on the command line{suggest(str(key), sorted(hints))}")
        if value is True and not _takes_bool(hints[key]):
            raise UserError(f"--{key} needs a value on the command line ({describe(hints[key])}).")
        if key in given and typing.get_origin(hints[key]) is list:  # `--login a:x --login b:y`: every one counts
            value = [item for v in (merged[key], value) for item in (v if isinstance(v, list) else [v])]
        given.add(key)
        merged[key] = value
    for key in merged:
        if key not in hints:
            raise UserError(f"unknown key '{key}' {where(key)}{suggest(str(key), sorted(hints))}")
    if resolve is not None:
        merged = resolve(merged, where)
    values = {key: coerce(hints[key], value, key, where, lenient=True) for key, value in merged.items()}
    try:
        return tuple(HfArgumentParser(dataclass_types).parse_dict(values, allow_extra_keys=False)), where
    except (ValueError, TypeError) as error:
        raise UserError(f"invalid configuration {where('')}: {' '.join(str(error).split())}") from None
