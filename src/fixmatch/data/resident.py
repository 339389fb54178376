"""Training images kept on the GPU, for device augmentation.

With `trainer.augment_on=device` the loaders only gather raw uint8 images, yet handing their
batches over to the main process (unpickling, pinning, copying) still cost ~2 ms of every
~14 ms step on an H200. Kept in GPU memory once, the images are gathered there instead: batch
k is `index_select` with the sampler's indices of batch k, the same images a loader's batch
k would ship, so views, results and resume are unchanged; only the indices cross the bus.
"""

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from fixmatch.data.loaders import InfiniteBatchSampler

RESIDENT_SHARE = 1 / 8  # most of a GPU's memory the images may take; more stay with the loaders
COPY_CHUNK = 4096  # images converted per copy, to bound host memory while moving them


@dataclass(frozen=True)
class ResidentImages:
    """uint8 (N, C, H, W) images and int64 labels (-1: unknown) on one device."""

    images: Tensor
    targets: Tensor

    @classmethod
    def from_arrays(cls, parts: Sequence[np.ndarray], targets: np.ndarray,
                    device: torch.device) -> "ResidentImages":
        """Stack (N, H, W, C) uint8 arrays, in order, into one channels-first tensor on `device`.

        Arrays may be memory-mapped: they are read a chunk at a time.

        Args:
            parts: (N_i, H, W, C) uint8 image arrays of one size; at least one.
            targets: the label of every image of all parts, in order; -1 where unknown.
            device: where the images and labels go.

        Returns:
            The images as (sum of N_i, C, H, W) uint8 and the labels as int64, on `device`.
        """
        count = sum(len(part) for part in parts)
        height, width, channels = parts[0].shape[1:]
        images = torch.empty((count, channels, height, width), dtype=torch.uint8, device=device)
        start = 0
        for part in parts:
            for first in range(0, len(part), COPY_CHUNK):
                chunk = torch.from_numpy(np.ascontiguousarray(part[first:first + COPY_CHUNK]))
                images[start:start + len(chunk)] = chunk.to(device).permute(0, 3, 1, 2)
                start += len(chunk)
        return cls(images, torch.as_tensor(np.asarray(targets, dtype=np.int64), device=device))


def fits_on_device(num_bytes: int, device: torch.device) -> bool:
    """Whether `num_bytes` of images may live on `device`: only CUDA devices hold them, and
    only up to RESIDENT_SHARE of their memory (the rest is the model's).

    Args:
        num_bytes: the size of the images.
        device: the training device.

    Returns:
        False off CUDA; on CUDA, whether num_bytes is at most RESIDENT_SHARE of the
        device's total memory.
    """
    if device.type != "cuda":
        return False
    return num_bytes <= RESIDENT_SHARE * torch.cuda.get_device_properties(device).total_memory


class ResidentBatches:
    """An endless stream of (images, labels) batches gathered on the device: batch k holds
    the images of `sampler` batch k (this rank's share), as they are.

    Args:
        resident: the images and labels the sampler's indices point into.
        sampler: the stream's batches of (index, seed) keys; only the indices are used.
    """

    def __init__(self, resident: ResidentImages, sampler: InfiniteBatchSampler):
        self.resident = resident
        self.sampler = sampler
        self.next_batch = sampler.start_batch
        # A loader's iterator draws its workers' base seed from torch's global generator;
        # drawing it here too leaves that generator where the loaders leave it, so the
        # initial weights (drawn next) are the same with or without resident images.
        torch.empty((), dtype=torch.int64).random_()

    def __iter__(self) -> "ResidentBatches":
        return self

    def __next__(self):
        keys = self.sampler.batch(self.next_batch)
        self.next_batch += 1
        index = torch.tensor([key[0] for key in keys], dtype=torch.int64)
        device = self.resident.images.device
        if device.type == "cuda":
            index = index.pin_memory()  # so the copy below does not wait for the device
        index = index.to(device, non_blocking=True)
        return self.resident.images.index_select(0, index), self.resident.targets.index_select(0, index)
