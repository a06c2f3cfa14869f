"""Keeping the processes of a distributed run in step: they agree on flags, and fail together."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from accelerate import Accelerator


def on_all_processes(accelerator: Accelerator, what: str, action: Callable[[], Any]) -> None:
    """Runs `action` on this process, then raises on every process if it failed on any one: a process that failed
    alone (out of disk, say) would otherwise leave the others waiting at the next barrier forever."""
    error = None
    try:
        action()
    except Exception as exc:  # raised again below, once every process knows
        error = exc
    failed = accelerator.reduce(torch.tensor(float(error is not None), device=accelerator.device), "sum").item()
    if error is not None:
        raise error
    if failed:
        raise RuntimeError(f"{what} failed on {int(failed)} other process(es); their error is logged above")


def any_process(accelerator: Accelerator, flag: bool | torch.Tensor) -> bool:
    """True on every process when `flag` is true on any: processes that must skip a step together agree here."""
    flag = torch.as_tensor(flag, dtype=torch.float32, device=accelerator.device)
    return bool(accelerator.reduce(flag, "sum").item() > 0)
