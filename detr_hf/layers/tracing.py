"""Whether the model is being traced or exported (ONNX): such a graph must not take data-dependent shortcuts."""

import torch


def is_exporting() -> bool:
    """True under ``torch.jit`` tracing (the TorchScript ONNX exporter) or ``torch.export`` (the dynamo exporter)."""
    return torch.jit.is_tracing() or torch.compiler.is_exporting()
