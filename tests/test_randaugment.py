"""RandAugment ops, magnitudes (docs/PROTOCOL.md table), sampling, variants and Cutout."""

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from fixmatch.data.image_ops import OP_NAMES, contrast, posterize, rotate, solarize
from fixmatch.data.randaugment import (
    RANDAUGMENT_VARIANTS, RandAugment, apply_op, cutout, op_magnitude,
)

# docs/PROTOCOL.md, official code, level L = 1..9, written out by hand.
SOLARIZE_THRESHOLD = {1: 231, 2: 205, 3: 180, 4: 154, 5: 128, 6: 103, 7: 77, 8: 52, 9: 26}
POSTERIZE_BITS = {1: 4, 2: 4, 3: 3, 4: 3, 5: 2, 6: 2, 7: 2, 8: 1, 9: 1}
LEVELS = range(1, 10)


def _noise(side: int, mode: str, seed: int = 0) -> Image.Image:
    shape = (side, side) if mode == "L" else (side, side, 3)
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


def _gradient() -> Image.Image:
    """A 16 x 16 grayscale image holding every value 0..255 once."""
    return Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16))


def _column_index(side: int) -> Image.Image:
    """Pixel value = column index (never the fill value 128 for side <= 128)."""
    return Image.fromarray(np.tile(np.arange(side, dtype=np.uint8), (side, 1)))


def _horizontal_shift(out: Image.Image, fill: int = 128) -> int:
    """Signed shift s with out[x] = in[x + s] for an image made by `_column_index`."""
    row = np.asarray(out)[0].astype(int)
    kept = row != fill
    shifts = set(row[kept] - np.arange(row.size)[kept])
    assert len(shifts) == 1, "the translated row is not a shifted copy"
    shift = shifts.pop()
    assert (~kept).sum() == abs(shift), "exposed columns are not filled"
    return shift


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("side", [8, 32, 96])
@pytest.mark.parametrize("name", OP_NAMES)
def test_every_op_keeps_size_mode_and_dtype(name, side, mode):
    img = _noise(side, mode)
    rng = np.random.default_rng(0)
    for variant in RANDAUGMENT_VARIANTS:
        for level in (1, 9):
            out = apply_op(img, name, level, rng, variant)
            assert out.mode == mode and out.size == img.size
            assert np.asarray(out).dtype == np.uint8


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_identity_is_exact_and_color_is_a_no_op_on_grayscale(mode):
    img = _noise(32, mode)
    rng = np.random.default_rng(0)
    assert np.array_equal(np.asarray(apply_op(img, "Identity", 9, rng)), np.asarray(img))
    gray = _noise(32, "L")
    assert np.array_equal(np.asarray(apply_op(gray, "Color", 1, rng)), np.asarray(gray))


@pytest.mark.parametrize("level", LEVELS)
def test_solarize_inverts_from_the_official_threshold(level):
    values = np.asarray(_gradient())
    out = np.asarray(apply_op(_gradient(), "Solarize", level, np.random.default_rng(0)))
    threshold = SOLARIZE_THRESHOLD[level]
    assert np.array_equal(out[values < threshold], values[values < threshold])
    assert np.array_equal(out[values >= threshold], 255 - values[values >= threshold])


@pytest.mark.parametrize("level", LEVELS)
def test_posterize_keeps_the_official_number_of_bits(level):
    out = np.asarray(apply_op(_gradient(), "Posterize", level, np.random.default_rng(0)))
    bits = POSTERIZE_BITS[level]
    assert len(np.unique(out)) == 2**bits
    assert np.all(out % 2 ** (8 - bits) == 0)


@pytest.mark.parametrize(("variant", "factor"), [
    ("official", lambda level: 0.1 + 0.18 * level),
    ("port", lambda level: 0.05 + 0.09 * level),
])
def test_brightness_factor_per_level(variant, factor):
    img = Image.fromarray(np.full((8, 8, 3), 100, dtype=np.uint8))
    for level in LEVELS:
        out = np.asarray(apply_op(img, "Brightness", level, np.random.default_rng(0), variant))
        assert np.all(np.abs(out.astype(float) - 100 * factor(level)) < 1.01)


@pytest.mark.parametrize(("side", "pixels_per_level"), [(32, 1), (64, 2), (96, 3)])
def test_translate_moves_level_pixels_per_32_px_of_side(side, pixels_per_level):
    for level in LEVELS:
        shifts = {
            _horizontal_shift(apply_op(_column_index(side), "TranslateX", level,
                                       np.random.default_rng(seed)))
            for seed in range(12)
        }
        assert shifts == {level * pixels_per_level, -level * pixels_per_level}


def test_translate_y_moves_rows():
    img = _column_index(32).transpose(Image.Transpose.TRANSPOSE)
    out = apply_op(img, "TranslateY", 9, np.random.default_rng(0))
    assert abs(_horizontal_shift(out.transpose(Image.Transpose.TRANSPOSE))) == 9


def test_rotate_takes_both_signs_at_the_official_angle():
    img = _noise(32, "RGB")
    expected = {+1: np.asarray(rotate(img, 27.0)), -1: np.asarray(rotate(img, -27.0))}
    seen = set()
    for seed in range(20):
        out = np.asarray(apply_op(img, "Rotate", 9, np.random.default_rng(seed)))
        matches = [sign for sign, target in expected.items() if np.array_equal(out, target)]
        assert len(matches) == 1
        seen.update(matches)
    assert seen == {+1, -1}


@pytest.mark.parametrize(("name", "per_level"), [
    ("Rotate", 3.0), ("ShearX", 0.03), ("ShearY", 0.03), ("TranslateX", 1 / 32),
])
def test_official_geometric_magnitudes_are_signed(name, per_level):
    for level in LEVELS:
        values = {op_magnitude(name, level, np.random.default_rng(seed)) for seed in range(16)}
        assert sorted(values) == pytest.approx([-per_level * level, per_level * level])


def test_paper_variant_draws_continuous_levels_and_always_applies():
    augment = RandAugment("paper")
    draws = [d for seed in range(200) for d in augment.sample(np.random.default_rng(seed))]
    assert all(d.applied for d in draws)
    assert len({d.level for d in draws}) == len(draws)  # continuous: no repeated level
    rng = np.random.default_rng(0)
    bits = {op_magnitude("Posterize", d.level, rng, "paper") for d in draws}
    assert bits == {4, 5, 6, 7, 8}


def test_port_variant_fills_black_and_keeps_more_bits():
    out = apply_op(_column_index(32), "TranslateX", 9, np.random.default_rng(0), "port")
    assert abs(_horizontal_shift(out, fill=0)) == 8  # int(0.27 * 32)
    posterized = np.asarray(apply_op(_gradient(), "Posterize", 9, np.random.default_rng(0), "port"))
    assert len(np.unique(posterized)) == 2**7


def test_same_seed_gives_the_same_augmentation():
    img = _noise(32, "RGB")
    augment = RandAugment()
    outputs = [np.asarray(augment(img, np.random.default_rng(seed))) for seed in (7, 7, 8)]
    assert np.array_equal(outputs[0], outputs[1])
    assert not all(
        np.array_equal(np.asarray(augment(img, np.random.default_rng(s))), outputs[0])
        for s in range(8, 18)
    )


def test_each_op_is_applied_with_probability_one_half():
    draws = [RandAugment().sample(np.random.default_rng(seed)) for seed in range(4000)]
    none_applied = np.mean([not any(d.applied for d in pair) for pair in draws])
    assert abs(none_applied - 0.25) < 0.03
    assert {d.level for pair in draws for d in pair} == set(map(float, LEVELS))


def test_about_a_quarter_of_calls_leave_the_image_unchanged():
    img = Image.fromarray(
        np.random.default_rng(0).integers(40, 200, (32, 32, 3), dtype=np.uint8)
    )
    augment = RandAugment()
    unchanged = np.mean([
        np.array_equal(np.asarray(augment(img, np.random.default_rng(seed))), np.asarray(img))
        for seed in range(1000)
    ])
    # 0.25 from the coin flips, plus applied ops that change nothing on this image
    # (Identity, factor 1.0 at level 5, Solarize thresholds above 200): about 0.31.
    assert 0.25 < unchanged < 0.38


def test_ops_are_drawn_with_replacement():
    draws = [RandAugment().sample(np.random.default_rng(seed)) for seed in range(3000)]
    repeated = np.mean([first.name == second.name for first, second in draws])
    assert abs(repeated - 1 / len(OP_NAMES)) < 0.025
    assert {d.name for pair in draws for d in pair} == set(OP_NAMES)


def test_grayscale_images_go_through_randaugment():
    out = RandAugment("paper", num_ops=4)(_noise(8, "L"), np.random.default_rng(0))
    assert out.mode == "L" and out.size == (8, 8)


def test_unknown_variant_names_the_valid_ones():
    with pytest.raises(ValueError, match="official, paper, port") as error:
        RandAugment("offical")
    assert "\n" not in str(error.value)


def test_cutout_square_is_half_the_side_when_inside_and_clipped_at_borders():
    img = np.zeros((32, 32, 3), dtype=np.uint8)
    interior = clipped = 0
    widths = set()
    for seed in range(200):
        out = cutout(img, 16, np.random.default_rng(seed))
        filled = np.all(out == 128, axis=2)
        assert np.all((out == 128) | (out == 0)) and np.all(filled == np.any(out == 128, axis=2))
        rows, cols = np.flatnonzero(filled.any(axis=1)), np.flatnonzero(filled.any(axis=0))
        assert filled.sum() == len(rows) * len(cols)  # a solid rectangle
        # The centre is a pixel of the image, so at least half the square stays on each axis.
        assert 8 <= len(rows) <= 16 and 8 <= len(cols) <= 16
        widths.add(len(cols))
        at_border = rows[0] == 0 or cols[0] == 0 or rows[-1] == 31 or cols[-1] == 31
        full = len(rows) == len(cols) == 16
        assert full or at_border  # only the borders make the square smaller
        interior += full
        clipped += not full
    assert interior > 20 and clipped > 20
    assert widths == set(range(8, 17))
    assert np.all(img == 0)  # the input is left untouched


def test_cutout_uses_the_fill_value_on_grayscale():
    out = cutout(np.zeros((8, 8, 1), dtype=np.uint8), 4, np.random.default_rng(3), fill=77)
    assert out.shape == (8, 8, 1) and set(np.unique(out)) <= {0, 77} and (out == 77).any()


def _test_images():
    """Noise, a narrow-range image, a constant one, a gradient: in RGB and in L."""
    rng = np.random.default_rng(5)
    arrays = [
        rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        rng.integers(90, 140, (32, 32, 3), dtype=np.uint8),
        np.full((32, 32, 3), 77, dtype=np.uint8),
        np.stack([np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))] * 3, axis=2),
    ]
    return [Image.fromarray(a) for a in arrays] + [Image.fromarray(a[:, :, 0]) for a in arrays]


@pytest.mark.parametrize(("ours", "reference"), [
    (lambda img, m: apply_op(img, "AutoContrast", 5, np.random.default_rng(0)),
     lambda img, m: ImageOps.autocontrast(img)),
    (lambda img, m: apply_op(img, "Equalize", 5, np.random.default_rng(0)),
     lambda img, m: ImageOps.equalize(img)),
    (solarize, lambda img, m: ImageOps.solarize(img, m)),
    (posterize, lambda img, m: ImageOps.posterize(img, m)),
    (contrast, lambda img, m: ImageEnhance.Contrast(img).enhance(m)),
], ids=["autocontrast", "equalize", "solarize", "posterize", "contrast"])
def test_numpy_table_ops_give_exactly_the_pil_pixels(ours, reference):
    magnitudes = {solarize: (0, 26, 128, 231, 256), posterize: (1, 2, 4, 7, 8),
                  contrast: (0.28, 0.9, 1.72)}.get(ours, (0,))
    for img in _test_images():
        for magnitude in magnitudes:
            assert np.array_equal(np.asarray(ours(img, magnitude)),
                                  np.asarray(reference(img, magnitude)))


# docs/PROTOCOL.md's table: |magnitude| at levels 1 and 9 for every op of every variant.
MAGNITUDES_AT_1_AND_9 = {
    "official": {"Rotate": (3, 27), "ShearX": (0.03, 0.27), "ShearY": (0.03, 0.27),
                 "TranslateX": (1 / 32, 9 / 32), "TranslateY": (1 / 32, 9 / 32),
                 "Solarize": (231, 26), "Posterize": (4, 1), "Color": (0.28, 1.72),
                 "Contrast": (0.28, 1.72), "Brightness": (0.28, 1.72), "Sharpness": (0.28, 1.72)},
    "paper": {"Rotate": (3, 27), "ShearX": (0.03, 0.27), "ShearY": (0.03, 0.27),
              "TranslateX": (0.03, 0.27), "TranslateY": (0.03, 0.27), "Solarize": (231, 26),
              "Posterize": (4, 8), "Color": (0.14, 0.86), "Contrast": (0.14, 0.86),
              "Brightness": (0.14, 0.86), "Sharpness": (0.14, 0.86)},
    "port": {"Rotate": (3, 27), "ShearX": (0.03, 0.27), "ShearY": (0.03, 0.27),
             "TranslateX": (0.03, 0.27), "TranslateY": (0.03, 0.27), "Solarize": (231, 26),
             "Posterize": (4, 7), "Color": (0.14, 0.86), "Contrast": (0.14, 0.86),
             "Brightness": (0.14, 0.86), "Sharpness": (0.14, 0.86)},
}


@pytest.mark.parametrize("variant", RANDAUGMENT_VARIANTS)
@pytest.mark.parametrize("name", OP_NAMES)
def test_every_op_magnitude_at_levels_1_and_9(variant, name):
    expected = MAGNITUDES_AT_1_AND_9[variant].get(name, (0.0, 0.0))
    for level, value in zip((1, 9), expected):
        magnitudes = [abs(op_magnitude(name, level, np.random.default_rng(seed), variant))
                      for seed in range(8)]
        assert magnitudes == pytest.approx([value] * 8), (variant, name, level)
