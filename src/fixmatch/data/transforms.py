"""Image pipelines of FixMatch: eval, weak and strong views, from uint8 (H, W, C) arrays to tensors.

Each pipeline is called as `pipeline(image, rng)` and draws only from `rng`.
"""

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from fixmatch.data.randaugment import RandAugment, cutout

Pipeline = Callable[[np.ndarray, np.random.Generator], torch.Tensor]


def to_normalized_tensor(image: np.ndarray, mean: Sequence[float],
                         std: Sequence[float]) -> torch.Tensor:
    """Turn a uint8 (H, W, C) image into a float32 (C, H, W) tensor, (x / 255 - mean) / std.

    Args:
        image: a uint8 array of shape (H, W, C).
        mean: per-channel mean, in [0, 1] pixel units.
        std: per-channel standard deviation, in [0, 1] pixel units.

    Returns:
        The normalised tensor.

    Raises:
        ValueError: `image` is not (H, W, C), or `mean`/`std` do not have C values.
    """
    if image.ndim != 3:
        raise ValueError(f"expected an (H, W, C) image array, got shape {image.shape}")
    channels = image.shape[2]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"mean and std need {channels} values (one per image channel), "
            f"got {len(mean)} and {len(std)}"
        )
    mean_ = np.asarray(mean, dtype=np.float32)
    std_ = np.asarray(std, dtype=np.float32)
    normalized = (image.astype(np.float32) / 255.0 - mean_) / std_
    return torch.from_numpy(np.ascontiguousarray(normalized.transpose(2, 0, 1)))


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
    if hflip and rng.random() < 0.5:
        image = image[:, ::-1]
    pad_y, pad_x = round(pad_fraction * height), round(pad_fraction * width)
    # Reflect (not zero) padding, as in the official code: crops never show a black band.
    padded = np.pad(image, ((pad_y, pad_y), (pad_x, pad_x), (0, 0)), mode="reflect")
    top = int(rng.integers(2 * pad_y + 1))
    left = int(rng.integers(2 * pad_x + 1))
    return np.ascontiguousarray(padded[top:top + height, left:left + width])


def _to_pil(image: np.ndarray) -> Image.Image:
    # A uint8 (H, W) array becomes mode "L", (H, W, 3) becomes "RGB".
    return Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)


def _from_pil(img: Image.Image) -> np.ndarray:
    array = np.array(img)
    return array[:, :, None] if array.ndim == 2 else array


@dataclass(frozen=True)
class EvalTransform:
    """Evaluation view: normalisation only.

    Args:
        mean: per-channel mean, in [0, 1] pixel units.
        std: per-channel standard deviation, in [0, 1] pixel units.
    """

    mean: Sequence[float]
    std: Sequence[float]

    def __call__(self, image: np.ndarray,
                 rng: np.random.Generator | None = None) -> torch.Tensor:
        """Normalise `image`; `rng` is accepted for a signature shared with the other views."""
        return to_normalized_tensor(image, self.mean, self.std)


@dataclass(frozen=True)
class WeakTransform:
    """Weak view (labeled images and pseudo-labels): `weak_augment`, then normalise.

    Args:
        mean: per-channel mean, in [0, 1] pixel units.
        std: per-channel standard deviation, in [0, 1] pixel units.
        hflip: random horizontal flip (False for SVHN).
    """

    mean: Sequence[float]
    std: Sequence[float]
    hflip: bool

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        """Return the weak view of a uint8 (H, W, C) image as a (C, H, W) float32 tensor."""
        return to_normalized_tensor(weak_augment(image, rng, self.hflip), self.mean, self.std)


@dataclass(frozen=True)
class StrongTransform:
    """Strong view: `weak_augment`, RandAugment, Cutout, normalise (Sohn et al. 2020, Sec. 2.3).

    Args:
        mean: per-channel mean, in [0, 1] pixel units.
        std: per-channel standard deviation, in [0, 1] pixel units.
        hflip: random horizontal flip (False for SVHN).
        randaugment: the RandAugment to apply (the official variant by default).
        cutout_fraction: Cutout side as a fraction of the image side (16 px at 32 px).
    """

    mean: Sequence[float]
    std: Sequence[float]
    hflip: bool
    randaugment: RandAugment = field(default_factory=RandAugment)
    cutout_fraction: float = 0.5

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        """Return the strong view of a uint8 (H, W, C) image as a (C, H, W) float32 tensor."""
        image = weak_augment(image, rng, self.hflip)
        image = _from_pil(self.randaugment(_to_pil(image), rng))
        side = round(self.cutout_fraction * min(image.shape[:2]))
        image = cutout(image, side, rng, fill=128)
        return to_normalized_tensor(image, self.mean, self.std)


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
