"""`rlhf-recipes STAGE [--config FILE] [--key value ...]` (or `python -m rlhf_recipes ...`): run a stage's recipe from
an installed package exactly as `python recipes/STAGE.py ...` runs it in a checkout; `rlhf-recipes init DIR` copies
the example configs and the demo data out of the package; `rlhf-recipes plan --config FILE` estimates memory."""

from __future__ import annotations

import sys

from .errors import EXIT_USER_ERROR, UserError

# commands that are not stages: name -> what it does
TOOLS = {
    "init": "copy a model folder's configs and the demo data out of the package: rlhf-recipes init DIR",
    "plan": "will it fit? the peak memory of every training stage of a YAML, before loading anything",
}


def _usage() -> str:
    from . import stages

    lines = [__doc__.strip(), "", "stages:"]
    lines += [f"  {stage.name:<10} {stage.summary}" for stage in stages.all_stages()]
    lines += ["", "tools:"] + [f"  {name:<10} {summary}" for name, summary in TOOLS.items()]
    lines += ["", "rlhf-recipes STAGE --help lists the keys of the stage's YAML; --help-all every key."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from . import cli, stages

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    name, rest = argv[0], argv[1:]
    if name == "init":
        from . import workspace

        cli.run(lambda: workspace.main(rest))
        return
    try:
        recipe = stages.RECIPES / "plan.py" if name == "plan" else stages.get(name).recipe_path
    except UserError as error:
        print(f"error: {error} Tools: {', '.join(TOOLS)}.", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    stages.run_file(recipe, rest)


if __name__ == "__main__":
    main()
