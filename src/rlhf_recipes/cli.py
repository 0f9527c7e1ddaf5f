"""Command-line plumbing shared by every recipe: strict config parsing and one-sentence user errors."""

from __future__ import annotations

import difflib
import logging
import re
import sys
from collections.abc import Callable, Iterable

logger = logging.getLogger("rlhf_recipes")


class UserError(Exception):
    """An error the user can fix (bad config, bad data, missing token): printed as one sentence, exit code 2."""


def run(main: Callable[[], object]) -> None:
    """Run a recipe's entry point; user errors become one line on stderr and exit code 2, bugs keep their traceback."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def _known_keys(parser) -> list[str]:
    return sorted({action.dest for action in parser._actions if action.dest != "help"})


def suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    return f"; did you mean '{close[0]}'?" if close else "; remove it or check the spelling against `--help`."


def parse_config(dataclass_types: Iterable[type], args: list[str] | None = None) -> tuple:
    """Parse `--config FILE.yaml` plus command-line overrides into dataclasses; any unknown key is a UserError.

    `TrlParser` already rejects unknown YAML keys and `HfArgumentParser` unknown flags; this turns their exceptions
    into one sentence that names the file and the key, with the closest known key when there is one.
    """
    import yaml
    from trl import TrlParser

    parser = TrlParser(list(dataclass_types))
    args = list(sys.argv[1:] if args is None else args)
    config_path = (
        args[args.index("--config") + 1] if "--config" in args and args.index("--config") + 1 < len(args) else None
    )
    try:
        parsed = parser.parse_args_and_config(args)
    except yaml.YAMLError as error:
        raise UserError(
            f"{config_path} is not valid YAML ({' '.join(str(error).split())}); fix the file and rerun."
        ) from None
    except FileNotFoundError as error:
        raise UserError(
            f"config file {error.filename} does not exist; pass an existing YAML file to --config."
        ) from None
    except ValueError as error:
        message = str(error)
        unknown = re.findall(r"'--([A-Za-z0-9_.-]+)'", message)
        if unknown:
            key = unknown[0]
            where = (
                f"in {config_path}"
                if message.startswith("Unknown arguments from config file")
                else "on the command line"
            )
            raise UserError(f"unknown key '{key}' {where}{suggest(key, _known_keys(parser))}") from None
        raise UserError(f"invalid configuration{' in ' + config_path if config_path else ''}: {message}") from None
    if any(getattr(config, "hub_token", None) for config in parsed):
        # Trainer would pickle it into training_args.bin and every checkpoint; the environment keeps it out of files
        raise UserError("hub_token is refused in configs and flags; set HF_TOKEN or run `hf auth login` instead.")
    if any(getattr(config, "push_to_hub", False) for config in parsed):
        # Checked here, before hours of training: Trainer itself fails on a missing token with a traceback
        from huggingface_hub import constants, get_token

        if constants.HF_HUB_OFFLINE:
            raise UserError(
                "push_to_hub: true cannot push while HF_HUB_OFFLINE is set; unset it or set push_to_hub: false."
            )
        if not get_token():
            raise UserError("push_to_hub: true needs a Hub token; set HF_TOKEN or run `hf auth login` first.")
    return parsed
