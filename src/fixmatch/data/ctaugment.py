"""CTAugment (Berthelot et al. 2020, ReMixMatch Sec. 3.2.2), the default strong augmentation of
FixMatch's official code: ops on PIL images, per-bin rates learned from labeled probes, policies.

Facts marked "official" come from google-research/fixmatch, libml/ctaugment.py and
cta/lib/train.py. Every random choice is drawn from an explicit `numpy.random.Generator`.
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
    """Brightness factor 0.1 + 1.9 * `level`."""
    return _enhance(img, ImageEnhance.Brightness, level)


def color(img: Image.Image, level: float, *, rng: np.random.Generator | None = None) -> Image.Image:
    """Saturation factor 0.1 + 1.9 * `level` (no effect on "L" images)."""
    return _enhance(img, ImageEnhance.Color, level)


def contrast(img: Image.Image, level: float, *,
             rng: np.random.Generator | None = None) -> Image.Image:
    """Contrast factor 0.1 + 1.9 * `level`."""
    return _enhance(img, ImageEnhance.Contrast, level)


def cutout(img: Image.Image, level: float, *, rng: np.random.Generator) -> Image.Image:
    """Fill a square around a uniformly random pixel with mid-gray; size grows with `level`.

    Official: size 1 + int(level * min(side) * 0.499), and the square spans size // 2 pixels
    either side of the centre (so an odd size covers one pixel less), clipped at the borders.
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
    """Keep 1 + int(7.999 * `level`) bits (1 .. 8) of every pixel value."""
    return ImageOps.posterize(img, 1 + int(level * 7.999))


# Official order; the method parameter picks one by int(5.99 * method).
_RESCALE_FILTERS = (Image.Resampling.LANCZOS, Image.Resampling.BICUBIC, Image.Resampling.BILINEAR,
                    Image.Resampling.BOX, Image.Resampling.HAMMING, Image.Resampling.NEAREST)


def rescale(img: Image.Image, scale: float, method: float, *,
            rng: np.random.Generator | None = None) -> Image.Image:
    """Crop 0.25 * `scale` of each side away, resize back with the filter that `method` picks."""
    width, height = img.size
    margin = 0.25 * scale
    box = (margin * width, margin * height, (1 - margin) * width, (1 - margin) * height)
    return img.crop(box).resize(img.size, _RESCALE_FILTERS[int(method * 5.99)])


def rotate(img: Image.Image, level: float, *,
           rng: np.random.Generator | None = None) -> Image.Image:
    """Rotate counter-clockwise by round((2 * `level` - 1) * 45) degrees (-45 .. 45)."""
    angle = round((2 * level - 1) * 45)
    return img.rotate(angle, Image.Resampling.NEAREST, fillcolor=_GEOMETRIC_FILL)


def sharpness(img: Image.Image, level: float, *,
              rng: np.random.Generator | None = None) -> Image.Image:
    """Sharpness factor 0.1 + 1.9 * `level`."""
    return _enhance(img, ImageEnhance.Sharpness, level)


def shear_x(img: Image.Image, level: float, *,
            rng: np.random.Generator | None = None) -> Image.Image:
    """Shear horizontally about the top-left corner by (2 * `level` - 1) * 0.3."""
    return _affine(img, (1, (2 * level - 1) * 0.3, 0, 0, 1, 0))


def shear_y(img: Image.Image, level: float, *,
            rng: np.random.Generator | None = None) -> Image.Image:
    """Shear vertically about the top-left corner by (2 * `level` - 1) * 0.3."""
    return _affine(img, (1, 0, 0, (2 * level - 1) * 0.3, 1, 0))


def smooth(img: Image.Image, level: float, *,
           rng: np.random.Generator | None = None) -> Image.Image:
    """Blend with PIL's SMOOTH filter output by `level`."""
    return _blend(img, img.filter(ImageFilter.SMOOTH), level)


def solarize(img: Image.Image, level: float, *,
             rng: np.random.Generator | None = None) -> Image.Image:
    """Invert every pixel value >= int(255.999 * `level`) (level 0 inverts all)."""
    return ImageOps.solarize(img, int(level * 255.999))


# The official code passes (2 * level - 1) * 0.3 to the affine transform as *pixels*, a shift
# that nearest-neighbour sampling rounds to zero: its translate ops change nothing. This reads
# it as the ReMixMatch paper describes it, a fraction of the side (+-30 %), rounded to pixels.
def translate_x(img: Image.Image, level: float, *,
                rng: np.random.Generator | None = None) -> Image.Image:
    """Shift left by round((2 * `level` - 1) * 0.3 * width) pixels (negative shifts right)."""
    return _affine(img, (1, 0, round((2 * level - 1) * 0.3 * img.width), 0, 1, 0))


def translate_y(img: Image.Image, level: float, *,
                rng: np.random.Generator | None = None) -> Image.Image:
    """Shift up by round((2 * `level` - 1) * 0.3 * height) pixels (negative shifts down)."""
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
    """Apply the ops of `policy` in order to `img` (mode "L" or "RGB"); returns a new image."""
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
        ValueError: `image` is not a uint8 (H, W, 1) or (H, W, 3) array.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"strong_view expects a uint8 (H, W, 1) or (H, W, 3) array, "
                         f"got {image.dtype} {image.shape}")
    channels = image.shape[2]
    img = apply_policy(Image.fromarray(image[:, :, 0] if channels == 1 else image), policy, rng)
    out = np.asarray(img).reshape(image.shape)
    side = round(cutout_fraction * min(image.shape[:2]))
    return cutout_array(out, side, rng, fill=128)


def encode_policies(policies: Sequence[Policy]) -> np.ndarray:
    """Pack policies of equal depth into a float64 (N, depth, 1 + MAX_PARAMETERS) array.

    Entry [..., 0] is the op's index in `OP_NAMES`, then its values, NaN where it has fewer
    parameters. Floats keep the values exact, so `decode_policies` returns equal policies.

    Raises:
        ValueError: the policies do not all have the same depth.
    """
    depths = {len(policy) for policy in policies}
    if len(depths) > 1:
        raise ValueError(f"encode_policies needs policies of one depth, "
                         f"got depths {sorted(depths)}")
    depth = depths.pop() if depths else 0
    encoded = np.full((len(policies), depth, 1 + MAX_PARAMETERS), np.nan)
    for row, policy in enumerate(policies):
        for column, (name, values) in enumerate(policy):
            encoded[row, column, 0] = OP_NAMES.index(name)
            encoded[row, column, 1:1 + len(values)] = values
    return encoded


def decode_policies(encoded: np.ndarray) -> list[Policy]:
    """Unpack the array of `encode_policies` into policies."""
    policies = []
    for row in np.asarray(encoded, dtype=np.float64):
        policy = []
        for op_row in row:
            name = OP_NAMES[int(op_row[0])]
            count = len(OPS[name].categories)
            policy.append(OpCall(name, tuple(float(v) for v in op_row[1:1 + count])))
        policies.append(tuple(policy))
    return policies


class CTAugment:
    """Control Theory Augment: per-bin rates of magnitude that track how well the model still
    classifies augmented labeled probes (Berthelot et al. 2020, Sec. 3.2.2).

    Args:
        depth: ops per policy (official 2).
        threshold: bins whose normalised weight falls below it are never drawn (official
            FixMatch flag `ath` = 0.80; the class default of the official code is 0.85).
        decay: rate update `rate = decay * rate + (1 - decay) * proximity` (official 0.99).
        num_bins: bins of each continuous parameter (official 17).

    Attributes:
        rates: per op name, one float array per parameter, one entry per bin; all start at 1.

    Raises:
        ValueError: a setting outside its range.
    """

    def __init__(self, depth: int = 2, threshold: float = 0.8, decay: float = 0.99,
                 num_bins: int = 17) -> None:
        if depth < 1 or num_bins < 1:
            raise ValueError(f"CTAugment depth and num_bins must be >= 1, got {depth}, {num_bins}")
        if not 0.0 < threshold <= 1.0 or not 0.0 < decay < 1.0:
            raise ValueError(f"CTAugment needs 0 < threshold <= 1 and 0 < decay < 1, "
                             f"got threshold={threshold}, decay={decay}")
        self.depth, self.threshold, self.decay, self.num_bins = depth, threshold, decay, num_bins
        self.rates: dict[str, list[np.ndarray]] = {
            name: [np.ones(num_bins if bins is None else bins) for bins in spec.categories]
            for name, spec in OPS.items()
        }

    def probabilities(self, rate: np.ndarray) -> np.ndarray:
        """Sampling weights of one parameter's bins (official `rate_to_p`).

        Returns:
            (rate + 1 - decay) / max, with entries below `threshold` set to 0: the best bin has
            weight 1; sampling divides by the sum.
        """
        # The 1 - decay offset keeps the weights defined when every rate has decayed to 0.
        weights = np.asarray(rate, dtype=np.float64) + (1.0 - self.decay)
        weights = weights / weights.max()
        weights[weights < self.threshold] = 0.0
        return weights

    def sample_values(self, name: str, rng: np.random.Generator) -> tuple[float, ...]:
        """Training values of op `name`: per parameter a bin drawn by weight, uniform within it."""
        values = []
        for rate in self.rates[name]:
            weights = self.probabilities(rate)
            cumulative = np.cumsum(weights)
            drawn = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
            if drawn == len(rate):  # the draw rounded up to the total: take the last allowed bin
                drawn = int(np.flatnonzero(weights)[-1])
            values.append((drawn + rng.random()) / len(rate))
        return tuple(values)

    def sample_policy(self, rng: np.random.Generator, probe: bool) -> Policy:
        """Draw `depth` ops uniformly (with replacement) and their values.

        Args:
            rng: the source of every random choice.
            probe: official probe policy (values uniform in [0, 1], the rates ignored), used on
                labeled images to update the rates; otherwise a training policy.

        Returns:
            A tuple of `OpCall`s, in the order they apply.
        """
        policy = []
        for _ in range(self.depth):
            name = OP_NAMES[int(rng.integers(len(OP_NAMES)))]
            if probe:
                values = tuple(float(v) for v in rng.random(len(OPS[name].categories)))
            else:
                values = self.sample_values(name, rng)
            policy.append(OpCall(name, values))
        return tuple(policy)

    def apply(self, image: Image.Image, policy: Policy, rng: np.random.Generator) -> Image.Image:
        """Apply `policy` to `image` (see `apply_policy`)."""
        return apply_policy(image, policy, rng)

    def update(self, policy: Policy, proximity: float) -> None:
        """Move the rate of every bin that `policy` used towards `proximity` (official rule).

        An op drawn twice is updated twice. The bin is int(value * bins * 0.999), as in the
        official code: a value just above a bin's lower edge counts for the bin below.
        """
        for name, values in policy:
            for value, rate in zip(values, self.rates[name]):
                index = int(value * len(rate) * 0.999)
                rate[index] = rate[index] * self.decay + proximity * (1.0 - self.decay)

    def update_many(self, policies: Sequence[Policy], proximities: Sequence[float]) -> None:
        """`update` with each policy and its proximity, in order."""
        if len(policies) != len(proximities):
            raise ValueError(f"update_many got {len(policies)} policies and "
                             f"{len(proximities)} proximities")
        for policy, proximity in zip(policies, proximities):
            self.update(policy, float(proximity))

    @staticmethod
    def proximity(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Official probe score 1 - 0.5 * ||probs - onehot(label)||_1, in [0, 1] per row.

        Args:
            probs: (N, K) class probabilities of the probe images (official: the EMA model).
            labels: (N,) integer labels.

        Returns:
            A float64 (N,) array; 1 is a confident correct prediction.
        """
        probs = np.asarray(probs, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.int64)
        if probs.ndim != 2 or labels.shape != probs.shape[:1]:
            raise ValueError(f"proximity needs (N, K) probs and (N,) labels, "
                             f"got {probs.shape} and {labels.shape}")
        error = np.abs(probs - np.eye(probs.shape[1])[labels]).sum(axis=1)
        return 1.0 - 0.5 * error

    def flat_rates(self) -> np.ndarray:
        """All rates as float32 (total_bins,): ops in `OP_NAMES` order, then parameters, bins.

        Float32 is for sharing with loader workers, which only sample; `state_dict` is exact.
        """
        return np.concatenate([rate for name in OP_NAMES for rate in self.rates[name]],
                              dtype=np.float32)

    def set_flat_rates(self, flat: np.ndarray) -> None:
        """Overwrite all rates from the array of `flat_rates` (e.g. sent to loader workers)."""
        flat = np.asarray(flat)
        total = sum(rate.size for rates in self.rates.values() for rate in rates)
        if flat.shape != (total,):
            raise ValueError(f"set_flat_rates needs shape ({total},), got {flat.shape}")
        start = 0
        for name in OP_NAMES:
            for rate in self.rates[name]:
                rate[:] = flat[start:start + rate.size]
                start += rate.size

    def op_weights(self) -> dict[str, float]:
        """Per op, the mean of `probabilities` over its bins (1 when every bin is drawn equally;
        1 for identity, which has none): a summary for TensorBoard."""
        return {
            name: float(np.mean([w for rate in rates for w in self.probabilities(rate)]))
            if rates else 1.0
            for name, rates in self.rates.items()
        }

    def state_dict(self) -> dict[str, dict[str, list[list[float]]]]:
        """The rates as plain lists, loadable by `torch.load(weights_only=True)`."""
        return {"rates": {name: [rate.tolist() for rate in rates]
                          for name, rates in self.rates.items()}}

    def load_state_dict(self, state: Mapping[str, Mapping[str, Sequence[Sequence[float]]]]) -> None:
        """Restore the rates of `state_dict`.

        Raises:
            ValueError: the state's ops or bins differ from this augmenter's.
        """
        saved = state.get("rates") if isinstance(state, Mapping) else None
        if not isinstance(saved, Mapping) or set(saved) != set(self.rates):
            found = sorted(saved) if isinstance(saved, Mapping) else "no 'rates' mapping"
            raise ValueError(f"CTAugment state does not match: expected rates of ops "
                             f"{sorted(self.rates)}, found {found}")
        for name, rates in self.rates.items():
            shapes = [len(rate) for rate in rates]
            saved_shapes = [len(rate) for rate in saved[name]]
            if saved_shapes != shapes:
                raise ValueError(f"CTAugment state does not match: op {name!r} has bins "
                                 f"{saved_shapes} in the state, {shapes} here "
                                 f"(was it saved with another num_bins?)")
        for name, rates in self.rates.items():
            for rate, values in zip(rates, saved[name]):
                rate[:] = values
