"""A warm start for the pipeline's stages: one process imports torch, transformers, TRL, peft and datasets once, then
forks a fresh child per stage that runs the stage's recipe file exactly as `python recipes/<name>.py ARGS` would.

Every stage of the demo otherwise spends ~11 s of its life importing the same libraries (measured with
`python -X importtime`: peft and bitsandbytes 5.3 s, torch 3.0 s, transformers and TRL the rest). A forked child
shares those modules copy-on-write, starts with nothing else (no model, no tensor, no thread: the launcher never runs
a torch operation), and exits when its stage does, so its memory is returned as a subprocess's is.

Protocol (stdin/stdout of `python -m rlhf_recipes.pipeline.launcher`): the parent writes one JSON line
`{"argv": [python, recipe, args...]}` per stage; the stage's output appears on the launcher's stdout, followed by
`MARKER code=N`.
The pipeline uses it on Linux when no GPU is visible (a CUDA runtime must not be touched before a fork); elsewhere
each stage is a plain subprocess, as before. Either way the stage's log and exit code are the same.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import traceback
from pathlib import Path

MARKER = b"\x1e\x1erlhf-recipes-launcher"
PROGRESS = re.compile(rb"\[progress\] stage=(\S+) step=(\d+)/(\d+) elapsed=([\d.]+) eta=([\d.]+)")
# The libraries every stage imports (the project's registry is already loaded: the launcher is part of the pipeline
# package, and $RLHF_RECIPES_STAGES plugins are the same for the launcher and its stages)
PRELOAD = ("torch", "transformers", "datasets", "accelerate", "peft", "trl")


def _die_with_parent() -> None:
    """The child gets SIGTERM when the launcher dies (Linux), so a killed pipeline leaves no stage behind."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _run_child(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()
    try:
        from ..stages import run_file

        run_file(argv[1], argv[2:])  # as `python RECIPE ARGS`
        return 0
    except SystemExit as error:
        if error.code is None or isinstance(error.code, int):
            return error.code or 0
        print(error.code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001 - a stage's uncaught error: its traceback, as Python would print it
        traceback.print_exc()
        return 1


def os_environ() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def warm_launcher_usable() -> bool:
    """Stages start from the warm launcher on Linux with no GPU device present (checked without touching CUDA);
    `RLHF_RECIPES_WARM=0` turns it off (each stage then is a plain subprocess)."""
    if os.environ.get("RLHF_RECIPES_WARM", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    return not any(os.path.exists(device) for device in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd"))


_STARTED: list = []  # a launcher started early (prestart), taken by the first StageProcesses


def prestart() -> None:
    """Start the launcher now, so that its imports overlap the pipeline's own start-up (parsing every stage)."""
    if warm_launcher_usable() and not _STARTED:
        _STARTED.append(_start())


def wait_ready() -> None:
    """Block until a prestarted launcher has finished its imports, so that what the pipeline measures next (the
    machine's matmul rate, for its forecasts) does not share the CPU with them."""
    if _STARTED:
        _ready(_STARTED[0])


def _ready(proc) -> None:
    while not getattr(proc, "ready", False):
        line = proc.stdout.readline()
        if not line or line.startswith(MARKER):  # the ready line, or a launcher that died (its stage will say so)
            proc.ready = True
        else:
            sys.stdout.buffer.write(line)  # an import-time warning: shown, as a fresh process would show it


def _start():
    import subprocess

    return subprocess.Popen(
        [sys.executable, "-m", "rlhf_recipes.pipeline.launcher"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os_environ(),
    )  # fmt: skip


class PlainLog:
    """A stage's log file in plain lines: each update of a progress bar (tqdm redraws its line after a `\\r`) is a line
    of its own, an update that repeats the line before is written once, terminal escapes are dropped; the terminal
    still shows the bars as they are."""

    _ESCAPE = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")

    def __init__(self, handle):
        self.handle, self.pending, self.last = handle, b"", None

    def write(self, chunk: bytes) -> None:
        data = self.pending + chunk
        cut = data.rfind(b"\n") + 1
        self.pending = data[cut:]
        for line in data[:cut].split(b"\n")[:-1]:
            self._line(line)

    def _line(self, line: bytes) -> None:
        line = self._ESCAPE.sub(b"", line)
        updates = [part.rstrip() for part in line.split(b"\r")] if b"\r" in line else [line.rstrip()]
        for update in updates:
            if b"\r" in line and (not update.strip() or update == self.last):
                continue
            self.handle.write(update + b"\n")
            self.last = update

    def close(self) -> None:
        if self.pending:
            self._line(self.pending)
            self.pending = b""


class StageProcesses:
    """Runs stage commands and streams their output: forked from one warm launcher where usable, else subprocesses."""

    def __init__(self, warm: bool):
        self.warm, self.launcher = warm, None

    def close(self) -> None:
        if self.launcher is not None:
            self.launcher.stdin.close()
            self.launcher.wait()
            self.launcher = None

    def run(self, argv: list[str], log_path: Path, on_progress) -> int:
        """Run a stage with its output shown live (progress bars included) and kept in a log file; `[progress]`
        lines the stage prints (progress.py) go to `on_progress`."""
        import subprocess

        log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.warm and self.launcher is None:
            self.launcher = _STARTED.pop() if _STARTED else _start()
            _ready(self.launcher)
        if self.warm:
            proc = self.launcher
            # the environment as it is now, not as it was when the launcher started (before the pipeline set its
            # run id, fs.RUN_ENV): a forked stage sees what a fresh `python recipes/...` would
            proc.stdin.write((json.dumps({"argv": argv, "env": os_environ()}) + "\n").encode())
            proc.stdin.flush()
        else:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os_environ())
        pending, held, code = b"", b"", None
        with open(log_path, "wb") as handle:
            log = PlainLog(handle)
            try:
                for chunk in iter(lambda: proc.stdout.read1(4096), b""):
                    chunk, held = held + chunk, b""
                    if self.warm:
                        if MARKER in chunk:
                            chunk, _, rest = chunk.partition(MARKER)
                            code = int(rest.split(b"code=", 1)[1].split(b"\n", 1)[0])
                        else:  # a marker may be split across reads: hold back a tail that could start one
                            cut = max((i for i in range(1, len(MARKER)) if chunk.endswith(MARKER[:i])), default=0)
                            chunk, held = (chunk[:-cut], chunk[-cut:]) if cut else (chunk, b"")
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
                    log.write(chunk)
                    pending = (pending + chunk)[-4096:]
                    for match in PROGRESS.finditer(pending):
                        on_progress(*(group.decode() for group in match.groups()))
                        pending = pending[match.end() :]
                    if code is not None:
                        return code
            except KeyboardInterrupt:
                proc.terminate()
                proc.wait()
                self.launcher = None
                raise
            finally:
                log.close()
        if self.warm:  # the launcher itself died (killed, out of memory): this stage failed
            self.launcher = None
            return proc.wait() or 1
        return proc.wait()


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
    out.write(MARKER + b" ready\n")
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        out.flush()
        child = os.fork()
        if child == 0:
            os.environ.clear()
            os.environ.update(request["env"])
            code = _run_child(request["argv"])
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        _, status = os.waitpid(child, 0)
        child = 0
        out.write(MARKER + f" code={os.waitstatus_to_exitcode(status)}\n".encode())
        out.flush()


if __name__ == "__main__":
    main()
