"""The strong augmentation of FixMatch (Sohn et al. 2020, Sec. 2.3): RandAugment ops and Cutout.

Every random choice is drawn from an explicit `numpy.random.Generator`.
"""

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping, NamedTuple

import numpy as np
from PIL import Image, ImageEnhance

# An op maps (image, magnitude in the op's own unit, fill gray level) to a new image.
Op = Callable[[Image.Image, float, int], Image.Image]


def _fill_color(img: Image.Image, fill: int) -> int | tuple[int, ...]:
    return fill if img.mode == "L" else (fill,) * len(img.getbands())


def _affine(img: Image.Image, coefficients: tuple[float, ...], fill: int) -> Image.Image:
    # Nearest-neighbour sampling moves pixels without blending them, like the reference code.
    return img.transform(
        img.size, Image.Transform.AFFINE, coefficients, Image.Resampling.NEAREST,
        fillcolor=_fill_color(img, fill),
    )


def identity(img: Image.Image, magnitude: float = 0.0, fill: int = 128) -> Image.Image:
    """Return an unchanged copy of `img` (the "do nothing" op of the pool)."""
    return img.copy()


def auto_contrast(img: Image.Image, magnitude: float = 0.0, fill: int = 128) -> Image.Image:
    """Stretch each channel to the full 0..255 range (PIL's ImageOps.autocontrast, cutoff 0)."""
    return _apply_luts(img, _autocontrast_luts(_histograms(img)))


def equalize(img: Image.Image, magnitude: float = 0.0, fill: int = 128) -> Image.Image:
    """Equalize the histogram of each channel (PIL's ImageOps.equalize)."""
    return _apply_luts(img, _equalize_luts(_histograms(img)))


# PIL builds the look-up tables of autocontrast, equalize, solarize and posterize in
# Python loops (~100 us per 32 px image); the same tables from numpy give the same
# pixels several times faster, which is most of what a loader worker spends on them.
_VALUES = np.arange(256)


def _histograms(img: Image.Image) -> np.ndarray:
    """(channels, 256) pixel counts."""
    return np.asarray(img.histogram(), dtype=np.int64).reshape(-1, 256)


def _apply_luts(img: Image.Image, luts: np.ndarray) -> Image.Image:
    # One gather from the concatenated tables (Image.point with a list is slower: it
    # rounds every entry in Python).
    pixels = np.asarray(img)
    if pixels.ndim == 2:
        return Image.fromarray(luts[0].astype(np.uint8)[pixels])
    offsets = np.arange(pixels.shape[2]) * 256
    return Image.fromarray(np.take(luts.astype(np.uint8).ravel(), pixels + offsets))


def _autocontrast_luts(histograms: np.ndarray) -> np.ndarray:
    luts = np.tile(_VALUES, (len(histograms), 1))
    for channel, histogram in enumerate(histograms):
        present = np.flatnonzero(histogram)
        low, high = present[0], present[-1]
        if high > low:  # a constant channel is left as it is
            scale = 255.0 / (high - low)
            luts[channel] = np.clip((_VALUES * scale - low * scale).astype(np.int64), 0, 255)
    return luts


def _equalize_luts(histograms: np.ndarray) -> np.ndarray:
    luts = np.tile(_VALUES, (len(histograms), 1))
    for channel, histogram in enumerate(histograms):
        present = histogram[histogram > 0]
        step = (present.sum() - present[-1]) // 255 if len(present) > 1 else 0
        if step:
            before = np.concatenate([[0], np.cumsum(histogram)[:-1]])
            luts[channel] = np.clip((step // 2 + before) // step, 0, 255)
    return luts


def rotate(img: Image.Image, magnitude: float, fill: int = 128) -> Image.Image:
    """Rotate counter-clockwise by `magnitude` degrees about the centre."""
    return img.rotate(magnitude, Image.Resampling.NEAREST, fillcolor=_fill_color(img, fill))


def shear_x(img: Image.Image, magnitude: float, fill: int = 128) -> Image.Image:
    """Shear horizontally about the top-left corner: row y moves by `magnitude * y` pixels."""
    return _affine(img, (1, magnitude, 0, 0, 1, 0), fill)


def shear_y(img: Image.Image, magnitude: float, fill: int = 128) -> Image.Image:
    """Shear vertically about the top-left corner: column x moves by `magnitude * x` pixels."""
    return _affine(img, (1, 0, 0, magnitude, 1, 0), fill)


def translate_x(img: Image.Image, magnitude: float, fill: int = 128) -> Image.Image:
    """Shift left by `magnitude` times the width, in whole pixels (negative shifts right).

    The shift is truncated to whole pixels, as in the PyTorch port; for the official
    magnitudes (L pixels per 32 px of side) it is exact whenever the side is a multiple of 32.
    """
    return _affine(img, (1, 0, int(magnitude * img.width), 0, 1, 0), fill)


def translate_y(img: Image.Image, magnitude: float, fill: int = 128) -> Image.Image:
    """Shift up by `magnitude` times the height, in whole pixels (negative shifts down)."""
    return _affine(img, (1, 0, 0, 0, 1, int(magnitude * img.height)), fill)


def solarize(img: Image.Image, magnitude: float, fill: int = 128) -> Image.Image:
    """Invert every pixel value >= `magnitude` (the threshold; 256 leaves the image as is)."""
    lut = np.where(_VALUES < int(magnitude), _VALUES, 255 - _VALUES)
    return _apply_luts(img, np.tile(lut, (len(img.getbands()), 1)))


def posterize(img: Image.Image, magnitude: float, fill: int = 128) -> Image.Image:
    """Keep the `magnitude` most significant bits of every pixel value."""
    lut = _VALUES & ~(2 ** (8 - int(magnitude)) - 1)
    return _apply_luts(img, np.tile(lut, (len(img.getbands()), 1)))


def color(img: Image.Image, magnitude: float, fill: int = 128) -> Image.Image:
    """Blend with the grayscale image by factor `magnitude` (1 = unchanged); no-op on "L"."""
    if img.mode == "L":
        return img.copy()
    return ImageEnhance.Color(img).enhance(magnitude)


def contrast(img: Image.Image, magnitude: float, fill: int = 128) -> Image.Image:
    """Blend with the mean gray by factor `magnitude` (1 = unchanged).

    The gray is PIL's (ImageEnhance.Contrast): the rounded mean of the grayscale image.
    """
    histogram = np.asarray(img.convert("L").histogram(), dtype=np.int64)
    mean_gray = int(histogram @ _VALUES / histogram.sum() + 0.5)
    return Image.blend(Image.new(img.mode, img.size, _fill_color(img, mean_gray)), img, magnitude)


def brightness(img: Image.Image, magnitude: float, fill: int = 128) -> Image.Image:
    """Blend with black by factor `magnitude` (1 = unchanged, 2 = twice as bright)."""
    return ImageEnhance.Brightness(img).enhance(magnitude)


def sharpness(img: Image.Image, magnitude: float, fill: int = 128) -> Image.Image:
    """Blend with a smoothed copy by factor `magnitude` (1 = unchanged, > 1 sharpens)."""
    return ImageEnhance.Sharpness(img).enhance(magnitude)


# The 14 ops of the paper's RandAugment table, under the names the paper uses.
OPS: Mapping[str, Op] = MappingProxyType({
    "Identity": identity, "AutoContrast": auto_contrast, "Equalize": equalize,
    "Rotate": rotate, "ShearX": shear_x, "ShearY": shear_y,
    "TranslateX": translate_x, "TranslateY": translate_y,
    "Solarize": solarize, "Color": color, "Contrast": contrast,
    "Brightness": brightness, "Sharpness": sharpness, "Posterize": posterize,
})
OP_NAMES = tuple(OPS)

# Geometric ops move content either way; the magnitude tables give only its size.
_SIGNED_OPS = frozenset({"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"})
# Integer magnitudes move from the level-0 value in whole steps, truncating the rest:
# that is the floor in 256 - floor(25.6L) and 4 - floor(0.4L).
_INTEGER_OPS = frozenset({"Solarize", "Posterize"})
MAX_LEVEL = 10  # levels are on the 0..10 scale of the AutoAugment-style code


def _ranges(
    enhance: tuple[float, float], posterize_bits: tuple[int, int], translate: tuple[float, float]
) -> Mapping[str, tuple[float, float]]:
    shared = {"Rotate": (0.0, 30.0), "ShearX": (0.0, 0.3), "ShearY": (0.0, 0.3),
              "TranslateX": translate, "TranslateY": translate,
              "Solarize": (256, 0), "Posterize": posterize_bits}
    return MappingProxyType(
        {**shared, **{name: enhance for name in ("Color", "Contrast", "Brightness", "Sharpness")}}
    )


@dataclass(frozen=True)
class _Variant:
    """One reading of FixMatch's RandAugment.

    `ranges[op] = (a, b)` gives the op's magnitude a + (b - a) * level / MAX_LEVEL (Rotate in
    degrees, Translate as a fraction of the side); ops absent from it take no magnitude.
    """

    apply_prob: float  # chance that each drawn op is applied at all
    continuous_level: bool  # level ~ U(0, 10) rather than U{1, ..., 9}
    fill: int  # gray level of the area that geometric ops expose
    ranges: Mapping[str, tuple[float, float]]


_VARIANTS: Mapping[str, _Variant] = MappingProxyType({
    # google-research/fixmatch, the protocol's default (docs/PROTOCOL.md table): rotate 3L deg,
    # shear 0.03L, translate L px per 32 px of side, solarize 256 - floor(25.6L),
    # factor 0.1 + 0.18L, posterize 4 - floor(0.4L) bits; mid-gray fill.
    "official": _Variant(
        apply_prob=0.5, continuous_level=False, fill=128,
        ranges=_ranges(enhance=(0.1, 1.9), posterize_bits=(4, 0), translate=(0.0, 10 / 32)),
    ),
    # The paper's table: both ops always applied, magnitudes from continuous ranges
    # (factors 0.05-0.95, 4-8 bits, +-30 deg, +-0.3 shear, +-30 % translate, threshold 0-256).
    # The paper names no fill colour; mid-gray as in the official code.
    "paper": _Variant(
        apply_prob=1.0, continuous_level=True, fill=128,
        ranges=_ranges(enhance=(0.05, 0.95), posterize_bits=(4, 9), translate=(0.0, 0.3)),
    ),
    # The popular PyTorch port: factors 0.05 + 0.09L (darkening only), posterize 4..7 bits,
    # translate 3L % of the side, black fill.
    "port": _Variant(
        apply_prob=0.5, continuous_level=False, fill=0,
        ranges=_ranges(enhance=(0.05, 0.95), posterize_bits=(4, 8), translate=(0.0, 0.3)),
    ),
})
RANDAUGMENT_VARIANTS = tuple(_VARIANTS)


def _get_variant(name: str) -> _Variant:
    if name not in _VARIANTS:
        raise ValueError(
            f"unknown RandAugment variant {name!r}; expected one of: {', '.join(_VARIANTS)}"
        )
    return _VARIANTS[name]


def op_magnitude(name: str, level: float, rng: np.random.Generator,
                 variant: str = "official") -> float:
    """The magnitude that op `name` takes at `level` under `variant`, sign drawn from `rng`.

    Args:
        name: an op name from `OP_NAMES`.
        level: strength on the 0..10 scale (the official variant draws 1..9).
        rng: source of the random sign of geometric ops.
        variant: a name from `RANDAUGMENT_VARIANTS`.

    Returns:
        The op's magnitude in its own unit (see the op functions); 0 for ops without one.

    Raises:
        ValueError: unknown op or variant, or a level outside [0, 10].
    """
    spec = _get_variant(variant)
    if name not in OPS:
        raise ValueError(f"unknown RandAugment op {name!r}; expected one of: {', '.join(OPS)}")
    if not 0 <= level <= MAX_LEVEL:
        raise ValueError(f"RandAugment level must lie in [0, {MAX_LEVEL}], got {level}")
    start, end = spec.ranges.get(name, (0.0, 0.0))
    # Multiply before dividing so that official integer levels give exact table values.
    offset = (end - start) * level / MAX_LEVEL
    if name in _INTEGER_OPS:
        offset = math.trunc(offset)
    magnitude = start + offset
    if name in _SIGNED_OPS and rng.random() < 0.5:
        magnitude = -magnitude
    return magnitude


def apply_op(img: Image.Image, name: str, level: float, rng: np.random.Generator,
             variant: str = "official") -> Image.Image:
    """Apply op `name` at `level` with the magnitudes and fill of `variant`.

    Args:
        img: a PIL image in mode "L" or "RGB".
        name: an op name from `OP_NAMES`.
        level: strength on the 0..10 scale (the official variant draws 1..9).
        rng: source of the random sign of geometric ops.
        variant: a name from `RANDAUGMENT_VARIANTS`.

    Returns:
        A new image of the same size and mode.

    Raises:
        ValueError: unknown op or variant, or a level outside [0, 10].
    """
    magnitude = op_magnitude(name, level, rng, variant)
    return OPS[name](img, magnitude, _VARIANTS[variant].fill)


class OpDraw(NamedTuple):
    """One drawn op of a RandAugment call."""

    name: str
    level: float
    applied: bool


@dataclass(frozen=True)
class RandAugment:
    """RandAugment as FixMatch uses it (Sohn et al. 2020, Sec. 2.3; Cubuk et al. 2020).

    Draws `num_ops` ops with replacement; each is applied with the variant's probability
    at a random level. Magnitudes are random per call, never a fixed global one.

    Args:
        variant: "official" (google-research/fixmatch, the default), "paper" (the paper's
            table) or "port" (the popular PyTorch port); see docs/PROTOCOL.md.
        num_ops: ops drawn per call (2 in the paper).

    Raises:
        ValueError: unknown variant or a negative `num_ops`.
    """

    variant: str = "official"
    num_ops: int = 2

    def __post_init__(self) -> None:
        _get_variant(self.variant)
        if self.num_ops < 0:
            raise ValueError(f"RandAugment num_ops must be >= 0, got {self.num_ops}")

    def sample(self, rng: np.random.Generator) -> tuple[OpDraw, ...]:
        """Draw which ops a call applies, at which levels.

        Args:
            rng: the source of every random choice.

        Returns:
            `num_ops` draws, in the order they apply.
        """
        spec = _VARIANTS[self.variant]
        # One vectorised draw of uniforms, turned into op, level and coin: numpy's scalar
        # (and sized integer) draws cost microseconds each, a visible share of a loader
        # worker's time per image.
        uniforms = rng.random((self.num_ops, 3)).tolist()
        draws = []
        for u_op, u_level, u_apply in uniforms:
            if spec.continuous_level:
                level = u_level * MAX_LEVEL
            else:
                level = float(1 + int(u_level * (MAX_LEVEL - 1)))  # uniform on 1..9
            draws.append(OpDraw(OP_NAMES[int(u_op * len(OP_NAMES))], level, u_apply < spec.apply_prob))
        return tuple(draws)

    def apply(self, img: Image.Image, draws: tuple[OpDraw, ...], rng: np.random.Generator) -> Image.Image:
        """Apply the applied ones of `draws` (from `sample`) in order; `rng` gives the signs."""
        for draw in draws:
            if draw.applied:
                img = apply_op(img, draw.name, draw.level, rng, self.variant)
        return img

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        """Augment `img` (mode "L" or "RGB") with ops drawn from `rng`; returns a new image."""
        return self.apply(img, self.sample(rng), rng)


def cutout(img: np.ndarray, size: int, rng: np.random.Generator, fill: int = 128) -> np.ndarray:
    """Fill a `size` x `size` square centred on a uniformly random pixel (DeVries & Taylor 2017).

    As in the official code, the centre may lie near an edge, so the square is clipped at
    the borders and can be smaller; FixMatch always applies it after RandAugment with
    half the image side (16 px at 32 px).

    Args:
        img: an (H, W) or (H, W, C) array.
        size: side of the square in pixels.
        rng: source of the centre.
        fill: value written into the square (mid-gray by default).

    Returns:
        A new array; `img` is left untouched.
    """
    height, width = img.shape[:2]
    u_y, u_x = rng.random(2).tolist()  # one draw: scalar draws cost microseconds each
    centre_y, centre_x = int(u_y * height), int(u_x * width)
    top, left = centre_y - size // 2, centre_x - size // 2
    out = img.copy()
    out[max(0, top):top + size, max(0, left):left + size] = fill
    return out
