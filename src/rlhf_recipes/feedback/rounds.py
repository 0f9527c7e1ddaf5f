"""`rounds: N` in a pipeline: the `each_round:` stages repeated for rounds 1..N where a `stage: rounds` entry stands.

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

from ..errors import UserError

ROUND_PLACEHOLDERS = ("round", "prev_round", "round_dir", "prev_policy", "prev_reward")


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
