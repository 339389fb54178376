"""Image pipelines of FixMatch: eval, weak and strong views, from uint8 (H, W, C) arrays to tensors.

Each pipeline is called as `pipeline(image, rng)` and draws only from `rng`.
"""

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import numpy as np
import torch
from PIL import Image

from fixmatch.data.randaugment import RandAugment, cutout

Pipeline = Callable[[np.ndarray, np.random.Generator], torch.Tensor]


def to_chw_tensor(image: np.ndarray) -> torch.Tensor:
    """Turn a uint8 (H, W, C) image into a uint8 (C, H, W) tensor.

    Views stay uint8 until they reach the device, which normalises whole batches
    (`fixmatch.data.device_inputs.DeviceInputs`): a quarter of the bytes
    through the loader queues and no per-image float arithmetic in the workers.

    Args:
        image: the (H, W, C) image; its dtype is kept.

    Returns:
        A contiguous (C, H, W) tensor of the same dtype; it shares memory with a writeable
        one-channel `image`.

    Raises:
        ValueError: `image` is not (H, W, C).
    """
    if image.ndim != 3:
        raise ValueError(f"expected an (H, W, C) image array, got shape {image.shape}")
    chw = np.ascontiguousarray(image.transpose(2, 0, 1))
    if not chw.flags.writeable:
        # A 1-channel transpose is already contiguous, so no copy was made of a read-only
        # array (np.asarray of a PIL image): torch warns about such arrays on every image.
        chw = chw.copy()
    return torch.from_numpy(chw)


@lru_cache(maxsize=64)
def _reflect_positions(side: int, pad: int) -> np.ndarray:
    """Source index of every position of a side-long axis reflect-padded by `pad` (numpy's
    "reflect": the edge pixel is not repeated)."""
    positions = np.abs(np.arange(-pad, side + pad))
    period = max(2 * (side - 1), 1)
    positions %= period
    return np.where(positions >= side, period - positions, positions)


def weak_augment(image: np.ndarray, rng: np.random.Generator, hflip: bool,
                 pad_fraction: float = 0.125) -> np.ndarray:
    """FixMatch's weak augmentation: flip, reflect-pad and random crop back (Sohn et al. 2020).

    Args:
        image: an (H, W, C) array.
        rng: source of the flip and the crop offset.
        hflip: flip horizontally with probability 0.5 (off for SVHN: a mirrored digit is
            not the same digit).
        pad_fraction: padding on each side as a fraction of the side (4 px at 32 px).

    Returns:
        A new array of the same shape.
    """
    height, width = image.shape[:2]
    u_flip, u_top, u_left = rng.random(3).tolist()  # one draw: scalar draws cost microseconds
    flip = hflip and u_flip < 0.5
    pad_y, pad_x = round(pad_fraction * height), round(pad_fraction * width)
    top = int(u_top * (2 * pad_y + 1))
    left = int(u_left * (2 * pad_x + 1))
    # Reflect (not zero) padding, as in the official code: crops never show a black band.
    # The padded image is never built: one gather reads the crop's pixels directly.
    rows = _reflect_positions(height, pad_y)[top:top + height]
    columns = _reflect_positions(width, pad_x)[left:left + width]
    if flip:
        columns = width - 1 - columns
    return image.take(rows, axis=0).take(columns, axis=1)


def _to_pil(image: np.ndarray) -> Image.Image:
    # A uint8 (H, W) array becomes mode "L", (H, W, 3) becomes "RGB".
    return Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)


def _from_pil(img: Image.Image) -> np.ndarray:
    array = np.array(img)
    return array[:, :, None] if array.ndim == 2 else array


@dataclass(frozen=True)
class EvalTransform:
    """Evaluation view: the image as it is."""

    def __call__(self, image: np.ndarray,
                 rng: np.random.Generator | None = None) -> torch.Tensor:
        """`image` as a uint8 (C, H, W) tensor; `rng` is accepted for a signature shared
        with the other views."""
        return to_chw_tensor(image)


@dataclass(frozen=True)
class WeakTransform:
    """Weak view (labeled images and pseudo-labels): `weak_augment`.

    Args:
        hflip: random horizontal flip (False for SVHN).
    """

    hflip: bool

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        """Return the weak view of a uint8 (H, W, C) image as a uint8 (C, H, W) tensor."""
        return to_chw_tensor(weak_augment(image, rng, self.hflip))


@dataclass(frozen=True)
class StrongTransform:
    """Strong view: `weak_augment`, RandAugment, Cutout (Sohn et al. 2020, Sec. 2.3).

    Args:
        hflip: random horizontal flip (False for SVHN).
        randaugment: the RandAugment to apply (the official variant by default).
        cutout_fraction: Cutout side as a fraction of the image side (16 px at 32 px).
    """

    hflip: bool
    randaugment: RandAugment = field(default_factory=RandAugment)
    cutout_fraction: float = 0.5

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        """Return the strong view of a uint8 (H, W, C) image as a uint8 (C, H, W) tensor."""
        image = weak_augment(image, rng, self.hflip)
        draws = self.randaugment.sample(rng)
        if any(draw.applied for draw in draws):  # a quarter of the calls apply no op at all
            image = _from_pil(self.randaugment.apply(_to_pil(image), draws, rng))
        side = round(self.cutout_fraction * min(image.shape[:2]))
        image = cutout(image, side, rng, fill=128)
        return to_chw_tensor(image)


@dataclass(frozen=True)
class WeakStrongTransform:
    """Unlabeled sample: a weak and a strong view of the same image (Sec. 2.2, Sohn et al. 2020).

    Args:
        weak: the pipeline whose prediction gives the pseudo-label.
        strong: the pipeline trained against that pseudo-label.
    """

    weak: Pipeline
    strong: Pipeline

    def __call__(self, image: np.ndarray,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Return `(weak_view, strong_view)`, each drawn independently from `rng`."""
        return self.weak(image, rng), self.strong(image, rng)
