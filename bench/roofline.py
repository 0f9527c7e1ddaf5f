"""The machine's limit for each precision, and a run's distance from it.

- `Rates`: GFLOP/s of a large square matmul in every precision the machine offers (float32, bfloat16, float16),
  measured during the bench's own run, on all threads (CPU) or on the GPU. A precision the CPU only emulates (bf16 without
  AVX512-BF16 or AMX: ~0.2 against ~160 GFLOP/s in float32) is measured on smaller matrices, so that measuring it
  costs seconds, not minutes.
- `training_flops()`: model FLOPs of a LoRA training pass over sequences of given lengths.
- `fraction()`: tokens/s as a fraction of the roofline of the precision the run actually computed in. A bf16 run is
  held against the bf16 rate, never the float32 one.
- `python -m bench.roofline`: what bounds a run below its roofline. For each precision it prints the rate of the large
  square matmul, of each of a decoder layer's own matrix products at a batch's token count (the model's real shapes),
  of the layer's products together (FLOP-weighted), and of a whole no-grad forward pass in model FLOPs. A layer's
  products near the square's rate and a forward pass far below it mean the shapes are not the limit: the work around
  the products (attention, norms, rotary, element-wise ops, casts) is.
"""

from __future__ import annotations

import collections
import statistics
import time

PRECISIONS = ("float32", "bfloat16", "float16")
FIRST_SIZE = {"bfloat16": 512, "float16": 256}  # where a precision is tried before it is trusted with 2048
EMULATED = 0.1  # below this share of float32's rate the CPU emulates the precision: no 2048 x 2048 for it


def gpu_matmul_rate(dtype: str, size: int = 8192, seconds: float = 1.0) -> float:
    """GFLOP/s of a `size` x `size` matmul in `dtype` on the current CUDA device."""
    import torch

    a = torch.randn(size, size, dtype=getattr(torch, dtype), device="cuda")
    b = torch.randn(size, size, dtype=getattr(torch, dtype), device="cuda")
    torch.mm(a, b)
    torch.cuda.synchronize()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or count < 3:
        torch.mm(a, b)
        torch.cuda.synchronize()
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - started) / 1e9


def matmul_rate(dtype: str, device: str = "cpu", seconds: float = 1.0, float32: float | None = None) -> dict:
    """{"gflops", "size"} for one precision. On CPU float32 runs on 2048 x 2048 matrices; another precision is tried
    on small ones first and moves to 2048 only when it runs within 10x of `float32` (GFLOP/s): an emulated one would
    take minutes per large matmul."""
    if device == "cuda":
        return {"gflops": gpu_matmul_rate(dtype, seconds=seconds), "size": 8192}
    from rlhf_recipes import precision

    if dtype != "float32":
        size = FIRST_SIZE.get(dtype, 256)
        rate = precision.matmul_rate(dtype, size=size, seconds=0.2)
        reference = float32 or precision.matmul_rate("float32", size=2048, seconds=0.5)
        if rate < EMULATED * reference:
            return {"gflops": rate, "size": size}
    return {"gflops": precision.matmul_rate(dtype, size=2048, seconds=seconds), "size": 2048}


class Rates:
    """Samples of every precision's matmul rate over a bench run (the fast ones re-measured between rounds)."""

    def __init__(self, device: str = "cpu", precisions=PRECISIONS):
        self.device = device
        self.samples: dict[str, list[float]] = {}
        self.sizes: dict[str, int] = {}
        for dtype in precisions:
            self.measure(dtype)

    def measure(self, dtype: str) -> None:
        float32 = self.gflops("float32") if "float32" in self.samples else None
        rate = matmul_rate(dtype, self.device, float32=float32)
        self.samples.setdefault(dtype, []).append(rate["gflops"])
        self.sizes[dtype] = rate["size"]

    def remeasure_fast(self) -> None:
        """Another sample of every precision measured on large matrices (seconds each); emulated ones keep theirs."""
        for dtype in list(self.samples):
            if self.device == "cuda" or self.sizes[dtype] == 2048:
                self.measure(dtype)

    def gflops(self, dtype: str) -> float:
        if dtype not in self.samples:  # a run computed in a precision not measured yet
            self.measure(dtype)
        return statistics.median(self.samples[dtype])

    def to_dict(self) -> dict:
        return {
            dtype: {
                "gflops": statistics.median(v),
                "min": min(v),
                "max": max(v),
                "samples": len(v),
                "size": self.sizes[dtype],
            }
            for dtype, v in self.samples.items()
        }


def _config(config):
    if isinstance(config, str | bytes) or hasattr(config, "__fspath__"):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(config)
    return config


def layer_shapes(c) -> tuple[list[tuple[int, int]], int]:
    """(in, out) of a decoder layer's linear layers (q, k, v, o, gate, up, down), and the query width."""
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    q, kv = c.num_attention_heads * head_dim, c.num_key_value_heads * head_dim
    shapes = [(c.hidden_size, q), (c.hidden_size, kv), (c.hidden_size, kv), (q, c.hidden_size)]
    return shapes + [(c.hidden_size, c.intermediate_size)] * 2 + [(c.intermediate_size, c.hidden_size)], q


def layer_gemm_rate(config, tokens: int, rate) -> dict:
    """GFLOP/s of a decoder layer's own matrix products over `tokens` rows: each distinct shape's, from
    `rate((m, k, n))`, and all of them together, weighted by their FLOPs (total FLOPs over total time)."""
    shapes, _ = layer_shapes(_config(config))
    counts = collections.Counter((tokens, i, o) for i, o in shapes)
    rates = {shape: rate(shape) for shape in counts}
    flops = {shape: 2 * shape[0] * shape[1] * shape[2] * n for shape, n in counts.items()}
    together = sum(flops.values()) / sum(flops[shape] / rates[shape] for shape in counts)
    return {"shapes": rates, "layer": together}


def forward_flops(config, lengths: list[int]) -> float:
    """Model FLOPs of a no-grad forward pass over sequences of `lengths`: 2 per weight of the linear layers per token,
    causal attention per sample; the LM head is not counted (a reward model's score head is negligible)."""
    c = _config(config)
    shapes, q = layer_shapes(c)
    linear = c.num_hidden_layers * sum(i * o for i, o in shapes)
    return sum(2 * linear * n + 4 * q * c.num_hidden_layers * n * (n + 1) / 2 for n in lengths)


def forward_rate(model_path: str, dtype: str, batch: int, length: int, repeats: int = 3) -> float:
    """Model GFLOP/s of the embedded model's no-grad forward pass (its trunk, as a reward model's) over
    `batch` x `length` tokens in `dtype` (weights in it; best of `repeats` after a warm-up)."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_path, dtype=getattr(torch, dtype)).eval()
    ids = torch.randint(100, model.config.vocab_size - 100, (batch, length))
    seconds = []
    with torch.no_grad():
        model(ids)
        for _ in range(repeats):
            started = time.perf_counter()
            model(ids)
            seconds.append(time.perf_counter() - started)
    return forward_flops(model.config, [length] * batch) / min(seconds) / 1e9


def training_flops(
    config, lengths: list[int], loss_tokens: list[int], lora_r: int, lm_head: bool, trained_layers: int | None = None
) -> float:
    """Model FLOPs of one LoRA training pass over sequences of `lengths` (frozen base weights, no recomputation).

    Per token: forward 2N and input-gradient backward 2N over the linear layers (the base is frozen, so no weight
    gradients), 6N over the LoRA matrices; causal attention per sample; the LM head only on tokens that carry the
    loss (`loss_tokens`), when `lm_head`. With LoRA on the top `trained_layers` layers only (a regex target), the
    layers below run forward only: no backward pass reaches them. `config` is a transformers config or a model
    folder."""
    c = _config(config)
    shapes, q = layer_shapes(c)
    linear = c.num_hidden_layers * sum(i * o for i, o in shapes)
    lora = c.num_hidden_layers * sum(lora_r * (i + o) for i, o in shapes)
    share = (trained_layers if trained_layers is not None else c.num_hidden_layers) / c.num_hidden_layers
    per_token = 2 * linear + share * (2 * linear + 6 * lora)
    # QK^T and AV per (query, key) pair: forward 4, backward 8 in the layers a backward pass reaches
    attention_per_pair = (4 + 8 * share) * q * c.num_hidden_layers
    total = sum(per_token * n + attention_per_pair * n * (n + 1) / 2 for n in lengths)
    if lm_head:
        total += 4 * c.hidden_size * c.vocab_size * sum(loss_tokens)
    return total


def fraction(tokens_per_second: float, flops_per_token: float, gflops: float) -> float:
    """Share of the roofline reached: achieved FLOP/s over the matmul rate of the precision used."""
    return tokens_per_second * flops_per_token / (gflops * 1e9)


def main(argv: list[str] | None = None) -> None:
    import argparse

    from rlhf_recipes import precision
    from rlhf_recipes.models import DEFAULT_MODEL, resolve_model_path

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a model folder, Hub id or embedded:<name>")
    parser.add_argument("--batch", type=int, default=16, help="sequences per forward pass (a reward step's 8 pairs)")
    parser.add_argument("--length", type=int, default=177, help="tokens per sequence (HH's mean side: 177)")
    parser.add_argument("--seconds", type=float, default=1.0, help="time per matmul measurement")
    args = parser.parse_args(argv)
    path = resolve_model_path(args.model)
    dtypes = ["float32"] + (["bfloat16"] if precision.machine(use_cpu=True)[2] else [])
    print(f"{args.model}: {args.batch} x {args.length} tokens; GFLOP/s, and in brackets the share of the square's")
    print("\n| precision | 2048 x 2048 | a layer's products, each shape | together | no-grad forward pass |")
    print("|---|---|---|---|---|")
    for dtype in dtypes:
        square = precision.matmul_rate(dtype, size=2048, seconds=args.seconds)
        tokens = args.batch * args.length
        gemms = layer_gemm_rate(
            path, tokens, lambda shape, dtype=dtype: precision.matmul_rate(dtype, seconds=args.seconds, shape=shape)
        )
        each = ", ".join(f"{m}x{k}x{n} {r:.0f}" for (m, k, n), r in gemms["shapes"].items())
        forward = forward_rate(path, dtype, args.batch, args.length)
        print(f"| {dtype} | {square:.0f} | {each} | {gemms['layer']:.0f} ({gemms['layer'] / square:.2f}) "
              f"| {forward:.0f} ({forward / square:.2f}) |")  # fmt: skip


if __name__ == "__main__":
    from bench import harness

    harness.main(main)
