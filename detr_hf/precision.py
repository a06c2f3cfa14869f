"""Whether bf16 pays on this CPU: native bf16 instructions (AVX512-BF16, AMX; bf16 on Arm) make bf16 autocast and
`mixed_precision: bf16` faster than fp32; without them oneDNN emulates bf16 (AVX-512 CPUs) or PyTorch falls back to
slow kernels (AVX2 CPUs), and bf16 is slower than fp32 (7x slower measured on an AVX2 AMD EPYC, docs/training.md)."""

from __future__ import annotations

import functools
import platform
import warnings

import torch

_warned: set[str] = set()  # holds "bf16" once warned: one warning per process


class SlowBf16Warning(UserWarning):
    """bf16 was asked for on a CPU that has no native bf16 instructions: it runs slower than fp32 there."""


@functools.cache
def cpu_bf16_support() -> str:
    """ "native" (AVX512-BF16 or AMX on x86, bf16 on Arm: bf16 is faster than fp32), "emulated" (oneDNN runs bf16 on
    AVX-512 without native instructions: slower than fp32) or "none" (no oneDNN bf16 at all, e.g. AVX2: much
    slower)."""
    onednn = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "native" if onednn else "none"
    if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
        return "native"
    return "emulated" if onednn else "none"


def warn_if_bf16_is_slow(what: str) -> bool:
    """Warns (once per process) that `what` (e.g. "mixed_precision: bf16") runs slower than fp32 when this CPU has
    no native bf16; True if it warned."""
    if "bf16" in _warned:
        return False
    support = cpu_bf16_support()
    if support == "native":
        return False
    _warned.add("bf16")
    how = "oneDNN emulates it with AVX-512" if support == "emulated" else "it has no bf16 kernels (no AVX-512)"
    warnings.warn(
        f"{what} on a CPU without native bf16 (no AVX512-BF16 or AMX: {how}): bf16 is slower than fp32 here "
        "(7x slower in inference on an AVX2 AMD EPYC). Use fp32 on this CPU; bf16 speeds up CPUs with AVX512-BF16 or AMX "
        "(AMD Zen4 and later, Intel Cooper Lake, Sapphire Rapids and later), see docs/training.md.",
        SlowBf16Warning,
        stacklevel=2,
    )
    return True


def warn_if_cpu_bf16_autocast(x: torch.Tensor) -> None:
    """Called by the backbone: warns (once) when a CPU forward runs under bf16 autocast without native bf16."""
    autocast = x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
    if autocast and torch.get_autocast_dtype("cpu") == torch.bfloat16:
        warn_if_bf16_is_slow("bf16 autocast")


__all__ = ["SlowBf16Warning", "cpu_bf16_support", "warn_if_bf16_is_slow", "warn_if_cpu_bf16_autocast"]
