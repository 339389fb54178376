"""Per-channel normalisation statistics: given in the config, or computed from the training
images and recorded with the run (normalization.json, the checkpoint).
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from fixmatch.errors import UserError

CHUNK_VALUES = 1 << 24  # pixel values per pass (16 MB): a memory-mapped cache is never read whole


@dataclass(frozen=True)
class Normalization:
    """Mean and standard deviation per channel, in [0, 1] pixel units."""

    mean: List[float]
    std: List[float]
    source: str  # "config", "training images" or "checkpoint"

    def save(self, path: Path) -> None:
        """Write `normalization.json`.

        Args:
            path: the file to write (normally `normalization.json` in the run folder): the
                mean, std and source as JSON.
        """
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")

    def as_record(self) -> dict:
        """What the checkpoint keeps: plain lists of floats.

        Returns:
            `{"mean": [...], "std": [...]}`, one value per channel; the input of
            `resolve_normalization`'s `saved`.
        """
        return {"mean": list(self.mean), "std": list(self.std)}


def channel_statistics(images: np.ndarray) -> Normalization:
    """Mean and (population) standard deviation of every channel over all pixels of `images`.

    Args:
        images: uint8 (N, H, W, C), possibly memory-mapped.

    Returns:
        The statistics, source "training images".

    Raises:
        UserError: when there are no images or a channel is constant (std 0).
    """
    if len(images) == 0:
        raise UserError("cannot compute dataset.mean/std: there are no training images")
    channels = images.shape[-1]
    # Exact integer histograms of the 256 pixel values, then the moments from them: five
    # times faster than summing floats, and the same to the last bit on every machine.
    histogram = np.zeros((channels, 256), dtype=np.int64)
    step = max(1, CHUNK_VALUES // (images[0].size or 1))
    for start in range(0, len(images), step):
        chunk = np.asarray(images[start:start + step]).reshape(-1, channels)
        for channel in range(channels):
            histogram[channel] += np.bincount(chunk[:, channel], minlength=256)
    values = np.arange(256) / 255.0
    count = histogram.sum(axis=1)
    mean = histogram @ values / count
    std = np.sqrt(np.maximum(histogram @ np.square(values) / count - np.square(mean), 0.0))
    constant = np.count_nonzero(histogram, axis=1) < 2
    if constant.any():
        raise UserError(f"cannot normalise: channel {int(np.argmax(constant))} of the training "
                        "images is constant (std 0); give dataset.mean and dataset.std explicitly")
    return Normalization(mean.tolist(), std.tolist(), "training images")


def check_mean_std(mean: Optional[Sequence[float]], std: Optional[Sequence[float]],
                   channels: Optional[int] = None) -> None:
    """Refuse dataset.mean/std values no run can use.

    Args:
        mean: dataset.mean (None: computed from the images).
        std: dataset.std (None: computed from the images).
        channels: the images' channels, which each needs one value for (None: not checked).

    Raises:
        UserError: when only one of them is given, one has another number of values than
            the channels, or a std is not positive.
    """
    if (mean is None) != (std is None):
        raise UserError("give both dataset.mean and dataset.std, or set both to null to compute "
                        "them from the training images")
    if channels is not None and any(len(values) != channels for values in (mean, std)
                                    if values is not None):
        raise UserError(f"dataset.mean and dataset.std need {channels} values (one per channel), "
                        f"got {mean} and {std}")
    if std is not None and not all(np.isfinite(value) and value > 0 for value in std):
        raise UserError(f"dataset.std={list(std)}: every value must be positive (the pixels are "
                        "divided by it); give each channel's standard deviation in [0, 1] pixel "
                        "units, or set dataset.mean and dataset.std to null to compute them")


def resolve_normalization(mean: Optional[List[float]], std: Optional[List[float]],
                          train_images: np.ndarray,
                          saved: Optional[dict] = None) -> Normalization:
    """The statistics a run uses: a resumed run's own, the config's, or computed.

    Args:
        mean: dataset.mean (None: compute).
        std: dataset.std (None: compute).
        train_images: the training images, uint8 (N, H, W, C).
        saved: the checkpoint's "normalization" record when resuming, so a resumed run
            keeps the values it started with even if the images changed.

    Returns:
        The statistics.

    Raises:
        UserError: when only one of mean/std is given, a std is not positive, or see
            `channel_statistics`.
    """
    check_mean_std(mean, std)
    if saved is not None:
        return Normalization(list(saved["mean"]), list(saved["std"]), "checkpoint")
    if mean is not None:
        return Normalization(list(mean), list(std), "config")
    return channel_statistics(train_images)
