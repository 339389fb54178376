"""RandAugment's ops on a uint8 (N, C, H, W) batch, each image with its own op and level,
pixel for pixel as the PIL ops of `image_ops.py` compute them (same integer and float
arithmetic), with no value read back to the host.
"""

import functools
import operator

import torch
from torch import Tensor

from fixmatch.data.image_ops import OP_NAMES
from fixmatch.data.randaugment import INTEGER_OPS, MAX_LEVEL, SIGNED_OPS, get_variant

OP_INDEX = {name: index for index, name in enumerate(OP_NAMES)}  # op name -> its index in OP_NAMES


def check_images(images: Tensor) -> None:
    """Raise ValueError unless `images` is a uint8 (N, 1 or 3, H >= 3, W >= 3) batch.

    Args:
        images: the batch to check.

    Raises:
        ValueError: another dtype, rank or channel count, or an image under 3 x 3 pixels.
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"expected a uint8 (N, C, H, W) batch with C = 1 or 3, got {images.dtype} "
            f"of shape {tuple(images.shape)}"
        )
    if min(images.shape[2:]) < 3:
        raise ValueError(f"images must be at least 3 x 3 pixels, got {tuple(images.shape[2:])}")


def _is_any(ops: Tensor, names: tuple[str, ...]) -> Tensor:
    return functools.reduce(operator.or_, (ops == OP_INDEX[name] for name in names))


def gather_pixels(images: Tensor, index: Tensor) -> Tensor:
    """out[n, c, y, x] = images[n, c].flatten()[index[n, y, x]].

    Args:
        images: a (N, C, H, W) batch.
        index: int64 (N, H, W) flat pixel positions (y * W + x) to read, the same for every
            channel.

    Returns:
        A new batch of the shape and dtype of `images`.
    """
    n, c, h, w = images.shape
    flat_index = index.reshape(n, 1, h * w).expand(n, c, h * w)
    return images.reshape(n, c, h * w).gather(2, flat_index).reshape(n, c, h, w)


@functools.lru_cache(maxsize=16)
def _table_on(device: torch.device, variant: str) -> Tensor:
    # Copied to the device once per variant: a copy from pageable host memory every step
    # would make the host wait for the device.
    spec = get_variant(variant)
    table = (tuple(float(spec.ranges.get(name, (0.0, 0.0))[0]) for name in OP_NAMES),
             tuple(float(spec.ranges.get(name, (0.0, 0.0))[1]) for name in OP_NAMES),
             tuple(float(name in INTEGER_OPS) for name in OP_NAMES),
             tuple(float(name in SIGNED_OPS) for name in OP_NAMES))
    return torch.tensor(table, dtype=torch.float64).to(device)


def magnitude_table(variant: str, device: torch.device) -> Tensor:
    """(4, len(OP_NAMES)) float64 on `device`: each op's magnitude at levels 0 and 10, and
    whether it is integer and signed, for `variant`.

    Args:
        variant: a name from `RANDAUGMENT_VARIANTS`.
        device: where the table is needed; it is copied there once and cached.

    Returns:
        Rows: magnitude at level 0, magnitude at level 10, integer flag, signed flag (1 or 0);
        one column per op, in `OP_NAMES` order. Cached and shared: do not modify it.

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
    # Posterize keeps `magnitude` bits, at most 8 (unchanged) and at least 0 (black), as on the CPU.
    dropped = 8 - magnitude.clamp(0, 8)
    posterized = (values >> dropped) << dropped
    lut = torch.where(op == OP_INDEX["AutoContrast"], _autocontrast_lut(pixels, values), values)
    lut = torch.where(op == OP_INDEX["Equalize"], _equalize_lut(pixels, index, values), lut)
    lut = torch.where(op == OP_INDEX["Solarize"], solarized, lut)
    lut = torch.where(op == OP_INDEX["Posterize"], posterized, lut)
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
        # Translations move by whole pixels, truncated like `int()` in image_ops.py.
        "TranslateX": (one, zero, (magnitudes * width).trunc(), zero, one, zero),
        "TranslateY": (one, zero, zero, zero, one, (magnitudes * height).trunc()),
    }
    coefficients = torch.stack((one, zero, zero, zero, one, zero), dim=1)
    for name, candidate in candidates.items():
        selected = (ops == OP_INDEX[name]).unsqueeze(1)
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
    return torch.where(inside.unsqueeze(1), gather_pixels(images, index), fill)


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
    degenerate = torch.where(op == OP_INDEX["Color"], gray.float(), 0.0)
    degenerate = torch.where(op == OP_INDEX["Contrast"], mean_gray.float(), degenerate)
    degenerate = torch.where(op == OP_INDEX["Sharpness"], _smooth(images).float(), degenerate)
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
    fill = get_variant(variant).fill
    check_images(images)
    return ops_view(images, ops, levels, signs, magnitude_table(variant, images.device), fill)


def ops_view(images: Tensor, ops: Tensor, levels: Tensor, signs: Tensor, table: Tensor,
             fill: int) -> Tensor:
    """`apply_ops` with the variant given as its `magnitude_table` and geometric fill: a pure
    function (compilable).

    Args:
        images: a uint8 (N, C, H, W) batch, C = 1 or 3, H and W at least 3 (not checked).
        ops: (N,) int64 indices into `OP_NAMES`.
        levels: (N,) levels on the 0..10 scale.
        signs: (N,) +1 or -1, the sign of the geometric ops' magnitudes.
        table: the variant's `magnitude_table`, on the images' device.
        fill: gray level of the area that geometric ops expose.

    Returns:
        A new uint8 batch of the same shape.
    """
    magnitudes = _magnitudes(ops, levels, signs, table)
    images = _lut_ops(images, ops, magnitudes)
    images = _affine_ops(images, ops, magnitudes, fill)
    return _blend_ops(images, ops, magnitudes)
