"""RandAugment's 14 image ops on PIL images (Cubuk et al. 2020, as FixMatch uses them), each
taking its magnitude in its own unit and the gray level that geometric ops expose.

Which magnitude an op gets at a level, and which ops a call draws, is `randaugment`'s concern.

Every op takes an "L" or "RGB" image, its magnitude (ignored by ops that have none) and the
gray level that geometric ops fill exposed areas with (ignored by the others), and returns a
new image of the same size and mode; each op's docstring says what its magnitude means.
"""

from types import MappingProxyType
from typing import Callable, Mapping

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
    """Rotate counter-clockwise by `magnitude` degrees about the centre.

    Args:
        magnitude: the angle in degrees; negative rotates clockwise.
    """
    return img.rotate(magnitude, Image.Resampling.NEAREST, fillcolor=_fill_color(img, fill))


def shear_x(img: Image.Image, magnitude: float, fill: int = 128) -> Image.Image:
    """Shear horizontally about the top-left corner: row y moves by `magnitude * y` pixels.

    Args:
        magnitude: the shear factor; positive moves lower rows left.
    """
    return _affine(img, (1, magnitude, 0, 0, 1, 0), fill)


def shear_y(img: Image.Image, magnitude: float, fill: int = 128) -> Image.Image:
    """Shear vertically about the top-left corner: column x moves by `magnitude * x` pixels.

    Args:
        magnitude: the shear factor; positive moves right-hand columns up.
    """
    return _affine(img, (1, 0, 0, magnitude, 1, 0), fill)


def translate_x(img: Image.Image, magnitude: float, fill: int = 128) -> Image.Image:
    """Shift left by `magnitude` times the width, in whole pixels (negative shifts right).

    The shift is truncated to whole pixels, as in the PyTorch port; for the official
    magnitudes (L pixels per 32 px of side) it is exact whenever the side is a multiple of 32.

    Args:
        magnitude: the shift as a fraction of the width, truncated to whole pixels.
    """
    return _affine(img, (1, 0, int(magnitude * img.width), 0, 1, 0), fill)


def translate_y(img: Image.Image, magnitude: float, fill: int = 128) -> Image.Image:
    """Shift up by `magnitude` times the height, in whole pixels (negative shifts down).

    Args:
        magnitude: the shift as a fraction of the height, truncated to whole pixels.
    """
    return _affine(img, (1, 0, 0, 0, 1, int(magnitude * img.height)), fill)


def solarize(img: Image.Image, magnitude: float, fill: int = 128) -> Image.Image:
    """Invert every pixel value >= `magnitude` (the threshold; 256 leaves the image as is).

    Args:
        magnitude: the threshold, 0 .. 256 (its integer part is used).
    """
    lut = np.where(_VALUES < int(magnitude), _VALUES, 255 - _VALUES)
    return _apply_luts(img, np.tile(lut, (len(img.getbands()), 1)))


def posterize(img: Image.Image, magnitude: float, fill: int = 128) -> Image.Image:
    """Keep the `magnitude` most significant bits of every pixel value.

    Args:
        magnitude: bits to keep, 0 (black) .. 8 (its integer part is used; more keeps 8).
    """
    bits = min(int(magnitude), 8)  # the "paper" variant reaches 9 bits at level 10: unchanged
    lut = _VALUES & ~(2 ** (8 - bits) - 1)
    return _apply_luts(img, np.tile(lut, (len(img.getbands()), 1)))


def color(img: Image.Image, magnitude: float, fill: int = 128) -> Image.Image:
    """Blend with the grayscale image by factor `magnitude` (1 = unchanged); no-op on "L".

    Args:
        magnitude: the blend factor: 0 gives grayscale, 1 the image, > 1 more saturation.
    """
    if img.mode == "L":
        return img.copy()
    return ImageEnhance.Color(img).enhance(magnitude)


def contrast(img: Image.Image, magnitude: float, fill: int = 128) -> Image.Image:
    """Blend with the mean gray by factor `magnitude` (1 = unchanged).

    The gray is PIL's (ImageEnhance.Contrast): the rounded mean of the grayscale image.

    Args:
        magnitude: the blend factor: 0 gives the uniform mean gray, 1 the image.
    """
    histogram = np.asarray(img.convert("L").histogram(), dtype=np.int64)
    mean_gray = int(histogram @ _VALUES / histogram.sum() + 0.5)
    return Image.blend(Image.new(img.mode, img.size, _fill_color(img, mean_gray)), img, magnitude)


def brightness(img: Image.Image, magnitude: float, fill: int = 128) -> Image.Image:
    """Blend with black by factor `magnitude` (1 = unchanged, 2 = twice as bright).

    Args:
        magnitude: the blend factor: 0 gives black, 1 the image.
    """
    return ImageEnhance.Brightness(img).enhance(magnitude)


def sharpness(img: Image.Image, magnitude: float, fill: int = 128) -> Image.Image:
    """Blend with a smoothed copy by factor `magnitude` (1 = unchanged, > 1 sharpens).

    Args:
        magnitude: the blend factor: 0 gives PIL's SMOOTH-filtered copy, 1 the image.
    """
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
