"""Exact and near duplicates among fingerprinted images, within and across splits, and the leakage they cause.

Exact duplicates share the hash of their encoded file. Near duplicates are searched among one image of each exact
group: a pair is a candidate when its two perceptual hashes differ in at most ``near_threshold`` of their 128 bits
(phash and dhash together), and is kept when the mean absolute difference of its 8x8 RGB thumbnails is at most
``thumb_tolerance`` (of 255): gray structure alone confuses images that share a smooth background, colour does not.

The search compares every pair, in chunks of a few million pairs with numpy bit operations on the packed 64-bit
hashes (20,000 images: 2e8 pairs; see benchmarks/bench_check.py), so memory stays flat and no near pair is missed; links are
merged with a union-find into groups, and a validation or test image with an exact or near twin in train is leaked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .fingerprints import Fingerprints

DEFAULT_NEAR_THRESHOLD = 24  # of 128 bits; resized, re-encoded copies cropped by up to 4% a side stay below (docs)
DEFAULT_THUMB_TOLERANCE = 10.0  # mean absolute difference of 8x8 RGB thumbnails, 0-255
_CHUNK_ELEMENTS = 1 << 20  # pairs compared at once: ~1M, ~12 MB of temporaries whatever the dataset size
_MAX_STORED_PAIRS = 100_000  # near pairs kept for the report; groups and leakage use every pair

if hasattr(np, "bitwise_count"):  # numpy >= 2.0

    def popcount(x: np.ndarray) -> np.ndarray:
        """Set bits of each uint64."""
        return np.bitwise_count(x)

else:  # pragma: no cover - old numpy
    _BYTE_BITS = np.array([bin(k).count("1") for k in range(256)], np.uint8)

    def popcount(x: np.ndarray) -> np.ndarray:
        """Set bits of each uint64."""
        return _BYTE_BITS[x.view(np.uint8)].reshape(*x.shape, 8).sum(-1, dtype=np.uint8)


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, a: int) -> int:
        parent = self.parent
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:  # path compression
            parent[a], a = root, parent[a]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def roots(self) -> np.ndarray:
        """The root of every element (pointer jumping in numpy: no Python object per element)."""
        roots = self.parent.copy()
        while True:
            jumped = roots[roots]
            if np.array_equal(jumped, roots):
                return roots
            roots = jumped


@dataclass
class DuplicateResult:
    """What the search found; indices are global (splits concatenated in dataset order)."""

    groups: list[list[int]]  # connected groups of two or more images, largest first
    group_kinds: list[str]  # "exact" (all one file) or "near"
    exact_groups: int  # groups of byte-identical files
    exact_images: int  # images in them beyond the first of each
    near_pairs: list[tuple[int, int, int, float]] = field(default_factory=list)  # (i, j, bits, thumb MAD), capped
    near_pair_count: int = 0
    twin: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # a train twin of each image, or -1
    twin_kind: np.ndarray = field(default_factory=lambda: np.zeros(0, "U5"))  # "exact" / "near" / ""


def find_duplicates(
    fingerprints: Fingerprints,
    is_train: np.ndarray,
    near: bool = True,
    near_threshold: int = DEFAULT_NEAR_THRESHOLD,
    thumb_tolerance: float = DEFAULT_THUMB_TOLERANCE,
) -> DuplicateResult:
    """Exact (and, with ``near``, near) duplicate groups of the images and each one's twin in train.

    ``is_train``: (n,) bool, the images of the training split (the others leak when they have a twin there)."""
    n = len(fingerprints.readable)
    readable = np.flatnonzero(fingerprints.readable)
    union = _UnionFind(n)
    twin = np.full(n, -1, np.int64)
    twin_kind = np.full(n, "", "U5")
    # exact: one representative per distinct file
    _, first, inverse, counts = np.unique(
        fingerprints.digest[readable], axis=0, return_index=True, return_inverse=True, return_counts=True
    )
    inverse = inverse.reshape(-1)
    members: dict[int, np.ndarray] = {}
    order = np.argsort(inverse, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    for u in np.flatnonzero(counts > 1):
        group = readable[order[bounds[u] : bounds[u + 1]]]
        members[int(readable[first[u]])] = group
        for k in group[1:]:
            union.union(int(group[0]), int(k))
        _mark_twins(group, group, is_train, twin, twin_kind, "exact")
    result = DuplicateResult(
        groups=[],
        group_kinds=[],
        exact_groups=int((counts > 1).sum()),
        exact_images=int((counts[counts > 1] - 1).sum()),
    )
    if near:
        representatives = np.sort(readable[first])
        _near_search(
            fingerprints,
            representatives,
            near_threshold,
            thumb_tolerance,
            result,
            union,
            members,
            is_train,
            twin,
            twin_kind,
        )
    roots = union.roots()[readable]
    _, inverse, counts = np.unique(roots, return_inverse=True, return_counts=True)
    in_group = counts[inverse] > 1  # only images with a duplicate become Python lists
    by_root: dict[int, list[int]] = {}
    for k, root in zip(readable[in_group].tolist(), roots[in_group].tolist()):
        by_root.setdefault(root, []).append(k)
    groups = sorted(by_root.values(), key=lambda g: (-len(g), g[0]))
    result.groups = groups
    result.group_kinds = ["exact" if len({tuple(fingerprints.digest[k]) for k in g}) == 1 else "near" for g in groups]
    result.twin, result.twin_kind = twin, twin_kind
    return result


def _mark_twins(
    group_a: np.ndarray, group_b: np.ndarray, is_train: np.ndarray, twin: np.ndarray, twin_kind: np.ndarray, kind: str
) -> None:
    """Non-train images of ``group_a`` twin a train image of ``group_b`` and vice versa (exact twins win)."""
    for left, right in ((group_a, group_b), (group_b, group_a)):
        in_train = right[is_train[right]]
        if not len(in_train):
            continue
        for k in left[~is_train[left]]:
            if twin[k] < 0 or (kind == "exact" and twin_kind[k] != "exact"):
                twin[k], twin_kind[k] = in_train[0], kind


def _near_search(
    fingerprints: Fingerprints,
    reps: np.ndarray,
    near_threshold: int,
    thumb_tolerance: float,
    result: DuplicateResult,
    union: _UnionFind,
    members: dict[int, np.ndarray],
    is_train: np.ndarray,
    twin: np.ndarray,
    twin_kind: np.ndarray,
) -> None:
    """Every pair of ``reps`` compared in chunks of rows (see the module docstring); links go into ``union``."""
    m = len(reps)
    phash, dhash = fingerprints.phash[reps], fingerprints.dhash[reps]
    thumbs = fingerprints.thumbs[reps].reshape(m, -1)
    rows = max(1, _CHUNK_ELEMENTS // max(m, 1))
    for i0 in range(0, m, rows):
        i1 = min(i0 + rows, m)
        bits = popcount(phash[i0:i1, None] ^ phash[None, i0:])
        bits += popcount(dhash[i0:i1, None] ^ dhash[None, i0:])
        a, b = np.nonzero(bits <= near_threshold)
        keep = b > a  # columns start at i0: the pair (i, j) with j > i, once
        a, b = a[keep] + i0, b[keep] + i0
        if not len(a):
            continue
        mad = np.abs(thumbs[a].astype(np.int16) - thumbs[b].astype(np.int16)).mean(axis=1)
        ok = mad <= thumb_tolerance
        for i, j, d, t in zip(a[ok], b[ok], bits[a[ok] - i0, b[ok] - i0], mad[ok]):
            gi, gj = int(reps[i]), int(reps[j])
            union.union(gi, gj)
            result.near_pair_count += 1
            if len(result.near_pairs) < _MAX_STORED_PAIRS:
                result.near_pairs.append((gi, gj, int(d), round(float(t), 2)))
            group_i = members.get(gi, np.array([gi]))
            group_j = members.get(gj, np.array([gj]))
            _mark_twins(group_i, group_j, is_train, twin, twin_kind, "near")
