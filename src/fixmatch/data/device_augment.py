"""FixMatch's weak and strong views of a uint8 (N, C, H, W) batch, computed on its own device.

Mirrors `transforms.weak_augment`, `RandAugment` and `cutout` pixel for pixel, drawing from
one `torch.Generator` and never reading a value back to the host (no GPU sync per step).

Each view is drawn first (a few random tensors) and then computed by a pure function of
the images and the draws. Those functions hold the hundreds of small operations of a strong
view; `DeviceAugment(compiled=True)` hands them to torch.compile, which fuses them into a
few kernels, so the host launches a handful per batch instead of hundreds. The RandAugment
ops themselves are in `device_ops`.
"""

import functools
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from fixmatch.data.device_ops import OP_INDEX, check_images, gather_pixels, magnitude_table, ops_view
from fixmatch.data.image_ops import OP_NAMES
from fixmatch.data.randaugment import MAX_LEVEL, VARIANTS, get_variant

CUTOUT_FILL = 128  # mid-gray, as `StrongTransform` fills its Cutout square


class RandAugmentDraws(NamedTuple):
    """The RandAugment choices of a batch: one row per image, one column per op slot."""

    ops: Tensor  # int64 indices into OP_NAMES
    levels: Tensor  # float32 levels on the 0..10 scale
    applied: Tensor  # bool: whether the slot's op is applied at all
    signs: Tensor  # float32 +1 or -1, the direction of a geometric op (ignored by the others)


def _reflect(position: Tensor, size: int) -> Tensor:
    # numpy's "reflect" padding (edge pixel not repeated), valid while the pad is < size.
    position = position.abs()
    return torch.where(position >= size, 2 * (size - 1) - position, position)


class WeakDraws(NamedTuple):
    """The weak view's choices, one per image."""

    flip: Tensor  # bool: mirror the image
    top: Tensor  # (N, 1) int64 crop offsets into the padded image, 0..2 * pad
    left: Tensor


def _pads(height: int, width: int, pad_fraction: float) -> tuple[int, int]:
    pad_y, pad_x = round(pad_fraction * height), round(pad_fraction * width)
    if pad_y >= height or pad_x >= width:
        raise ValueError(f"pad_fraction={pad_fraction} pads wider than the {height}x{width} image")
    return pad_y, pad_x


def draw_weak(images: Tensor, generator: torch.Generator, hflip: bool,
              pad_fraction: float = 0.125) -> WeakDraws:
    """Each image's flip (probability 0.5 when `hflip`) and crop offsets into its reflect-padded
    copy (padding `pad_fraction` of the side: 4 px at 32 px), drawn from `generator`.

    Args:
        images: the (N, C, H, W) batch; only its shape and device are used.
        generator: the source of the draws, on the images' device.
        hflip: whether images may be flipped at all (False for SVHN).
        pad_fraction: reflect padding on each side, as a fraction of the side.

    Returns:
        The flips (N,) and the crop offsets (N, 1), in 0 .. 2 * pad.

    Raises:
        ValueError: a pad as wide as the image.
    """
    n, _, height, width = images.shape
    pad_y, pad_x = _pads(height, width, pad_fraction)
    device = images.device
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    flip &= hflip
    top = torch.randint(2 * pad_y + 1, (n, 1), generator=generator, device=device)
    left = torch.randint(2 * pad_x + 1, (n, 1), generator=generator, device=device)
    return WeakDraws(flip, top, left)


def weak_view(images: Tensor, draws: WeakDraws, pad_fraction: float = 0.125) -> Tensor:
    """FixMatch's weak view of every image under `draws`: flip, reflect-pad, crop back, as one
    gather; a pure function (compilable).

    Args:
        images: a uint8 (N, C, H, W) batch.
        draws: the flips and crop offsets from `draw_weak`.
        pad_fraction: the padding `draws` were drawn with.

    Returns:
        A new batch of the same shape and dtype.

    Raises:
        ValueError: a pad as wide as the image.
    """
    _, _, height, width = images.shape
    pad_y, pad_x = _pads(height, width, pad_fraction)
    device = images.device
    rows = _reflect(torch.arange(height, device=device) + draws.top - pad_y, height)
    cols = _reflect(torch.arange(width, device=device) + draws.left - pad_x, width)
    # Flipping before padding reads column W - 1 - c of the original image.
    cols = torch.where(draws.flip.unsqueeze(1), width - 1 - cols, cols)
    return gather_pixels(images, rows.unsqueeze(2) * width + cols.unsqueeze(1))


def draw_cutout_centres(images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(N, 1) rows and columns of the Cutout squares' centres, uniform over the pixels.

    Args:
        images: the (N, C, H, W) batch; only its shape and device are used.
        generator: the source of the draws, on the images' device.

    Returns:
        The centres' rows (in 0 .. H - 1) and columns (in 0 .. W - 1), int64 (N, 1) each.
    """
    n, _, height, width = images.shape
    device = images.device
    top = torch.randint(height, (n, 1), generator=generator, device=device)
    left = torch.randint(width, (n, 1), generator=generator, device=device)
    return top, left


def cutout_view(images: Tensor, centre_y: Tensor, centre_x: Tensor, size: int,
                fill: int = CUTOUT_FILL) -> Tensor:
    """Cutout squares of side `size` at the given centres: a pure function (compilable).

    Args:
        images: a (N, C, H, W) batch.
        centre_y: (N, 1) row of each square's centre, from `draw_cutout_centres`.
        centre_x: (N, 1) column of each square's centre.
        size: side of the squares in pixels; they start size // 2 before the centre and are
            clipped at the borders, as `randaugment.cutout` does.
        fill: value written into the squares (mid-gray by default).

    Returns:
        A new batch of the same shape and dtype.
    """
    _, _, height, width = images.shape
    top, left = centre_y - size // 2, centre_x - size // 2
    rows = torch.arange(height, device=images.device)
    cols = torch.arange(width, device=images.device)
    inside_rows = (rows >= top) & (rows < top + size)
    inside_cols = (cols >= left) & (cols < left + size)
    square = inside_rows.unsqueeze(2) & inside_cols.unsqueeze(1)
    return torch.where(square.unsqueeze(1), fill, images)


def randaugment_view(images: Tensor, draws: RandAugmentDraws, table: Tensor, fill: int) -> Tensor:
    """RandAugment under `draws`, slot by slot: a pure function (compilable).

    Args:
        images: a uint8 (N, C, H, W) batch.
        draws: (N, num_ops) choices from `DeviceAugment.sample`; slots not applied run Identity.
        table: the variant's `magnitude_table`, on the images' device.
        fill: gray level of the area that geometric ops expose.

    Returns:
        A new uint8 batch of the same shape.
    """
    for slot in range(draws.ops.shape[1]):
        ops = torch.where(draws.applied[:, slot], draws.ops[:, slot], OP_INDEX["Identity"])
        images = ops_view(images, ops, draws.levels[:, slot], draws.signs[:, slot], table, fill)
    return images


def strong_view(images: Tensor, weak: WeakDraws, randaugment: RandAugmentDraws, table: Tensor,
                cutout_centres: tuple[Tensor, Tensor], pad_fraction: float, fill: int,
                cutout_size: int) -> Tensor:
    """Weak view, RandAugment, Cutout under the given draws: a pure function (compilable).

    Args:
        images: a uint8 (N, C, H, W) batch.
        weak: the flips and crop offsets from `draw_weak`.
        randaugment: the RandAugment choices from `DeviceAugment.sample`.
        table: the variant's `magnitude_table`, on the images' device.
        cutout_centres: (rows, columns) from `draw_cutout_centres`.
        pad_fraction: the padding `weak` was drawn with.
        fill: gray level of the area that geometric ops expose (Cutout is always mid-gray).
        cutout_size: side of the Cutout squares in pixels.

    Returns:
        A new uint8 batch of the same shape.

    Raises:
        ValueError: a pad as wide as the image.
    """
    images = randaugment_view(weak_view(images, weak, pad_fraction), randaugment, table, fill)
    return cutout_view(images, *cutout_centres, cutout_size)


@functools.lru_cache(maxsize=None)
def _compiled(function):
    # Shapes are fixed per stream (labeled, unlabeled), so each compiles once; no CUDA
    # graphs here: the views feed the model, which may replay graphs of its own.
    return torch.compile(function, dynamic=False)


@dataclass(frozen=True)
class DeviceAugment:
    """FixMatch's weak and strong views on a batch (Sohn et al. 2020, Sec. 2.3), on its device.

    Draws from the same distributions as `WeakTransform` and `StrongTransform` with
    `RandAugment(variant, num_ops)`; only the random streams differ.

    Args:
        variant: "official", "paper" or "port" (see docs/PROTOCOL.md and randaugment.py).
        num_ops: RandAugment ops drawn per image, with replacement (2 in the paper).
        hflip: random horizontal flip in both views (False for SVHN).
        cutout_fraction: Cutout side as a fraction of the shorter image side.
        pad_fraction: reflect padding of the weak view, as a fraction of the side.
        compiled: compute the views with torch.compile'd functions (same draws, same
            views up to floating-point contraction; a compile per batch shape first).

    Raises:
        ValueError: unknown variant or a negative `num_ops`.
    """

    variant: str = "official"
    num_ops: int = 2
    hflip: bool = True
    cutout_fraction: float = 0.5
    pad_fraction: float = 0.125
    compiled: bool = False

    def __post_init__(self) -> None:
        get_variant(self.variant)
        if self.num_ops < 0:
            raise ValueError(f"DeviceAugment num_ops must be >= 0, got {self.num_ops}")

    def sample(self, batch_size: int, generator: torch.Generator) -> RandAugmentDraws:
        """Draw every image's ops, levels, coins and signs, as `RandAugment.sample` and
        `op_magnitude` do for one image.

        Args:
            batch_size: number of images.
            generator: the source of every choice; the tensors live on its device.

        Returns:
            (batch_size, num_ops) tensors, slots in the order they apply.
        """
        spec = VARIANTS[self.variant]
        shape, device = (batch_size, self.num_ops), generator.device
        ops = torch.randint(len(OP_NAMES), shape, generator=generator, device=device)
        if spec.continuous_level:
            levels = torch.rand(shape, generator=generator, device=device) * MAX_LEVEL
        else:
            levels = torch.randint(1, MAX_LEVEL, shape, generator=generator, device=device).float()
        applied = torch.rand(shape, generator=generator, device=device) < spec.apply_prob
        coins = torch.rand(shape, generator=generator, device=device)
        return RandAugmentDraws(ops, levels, applied, torch.where(coins < 0.5, -1.0, 1.0))

    def _run(self, function):
        return _compiled(function) if self.compiled else function

    def weak(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """The weak view of a uint8 (N, C, H, W) batch (see `draw_weak`, `weak_view`).

        Args:
            images: the batch, on the device that `generator` draws on.
            generator: the source of the flips and crops.

        Returns:
            A new uint8 batch of the same shape.

        Raises:
            ValueError: not a uint8 (N, 1 or 3, H >= 3, W >= 3) batch, or a pad as wide as the
                image.
        """
        check_images(images)
        draws = draw_weak(images, generator, self.hflip, self.pad_fraction)
        return self._run(weak_view)(images, draws, self.pad_fraction)

    def randaugment(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """RandAugment alone on a uint8 (N, C, H, W) batch: applies, slot by slot, the
        draws that `sample(N, generator)` returns, each image with its own.

        Args:
            images: the batch, on the device that `generator` draws on.
            generator: the source of the ops, levels, coins and signs.

        Returns:
            A new uint8 batch of the same shape.

        Raises:
            ValueError: not a uint8 (N, 1 or 3, H >= 3, W >= 3) batch.
        """
        check_images(images)
        draws = self.sample(images.shape[0], generator)
        table = magnitude_table(self.variant, images.device)
        return self._run(randaugment_view)(images, draws, table, VARIANTS[self.variant].fill)

    def strong(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """The strong view of a uint8 (N, C, H, W) batch: weak view, RandAugment, Cutout.

        Args:
            images: the batch, on the device that `generator` draws on.
            generator: the source of every choice, drawn in the order flips and crops, ops,
                Cutout centres.

        Returns:
            A new uint8 batch of the same shape.

        Raises:
            ValueError: not a uint8 (N, 1 or 3, H >= 3, W >= 3) batch, or a pad as wide as the
                image.
        """
        check_images(images)
        # Drawn in this order (flips and crops, ops, Cutout centres) whether compiled or not.
        weak = draw_weak(images, generator, self.hflip, self.pad_fraction)
        randaugment = self.sample(images.shape[0], generator)
        centres = draw_cutout_centres(images, generator)
        side = round(self.cutout_fraction * min(images.shape[2:]))
        table = magnitude_table(self.variant, images.device)
        return self._run(strong_view)(images, weak, randaugment, table, centres, self.pad_fraction,
                                      VARIANTS[self.variant].fill, side)
