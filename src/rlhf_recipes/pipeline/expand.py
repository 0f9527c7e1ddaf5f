"""The pipeline YAML's two expansions, done before any stage is parsed, and its placeholders (`fill`).

`rl: [ppo, grpo]` with a `stage: rl` entry: one stage per RL algorithm where the entry stands, `{rl}` (its name) and
`{rl_data}` (the data folder it trains on: the kind whose columns the stage names, `data/formats.py`) filled in.

`rounds: N`: the `each_round:` stages repeated for rounds 1..N where a `stage: rounds` entry stands.

Round r samples from round r-1's policy, ranks, retrains the reward model from round r-1's on every comparison so
far, runs the RL stage from round r-1's policy, and so on. In `each_round:` entries these placeholders are filled in:
`{round}` (r), `{prev_round}` (r-1), `{round_dir}` (`{output_dir}/round<r>`), `{prev_policy}` and `{prev_reward}`
(round r-1's `{round_dir}/policy` and `{round_dir}/reward`; for round 1 the pipeline's `first_policy` and
`first_reward`). So a round's RL stage writes `{round_dir}/policy` and its reward stage `{round_dir}/reward`. Each
stage is named `<name>-r<r>`. After the rounds, a mapping key with `{round}` (`"round{round}": ...` in the final
evaluation's `models:`) becomes one key per round.
"""

from __future__ import annotations

import copy
import dataclasses
import string

from .. import stages
from ..errors import UserError


def fill(text, variables: dict, where: str):
    """`{output_dir}`, `{model}` and `{rl}` filled in (inside lists and mappings too); a mapping key with `{rl}`
    (outside an rl entry) becomes one key per algorithm of `rl:`; any other placeholder is one sentence."""
    if isinstance(text, dict):
        out = {}
        for key, value in text.items():
            names = variables["_rl_all"] if "{rl}" in str(key) and "_rl_all" in variables else [None]
            numbers = range(1, variables.get("_rounds", 0) + 1) if "{round}" in str(key) else [None]
            for name in names:
                for number in numbers:
                    scoped = {**variables, "rl": name} if name else dict(variables)
                    if number is not None:
                        scoped.update(round=str(number), prev_round=str(number - 1))
                    out[fill(key, scoped, where)] = fill(value, scoped, f"{where}.{key}")
        return out
    if isinstance(text, list):
        return [fill(v, variables, where) for v in text]
    if not isinstance(text, str):
        return text
    for _, name, _, _ in string.Formatter().parse(text):
        if name is not None and name not in variables:
            raise UserError(
                f"{where} uses the placeholder {{{name}}}; the known ones are {{output_dir}}, {{model}}, {{rl}} "
                "(an RL algorithm of `rl:`), in a `stage: rl` entry {rl_data} (the data folder it trains on), and in "
                "`each_round:` {round}, {prev_round}, {round_dir}, {prev_policy}, {prev_reward}."
            )
    return text.format(**{k: v for k, v in variables.items() if not k.startswith("_")})


def expand_rl(config, path: str) -> None:
    """Each `stage: rl` entry becomes one stage per algorithm of `rl:`, `{rl}` and `{rl_data}` filled in; an argument
    naming a model an algorithm does not read (DPO has no reward model) is left out of that algorithm's command."""
    for name in config.rl:
        if name not in stages.names("rl"):
            raise UserError(f"{path}: rl names '{name}'; the RL algorithms are {', '.join(stages.names('rl'))}.")
    model_keys = {key for name in stages.names("rl") for key in stages.get(name).model_keys}
    expanded = []
    for run in config.stages:
        if run.stage != "rl":
            expanded.append(run)
            continue
        for name in config.rl:
            spec = stages.get(name)
            # {output_dir} and {model} stay placeholders here: parse_argv fills them in with every other stage's
            variables = {"rl": name, "rl_data": data_folder(spec), "output_dir": "{output_dir}", "model": "{model}"}
            args = {k: v for k, v in run.args.items() if k not in model_keys or k in spec.model_keys}
            expanded.append(
                dataclasses.replace(
                    run,
                    stage=name,
                    config=fill(run.config, variables, path),
                    name=fill(run.name or "{rl}", variables, path),
                    output=fill(run.output, variables, path),
                    args=fill(args, variables, path),
                    inputs=list(run.inputs),
                )
            )
    config.stages = expanded


def data_folder(spec) -> str:
    """The folder of the data stage's output that a stage trains on (the data stage writes one per kind)."""
    from ..data import formats

    folder = formats.data_folder(spec.columns)
    if folder is None:
        raise UserError(f"stage '{spec.name}' trains on columns {spec.columns}, which no prepared data folder holds.")
    return folder


def round_variables(config, number: int) -> dict:
    def folder(n: int, what: str) -> str:
        if n == 0:
            return config.first_policy if what == "policy" else config.first_reward
        return f"{{output_dir}}/round{n}/{what}"

    return {
        "round": str(number), "prev_round": str(number - 1), "round_dir": f"{{output_dir}}/round{number}",
        "prev_policy": folder(number - 1, "policy"), "prev_reward": folder(number - 1, "reward"),
    }  # fmt: skip


def _fill_round(value, variables: dict):
    """Round placeholders filled in; every other placeholder ({output_dir}, {model}, {rl}) is left for later."""
    if isinstance(value, dict):
        return {_fill_round(k, variables): _fill_round(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill_round(v, variables) for v in value]
    if not isinstance(value, str):
        return value
    for name, filled in variables.items():
        value = value.replace("{" + name + "}", filled)
    return value


def expand_rounds(config, path: str) -> None:
    """Replace the `stage: rounds` entry by `rounds` copies of `each_round`, placeholders filled, names suffixed."""
    marks = [i for i, run in enumerate(config.stages) if run.stage == "rounds"]
    if not marks:
        if config.rounds or config.each_round:
            raise UserError(f"{path} sets rounds/each_round but has no `stage: rounds` entry saying where they run.")
        return
    if len(marks) > 1 or not config.each_round or config.rounds < 1:
        raise UserError(
            f"{path}: a `stage: rounds` entry needs `rounds: N` (1 or more) and the stages of one round in "
            "`each_round:`, once."
        )
    expanded = []
    for number in range(1, config.rounds + 1):
        variables = round_variables(config, number)
        for run in config.each_round:
            if run.stage == "rounds":
                raise UserError(f"{path}: each_round may not contain `stage: rounds`.")
            copied = copy.deepcopy(run)
            copied.name = f"{run.name or ('{rl}' if run.stage == 'rl' else run.stage)}-r{number}"
            copied.config = _fill_round(run.config, variables)
            copied.output = _fill_round(run.output, variables)
            copied.args = _fill_round(run.args, variables)
            expanded.append(copied)
    config.stages = config.stages[: marks[0]] + expanded + config.stages[marks[0] + 1 :]
