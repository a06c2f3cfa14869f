"""Cost of multi-scale deformable attention against full attention as the number of feature tokens grows.

Encoder self-attention over a 3-level pyramid (strides 8, 16, 32 of a square image) at d_model 256, 8 heads, batch 1:
detr_hf's `MultiScaleDeformableAttention` (4 points per head and level) against `torch.nn.MultiheadAttention` over
all tokens (what DETR's encoder does), forward + backward. Times are medians of repeats interleaved across cases in
one process; memory is what autograd keeps for the backward pass. The ratios (time and memory per token relative to
the smallest size) show deformable attention growing linearly and full attention's time quadratically (its memory stays
linear because PyTorch's scaled-dot-product attention never materializes the token x token matrix).

    python benchmarks/bench_deformable_attention.py [--sizes 256 512 768] [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from machine import machine_line  # benchmarks/machine.py: scripts run from benchmarks/

D_MODEL, HEADS, LEVELS, POINTS = 256, 8, 3, 4


def _inputs(size: int) -> tuple[torch.Tensor, list[tuple[int, int]], torch.Tensor]:
    shapes = [(size // stride, size // stride) for stride in (8, 16, 32)]
    tokens = sum(h * w for h, w in shapes)
    x = torch.randn(1, tokens, D_MODEL, requires_grad=True)
    points = torch.rand(1, tokens, LEVELS, 2)
    return x, shapes, points


def _step(kind: str, module: torch.nn.Module, x: torch.Tensor, shapes: list, points: torch.Tensor) -> None:
    if kind == "deformable":
        out = module(x, points, x, shapes)
    else:
        out, _ = module(x, x, x, need_weights=False)
    out.sum().backward()


def _module(kind: str) -> torch.nn.Module:
    from detr_hf.layers.deformable_attention import MultiScaleDeformableAttention

    if kind == "deformable":
        module = MultiScaleDeformableAttention(D_MODEL, HEADS, LEVELS, POINTS)
        module.reset_offsets()
        return module
    return torch.nn.MultiheadAttention(D_MODEL, HEADS, batch_first=True)


def saved_activation_mib(
    kind: str, module: torch.nn.Module, x: torch.Tensor, shapes: list, points: torch.Tensor
) -> float:
    """Memory held for the backward pass (unique storages of the tensors autograd saves), in MiB: what grows with
    the number of tokens during training."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        _step(kind, module, x, shapes, points)
    return sum(storages.values()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 768], help="square image sides (pixels)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cases = [(kind, size) for size in args.sizes for kind in ("deformable", "full")]
    modules = {kind: _module(kind) for kind in ("deformable", "full")}
    inputs = {size: _inputs(size) for size in args.sizes}
    times: dict[tuple[str, int], list[float]] = {case: [] for case in cases}
    for kind, size in cases:  # warm-up
        _step(kind, modules[kind], *inputs[size])
    for _ in range(args.repeats):
        for kind, size in cases:
            start = time.perf_counter()
            _step(kind, modules[kind], *inputs[size])
            times[(kind, size)].append(time.perf_counter() - start)
    memory = {(kind, size): saved_activation_mib(kind, modules[kind], *inputs[size]) for kind, size in cases}
    smallest = args.sizes[0]
    tokens = {size: inputs[size][0].shape[1] for size in args.sizes}
    print(machine_line())
    print(f"{args.threads} threads; forward + backward of one encoder self-attention, batch 1, d_model {D_MODEL}")
    print(
        "| image | tokens | attention | time (ms) | time / token vs smallest | memory saved for backward (MiB) | memory / token vs smallest |"
    )
    print("|---|---|---|---|---|---|---|")
    for kind, size in cases:
        median = statistics.median(times[(kind, size)])
        base = statistics.median(times[(kind, smallest)])
        growth = (median / tokens[size]) / (base / tokens[smallest])
        mem_growth = (memory[(kind, size)] / tokens[size]) / max(memory[(kind, smallest)] / tokens[smallest], 1e-9)
        print(
            f"| {size}x{size} | {tokens[size]} | {kind} | {median * 1000:.1f} | {growth:.2f}x | "
            f"{memory[(kind, size)]:.1f} | {mem_growth:.2f}x |"
        )
    largest = args.sizes[-1]
    speedup = statistics.median(times[("full", largest)]) / statistics.median(times[("deformable", largest)])
    print(f"\nAt {largest}x{largest}, deformable attention is {speedup:.1f}x faster than full attention.")


if __name__ == "__main__":
    main()
