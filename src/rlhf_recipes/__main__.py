"""`python -m rlhf_recipes STAGE [--config FILE] [--key value ...]` (or `rlhf-recipes STAGE ...`): run a stage's
recipe from an installed package exactly as `python recipes/STAGE.py ...` runs it in a checkout."""

from __future__ import annotations

import runpy
import sys


def main(argv: list[str] | None = None) -> None:
    from . import stages

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\nstages:")
        for stage in stages.all_stages():
            print(f"  {stage.name:<10} {stage.summary}")
        return
    try:
        recipe = stages.get(argv[0]).recipe_path
    except stages.UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [str(recipe), *argv[1:]]
    runpy.run_path(str(recipe), run_name="__main__")


if __name__ == "__main__":
    main()
