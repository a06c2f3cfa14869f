"""fp16 and int8 versions of an exported fp32 graph.

- fp16: weights and activations in half precision (onnxruntime's ``convert_float_to_float16``), inputs and outputs
  kept fp32. The ops whose fp16 results drift (position encodings' cumulative sums and sines, normalization
  statistics, softmax, sigmoid/log of box logits, deformable sampling) stay fp32 (:data:`FP16_KEEP_FP32`).
- int8: onnxruntime's dynamic quantization: int8 weights, activations quantized per call, on the matrix
  multiplications (:data:`INT8_OPS`); convolutions stay fp32 (see docs/export.md for why).
"""

from __future__ import annotations

from pathlib import Path

FP16_KEEP_FP32 = [
    "CumSum",
    "Sin",
    "Cos",
    "Softmax",
    "ReduceMean",
    "LayerNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "Pow",
    "Sqrt",
    "Log",
    "Exp",
    "Sigmoid",
    "TopK",
    "GridSample",
    "Resize",
    "Range",  # ONNX Range has no fp16 type
]
INT8_OPS = ["MatMul", "Gemm"]


def to_fp16(source: str | Path, target: str | Path, keep_fp32: list[str] | None = None) -> None:
    """Writes the fp16 version of the graph `source` to `target` (fp32 inputs and outputs)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(source))
    block = FP16_KEEP_FP32 if keep_fp32 is None else keep_fp32
    half = convert_float_to_float16(model, keep_io_types=True, op_block_list=block, disable_shape_infer=False)
    onnx.save(half, str(target))


def to_int8(source: str | Path, target: str | Path, op_types: list[str] | None = None) -> None:
    """Writes the dynamically quantized (int8 weights) version of the graph `source` to `target`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), op_types_to_quantize=op_types or INT8_OPS, weight_type=QuantType.QInt8)


def convert_precision(source: str | Path, target: str | Path, precision: str) -> None:
    """`source` (fp32) at `precision` ("fp16" or "int8") into `target`."""
    if precision == "fp16":
        to_fp16(source, target)
    elif precision == "int8":
        to_int8(source, target)
    else:
        raise ValueError(f"no conversion to {precision!r}: the graph is exported fp32")


__all__ = ["FP16_KEEP_FP32", "INT8_OPS", "convert_precision", "to_fp16", "to_int8"]
