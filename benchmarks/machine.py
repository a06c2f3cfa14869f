"""The machine a benchmark ran on, printed with every table: the same code runs at different speeds on each CPU."""

from __future__ import annotations

import os
import platform
import subprocess

import torch


def cpu_model() -> str:
    """``lscpu``'s model name (``/proc/cpuinfo`` or the platform as fallbacks)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine_line() -> str:
    """One line naming the CPU, its core count and the instruction set PyTorch dispatches to."""
    return f"CPU: {cpu_model()}, {os.cpu_count()} cores, PyTorch kernels: {torch.backends.cpu.get_cpu_capability()}"
