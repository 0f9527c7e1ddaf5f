"""A warm start for the pipeline's stages: one process imports torch, transformers, TRL, peft and datasets once, then
forks a fresh child per stage that runs the stage's recipe file exactly as `python recipes/<name>.py ARGS` would.

Every stage of the demo otherwise spends ~11 s of its life importing the same libraries (measured with
`python -X importtime`: peft and bitsandbytes 5.3 s, torch 3.0 s, transformers and TRL the rest). A forked child
shares those modules copy-on-write, starts with nothing else (no model, no tensor, no thread: the launcher never runs
a torch operation), and exits when its stage does, so its memory is returned as a subprocess's is.

Protocol (stdin/stdout of `python -m rlhf_recipes.launcher`): the parent writes one JSON line `{"argv": [python,
recipe, args...]}` per stage; the stage's output appears on the launcher's stdout, followed by `MARKER code=N`.
The pipeline uses it on Linux when no GPU is visible (a CUDA runtime must not be touched before a fork); elsewhere
each stage is a plain subprocess, as before. Either way the stage's log and exit code are the same.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import sys
import traceback

MARKER = b"\x1e\x1erlhf-recipes-launcher"
PRELOAD = ("torch", "transformers", "datasets", "accelerate", "peft", "trl", "rlhf_recipes.stages")


def _die_with_parent() -> None:
    """The child gets SIGTERM when the launcher dies (Linux), so a killed pipeline leaves no stage behind."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _run_child(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()
    recipe = argv[1]
    sys.argv = argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(recipe)))  # as `python recipe.py` puts its folder first
    try:
        runpy.run_path(recipe, run_name="__main__")
        return 0
    except SystemExit as error:
        if error.code is None or isinstance(error.code, int):
            return error.code or 0
        print(error.code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001 - a stage's uncaught error: its traceback, as Python would print it
        traceback.print_exc()
        return 1


def main() -> None:
    import importlib

    for module in PRELOAD:
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the stage (same process group) and the pipeline
    child = 0

    def stop(signum, frame):
        if child:
            os.kill(child, signal.SIGTERM)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    _die_with_parent()
    out = sys.stdout.buffer
    for line in sys.stdin:
        argv = json.loads(line)["argv"]
        out.flush()
        child = os.fork()
        if child == 0:
            code = _run_child(argv)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        _, status = os.waitpid(child, 0)
        child = 0
        out.write(MARKER + f" code={os.waitstatus_to_exitcode(status)}\n".encode())
        out.flush()


if __name__ == "__main__":
    main()
