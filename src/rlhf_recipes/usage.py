"""`--help` of every stage, asked for where its command line is parsed (`stages/parse.py`, and the nested parsers of
the data stage and the pipeline): what the stage does and the command with `--config` first, then the keys of the
YAML it runs, grouped as that YAML groups them (`# Model`, `# LoRA`, ...), each with its value there and what it
does; `--help-all` lists every key of the stage's dataclasses (TrainingArguments' too). Keys are described as this
project reads them: `bf16: auto`, booleans as `--key true|false` (there are no `--no_key` flags).
"""

from __future__ import annotations

import dataclasses
import re
import textwrap
import typing
from pathlib import Path

HELP, HELP_ALL = ("-h", "--help"), "--help-all"
WIDTH = 119
# Keys whose meaning the project changes (precision.py, stages/parse.py): the library's own text would mislead
PROJECT_HELP = {
    "bf16": "auto (the default): bf16 autocast where the hardware has native bf16 (GPUs since Ampere, CPUs with "
    "AVX512-BF16 or AMX), float32 elsewhere; true or false as written",
    "dtype": "the weights' dtype: float32, bfloat16, float16, auto, or compute (the compute precision bf16 resolves to)",
    "use_cpu": "train on the CPU even where a GPU is visible (with no GPU, a run uses the CPU whatever this says)",
    "report_to": "where metrics are logged: none, trackio (local; `trackio show` opens them), tensorboard, wandb, ... "
    "(its package must be installed)",
}


def requested(argv: list[str]) -> str | None:
    """`--help-all`, `--help` (or `-h`), or None when the command line asks for no help."""
    if HELP_ALL in argv:
        return HELP_ALL
    return "--help" if any(flag in argv for flag in HELP) else None


def print_and_exit(stage, dataclass_types, argv: list[str], extra: str = "") -> None:
    """Print the help a command line asks for and exit 0 (`extra`: a nested stage's own options)."""
    print(text(stage, tuple(dataclass_types), argv, extra))
    raise SystemExit(0)


def text(stage, dataclass_types: tuple, argv: list[str], extra: str = "") -> str:
    from .config import split_argv

    everything = requested(argv) == HELP_ALL
    config = _config_given(argv, split_argv)
    example = config or (stage.example if stage is not None else None)
    name = stage.name if stage is not None else "this recipe"
    recipe = f"recipes/{stage.recipe_path.name}" if stage is not None else "RECIPE.py"
    # the example as a user has it: configs/smollm2-135m/NAME.yaml in a checkout and after `rlhf-recipes init`
    shown = config or (f"configs/{example.parent.name}/{example.name}" if example else "FILE.yaml")
    lines = [f"{name}: {stage.summary if stage is not None else ''}".rstrip(": "), ""]
    lines += [
        "usage:",
        f"  rlhf-recipes {name} --config {shown} [--KEY VALUE ...]",
        f"  python {recipe} --config {shown} [--KEY VALUE ...]",
        "",
        "--config names the YAML that holds the run's settings (`rlhf-recipes init DIR` copies the examples out);",
        "--KEY VALUE overrides one of its keys (a list: --KEY a b; a mapping: --KEY '{a: 1}'; nested: --a.b VALUE).",
    ]
    if extra:
        lines += ["", extra.rstrip()]
    nested = stage is not None and stage.parse is not None
    if nested:
        lines += ["", "keys (YAML; any of them on the command line as --dotted.key VALUE):"]
        lines += nested_schema(dataclass_types[0])
        return "\n".join(lines)
    fields = _fields(dataclass_types)
    if everything or example is None or not Path(example).is_file():
        lines += ["", f"every key ({len(fields)}), by the dataclass that defines it:"]
        for owner in dataclass_types:
            lines += ["", owner.__name__]
            lines += [_entry(name, fields[name], None) for name in fields if fields[name][3] is owner]
        return "\n".join(lines)
    groups = yaml_groups(Path(example))
    listed = {key for _, keys in groups for key in keys}
    values = _yaml_values(Path(example))
    lines += ["", f"the keys of {shown}, grouped as it groups them (its value in [brackets]):"]
    for heading, keys in groups:
        lines += ["", heading]
        lines += [_entry(key, fields[key], values.get(key)) for key in keys if key in fields]
    lines += ["", f"{len(set(fields) - listed)} more keys (TrainingArguments and the rest): --help-all lists all."]
    return "\n".join(lines)


def _config_given(argv: list[str], split_argv) -> str | None:
    try:
        return split_argv([a for a in argv if a not in (*HELP, HELP_ALL)])[0]
    except Exception:  # a malformed command line: help still shows, from the example YAML
        return None


def _fields(dataclass_types: tuple) -> dict[str, tuple]:
    """name -> (type text, default, help, owning dataclass), the first dataclass that has a field deciding."""
    from .config import describe

    out = {}
    for owner in dataclass_types:
        hints = typing.get_type_hints(owner)
        for f in dataclasses.fields(owner):
            if not f.init or f.name in out:
                continue
            default = f.default if f.default is not dataclasses.MISSING else None
            if f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            help_text = PROJECT_HELP.get(f.name) or " ".join(str(f.metadata.get("help", "")).split())
            out[f.name] = (describe(hints[f.name]), default, help_text, owner)
    return out


def _entry(key: str, field_info: tuple, value) -> str:
    kind, default, help_text, _ = field_info
    shown = f" [{_short(value)}]" if value is not None else f" (default {_short(default)})" if default else ""
    head = f"  --{key}{shown}  {kind}"
    body = textwrap.fill(help_text, WIDTH, initial_indent="      ", subsequent_indent="      ") if help_text else ""
    return head + ("\n" + body if body else "")


def _short(value) -> str:
    text = "true" if value is True else "false" if value is False else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _yaml_values(path: Path) -> dict:
    from .config import read_yaml

    try:
        return read_yaml(path)
    except Exception:  # the help of a broken YAML still lists its keys
        return {}


_KEY = re.compile(r"^([A-Za-z_][\w.-]*)\s*:")


def yaml_groups(path: Path) -> list[tuple[str, list[str]]]:
    """(heading, top-level keys) in file order: a heading is a one-line comment after a blank line, right above a
    key (`# Model`, `# Trainer`); keys before any heading are under the file's name."""
    groups: list[tuple[str, list[str]]] = [(path.name, [])]
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        match = _KEY.match(line)
        if match:
            groups[-1][1].append(match.group(1))
            continue
        before = lines[number - 1].strip() if number else ""
        after = lines[number + 1] if number + 1 < len(lines) else ""
        if line.startswith("#") and not before and _KEY.match(after):
            heading = re.split(r"[:(]", line.lstrip("# ").strip(), maxsplit=1)[0].strip()
            groups.append((heading, []))
    return [(heading, keys) for heading, keys in groups if keys]


def nested_schema(cls) -> list[str]:
    """The keys of a nested config (data preparation, pipeline), generated from its dataclasses."""
    lines: list[str] = []
    seen: dict[type, str] = {}

    def walk(owner, indent: str) -> None:
        from .config import describe

        hints = typing.get_type_hints(owner)
        for f in dataclasses.fields(owner):
            tp = hints[f.name]
            inner = typing.get_args(tp)[-1] if typing.get_origin(tp) in (list, dict) else tp
            default = "" if f.default in (dataclasses.MISSING, None) else f" = {f.default!r}"
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            note = ("(required) " if required else "") + f.metadata.get("help", "")
            if not dataclasses.is_dataclass(inner):
                entry = f"{indent}{f.name}: {describe(tp)}{default}  {note}"
                lines.append(textwrap.fill(entry, WIDTH, subsequent_indent=indent + "    "))
                continue
            shape = {list: "list of ", dict: "name -> "}.get(typing.get_origin(tp), "")
            if inner in seen:
                lines.append(f"{indent}{f.name}: {shape}{{same keys as {seen[inner]}}}  {note}")
                continue
            seen[inner] = f.name
            lines.append(f"{indent}{f.name}: {shape}{{...}}  {note}")
            walk(inner, indent + "    ")

    walk(cls, "  ")
    return lines
