"""The table of `make bench` (bench/speed.py): `markdown(results)` renders speed.json as speed.md, with the machine,
the matmul rate of every precision, the targets, and a line per task measured on another machine."""

from __future__ import annotations

from bench import harness

TASKS = ("sft", "reward", "ppo")
SETUPS = ("trl-defaults", "trl", "ours")
TARGETS = {"sft": ("1.5x", ">= 0.6"), "reward": ("1.3x", ""), "ppo": ("2.5x", "")}
MEMORY_TARGETS = {"ppo": "<= 0.5x"}  # ours' peak RSS over TRL's


def _header(results: dict) -> list[str]:
    m, rates = results["machine"], results["matmul_gflops"]

    def rate(dtype: str) -> str:
        r = rates[dtype]
        spread = f", {r['min']:.0f}-{r['max']:.0f} over {r['samples']}" if r["samples"] > 1 else ""
        digits = 0 if r["gflops"] >= 10 else 2
        return f"{dtype} {r['gflops']:.{digits}f} GFLOP/s ({r['size']}x{r['size']}{spread})"

    return [
        f"Machine: {m['cpu']}, {m['cores']} cores; CPU capability {m['capability']}; "
        f"native bf16: {'yes' if m['native_bf16'] else 'no'}. Precision chosen for it: {m['chosen']['dtype']} "
        f"({m['chosen']['reason']}).",
        "",
        "Matmul rate, all threads, measured in this run: " + "; ".join(rate(d) for d in rates) + ".",
        "",
    ]


def _cell(entry: dict | None, digits: int) -> str:
    if entry is None:
        return "-"
    text = harness.fmt(entry["speed"], digits)
    if entry.get("capped_steps"):
        steps = entry["capped_steps"]
        text += f" (capped: {entry['runs']} run of {steps} optimizer step{'s' if steps > 1 else ''})"
    return text


def _row(task: str, metric: str, cells: list[str], ratios: tuple[str, str] = ("", ""), target: str = "") -> str:
    return f"| {task} | {metric} | " + " | ".join([*cells, *ratios, target]) + " |"


def _same_machine(a: dict | None, b: dict) -> bool:
    keys = ("cpu", "cores", "capability", "native_bf16")
    return a is None or all(a.get(key) == b.get(key) for key in keys)


def _other_machines(results: dict) -> list[str]:
    """A line per task measured on another machine than the header's (rows kept from an earlier run)."""
    lines = []
    for task in (
        t for t in TASKS if t in results and not _same_machine(results[t].get("machine"), results["machine"])
    ):
        m, rate = results[task]["machine"], (results[task].get("matmul_gflops") or {}).get("float32", {})
        lines.append(
            f"{task} was measured on another machine: {m.get('cpu')}, {m.get('cores')} cores, CPU capability "
            f"{m.get('capability')}, native bf16: {'yes' if m.get('native_bf16') else 'no'}, precision chosen "
            f"{m.get('chosen', {}).get('dtype')}; float32 matmul {rate.get('gflops', 0):.0f} GFLOP/s there."
        )
    return lines + [""] if lines else []


def markdown(results: dict) -> str:
    lines = _header(results) + _other_machines(results)
    lines += [
        "| task | metric | TRL defaults | TRL, precision for this machine | rlhf-recipes | "
        "ours / TRL defaults | ours / TRL | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task in (t for t in TASKS if t in results):
        r, (speed_target, roofline_target) = results[task], TARGETS[task]
        entries = [r["setups"].get(setup) for setup in SETUPS]
        digits = 3 if r["unit"] == "episodes/s" else 1

        def each(value, entries=entries) -> list[str]:
            return [value(entry) if entry else "-" for entry in entries]

        speeds = [_cell(entry, digits) for entry in entries]
        if "trl" in r["same_as"]:
            speeds[1] = "same run as TRL defaults"
        ratios = (harness.fmt(r.get("ours_vs_trl-defaults"), 2), harness.fmt(r.get("ours_vs_trl"), 2))
        lines.append(_row(task, "compute dtype", each(lambda e: e["compute_dtype"])))
        lines.append(_row(task, r["unit"], speeds, ratios, speed_target))
        if "flops_per_token" in r:
            fraction = each(
                lambda e: (
                    f"{harness.fmt(e['roofline_fraction'], 3)} of {e['compute_dtype']} "
                    f"({e['roofline_speed']:.1f} tokens/s)"
                )
            )
            lines.append(_row(task, "fraction of the roofline of its precision", fraction, target=roofline_target))
            steps = each(lambda e: f"{e['examples_per_step']:.1f}")
            lines.append(_row(task, "examples per optimizer step", steps, target="matched"))
        rss = each(lambda e: harness.fmt(e["peak_rss_mib"], 0))
        rss_ratios = tuple(harness.fmt(r.get(f"ours_rss_vs_{base}"), 2) for base in ("trl-defaults", "trl"))
        lines.append(_row(task, "peak RSS, MiB", rss, rss_ratios, MEMORY_TARGETS.get(task, "")))
    lines += [
        "",
        "Median (min-max) of the runs; each run a fresh process, setups interleaved. TRL defaults: `trl sft` / "
        "`trl reward` as typed (bf16 autocast by TRL's default) and TRL's PPO example setup. TRL, precision for this "
        "machine: the same with `bf16` as the recipes resolve `auto` here (for PPO the same run: TRL's PPO loop "
        "never autocasts). A capped run measures its first optimizer steps only: emulated bf16 would take hours "
        "for the whole data set. Each roofline is the matmul rate of the precision that run computed in over the "
        "model FLOPs per token.",
        "",
        "Data: " + ", ".join(f"{k} {v}" for k, v in results["data"].items()) + ".",
        "Measured on commit: " + ", ".join(f"{t} at {results[t]['commit']}" for t in TASKS if t in results) + ".",
    ]
    return "\n".join(lines) + "\n"
