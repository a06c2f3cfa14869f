"""Pictures of an :class:`~detr_hf.explain.Explanation`: per detection, one panel per decoder layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..visualization import _to_pil, label_color
from . import Explanation, QueryExplanation

LEVEL_COLORS = ("#00e5ff", "#ffe600", "#ff4fd8", "#7dff4f", "#ff8a00", "#ffffff")  # one per feature level


def _rectangle(axis, box: np.ndarray, **style) -> None:
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = (float(v) for v in box)
    axis.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, **style))


def _name(explanation: Explanation, label: int) -> str:
    return str(explanation.id2label.get(int(label), label))


def _draw_sampling(axis, explanation: Explanation, query: QueryExplanation, layer: int) -> None:
    """The layer's sampling points, one colour per feature level, area proportional to the attention weight."""
    points, weights = query.sampling_points[layer], query.sampling_weights[layer]  # (H, L, P, 2), (H, L, P)
    peak = max(float(weights.max()), 1e-12)
    for level in range(points.shape[1]):
        xy, w = points[:, level].reshape(-1, 2), weights[:, level].reshape(-1)
        order = np.argsort(w)  # heavy points on top
        stride = explanation.level_strides[level] if level < len(explanation.level_strides) else None
        axis.scatter(
            xy[order, 0],
            xy[order, 1],
            s=3 + 120 * w[order] / peak,
            color=LEVEL_COLORS[level % len(LEVEL_COLORS)],
            edgecolors="black",
            linewidths=0.3,
            alpha=0.85,
            label=f"level {level}" + (f" (stride {stride:.0f})" if stride else ""),
        )
    if query.reference_boxes is not None:
        reference = query.reference_boxes[layer]
        if reference[2] - reference[0] > 0:
            _rectangle(axis, reference, edgecolor="white", linewidth=1.2, linestyle="--")
        else:
            axis.plot(reference[0], reference[1], marker="+", color="white", markersize=10)


def query_figure(explanation: Explanation, query: QueryExplanation):
    """One row: the detection on the image, then per decoder layer what the query looked at (deformable: sampling
    points sized by weight, coloured by level, the layer's reference box dashed white; DETR: the cross-attention
    map) and the box that layer predicts (solid, in the class colour)."""
    import matplotlib.pyplot as plt

    image = np.asarray(_to_pil(explanation.image))
    height, width = image.shape[:2]
    layers = len(query.layer_boxes)
    side = 2.6 * max(0.6, min(1.6, width / max(height, 1)))
    figure, axes = plt.subplots(1, layers + 1, figsize=(side * (layers + 1), 2.9), squeeze=False)
    axes = axes[0]
    color = np.array(label_color(query.label)) / 255
    axes[0].imshow(image)
    _rectangle(axes[0], query.box, edgecolor=color, linewidth=2)
    axes[0].set_title(f"query {query.query}: {_name(explanation, query.label)} {query.score:.2f}", fontsize=9)
    for layer in range(layers):
        axis = axes[layer + 1]
        axis.imshow(image)
        if query.attention_maps is not None:
            axis.imshow(query.attention_maps[layer], cmap="inferno", alpha=0.65, vmin=0, vmax=1)
        if query.sampling_points is not None:
            _draw_sampling(axis, explanation, query, layer)
        _rectangle(axis, query.layer_boxes[layer], edgecolor=color, linewidth=1.6)
        name = _name(explanation, query.layer_labels[layer])
        axis.set_title(f"layer {layer + 1}: {name} {query.layer_scores[layer]:.2f}", fontsize=9)
    for axis in axes:
        axis.set_xlim(-0.5, width - 0.5)
        axis.set_ylim(height - 0.5, -0.5)
        axis.set_xticks([])
        axis.set_yticks([])
    if query.sampling_points is not None:
        handles, labels = axes[-1].get_legend_handles_labels()
        figure.legend(handles, labels, loc="lower center", ncols=len(labels), fontsize=8, markerscale=0.8)
        what = "sampling points (area: attention weight; dashed: the reference box sampled around)"
    else:
        what = "cross-attention, mean over heads"
    figure.suptitle(
        f"What query {query.query} looked at, per decoder layer: {what}; solid: the layer's box", fontsize=9
    )
    figure.tight_layout(rect=(0, 0.08 if query.sampling_points is not None else 0, 1, 1))
    return figure


def save_query_figures(explanation: Explanation, stem: Path | str, dpi: int = 110) -> list[Path]:
    """Writes one PNG per explained detection, ``<stem>_<rank>_query<q>.png`` (rank 1: the best score), and returns
    their paths."""
    import matplotlib.pyplot as plt

    stem = Path(stem)
    paths = []
    for rank, (query, figure) in enumerate(zip(explanation.queries, explanation.figures()), 1):
        path = stem.with_name(f"{stem.name}_{rank}_query{query.query}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=dpi)
        plt.close(figure)
        paths.append(path)
    return paths
