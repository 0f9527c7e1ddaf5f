"""`make gpu-check`'s results as Markdown (bench/results/gpu/gpu_check.md): device, SFT speed, peak memory against
the planner, GRPO's generation with vLLM against transformers, and every step's status."""

from __future__ import annotations

PPO_LIMIT_GIB = 24  # the 7B PPO config's target: one 24 GB consumer GPU


def markdown(results: dict) -> str:
    device = results.get("device", {})
    lines = [
        "# GPU check" + (" (smoke: tiny models on CPU, plumbing only)" if results.get("smoke") else ""),
        "",
        f"Device: {device.get('gpu', 'no GPU')} ({device.get('capability', '-')}, {device.get('memory_gib', '-')} GiB); "
        f"torch {device.get('torch')}, CUDA {device.get('cuda')}, bitsandbytes {device.get('bitsandbytes')}; "
        f"commit {results['commit']}. Matmul GFLOP/s (8192x8192): "
        + ", ".join(f"{d} {v:.0f}" for d, v in (device.get("matmul_gflops") or {}).items()),
        "",
    ]
    speed = results.get("speed")
    if speed and speed.get("setups"):
        lines += [
            f"## LoRA SFT at 1.5B ({speed['data']['conversations']} conversations, {speed['data']['tokens']} tokens)",
            "",
            "| setup | compute | real tokens/s | MFU (of the measured matmul peak) | peak allocated GiB |",
            "|---|---|---|---|---|",
        ]
        names = {
            "ours": "configs/qwen2.5-1.5b-instruct/sft.yaml (QLoRA)",
            "ours-lora": "the same, load_in_4bit false (bf16 LoRA)",
            "trl": "`trl sft` with TRL's defaults, same LoRA",
        }
        for setup, r in speed["setups"].items():
            mfu = f"{r['mfu']:.3f}" if r["mfu"] is not None else "-"
            lines.append(
                f"| {names[setup]} | {r['compute_dtype']} | {r['tokens_per_second']:.0f} | {mfu} | "
                f"{r['peak_gpu_allocated_gib']:.2f} |"
            )
        if "ours" in speed["setups"] and "trl" in speed["setups"]:
            ratio = speed["setups"]["ours"]["tokens_per_second"] / speed["setups"]["trl"]["tokens_per_second"]
            lines += ["", f"Shipped config / TRL defaults: {ratio:.2f}x real tokens/s."]
        lines.append("")
    if results.get("memory"):
        lines += [
            "## Peak GPU memory against the planner",
            "",
            "| model | stage | planned GiB | peak allocated GiB | peak reserved GiB | plan error | train s |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in results["memory"]:
            planned = f"{r['planned_gib']:.2f}" if r["planned_gib"] else "-"
            error = f"{r['error_percent']:+.1f}%" if r["error_percent"] is not None else "-"
            lines.append(
                f"| {r['model']} | {r['stage']} | {planned} | {r['peak_allocated_gib']:.2f} | "
                f"{r['peak_reserved_gib']:.2f} | {error} | {r['train_seconds']:.0f} |"
            )
        verdict = [r for r in results["memory"] if "under_24_gib" in r]
        if verdict:
            held = "holds" if verdict[0]["under_24_gib"] else "DOES NOT hold"
            lines += ["", f"7B QLoRA PPO update under {PPO_LIMIT_GIB} GiB (allocated and reserved): {held}."]
        lines.append("")
    if results.get("generation"):
        lines += ["## GRPO at 1.5B: vLLM colocated against transformers' generate", "",
                  "| generation | completions/s | peak allocated GiB | peak reserved GiB |", "|---|---|---|---|"]  # fmt: skip
        for setup, r in results["generation"].items():
            if "status" in r:
                lines.append(f"| {setup} | {r['status']} | - | - |")
            else:
                lines.append(f"| {setup} | {r['completions_per_second']} | {r['peak_allocated_gib']} | "
                             f"{r['peak_reserved_gib']} |")  # fmt: skip
        lines.append("")
    if results.get("plans") and not results.get("memory"):
        lines += ["## Planned peak memory", "", "| model | stage | planned GiB |", "|---|---|---|"]
        lines += [f"| {p['model']} | {p['stage']} | {p['planned_gib']:.2f} |" for p in results["plans"]]
        lines.append("")
    lines += ["## Steps", "", "| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {s['step']} | {s['status']} | {s['seconds']} |" for s in results["steps"]]
    return "\n".join(lines) + "\n"
