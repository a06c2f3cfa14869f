"""A checkpoint's class heads cut down to the dataset's classes, matched by name (``class_head: auto|reuse``)."""

from __future__ import annotations

import torch

from .base import FamilyAdapter


def select_class_rows(
    state_dict: dict[str, torch.Tensor], family: FamilyAdapter, rows: list[int], num_labels: int
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state_dict`` with every class head's rows (and the denoising label embedding's) reduced to ``rows``, the
    checkpoint's label of each dataset class in order; returns it and the names of the weights cut.

    A head has ``num_labels`` rows, or ``num_labels + 1`` when the last is "no object" (softmax families) or the
    denoising padding label (RT-DETR-style ``denoising_class_embed``); that last row is kept last.
    """
    selected, cut = {}, []
    for key, value in state_dict.items():
        module = key.rsplit(".", 1)[0]
        if family.is_class_head(module) and value.ndim >= 1 and value.shape[0] in (num_labels, num_labels + 1):
            index = rows + ([num_labels] if value.shape[0] == num_labels + 1 else [])
            value = value[index].clone()
            cut.append(key)
        selected[key] = value
    if not cut:
        raise RuntimeError(
            f"no class head with {num_labels} rows found in the {family.name} checkpoint: its class heads can't be "
            "mapped by name; use class_head='new'"
        )
    return selected, cut
