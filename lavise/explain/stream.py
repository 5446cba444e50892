"""The one sequential pass over the memory-mapped evaluation maps, feeding several consumers.

Everything that needs a map (the explainer outputs of every method, and, when annotations are
given, the ground truth of each pair and NetDissect's dataset-wide sums) is a *consumer* of this
pass: it sees each chunk of consecutive images once, in row order. Explaining an unlabelled image
set is the same pass with only the explaining consumer. Memory is bounded by one chunk of images
(``IMAGE_CHUNK_BYTES`` of float32 maps) plus each consumer's per-pair state, never by the
dataset size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

IMAGE_CHUNK_BYTES = 64 << 20  # float32 maps of one chunk of evaluation images


class MapConsumer(Protocol):
    """Anything fed by :func:`stream_maps`."""

    def consume(self, start: int, block: torch.Tensor) -> None:
        """Take the float32 maps ``[n, d, h, w]`` of map rows ``start .. start + n - 1``."""


def chunk_rows(shape: tuple[int, ...], chunk_bytes: int) -> int:
    """Images per chunk: as many ``[d, h, w]`` float32 maps as fit ``chunk_bytes`` (at least one)."""
    _, n_channels, height, width = shape
    return max(1, chunk_bytes // (n_channels * height * width * 4))


def stream_maps(
    maps: np.ndarray,
    consumers: Sequence[MapConsumer],
    device: torch.device,
    chunk_bytes: int | None = None,
) -> None:
    """Read ``maps`` ``[N, d, h, w]`` (memory-mapped) once, chunk by chunk, and hand each chunk,
    as float32 on ``device``, to every consumer in turn (default chunk: ``IMAGE_CHUNK_BYTES``)."""
    n_images = maps.shape[0]
    step = chunk_rows(maps.shape, IMAGE_CHUNK_BYTES if chunk_bytes is None else chunk_bytes)
    for start in tqdm(range(0, n_images, step), desc="explain", unit="chunk"):
        stop = min(start + step, n_images)
        block = torch.from_numpy(np.asarray(maps[start:stop], dtype=np.float32)).to(device)
        for consumer in consumers:
            consumer.consume(start, block)
