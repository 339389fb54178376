"""RandAugment as FixMatch uses it (Sohn et al. 2020, Sec. 2.3): the variants' magnitude per
level, the draw of ops and levels, and Cutout. The ops themselves are in `image_ops`.

Every random choice is drawn from an explicit `numpy.random.Generator`.
"""

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, NamedTuple

import numpy as np
from PIL import Image

from fixmatch.data.image_ops import OP_NAMES, OPS

# Geometric ops move content either way; the magnitude tables give only its size.
# Public: device_ops.py marks the signed ops of its magnitude table with it.
SIGNED_OPS = frozenset({"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"})
# Integer magnitudes move from the level-0 value in whole steps, truncating the rest:
# that is the floor in 256 - floor(25.6L) and 4 - floor(0.4L).
# Public: device_ops.py marks the integer ops of its magnitude table with it.
INTEGER_OPS = frozenset({"Solarize", "Posterize"})
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
class Variant:
    """One reading of FixMatch's RandAugment.

    `ranges[op] = (a, b)` gives the op's magnitude a + (b - a) * level / MAX_LEVEL (Rotate in
    degrees, Translate as a fraction of the side); ops absent from it take no magnitude.
    """

    apply_prob: float  # chance that each drawn op is applied at all
    continuous_level: bool  # level ~ U(0, 10) rather than U{1, ..., 9}
    fill: int  # gray level of the area that geometric ops expose
    ranges: Mapping[str, tuple[float, float]]


# Public: device_augment.py and device_ops.py take the same level draws, ranges and fills.
VARIANTS: Mapping[str, Variant] = MappingProxyType({
    # google-research/fixmatch, the protocol's default (docs/PROTOCOL.md table): rotate 3L deg,
    # shear 0.03L, translate L px per 32 px of side, solarize 256 - floor(25.6L),
    # factor 0.1 + 0.18L, posterize 4 - floor(0.4L) bits; mid-gray fill.
    "official": Variant(
        apply_prob=0.5, continuous_level=False, fill=128,
        ranges=_ranges(enhance=(0.1, 1.9), posterize_bits=(4, 0), translate=(0.0, 10 / 32)),
    ),
    # The paper's table: both ops always applied, magnitudes from continuous ranges
    # (factors 0.05-0.95, 4-8 bits, +-30 deg, +-0.3 shear, +-30 % translate, threshold 0-256).
    # The paper names no fill colour; mid-gray as in the official code.
    "paper": Variant(
        apply_prob=1.0, continuous_level=True, fill=128,
        ranges=_ranges(enhance=(0.05, 0.95), posterize_bits=(4, 9), translate=(0.0, 0.3)),
    ),
    # The popular PyTorch port: factors 0.05 + 0.09L (darkening only), posterize 4..7 bits,
    # translate 3L % of the side, black fill.
    "port": Variant(
        apply_prob=0.5, continuous_level=False, fill=0,
        ranges=_ranges(enhance=(0.05, 0.95), posterize_bits=(4, 8), translate=(0.0, 0.3)),
    ),
})
RANDAUGMENT_VARIANTS = tuple(VARIANTS)


def get_variant(name: str) -> Variant:
    """The settings of variant `name` (public: the device views look theirs up with it).

    Args:
        name: a name from `RANDAUGMENT_VARIANTS`.

    Returns:
        The variant's apply probability, level distribution, fill and magnitude ranges.

    Raises:
        ValueError: an unknown variant.
    """
    if name not in VARIANTS:
        raise ValueError(
            f"unknown RandAugment variant {name!r}; expected one of: {', '.join(VARIANTS)}"
        )
    return VARIANTS[name]


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
    spec = get_variant(variant)
    if name not in OPS:
        raise ValueError(f"unknown RandAugment op {name!r}; expected one of: {', '.join(OPS)}")
    if not 0 <= level <= MAX_LEVEL:
        raise ValueError(f"RandAugment level must lie in [0, {MAX_LEVEL}], got {level}")
    start, end = spec.ranges.get(name, (0.0, 0.0))
    # Multiply before dividing so that official integer levels give exact table values.
    offset = (end - start) * level / MAX_LEVEL
    if name in INTEGER_OPS:
        offset = math.trunc(offset)
    magnitude = start + offset
    if name in SIGNED_OPS and rng.random() < 0.5:
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
    return OPS[name](img, magnitude, VARIANTS[variant].fill)


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
        get_variant(self.variant)
        if self.num_ops < 0:
            raise ValueError(f"RandAugment num_ops must be >= 0, got {self.num_ops}")

    def sample(self, rng: np.random.Generator) -> tuple[OpDraw, ...]:
        """Draw which ops a call applies, at which levels.

        Args:
            rng: the source of every random choice.

        Returns:
            `num_ops` draws, in the order they apply.
        """
        spec = VARIANTS[self.variant]
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
        """Apply the applied ones of `draws` (from `sample`) in order; `rng` gives the signs.

        Args:
            img: the image, mode "L" or "RGB".
            draws: the ops, levels and coins from `sample`, in the order they apply.
            rng: source of the random sign of geometric ops.

        Returns:
            The augmented image, same size and mode; `img` itself when no draw is applied.
        """
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
