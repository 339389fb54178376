"""The 19 CTAugment image ops on PIL images, their parameter bins, and policies of them
(Berthelot et al. 2020, ReMixMatch Sec. 3.2.2), FixMatch's default strong augmentation.

Source: the CTAugment ops of the official code, google-research/fixmatch and
google-research/remixmatch, libml/ctaugment.py (facts marked "official" come from there; the
Cutout appended to every training policy from fixmatch.py). Every random choice is drawn from
an explicit `numpy.random.Generator`.

Every op takes an "L" or "RGB" image, its values in [0, 1] (one per parameter, `level` for
most) and a keyword `rng` (drawn from by cutout only), and returns a new image of the same size
and mode. Ops without a natural magnitude blend the input with their full effect by `level`
(0 keeps the image); each other op's docstring says what its values mean.
"""

from types import MappingProxyType
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from fixmatch.data.randaugment import cutout as cutout_array

# Official: the geometric ops never pass a fill colour, so PIL fills exposed areas with black
# (unlike the official RandAugment, which fills with gray).
_GEOMETRIC_FILL = 0
# Official: the cutout op writes 127; 128 is this toolkit's mid-gray (docs/PROTOCOL.md), one level
# away and the same colour after normalisation.
_CUTOUT_FILL = 128


def _blend(img: Image.Image, transformed: Image.Image, level: float) -> Image.Image:
    # Official: ops without a natural magnitude mix the input with their full effect by `level`.
    return Image.blend(img, transformed, level)


def _enhance(img: Image.Image, enhancer: type, level: float) -> Image.Image:
    # Official factor 0.1 + 1.9 * level: 0.1 .. 2.0, unchanged at level 9/19.
    return enhancer(img).enhance(0.1 + 1.9 * level)


def _affine(img: Image.Image, coefficients: tuple[float, ...]) -> Image.Image:
    # Official: PIL's default nearest-neighbour sampling.
    return img.transform(img.size, Image.Transform.AFFINE, coefficients,
                         Image.Resampling.NEAREST, fillcolor=_GEOMETRIC_FILL)


def identity(img: Image.Image, *, rng: np.random.Generator | None = None) -> Image.Image:
    """Return an unchanged copy (the official op has no parameter)."""
    return img.copy()


def autocontrast(img: Image.Image, level: float, *,
                 rng: np.random.Generator | None = None) -> Image.Image:
    """Blend with the auto-contrasted image by `level`."""
    return _blend(img, ImageOps.autocontrast(img), level)


def blur(img: Image.Image, level: float, *, rng: np.random.Generator | None = None) -> Image.Image:
    """Blend with PIL's BLUR filter output by `level`."""
    return _blend(img, img.filter(ImageFilter.BLUR), level)


def brightness(img: Image.Image, level: float, *,
               rng: np.random.Generator | None = None) -> Image.Image:
    """Brightness factor 0.1 + 1.9 * `level`.

    Args:
        level: in [0, 1]: factor 0.1 at 0, 2.0 at 1, unchanged (factor 1) at 9/19.
    """
    return _enhance(img, ImageEnhance.Brightness, level)


def color(img: Image.Image, level: float, *, rng: np.random.Generator | None = None) -> Image.Image:
    """Saturation factor 0.1 + 1.9 * `level` (no effect on "L" images).

    Args:
        level: in [0, 1]: factor 0.1 at 0, 2.0 at 1, unchanged (factor 1) at 9/19.
    """
    return _enhance(img, ImageEnhance.Color, level)


def contrast(img: Image.Image, level: float, *,
             rng: np.random.Generator | None = None) -> Image.Image:
    """Contrast factor 0.1 + 1.9 * `level`.

    Args:
        level: in [0, 1]: factor 0.1 at 0, 2.0 at 1, unchanged (factor 1) at 9/19.
    """
    return _enhance(img, ImageEnhance.Contrast, level)


def cutout(img: Image.Image, level: float, *, rng: np.random.Generator) -> Image.Image:
    """Fill a square around a uniformly random pixel with mid-gray; size grows with `level`.

    Official: size 1 + int(level * min(side) * 0.499), and the square spans size // 2 pixels
    either side of the centre (so an odd size covers one pixel less), clipped at the borders.

    Args:
        level: in [0, 1]: no pixel covered at 0 (size 1), about half the shorter side at 1.
        rng: source of the square's centre.
    """
    size = 1 + int(level * min(img.size) * 0.499)
    return Image.fromarray(cutout_array(np.array(img), 2 * (size // 2), rng, _CUTOUT_FILL))


def equalize(img: Image.Image, level: float, *,
             rng: np.random.Generator | None = None) -> Image.Image:
    """Blend with the histogram-equalized image by `level`."""
    return _blend(img, ImageOps.equalize(img), level)


def invert(img: Image.Image, level: float, *,
           rng: np.random.Generator | None = None) -> Image.Image:
    """Blend with the inverted image by `level`."""
    return _blend(img, ImageOps.invert(img), level)


def posterize(img: Image.Image, level: float, *,
              rng: np.random.Generator | None = None) -> Image.Image:
    """Keep 1 + int(7.999 * `level`) bits (1 .. 8) of every pixel value.

    Args:
        level: in [0, 1]: 1 bit at 0, all 8 at 1.
    """
    return ImageOps.posterize(img, 1 + int(level * 7.999))


# Official order; the method parameter picks one by int(5.99 * method).
_RESCALE_FILTERS = (Image.Resampling.LANCZOS, Image.Resampling.BICUBIC, Image.Resampling.BILINEAR,
                    Image.Resampling.BOX, Image.Resampling.HAMMING, Image.Resampling.NEAREST)


def rescale(img: Image.Image, scale: float, method: float, *,
            rng: np.random.Generator | None = None) -> Image.Image:
    """Crop 0.25 * `scale` of each side away, resize back with the filter that `method` picks.

    Args:
        scale: in [0, 1]: nothing cropped at 0, a quarter of each side at 1.
        method: in [0, 1]: picks LANCZOS, BICUBIC, BILINEAR, BOX, HAMMING or NEAREST by
            int(5.99 * method).
    """
    width, height = img.size
    margin = 0.25 * scale
    box = (margin * width, margin * height, (1 - margin) * width, (1 - margin) * height)
    return img.crop(box).resize(img.size, _RESCALE_FILTERS[int(method * 5.99)])


def rotate(img: Image.Image, level: float, *,
           rng: np.random.Generator | None = None) -> Image.Image:
    """Rotate counter-clockwise by round((2 * `level` - 1) * 45) degrees (-45 .. 45).

    Args:
        level: in [0, 1]: -45 degrees at 0, none at 0.5, 45 at 1; corners fill black.
    """
    angle = round((2 * level - 1) * 45)
    return img.rotate(angle, Image.Resampling.NEAREST, fillcolor=_GEOMETRIC_FILL)


def sharpness(img: Image.Image, level: float, *,
              rng: np.random.Generator | None = None) -> Image.Image:
    """Sharpness factor 0.1 + 1.9 * `level`.

    Args:
        level: in [0, 1]: factor 0.1 at 0, 2.0 at 1, unchanged (factor 1) at 9/19.
    """
    return _enhance(img, ImageEnhance.Sharpness, level)


def shear_x(img: Image.Image, level: float, *,
            rng: np.random.Generator | None = None) -> Image.Image:
    """Shear horizontally about the top-left corner by (2 * `level` - 1) * 0.3.

    Args:
        level: in [0, 1]: shear -0.3 at 0, none at 0.5, 0.3 at 1; exposed areas black.
    """
    return _affine(img, (1, (2 * level - 1) * 0.3, 0, 0, 1, 0))


def shear_y(img: Image.Image, level: float, *,
            rng: np.random.Generator | None = None) -> Image.Image:
    """Shear vertically about the top-left corner by (2 * `level` - 1) * 0.3.

    Args:
        level: in [0, 1]: shear -0.3 at 0, none at 0.5, 0.3 at 1; exposed areas black.
    """
    return _affine(img, (1, 0, 0, (2 * level - 1) * 0.3, 1, 0))


def smooth(img: Image.Image, level: float, *,
           rng: np.random.Generator | None = None) -> Image.Image:
    """Blend with PIL's SMOOTH filter output by `level`."""
    return _blend(img, img.filter(ImageFilter.SMOOTH), level)


def solarize(img: Image.Image, level: float, *,
             rng: np.random.Generator | None = None) -> Image.Image:
    """Invert every pixel value >= int(255.999 * `level`) (level 0 inverts all).

    Args:
        level: in [0, 1]: the threshold as a fraction of 255.999; at 1 only 255 inverts.
    """
    return ImageOps.solarize(img, int(level * 255.999))


# The official code passes (2 * level - 1) * 0.3 to the affine transform as *pixels*, a shift
# that nearest-neighbour sampling rounds to zero: its translate ops change nothing. This reads
# it as the ReMixMatch paper describes it, a fraction of the side (+-30 %), rounded to pixels.
def translate_x(img: Image.Image, level: float, *,
                rng: np.random.Generator | None = None) -> Image.Image:
    """Shift left by round((2 * `level` - 1) * 0.3 * width) pixels (negative shifts right).

    Args:
        level: in [0, 1]: 30 % of the width right at 0, none at 0.5, 30 % left at 1.
    """
    return _affine(img, (1, 0, round((2 * level - 1) * 0.3 * img.width), 0, 1, 0))


def translate_y(img: Image.Image, level: float, *,
                rng: np.random.Generator | None = None) -> Image.Image:
    """Shift up by round((2 * `level` - 1) * 0.3 * height) pixels (negative shifts down).

    Args:
        level: in [0, 1]: 30 % of the height down at 0, none at 0.5, 30 % up at 1.
    """
    return _affine(img, (1, 0, 0, 0, 1, round((2 * level - 1) * 0.3 * img.height)))


class _OpSpec(NamedTuple):
    function: Callable[..., Image.Image]
    # Per parameter: None for a continuous one (quantised into `num_bins` bins, 17 officially),
    # or the fixed number of bins of a categorical one.
    categories: tuple[int | None, ...]


# Official op set, order and bins: posterize has one bin per bit count (8), rescale's method
# one per filter (6), identity no parameter.
OPS: Mapping[str, _OpSpec] = MappingProxyType({
    "autocontrast": _OpSpec(autocontrast, (None,)), "blur": _OpSpec(blur, (None,)),
    "brightness": _OpSpec(brightness, (None,)), "color": _OpSpec(color, (None,)),
    "contrast": _OpSpec(contrast, (None,)), "cutout": _OpSpec(cutout, (None,)),
    "equalize": _OpSpec(equalize, (None,)), "invert": _OpSpec(invert, (None,)),
    "identity": _OpSpec(identity, ()), "posterize": _OpSpec(posterize, (8,)),
    "rescale": _OpSpec(rescale, (None, 6)), "rotate": _OpSpec(rotate, (None,)),
    "sharpness": _OpSpec(sharpness, (None,)), "shear_x": _OpSpec(shear_x, (None,)),
    "shear_y": _OpSpec(shear_y, (None,)), "smooth": _OpSpec(smooth, (None,)),
    "solarize": _OpSpec(solarize, (None,)), "translate_x": _OpSpec(translate_x, (None,)),
    "translate_y": _OpSpec(translate_y, (None,)),
})
OP_NAMES = tuple(OPS)
MAX_PARAMETERS = max(len(spec.categories) for spec in OPS.values())


class OpCall(NamedTuple):
    """One op of a policy: its name and its parameter values, each in [0, 1]."""

    name: str
    values: tuple[float, ...]


Policy = tuple[OpCall, ...]


def apply_op(img: Image.Image, name: str, values: Sequence[float],
             rng: np.random.Generator) -> Image.Image:
    """Apply op `name` with parameter `values` to `img`.

    Args:
        img: a PIL image in mode "L" or "RGB".
        name: an op name from `OP_NAMES`.
        values: one value in [0, 1] per parameter of the op.
        rng: source of the cutout position.

    Returns:
        A new image of the same size and mode.

    Raises:
        ValueError: unknown op, wrong number of values or a value outside [0, 1].
    """
    if name not in OPS:
        raise ValueError(f"unknown CTAugment op {name!r}; expected one of: {', '.join(OPS)}")
    spec = OPS[name]
    if len(values) != len(spec.categories):
        raise ValueError(f"CTAugment op {name!r} takes {len(spec.categories)} values, "
                         f"got {len(values)}")
    if not all(0.0 <= value <= 1.0 for value in values):
        raise ValueError(f"CTAugment op {name!r} values must lie in [0, 1], got {tuple(values)}")
    return spec.function(img, *values, rng=rng)


def apply_policy(img: Image.Image, policy: Policy, rng: np.random.Generator) -> Image.Image:
    """Apply the ops of `policy` in order to `img` (mode "L" or "RGB"); returns a new image.

    Args:
        img: the image, mode "L" or "RGB".
        policy: the ops and their values, in the order they apply.
        rng: source of the cutout positions.

    Returns:
        A new image of the same size and mode.

    Raises:
        ValueError: `img` has another mode, or an op of `policy` is invalid (see `apply_op`).
    """
    if img.mode not in ("L", "RGB"):
        raise ValueError(f"CTAugment expects an 'L' or 'RGB' image, got mode {img.mode!r}")
    for name, values in policy:
        img = apply_op(img, name, values, rng)
    return img


def strong_view(image: np.ndarray, policy: Policy, rng: np.random.Generator,
                cutout_fraction: float = 0.5) -> np.ndarray:
    """FixMatch's CTAugment strong view: `policy`, then Cutout of half the side (Sohn et al. 2020).

    Official FixMatch appends its cutout op at level 1 to every training policy: a mid-gray
    square of half the side (16 px at 32 px), which `cutout` of randaugment.py draws the same way.

    Args:
        image: a uint8 (H, W, C) array with C = 1 (treated as mode "L") or 3.
        policy: the ops to apply, from `CTAugment.sample_policy`.
        rng: source of every cutout position.
        cutout_fraction: side of the final Cutout square as a fraction of the image side.

    Returns:
        A new uint8 (H, W, C) array.

    Raises:
        ValueError: `image` is not a uint8 (H, W, 1) or (H, W, 3) array, or an op of `policy`
            is invalid (see `apply_op`).
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"strong_view expects a uint8 (H, W, 1) or (H, W, 3) array, "
                         f"got {image.dtype} {image.shape}")
    channels = image.shape[2]
    img = apply_policy(Image.fromarray(image[:, :, 0] if channels == 1 else image), policy, rng)
    out = np.asarray(img).reshape(image.shape)
    side = round(cutout_fraction * min(image.shape[:2]))
    return cutout_array(out, side, rng, fill=128)
