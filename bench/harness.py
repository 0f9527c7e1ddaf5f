"""The one fresh-process runner of the benches, and what every bench shares.

A measured run is a new Python process, so that nothing one run loads, caches or fragments colours the next:

- `run_process(command, log)`: any command; its wall seconds and its own peak RSS (the child's `ru_maxrss`, read
  with `os.wait4` when it exits, by a small launcher that forks it: Linux carries the high-water mark of the
  process that spawns across `exec`, so a child spawned straight from a large parent reports the parent's peak).
- `run_stage(name, argv, log)`: one of this project's stages, started through the registry exactly as
  `python recipes/<name>.py ARGV` would start it (`stages.get(name).run(argv)`), in a child process.
- `run_baseline(name, argv, log)`: a plain-TRL baseline in a child process: `trl sft` and `trl reward` (TRL's own
  `trl.scripts.sft` / `.reward` / `.grpo` / `.rloo`, `make_parser` + `main`, as the `trl` command runs them) or TRL's PPO
  example setup (bench/trl_ppo_example.py).

Inside a child, `Trainer.train` (and TRL's `PPOTrainer.train`) is wrapped to record its own seconds, the optimizer
steps, the real tokens the trainer counted, the compute dtype it ran in, and the peak GPU memory when there is a GPU.
Nothing else in the stage or the baseline changes.

    python -m bench.harness stage sft RECORD.json -- --config configs/smollm2-135m/sft.yaml --max_steps 2
    python -m bench.harness baseline trl-sft RECORD.json -- --model_name_or_path M --dataset_name D
"""

from __future__ import annotations

import functools
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench import REPO

RESULTS = REPO / "bench" / "results"
CONFIGS = REPO / "configs" / "smollm2-135m"
BASELINES = ("trl-sft", "trl-reward", "trl-ppo-example", "trl-grpo", "trl-rloo")
# TRL's PPO example needs TRL 1.12.0 (1.13 removed PPOTrainer): it runs in an environment of its own
TRL112_PYTHON = REPO / ".venv-trl112" / "bin" / "python"
BASELINE_PYTHON = {"trl-ppo-example": TRL112_PYTHON}
MIB = 2**20


class BenchError(RuntimeError):
    """A measured run failed: the message names the command and ends with the last lines of its log."""


def child_env() -> dict:
    """The environment of every measured child: offline, unbuffered, no tokenizer thread pools of their own."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    }


# ---------------------------------------------------------------------------------------------------- the parent


# Forks the command (a fresh small address space, so its ru_maxrss is its own), makes it die with the launcher
# (PR_SET_PDEATHSIG), waits for it and writes its exit code and peak RSS to argv[1].
_LAUNCHER = """
import ctypes, json, os, signal, sys
pid = os.fork()
if pid == 0:
    if sys.platform.startswith("linux"):  # PR_SET_PDEATHSIG: a killed launcher takes the command with it
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    except OSError as error:
        print(f"cannot start {sys.argv[2]}: {error}", file=sys.stderr)
        os._exit(127)
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the command (same process group); wait for it
_, status, usage = os.wait4(pid, 0)
code = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as handle:
    json.dump({"returncode": code, "maxrss_kib": usage.ru_maxrss}, handle)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_process(command: list[str], log: Path, timeout: float | None = None, check: bool = True) -> dict:
    """Run `command` in a fresh process (cwd: the repository) to its end, its output in `log`.

    Returns wall seconds, the process's own peak RSS in MiB (Linux reports `ru_maxrss` in KiB) and its exit code.
    A run past `timeout` seconds is killed. With `check`, a failure raises BenchError.
    """
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    usage_file = log.with_name(log.name + ".rusage.json")
    usage_file.unlink(missing_ok=True)
    started = time.perf_counter()
    with open(log, "wb") as handle:
        launcher = [sys.executable, "-c", _LAUNCHER, str(usage_file), *map(str, command)]
        process = subprocess.Popen(launcher, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, env=child_env())
        killer = threading.Timer(timeout, process.kill) if timeout else None
        if killer:
            killer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage, not the max over all children
        except BaseException:  # Ctrl-C or an error here: the child does not run on alone
            process.kill()
            process.wait()
            raise
        finally:
            if killer:
                killer.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if usage_file.exists():  # the launcher saw the command end: its exit code and its own peak
        measured = json.loads(usage_file.read_text())
        usage_file.unlink()
        process.returncode, peak_kib = measured["returncode"], measured["maxrss_kib"]
    else:  # the launcher itself was stopped (timeout, Ctrl-C): the command died with it
        peak_kib = usage.ru_maxrss
    timed_out = bool(timeout) and process.returncode == -signal.SIGKILL and seconds >= timeout
    record = {
        "command": " ".join(str(part) for part in command),
        "wall_seconds": round(seconds, 2),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "returncode": process.returncode,
        "timed_out": timed_out,
        "log": str(log),
    }
    if check and process.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        what = f"ran past {timeout:.0f} s and was stopped" if timed_out else f"failed (exit {process.returncode})"
        raise BenchError(f"{what}: {record['command']}; last lines of {log}:\n{tail}")
    return record


def _run_child(kind: str, target: str, argv: list[str], log: Path, timeout: float | None, check: bool) -> dict:
    log = Path(log)
    record_path = log.with_suffix(".record.json")
    record_path.unlink(missing_ok=True)
    python = BASELINE_PYTHON.get(target, Path(sys.executable)) if kind == "baseline" else Path(sys.executable)
    if not python.exists():
        raise BenchError(
            f"the {target} baseline runs in {python.parents[1]}, which does not exist: run `make bench-trl112-env`."
        )
    command = [str(python), "-m", "bench.harness", kind, target, str(record_path), "--", *map(str, argv)]
    process = run_process(command, log, timeout=timeout, check=check)
    child = json.loads(record_path.read_text()) if record_path.is_file() else {}
    return {**process, **child, "name": target}


def run_stage(name: str, argv: list[str], log: Path, timeout: float | None = None, check: bool = True) -> dict:
    """One of this project's stages in a fresh process, started through the registry; see the module docstring."""
    return _run_child("stage", name, argv, log, timeout, check)


def run_baseline(name: str, argv: list[str], log: Path, timeout: float | None = None, check: bool = True) -> dict:
    """A plain-TRL baseline (one of BASELINES) in a fresh process; see the module docstring."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name}; the baselines are {', '.join(BASELINES)}")
    return _run_child("baseline", name, argv, log, timeout, check)


def lora_argv(config: Path) -> list[str]:
    """A config's LoRA shape as TRL command-line flags, for a baseline that must train the same adapter."""
    from rlhf_recipes.config import read_yaml

    settings = read_yaml(config)
    flags = ["--lora_r", str(settings["lora_r"]), "--lora_alpha", str(settings["lora_alpha"])]
    return [*flags, "--lora_target_modules", *settings["lora_target_modules"]]


def schedule(runs: dict[str, int]) -> list[tuple[int, str]]:
    """(round, setup) in the order to run them: interleaved round by round, so that a machine that drifts (heat,
    neighbours) touches every setup alike; a setup with fewer runs drops out after its last."""
    return [
        (turn, setup) for turn in range(max(runs.values(), default=0)) for setup, count in runs.items() if turn < count
    ]


def summarise(values: list[float]) -> dict | None:
    """Median with the spread (min-max) and every value."""
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": list(values)}


def fmt(stat: dict | None, digits: int = 1) -> str:
    if not stat:
        return "-"
    if len(stat["runs"]) == 1:
        return f"{stat['median']:.{digits}f}"
    return f"{stat['median']:.{digits}f} ({stat['min']:.{digits}f}-{stat['max']:.{digits}f})"


def commit() -> str:
    """The commit measured, `+changes` when the working tree differs from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def machine() -> dict:
    """The CPU the benches run on: model, cores, PyTorch's capability string, native bf16, and the precision the
    recipes choose for it (`precision.resolve("auto")`)."""
    import torch

    from rlhf_recipes import precision

    _, capability, native = precision.machine(use_cpu=True)
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "capability": capability,
        "native_bf16": native,
        "chosen": precision.resolve(precision.AUTO, use_cpu=True).to_dict(),
        "torch": torch.__version__,
    }


def plan(configs: list[str], overrides: list[str] = (), device: str = "auto", timeout: float = 300) -> list[dict]:
    """The planner's estimates for stage YAMLs, from `python recipes/plan.py --json` in a fresh process."""
    command = [sys.executable, str(REPO / "recipes" / "plan.py"), "--device", device, "--json"]
    for config in configs:
        command += ["--config", str(config)]
    done = subprocess.run(
        [*command, *map(str, overrides)], cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=timeout
    )
    lines = done.stdout.splitlines()
    start = lines.index("[") if "[" in lines else -1  # the JSON list; any chatter printed before it is skipped
    if done.returncode != 0 or start < 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-10:])
        raise BenchError(f"{' '.join(command)} failed (exit {done.returncode}):\n{tail}")
    return json.loads("\n".join(lines[start:]))


def read_json(path: Path) -> dict:
    """A results file written earlier, or {} when there is none."""
    return json.loads(Path(path).read_text()) if Path(path).is_file() else {}


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def main(function) -> None:
    """A bench's entry point: a failed run, or an input the project refuses (a model path that does not exist), is its
    message and exit code 1, without a traceback of the parent."""
    from rlhf_recipes.errors import UserError

    try:
        function()
    except (BenchError, UserError) as error:
        print(f"bench: {error}", file=sys.stderr)
        sys.exit(1)


# ----------------------------------------------------------------------------------------------------- the child


def _weights_dtype(model) -> str:
    """The floating-point dtype that holds most of a model's parameter elements (4-bit storage is not counted)."""
    counts: dict[str, int] = {}
    for parameter in model.parameters():
        if parameter.dtype.is_floating_point:
            name = str(parameter.dtype).removeprefix("torch.")
            counts[name] = counts.get(name, 0) + parameter.numel()
    return max(counts, key=counts.get) if counts else "unknown"


def compute_dtype(trainer) -> str:
    """The dtype a trainer's matmuls run in: the autocast dtype where it autocasts, else its weights' dtype.

    Trainer (SFT, reward) and this project's PPO (rlhf_recipes.train.ppo) autocast with `bf16`/`fp16`; TRL 1.12's
    PPO loop never autocasts."""
    args = trainer.args
    if any(cls.__name__ == "PPOTrainer" and cls.__module__.startswith("trl") for cls in type(trainer).__mro__):
        return _weights_dtype(trainer.model)
    if args.bf16:
        return "bfloat16"
    if args.fp16:
        return "float16"
    return _weights_dtype(trainer.model)


def _trained(trainer, seconds: float) -> dict:
    state = trainer.state
    return {
        "train_seconds": round(seconds, 3),
        "global_step": state.global_step,
        "episodes": getattr(state, "episode", None),
        "train_tokens": getattr(trainer, "_total_train_tokens", None) or None,  # TRL's count of real tokens
        "compute_dtype": compute_dtype(trainer),
        "log_history": state.log_history,
    }


def _instrument(record: dict, ppo: str | None) -> None:
    """Wrap `train` to record its seconds and what it did; only the outermost call counts (subclasses nest)."""
    from transformers import Trainer

    classes = [Trainer]
    if ppo == "trl":  # in the TRL 1.12 environment: the one module that imports trl.experimental.ppo
        from bench.trl_ppo_example import trainer_class

        classes.append(trainer_class())
    elif ppo:
        from rlhf_recipes.train.ppo import PPOTrainer

        classes.append(PPOTrainer)
    depth = [0]

    def wrap(train):
        @functools.wraps(train)
        def timed(self, *args, **kwargs):
            depth[0] += 1
            started = time.perf_counter()
            try:
                return train(self, *args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    record.update(_trained(self, time.perf_counter() - started))

        return timed

    for cls in classes:
        cls.train = wrap(cls.train)


def _run_baseline_here(name: str, argv: list[str]):
    if name == "trl-ppo-example":
        from bench import trl_ppo_example

        return trl_ppo_example.main(argv)
    from trl.scripts import grpo, reward, rloo, sft

    script = {"trl-sft": sft, "trl-reward": reward, "trl-grpo": grpo, "trl-rloo": rloo}[name]
    parser = script.make_parser()
    # exactly what `trl sft ARGV` / `trl reward ARGV` / `trl grpo ARGV` / `trl rloo ARGV` does
    return script.main(*parser.parse_args_and_config(argv, fail_with_unknown_args=True))


def _json_safe(value):
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return None


def child(argv: list[str]) -> None:
    kind, target, out = argv[:3]
    rest = argv[4:] if argv[3:4] == ["--"] else argv[3:]
    record: dict = {"kind": kind}
    from rlhf_recipes import cli, stages

    # PPO trainers (TRL 1.12's, the project's) have a `train` of their own; the others go through Trainer.train
    ppo = "trl" if target == "trl-ppo-example" else "ours" if kind == "stage" and target == "ppo" else None
    _instrument(record, ppo=ppo)
    started = time.perf_counter()
    if kind == "stage":
        result = {}
        cli.run(lambda: result.update(value=stages.get(target).run(rest)))  # user errors: one line, exit 2
        record["result"] = _json_safe(result.get("value"))
    elif kind == "baseline":
        _run_baseline_here(target, rest)
    else:
        raise SystemExit(f"usage: python -m bench.harness stage|baseline NAME RECORD.json -- ARGV (got {kind})")
    record["run_seconds"] = round(time.perf_counter() - started, 3)
    record["child_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        record["peak_gpu_allocated_mib"] = round(torch.cuda.max_memory_allocated() / MIB, 1)
        record["peak_gpu_reserved_mib"] = round(torch.cuda.max_memory_reserved() / MIB, 1)
    write_json(Path(out), record)


if __name__ == "__main__":
    child(sys.argv[1:])
