"""FixMatch's weak and strong views of a uint8 (N, C, H, W) batch, computed on its own device.

Mirrors `transforms.weak_augment`, `RandAugment` and `cutout` pixel for pixel, drawing from
one `torch.Generator` and never reading a value back to the host (no GPU sync per step).

Each view is drawn first (a few random tensors) and then computed by a pure function of
the images and the draws. Those functions hold the hundreds of small operations of a strong
view; `DeviceAugment(compiled=True)` hands them to torch.compile, which fuses them into a
few kernels, so the host launches a handful per batch instead of hundreds.
"""

import functools
import operator
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from fixmatch.data.randaugment import (
    _INTEGER_OPS, _SIGNED_OPS, _VARIANTS, MAX_LEVEL, OP_NAMES, _get_variant,
)

_OP = {name: index for index, name in enumerate(OP_NAMES)}
CUTOUT_FILL = 128  # mid-gray, as `StrongTransform` fills its Cutout square


class RandAugmentDraws(NamedTuple):
    """The RandAugment choices of a batch: one row per image, one column per op slot."""

    ops: Tensor  # int64 indices into OP_NAMES
    levels: Tensor  # float32 levels on the 0..10 scale
    applied: Tensor  # bool: whether the slot's op is applied at all
    signs: Tensor  # float32 +1 or -1, the direction of a geometric op (ignored by the others)


def _check_images(images: Tensor) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"expected a uint8 (N, C, H, W) batch with C = 1 or 3, got {images.dtype} "
            f"of shape {tuple(images.shape)}"
        )
    if min(images.shape[2:]) < 3:
        raise ValueError(f"images must be at least 3 x 3 pixels, got {tuple(images.shape[2:])}")


def _is_any(ops: Tensor, names: tuple[str, ...]) -> Tensor:
    return functools.reduce(operator.or_, (ops == _OP[name] for name in names))


def _gather_pixels(images: Tensor, index: Tensor) -> Tensor:
    """out[n, c, y, x] = images[n, c].flatten()[index[n, y, x]]."""
    n, c, h, w = images.shape
    flat_index = index.reshape(n, 1, h * w).expand(n, c, h * w)
    return images.reshape(n, c, h * w).gather(2, flat_index).reshape(n, c, h, w)


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
    """The flips and crop offsets of `weak_augment_batch`, drawn from `generator`."""
    n, _, height, width = images.shape
    pad_y, pad_x = _pads(height, width, pad_fraction)
    device = images.device
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    flip &= hflip
    top = torch.randint(2 * pad_y + 1, (n, 1), generator=generator, device=device)
    left = torch.randint(2 * pad_x + 1, (n, 1), generator=generator, device=device)
    return WeakDraws(flip, top, left)


def weak_view(images: Tensor, draws: WeakDraws, pad_fraction: float = 0.125) -> Tensor:
    """The weak view of every image under `draws`: a pure function (compilable)."""
    _, _, height, width = images.shape
    pad_y, pad_x = _pads(height, width, pad_fraction)
    device = images.device
    rows = _reflect(torch.arange(height, device=device) + draws.top - pad_y, height)
    cols = _reflect(torch.arange(width, device=device) + draws.left - pad_x, width)
    # Flipping before padding reads column W - 1 - c of the original image.
    cols = torch.where(draws.flip.unsqueeze(1), width - 1 - cols, cols)
    return _gather_pixels(images, rows.unsqueeze(2) * width + cols.unsqueeze(1))


def weak_augment_batch(images: Tensor, generator: torch.Generator, hflip: bool,
                       pad_fraction: float = 0.125) -> Tensor:
    """FixMatch's weak view of every image: flip, reflect-pad, random crop back, as one gather.

    Args:
        images: a uint8 (N, C, H, W) batch on the generator's device.
        generator: source of the flips and the crop offsets.
        hflip: flip horizontally with probability 0.5 (off for SVHN).
        pad_fraction: padding on each side as a fraction of the side (4 px at 32 px).

    Returns:
        A new uint8 batch of the same shape.

    Raises:
        ValueError: not a uint8 (N, 1 or 3, H, W) batch, or a pad as wide as the image.
    """
    _check_images(images)
    return weak_view(images, draw_weak(images, generator, hflip, pad_fraction), pad_fraction)


def draw_cutout_centres(images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(N, 1) rows and columns of the Cutout squares' centres, uniform over the pixels."""
    n, _, height, width = images.shape
    device = images.device
    top = torch.randint(height, (n, 1), generator=generator, device=device)
    left = torch.randint(width, (n, 1), generator=generator, device=device)
    return top, left


def cutout_view(images: Tensor, centre_y: Tensor, centre_x: Tensor, size: int,
                fill: int = CUTOUT_FILL) -> Tensor:
    """Cutout squares of side `size` at the given centres: a pure function (compilable)."""
    _, _, height, width = images.shape
    top, left = centre_y - size // 2, centre_x - size // 2
    rows = torch.arange(height, device=images.device)
    cols = torch.arange(width, device=images.device)
    inside_rows = (rows >= top) & (rows < top + size)
    inside_cols = (cols >= left) & (cols < left + size)
    square = inside_rows.unsqueeze(2) & inside_cols.unsqueeze(1)
    return torch.where(square.unsqueeze(1), fill, images)


def cutout_batch(images: Tensor, size: int, generator: torch.Generator,
                 fill: int = CUTOUT_FILL) -> Tensor:
    """`randaugment.cutout` on every image: a square centred on a random pixel, clipped.

    Args:
        images: a uint8 (N, C, H, W) batch on the generator's device.
        size: side of the square in pixels.
        generator: source of the centres.
        fill: value written into the square.

    Returns:
        A new batch; `images` is left untouched.
    """
    return cutout_view(images, *draw_cutout_centres(images, generator), size, fill)


@functools.lru_cache(maxsize=16)
def _table_on(device: torch.device, variant: str) -> Tensor:
    # Copied to the device once per variant: a copy from pageable host memory every step
    # would make the host wait for the device.
    spec = _get_variant(variant)
    table = (tuple(float(spec.ranges.get(name, (0.0, 0.0))[0]) for name in OP_NAMES),
             tuple(float(spec.ranges.get(name, (0.0, 0.0))[1]) for name in OP_NAMES),
             tuple(float(name in _INTEGER_OPS) for name in OP_NAMES),
             tuple(float(name in _SIGNED_OPS) for name in OP_NAMES))
    return torch.tensor(table, dtype=torch.float64).to(device)


def magnitude_table(variant: str, device: torch.device) -> Tensor:
    """(4, len(OP_NAMES)) float64 on `device`: each op's magnitude at levels 0 and 10, and
    whether it is integer and signed, for `variant`.

    Raises:
        ValueError: an unknown variant.
    """
    return _table_on(torch.device(device), variant)


def _magnitudes(ops: Tensor, levels: Tensor, signs: Tensor, table: Tensor) -> Tensor:
    """`randaugment.op_magnitude` per image, in float64 so that it rounds like Python."""
    start, end, integer, signed = table[:, ops]
    # A true division: torch turns `tensor / scalar` into a product by the reciprocal on
    # CUDA, which can round differently from Python (and truncate to another integer).
    offset = (end - start) * levels.double() / torch.full_like(start, MAX_LEVEL)
    magnitude = start + torch.where(integer > 0, offset.trunc(), offset)
    return torch.where(signed > 0, magnitude * signs.double(), magnitude)


def _autocontrast_lut(pixels: Tensor, values: Tensor) -> Tensor:
    # PIL ImageOps.autocontrast (cutoff 0): lut[i] = int(i * scale + offset), in float64.
    low = pixels.amin(2, keepdim=True).double()
    high = pixels.amax(2, keepdim=True).double()
    # Not `255.0 / tensor`, which torch computes as 255 times the reciprocal.
    scale = torch.full_like(low, 255.0) / (high - low).clamp(min=1)
    offset = -low * scale
    lut = (values.double() * scale + offset).trunc().clamp(0, 255).long()
    return torch.where(high > low, lut, values)


def _equalize_lut(pixels: Tensor, index: Tensor, values: Tensor) -> Tensor:
    # PIL ImageOps.equalize: step = (pixels - count of the highest value) // 255,
    # lut[i] = (step // 2 + pixels below i) // step; identity when step is 0.
    n, c, count = pixels.shape
    histogram = torch.zeros(n * c * 256, dtype=torch.long, device=pixels.device)
    histogram.scatter_add_(0, index, torch.ones_like(index))
    histogram = histogram.view(n, c, 256)
    step = (count - histogram.gather(2, pixels.amax(2, keepdim=True).long())) // 255
    below = histogram.cumsum(2) - histogram
    lut = ((step // 2 + below) // step.clamp(min=1)).clamp(max=255)
    return torch.where(step > 0, lut, values)


def _lut_ops(images: Tensor, ops: Tensor, magnitudes: Tensor) -> Tensor:
    """AutoContrast, Equalize, Solarize, Posterize: one 256-entry table per image and channel."""
    n, c = images.shape[:2]
    pixels = images.reshape(n, c, -1)
    # Entry (image, channel, value) of all the tables laid end to end.
    index = pixels + torch.arange(0, n * c * 256, 256, device=images.device).view(n, c, 1)
    index = index.reshape(-1)
    values = torch.arange(256, device=images.device).expand(n, c, 256)
    op = ops.view(n, 1, 1)
    magnitude = magnitudes.view(n, 1, 1).trunc().long()  # PIL takes int(magnitude)
    solarized = torch.where(values < magnitude, values, 255 - values)
    # Posterize keeps `magnitude` bits; 8 is the most PIL accepts.
    dropped = 8 - magnitude.clamp(1, 8)
    posterized = (values >> dropped) << dropped
    lut = torch.where(op == _OP["AutoContrast"], _autocontrast_lut(pixels, values), values)
    lut = torch.where(op == _OP["Equalize"], _equalize_lut(pixels, index, values), lut)
    lut = torch.where(op == _OP["Solarize"], solarized, lut)
    lut = torch.where(op == _OP["Posterize"], posterized, lut)
    return lut.to(torch.uint8).reshape(-1).index_select(0, index).view_as(images)


def _affine_coefficients(ops: Tensor, magnitudes: Tensor, height: int, width: int) -> Tensor:
    """PIL's AFFINE data (a, b, c, d, e, f) per image: output (x, y) reads (ax+by+c, dx+ey+f)."""
    one, zero = torch.ones_like(magnitudes), torch.zeros_like(magnitudes)
    # Image.rotate: the inverse rotation about the centre (w / 2, h / 2), cos and sin
    # rounded to 15 decimals as PIL rounds them. Its transpose shortcuts for 90, 180 and
    # 270 degrees never apply: no variant rotates by more than 30.
    angle = -torch.deg2rad(torch.remainder(magnitudes, 360.0))
    cos, sin = torch.cos(angle).round(decimals=15), torch.sin(angle).round(decimals=15)
    centre_x, centre_y = width / 2, height / 2
    rotate = (cos, sin, cos * -centre_x + sin * -centre_y + 0.0 + centre_x,
              -sin, cos, -sin * -centre_x + cos * -centre_y + 0.0 + centre_y)
    candidates = {
        "Rotate": rotate,
        "ShearX": (one, magnitudes, zero, zero, one, zero),
        "ShearY": (one, zero, zero, magnitudes, one, zero),
        # Translations move by whole pixels, truncated like `int()` in randaugment.py.
        "TranslateX": (one, zero, (magnitudes * width).trunc(), zero, one, zero),
        "TranslateY": (one, zero, zero, zero, one, (magnitudes * height).trunc()),
    }
    coefficients = torch.stack((one, zero, zero, zero, one, zero), dim=1)
    for name, candidate in candidates.items():
        selected = (ops == _OP[name]).unsqueeze(1)
        coefficients = torch.where(selected, torch.stack(candidate, dim=1), coefficients)
    return coefficients


def _affine_ops(images: Tensor, ops: Tensor, magnitudes: Tensor, fill: int) -> Tensor:
    """Rotate, ShearX/Y, TranslateX/Y with nearest-neighbour sampling and a constant fill.

    PIL samples at pixel centres in 16.16 fixed point (Geometry.c, `affine_fixed`); the
    same integer arithmetic here gives the same pixels, not merely the same geometry.
    """
    n, _, height, width = images.shape
    a, b, c, d, e, f = _affine_coefficients(ops, magnitudes, height, width).unbind(1)

    def fixed(value: Tensor) -> Tensor:
        return torch.floor(value * 65536.0 + 0.5).long().view(n, 1, 1)

    xs = torch.arange(width, device=images.device).view(1, 1, width)
    ys = torch.arange(height, device=images.device).view(1, height, 1)
    x_in = (fixed(c + a * 0.5 + b * 0.5) + xs * fixed(a) + ys * fixed(b)) >> 16
    y_in = (fixed(f + d * 0.5 + e * 0.5) + xs * fixed(d) + ys * fixed(e)) >> 16
    inside = (x_in >= 0) & (x_in < width) & (y_in >= 0) & (y_in < height)
    index = y_in.clamp(0, height - 1) * width + x_in.clamp(0, width - 1)
    return torch.where(inside.unsqueeze(1), _gather_pixels(images, index), fill)


def _grayscale(images: Tensor) -> Tensor:
    """PIL's convert("L"): ITU-R 601-2 luma in 16-bit fixed point (Convert.c, L24)."""
    if images.shape[1] == 1:
        return images.int()
    red, green, blue = images.int().unbind(1)
    return ((red * 19595 + green * 38470 + blue * 7471 + 0x8000) >> 16).unsqueeze(1)


def _smooth(images: Tensor) -> Tensor:
    """PIL's ImageFilter.SMOOTH ([[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13, rounded half up)
    on the interior; the one-pixel border is kept, as PIL's 3x3 filter keeps it."""
    pixels = images.short()  # sums stay below 2 * 13 * 255 + 13 < 2**15
    columns = pixels[:, :, :-2] + pixels[:, :, 1:-1] + pixels[:, :, 2:]
    box = columns[..., :-2] + columns[..., 1:-1] + columns[..., 2:]
    total = box + 4 * pixels[:, :, 1:-1, 1:-1]
    smooth = pixels.clone()
    smooth[:, :, 1:-1, 1:-1] = (2 * total + 13) // 26
    return smooth


def _blend_ops(images: Tensor, ops: Tensor, magnitudes: Tensor) -> Tensor:
    """Color, Contrast, Brightness, Sharpness: PIL's Image.blend(degenerate, image, factor).

    Blend.c computes degenerate + factor * (image - degenerate) in float32, clips to
    0..255 and truncates; the same float32 operations here give the same values.
    """
    n = images.shape[0]
    op = ops.view(n, 1, 1, 1)
    gray = _grayscale(images)
    pixels = gray.shape[2] * gray.shape[3]
    total = gray.sum(dim=(2, 3), keepdim=True, dtype=torch.long)
    mean_gray = (2 * total + pixels) // (2 * pixels)  # int(mean + 0.5) in ImageEnhance.Contrast
    degenerate = torch.where(op == _OP["Color"], gray.float(), 0.0)
    degenerate = torch.where(op == _OP["Contrast"], mean_gray.float(), degenerate)
    degenerate = torch.where(op == _OP["Sharpness"], _smooth(images).float(), degenerate)
    is_blend = _is_any(ops, ("Color", "Contrast", "Brightness", "Sharpness"))
    factor = torch.where(is_blend, magnitudes, 1.0).float().view(n, 1, 1, 1)
    blended = degenerate + factor * (images.float() - degenerate)
    return blended.clamp(0, 255).to(torch.uint8)  # the cast truncates, as Blend.c's does


def apply_ops(images: Tensor, ops: Tensor, levels: Tensor, signs: Tensor,
              variant: str = "official") -> Tensor:
    """Apply op `OP_NAMES[ops[i]]` at `levels[i]` to image i, as `randaugment.apply_op` does.

    Every image goes through the three op families (lookup tables, affine maps, blends),
    with an exact identity in the families its op is not in: no per-op masking, which
    would need the host to learn how many images drew each op.

    Args:
        images: a uint8 (N, C, H, W) batch, C = 1 or 3.
        ops: (N,) int64 indices into `OP_NAMES`.
        levels: (N,) levels on the 0..10 scale (not checked, to stay on the device).
        signs: (N,) +1 or -1, the sign of the geometric ops' magnitudes.
        variant: a name from `RANDAUGMENT_VARIANTS`.

    Returns:
        A new uint8 batch of the same shape.

    Raises:
        ValueError: unknown variant, or not a uint8 (N, 1 or 3, H >= 3, W >= 3) batch.
    """
    fill = _get_variant(variant).fill
    _check_images(images)
    return ops_view(images, ops, levels, signs, magnitude_table(variant, images.device), fill)


def ops_view(images: Tensor, ops: Tensor, levels: Tensor, signs: Tensor, table: Tensor,
             fill: int) -> Tensor:
    """`apply_ops` with the variant given as its `magnitude_table` and geometric fill: a pure
    function (compilable)."""
    magnitudes = _magnitudes(ops, levels, signs, table)
    images = _lut_ops(images, ops, magnitudes)
    images = _affine_ops(images, ops, magnitudes, fill)
    return _blend_ops(images, ops, magnitudes)


def randaugment_view(images: Tensor, draws: RandAugmentDraws, table: Tensor, fill: int) -> Tensor:
    """RandAugment under `draws`, slot by slot: a pure function (compilable)."""
    for slot in range(draws.ops.shape[1]):
        ops = torch.where(draws.applied[:, slot], draws.ops[:, slot], _OP["Identity"])
        images = ops_view(images, ops, draws.levels[:, slot], draws.signs[:, slot], table, fill)
    return images


def strong_view(images: Tensor, weak: WeakDraws, randaugment: RandAugmentDraws, table: Tensor,
                cutout_centres: tuple[Tensor, Tensor], pad_fraction: float, fill: int,
                cutout_size: int) -> Tensor:
    """Weak view, RandAugment, Cutout under the given draws: a pure function (compilable)."""
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
        variant: "official", "paper" or "port" (see PROTOCOL.md and randaugment.py).
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
        _get_variant(self.variant)
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
        spec = _VARIANTS[self.variant]
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
        """The weak view of a uint8 (N, C, H, W) batch (see `weak_augment_batch`)."""
        _check_images(images)
        draws = draw_weak(images, generator, self.hflip, self.pad_fraction)
        return self._run(weak_view)(images, draws, self.pad_fraction)

    def randaugment(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """RandAugment alone on a uint8 (N, C, H, W) batch: applies, slot by slot, the
        draws that `sample(N, generator)` returns, each image with its own."""
        _check_images(images)
        draws = self.sample(images.shape[0], generator)
        table = magnitude_table(self.variant, images.device)
        return self._run(randaugment_view)(images, draws, table, _VARIANTS[self.variant].fill)

    def strong(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """The strong view of a uint8 (N, C, H, W) batch: weak view, RandAugment, Cutout."""
        _check_images(images)
        # Drawn in this order (flips and crops, ops, Cutout centres) whether compiled or not.
        weak = draw_weak(images, generator, self.hflip, self.pad_fraction)
        randaugment = self.sample(images.shape[0], generator)
        centres = draw_cutout_centres(images, generator)
        side = round(self.cutout_fraction * min(images.shape[2:]))
        table = magnitude_table(self.variant, images.device)
        return self._run(strong_view)(images, weak, randaugment, table, centres, self.pad_fraction,
                                      _VARIANTS[self.variant].fill, side)
