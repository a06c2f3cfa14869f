"""Fingerprints of every image, streamed: the only thing duplicate search keeps in memory.

Per image: a content hash of the encoded file (identical files are exact duplicates; no decoding needed), and, when
near duplicates are searched, two 64-bit perceptual hashes from the ``imagehash`` library (``phash``: the signs of
the lowest 8x8 DCT coefficients of a 32x32 gray copy; ``dhash``: the signs of horizontal gradients of a 9x8 gray copy)
plus an 8x8 RGB thumbnail (192 bytes, area-averaged), which tells apart images whose gray structure agrees but whose
colours do not. Images are read one at a time, JPEGs decoded at a reduced scale (draft mode) since the hashes only
need 32 pixels a side; 224 bytes per image stay, so 20,000 images hold about 4.5 MB.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
from datasets import Dataset

from ..imaging import open_image, to_rgb8, upright

THUMB_SIDE = 8
_DRAFT_SIDE = 128  # JPEGs are decoded at the smallest 1/2, 1/4 or 1/8 scale keeping this many pixels a side
_BATCH = 64


@dataclass
class Fingerprints:
    """Fingerprints of ``n`` images in dataset order (splits concatenated); see the module docstring."""

    digest: np.ndarray  # (n, 2) uint64: 128-bit hash of the encoded file (zeros when unreadable)
    phash: np.ndarray  # (n,) uint64
    dhash: np.ndarray  # (n,) uint64
    thumbs: np.ndarray  # (n, 8, 8, 3) uint8
    readable: np.ndarray  # (n,) bool: the file was read (and decoded, for perceptual hashes)
    errors: list[tuple[int, str]] = field(default_factory=list)  # (index, why) of unreadable images

    @classmethod
    def empty(cls, n: int) -> Fingerprints:
        return cls(
            digest=np.zeros((n, 2), np.uint64),
            phash=np.zeros(n, np.uint64),
            dhash=np.zeros(n, np.uint64),
            thumbs=np.zeros((n, THUMB_SIDE, THUMB_SIDE, 3), np.uint8),
            readable=np.zeros(n, bool),
        )

    @classmethod
    def concatenate(cls, parts: list[Fingerprints]) -> Fingerprints:
        out = cls(
            digest=np.concatenate([p.digest for p in parts]),
            phash=np.concatenate([p.phash for p in parts]),
            dhash=np.concatenate([p.dhash for p in parts]),
            thumbs=np.concatenate([p.thumbs for p in parts]),
            readable=np.concatenate([p.readable for p in parts]),
        )
        offset = 0
        for p in parts:
            out.errors.extend((offset + k, why) for k, why in p.errors)
            offset += len(p.readable)
        return out


def _encoded_bytes(value: dict | None) -> bytes:
    """The file behind a ``datasets`` image value ``{"bytes", "path"}``."""
    if value is None:
        raise ValueError("no image")
    if value.get("bytes"):
        return value["bytes"]
    if value.get("path"):
        return Path(value["path"]).read_bytes()
    raise ValueError("the image has neither bytes nor a path")


def _bits_to_uint64(bits: np.ndarray) -> np.uint64:
    return np.packbits(bits.reshape(-1).astype(bool)).view(">u8")[0].astype(np.uint64)


def perceptual(image: PIL.Image.Image) -> tuple[np.uint64, np.uint64, np.ndarray]:
    """``(phash, dhash, thumbnail)`` of a decoded RGB image: two 64-bit hashes and an (8, 8, 3) uint8 thumbnail."""
    import imagehash  # the one user of this dependency

    gray = image.convert("L")
    phash = _bits_to_uint64(imagehash.phash(gray).hash)
    dhash = _bits_to_uint64(imagehash.dhash(gray).hash)
    thumb = np.asarray(image.resize((THUMB_SIDE, THUMB_SIDE), PIL.Image.Resampling.BOX), dtype=np.uint8)
    return phash, dhash, thumb


def decode_small(data: bytes) -> PIL.Image.Image:
    """The upright 8-bit RGB image of an encoded file; JPEGs decoded at a reduced scale (at least 128 px a side)."""
    image = open_image(data)
    if image.format == "JPEG":
        image.draft("RGB", (_DRAFT_SIDE, _DRAFT_SIDE))
    image.load()
    return to_rgb8(upright(image))


def image_values(dataset: Dataset, batch_size: int = _BATCH) -> Iterator[dict | None]:
    """The undecoded ``image`` values ``{"bytes", "path"}`` of ``dataset``, one batch of rows at a time."""
    column = dataset.select_columns(["image"]).with_format("arrow")
    for start in range(0, len(dataset), batch_size):
        yield from column[start : start + batch_size].column("image").to_pylist()


def fingerprint_split(dataset: Dataset, perceptual_hashes: bool = True, progress=None) -> Fingerprints:
    """Fingerprints of every image of one split, read one at a time (see the module docstring).

    ``progress``: called with the number of images done after each one (a tqdm's ``update``), or None."""
    out = Fingerprints.empty(len(dataset))
    if "image" not in dataset.column_names:
        out.errors.extend((k, "no image column") for k in range(len(dataset)))
        return out
    for index, value in enumerate(image_values(dataset)):
        try:
            data = _encoded_bytes(value)
            out.digest[index] = np.frombuffer(hashlib.blake2b(data, digest_size=16).digest(), np.uint64)
            if perceptual_hashes:
                out.phash[index], out.dhash[index], out.thumbs[index] = perceptual(decode_small(data))
            out.readable[index] = True
        except Exception as e:  # PIL raises many types for corrupt data; all mean "does not decode"
            out.errors.append((index, f"{type(e).__name__}: {e}"))
        if progress is not None:
            progress(1)
    return out


def decode_for_display(value: dict | None, side: int = 160) -> PIL.Image.Image:
    """A thumbnail (longest side ``side``) of an image value for the report; a gray tile when it does not decode."""
    try:
        image = decode_small(_encoded_bytes(value))
        image.thumbnail((side, side))
        return image
    except Exception:
        return PIL.Image.new("RGB", (side, side), (200, 200, 200))


def _fingerprint_shard(dataset: Dataset, num_shards: int, index: int, perceptual_hashes: bool) -> Fingerprints:
    return fingerprint_split(dataset.shard(num_shards, index, contiguous=True), perceptual_hashes)


def fingerprint_parallel(dataset: Dataset, perceptual_hashes: bool, num_proc: int, progress=None) -> Fingerprints:
    """:func:`fingerprint_split` in ``num_proc`` worker processes, each on a contiguous shard (forked on Linux: the
    dataset, memory-mapped, is not copied); shards come back in order."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    shards = min(num_proc * 4, max(len(dataset) // 256, 1))  # a few shards a worker, so the progress moves
    if num_proc <= 1 or shards <= 1:
        return fingerprint_split(dataset, perceptual_hashes, progress)
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    with ProcessPoolExecutor(num_proc, mp_context=context) as pool:
        futures = [pool.submit(_fingerprint_shard, dataset, shards, k, perceptual_hashes) for k in range(shards)]
        parts = []
        for future in futures:
            parts.append(future.result())
            if progress is not None:
                progress(len(parts[-1].readable))
    return Fingerprints.concatenate(parts)
