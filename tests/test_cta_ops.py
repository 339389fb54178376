"""CTAugment's image ops: size and mode, neutral values, magnitudes, cutout, the strong view."""

import numpy as np
import pytest
from PIL import Image

from conftest import trained_ctaugment
from fixmatch.data.cta_ops import OP_NAMES, OPS, OpCall, apply_op, strong_view

BLEND_OPS = ("autocontrast", "blur", "equalize", "invert", "smooth")
ENHANCE_OPS = ("brightness", "color", "contrast", "sharpness")
CENTRED_OPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")


def _noise(side: int, mode: str, seed: int = 0) -> Image.Image:
    shape = (side, side) if mode == "L" else (side, side, 3)
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("name", OP_NAMES)
def test_every_op_keeps_size_and_mode(name, mode):
    img = _noise(32, mode)
    count = len(OPS[name].categories)
    for value in (0.0, 0.5, 1.0):
        out = apply_op(img, name, (value,) * count, np.random.default_rng(0))
        assert out.mode == mode and out.size == img.size
        assert np.asarray(out).dtype == np.uint8


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_ops_are_identity_at_their_neutral_value(mode):
    img = _noise(32, mode)
    rng = np.random.default_rng(0)
    neutral = {**{name: (0.0,) for name in BLEND_OPS}, **{name: (9 / 19,) for name in ENHANCE_OPS},
               **{name: (0.5,) for name in CENTRED_OPS},
               "posterize": (1.0,), "rescale": (0.0, 0.5), "identity": ()}
    for name, values in neutral.items():
        out = apply_op(img, name, values, rng)
        assert np.array_equal(np.asarray(out), np.asarray(img)), name


def test_op_magnitudes_at_their_ends():
    gray = _noise(32, "L")
    rng = np.random.default_rng(0)
    pixels = np.asarray(gray)
    assert np.array_equal(np.asarray(apply_op(gray, "solarize", (0.0,), rng)), 255 - pixels)
    assert set(np.unique(apply_op(gray, "posterize", (0.0,), rng))) <= {0, 128}
    assert np.array_equal(np.asarray(apply_op(gray, "invert", (1.0,), rng)), 255 - pixels)
    columns = Image.fromarray(np.tile(np.arange(1, 33, dtype=np.uint8), (32, 1)))
    shifted = np.asarray(apply_op(columns, "translate_x", (1.0,), rng))[0]
    # round(0.3 * 32) = 10 px to the left, black fill on the right.
    assert np.array_equal(shifted, np.r_[np.arange(11, 33), np.zeros(10)])
    rotated = apply_op(gray, "rotate", (1.0,), rng)
    assert np.array_equal(np.asarray(rotated), np.asarray(gray.rotate(45)))


def test_cutout_op_square_grows_with_the_value():
    img = Image.fromarray(np.zeros((32, 32, 3), np.uint8))
    for value, side in ((1.0, 16), (0.5, 8)):  # size 1 + int(v * 32 * 0.499): 16 and 8
        areas = [(np.asarray(apply_op(img, "cutout", (value,), np.random.default_rng(s)))[..., 0]
                  == 128).sum() for s in range(30)]
        assert max(areas) == side * side and min(areas) > 0


def test_apply_op_rejects_bad_calls():
    img = _noise(8, "RGB")
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown CTAugment op 'Rotate'"):
        apply_op(img, "Rotate", (0.5,), rng)
    with pytest.raises(ValueError, match="takes 2 values, got 1"):
        apply_op(img, "rescale", (0.5,), rng)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        apply_op(img, "rotate", (1.5,), rng)


@pytest.mark.parametrize("channels", [1, 3])
def test_strong_view_shape_dtype_and_cutout(channels):
    image = np.full((32, 32, channels), 7, np.uint8)
    identity = (OpCall("identity", ()), OpCall("identity", ()))
    out = strong_view(image, identity, np.random.default_rng(0))
    assert out.shape == image.shape and out.dtype == np.uint8
    rows, cols = np.nonzero(out[..., 0] == 128)
    # One axis-aligned square of side 16 clipped at the borders, everything else untouched.
    assert rows.size == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
    assert 8 <= np.ptp(rows) + 1 <= 16 and 8 <= np.ptp(cols) + 1 <= 16
    assert np.all((out == 7) | (out == 128))

    augment = trained_ctaugment()
    noise = np.random.default_rng(1).integers(0, 256, (32, 32, channels), dtype=np.uint8)
    policy = augment.sample_policy(np.random.default_rng(2), probe=False)
    views = [strong_view(noise, policy, np.random.default_rng(3)) for _ in range(2)]
    assert views[0].shape == noise.shape and np.array_equal(views[0], views[1])
    with pytest.raises(ValueError, match="uint8 \\(H, W, 1\\) or \\(H, W, 3\\)"):
        strong_view(noise.astype(np.float32), policy, np.random.default_rng(3))
