"""The frame of every command: its log format, library notices that say nothing quieted, and user errors and machine
faults as one line on stderr with an exit code (`errors.py`), where bugs keep their traceback."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from .errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, RESUMES, UserError, environment_error

logger = logging.getLogger("rlhf_recipes")


# Notices libraries log at import that say nothing about a run: bitsandbytes on a CPU with AVX512-BF16 logs a warning
# that an optional kernel package is missing, as the first line of every command (`--help` included)
_NOTICES = {"bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward from kernels-community",)}


def quiet_library_notices() -> None:
    """Drop the import-time notices of `_NOTICES` (only those: the libraries' other warnings still show)."""
    for name, starts in _NOTICES.items():
        library = logging.getLogger(name)
        if not any(getattr(f, "rlhf_recipes", False) for f in library.filters):
            notice = logging.Filter()
            notice.filter = lambda record, starts=starts: not str(record.msg).startswith(starts)
            notice.rlhf_recipes = True
            library.filters.append(notice)


def run(main: Callable[[], object]) -> None:
    """Run a recipe's entry point: user errors and machine faults (full disk, read-only folder, Ctrl-C) become one line
    on stderr and a non-zero exit code (2, or 130 for Ctrl-C); bugs keep their traceback."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print(f"error: interrupted (Ctrl-C); nothing unfinished was marked done; {RESUMES}.", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as error:  # a machine fault says so in many forms (environment_error); anything else is a bug
        message = environment_error(error)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
