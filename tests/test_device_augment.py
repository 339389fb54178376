"""Batched device views (fixmatch.data.device_augment) against the CPU path they mirror."""

import numpy as np
import pytest
import torch
from PIL import Image

from fixmatch.data.device_augment import DeviceAugment, cutout_view, draw_cutout_centres
from fixmatch.data.device_ops import apply_ops, magnitude_table, ops_view
from fixmatch.data.image_ops import OP_NAMES
from fixmatch.data.randaugment import (
    RANDAUGMENT_VARIANTS, RandAugment, apply_op, cutout, op_magnitude,
)
from fixmatch.data.transforms import weak_augment

GEOMETRIC_OPS = {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"}


def _to_tensor(arrays: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) uint8 array -> (N, C, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(arrays.transpose(0, 3, 1, 2)))


def _pil(array: np.ndarray) -> Image.Image:
    """A PIL image ("L" or "RGB") of an (H, W, C) array, as transforms.py makes it."""
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)


def _to_arrays(images: torch.Tensor) -> np.ndarray:
    return images.permute(0, 2, 3, 1).numpy()


def _natural(height: int, width: int, channels: int, seed: int) -> np.ndarray:
    """A smooth gradient with mild noise in a narrow range: autocontrast and equalize act on it."""
    y, x = np.mgrid[0:height, 0:width]
    noise = np.random.default_rng(seed).integers(0, 12, (height, width, channels))
    ramp = 70 + 2 * x[..., None] + y[..., None] + 9 * np.arange(channels)
    return (ramp + noise).clip(0, 255).astype(np.uint8)


def _test_images(height: int, width: int, channels: int) -> np.ndarray:
    """Noise, natural-looking, low-contrast, mostly bright (equalize's step of 1) and constant."""
    rng = np.random.default_rng(height * width + channels)
    shape = (height, width, channels)
    bright = np.where(rng.random(shape) < 0.35, rng.integers(0, 230, shape), 230)
    return np.stack([
        *(rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(3)),
        _natural(height, width, channels, seed=0),
        rng.integers(100, 140, shape, dtype=np.uint8),
        bright.astype(np.uint8),
        np.full(shape, 7, dtype=np.uint8),
    ])


def _assert_same_frequencies(device: np.ndarray, cpu: np.ndarray, categories) -> None:
    """Each category's frequency agrees within 5 standard errors of the difference, and a
    category is drawn on the device exactly when the CPU draws it."""
    device, cpu = np.asarray(device).ravel(), np.asarray(cpu).ravel()
    for category in categories:
        p_device, p_cpu = np.mean(device == category), np.mean(cpu == category)
        pooled = (p_device * device.size + p_cpu * cpu.size) / (device.size + cpu.size)
        error = np.sqrt(pooled * (1 - pooled) * (1 / device.size + 1 / cpu.size))
        assert (p_device > 0) == (p_cpu > 0), (category, p_device, p_cpu)
        assert abs(p_device - p_cpu) < 5 * error + 1e-12, (category, p_device, p_cpu)


# --- RandAugment draws --------------------------------------------------------------------

@pytest.mark.parametrize("variant", RANDAUGMENT_VARIANTS)
def test_sample_matches_the_cpu_randaugment_distribution(variant):
    draws = DeviceAugment(variant).sample(20000, torch.Generator().manual_seed(0))
    assert draws.ops.shape == draws.levels.shape == draws.applied.shape == (20000, 2)
    assert draws.ops.dtype == torch.int64 and draws.applied.dtype == torch.bool
    augment, rng = RandAugment(variant), np.random.default_rng(0)
    cpu = [draw for _ in range(10000) for draw in augment.sample(rng)]
    cpu_ops = np.array([OP_NAMES.index(d.name) for d in cpu])
    cpu_levels = np.array([d.level for d in cpu])
    levels = draws.levels.numpy()

    _assert_same_frequencies(draws.ops.numpy(), cpu_ops, range(len(OP_NAMES)))
    _assert_same_frequencies(draws.applied.numpy(), [d.applied for d in cpu], (True, False))
    if variant == "paper":  # continuous U(0, 10): compare unit bins, and all ops apply
        assert draws.applied.all()
        assert levels.min() >= 0 and levels.max() < 10 and len(np.unique(levels)) > 19000
        _assert_same_frequencies(np.floor(levels), np.floor(cpu_levels), range(10))
    else:
        assert set(np.unique(levels)) == set(range(1, 10))
        _assert_same_frequencies(levels, cpu_levels, range(1, 10))
    # Drawn with replacement, independently per slot: both slots agree 1 time in 14.
    ops = draws.ops.numpy()
    _assert_same_frequencies(ops[:, 0] == ops[:, 1], cpu_ops[0::2] == cpu_ops[1::2], (True,))
    # Geometric ops move either way with equal odds (op_magnitude's random sign).
    cpu_signs = [np.sign(op_magnitude("Rotate", 5, rng, variant)) for _ in range(20000)]
    _assert_same_frequencies(draws.signs.numpy(), cpu_signs, (-1, 1))


# --- single ops ---------------------------------------------------------------------------

def _cpu_seeds_by_sign(name: str, level: float, variant: str) -> dict[int, int]:
    """Seeds for which the CPU op draws a positive / negative magnitude."""
    seeds = {}
    for seed in range(64):
        sign = int(np.sign(op_magnitude(name, level, np.random.default_rng(seed), variant)))
        seeds.setdefault(sign, seed)
    return seeds


@pytest.mark.parametrize("name", OP_NAMES)
def test_every_op_matches_the_cpu_op(name):
    batches = [_test_images(32, 32, 3), _test_images(32, 32, 1), _test_images(27, 27, 3),
               _test_images(24, 40, 3)]
    # Levels 0 and 10 are the ends a caller of apply_op may ask for, beyond what sampling draws
    # (posterize then keeps 0 bits, official, or 9, paper).
    cases = [("official", 0), ("official", 1), ("official", 5), ("official", 9),
             ("official", 10), ("paper", 2.5), ("paper", 7.3), ("paper", 10), ("port", 9)]
    for arrays in batches:
        images, n = _to_tensor(arrays), len(arrays)
        for variant, level in cases:
            for sign, seed in _cpu_seeds_by_sign(name, level, variant).items():
                out = apply_ops(images, torch.full((n,), OP_NAMES.index(name)),
                                torch.full((n,), float(level)), torch.full((n,), float(sign or 1)),
                                variant)
                assert out.dtype == torch.uint8 and out.shape == images.shape
                for array, device in zip(arrays, _to_arrays(out)):
                    img = _pil(array)
                    cpu = np.asarray(apply_op(img, name, level, np.random.default_rng(seed),
                                              variant)).reshape(array.shape)
                    difference = np.abs(cpu.astype(int) - device.astype(int))
                    context = (name, variant, level, sign, array.shape)
                    if name in GEOMETRIC_OPS:
                        # Nearest-neighbour sampling may round a half-pixel the other way.
                        assert np.mean(difference.max(axis=2) > 0) <= 0.03, context
                    else:  # rounding may differ by one gray level, and only rarely
                        assert difference.max() <= 1 and np.mean(difference > 0) <= 0.01, context


# --- weak view ----------------------------------------------------------------------------

def _crops(image: np.ndarray, pad_y: int, pad_x: int) -> dict[bytes, tuple[bool, int, int]]:
    """Every weak view of `image` as the CPU path forms it: (flip, top, left) by content."""
    crops = {}
    height, width = image.shape[:2]
    for flip in (False, True):
        source = image[:, ::-1] if flip else image
        padded = np.pad(source, ((pad_y, pad_y), (pad_x, pad_x), (0, 0)), mode="reflect")
        for top in range(2 * pad_y + 1):
            for left in range(2 * pad_x + 1):
                crop = np.ascontiguousarray(padded[top:top + height, left:left + width])
                crops.setdefault(crop.tobytes(), (flip, top, left))
    return crops


@pytest.mark.parametrize(("height", "width", "channels"), [(32, 32, 3), (24, 40, 1)])
def test_weak_view_is_a_flipped_reflect_padded_crop_of_each_image(height, width, channels):
    arrays = np.random.default_rng(0).integers(0, 256, (64, height, width, channels), np.uint8)
    images = _to_tensor(arrays)
    out = DeviceAugment().weak(images, torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert torch.equal(images, _to_tensor(arrays))  # the input is left untouched
    pad_y, pad_x = round(0.125 * height), round(0.125 * width)
    for array, view in zip(arrays, _to_arrays(out)):
        crops = _crops(array, pad_y, pad_x)
        assert view.tobytes() in crops
        # The enumeration above is the CPU path's own set of views.
        assert weak_augment(array, np.random.default_rng(0), True).tobytes() in crops


@pytest.mark.parametrize("hflip", [True, False])
def test_weak_view_flips_half_the_images_and_crops_uniformly(hflip):
    # Pixel (y, x) holds (8y, 8x, 0), so every (flip, top, left) gives a different view.
    y, x = np.mgrid[0:32, 0:32]
    coordinates = np.stack([8 * y, 8 * x, np.zeros_like(x)], axis=2).astype(np.uint8)
    crops = _crops(coordinates, 4, 4)
    assert len(crops) == 2 * 9 * 9
    images = _to_tensor(np.repeat(coordinates[None], 4000, axis=0))
    views = DeviceAugment(hflip=hflip).weak(images, torch.Generator().manual_seed(1))
    flips, tops, lefts = np.array([crops[view.tobytes()] for view in _to_arrays(views)]).T
    if hflip:
        assert abs(flips.mean() - 0.5) < 0.04
    else:
        assert not flips.any()
    uniform = np.repeat(np.arange(9), 1000)  # offsets drawn from U{0, ..., 2 * pad}
    _assert_same_frequencies(tops, uniform, range(9))
    _assert_same_frequencies(lefts, uniform, range(9))


# --- Cutout -------------------------------------------------------------------------------

def test_cutout_fills_one_clipped_square_sized_like_the_cpu_cutout():
    images = torch.zeros(4000, 3, 32, 32, dtype=torch.uint8)
    centres = draw_cutout_centres(images, torch.Generator().manual_seed(2))
    out = cutout_view(images, *centres, 16)
    filled = out == 128
    assert torch.all(filled | (out == 0)) and not images.any()
    assert torch.equal(filled.all(dim=1), filled.any(dim=1))  # every channel alike
    filled = filled[:, 0]
    rows, cols = filled.any(dim=2), filled.any(dim=1)
    heights, widths = rows.sum(dim=1), cols.sum(dim=1)
    assert torch.equal(filled.sum(dim=(1, 2)), heights * widths)  # a solid rectangle...
    first_row = rows.int().argmax(dim=1)
    assert torch.all(rows.int().cumsum(dim=1).gather(1, (first_row + heights - 1)[:, None])
                     .squeeze(1) == heights)  # ...in one run of rows
    rng = np.random.default_rng(2)
    cpu = [cutout(np.zeros((32, 32, 1), np.uint8), 16, rng)[:, :, 0] == 128 for _ in range(4000)]
    _assert_same_frequencies(heights.numpy(), [c.any(axis=1).sum() for c in cpu], range(8, 17))
    _assert_same_frequencies(widths.numpy(), [c.any(axis=0).sum() for c in cpu], range(8, 17))


@pytest.mark.parametrize(("height", "width", "side"), [(32, 32, 16), (24, 40, 12)])
def test_strong_view_ends_with_a_cutout_of_half_the_shorter_side(height, width, side):
    # Without RandAugment ops, a black image keeps only the Cutout square.
    images = torch.zeros(400, 1, height, width, dtype=torch.uint8)
    out = DeviceAugment(num_ops=0).strong(images, torch.Generator().manual_seed(7))[:, 0]
    assert set(out.unique().tolist()) == {0, 128}
    heights = (out == 128).any(dim=2).sum(dim=1)
    widths = (out == 128).any(dim=1).sum(dim=1)
    assert heights.max() == widths.max() == side
    assert heights.min() >= side // 2 and widths.min() >= side // 2


# --- whole views --------------------------------------------------------------------------

def _mean_change(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return np.abs(after.astype(float) - before.astype(float)).mean(axis=(1, 2, 3))


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_randaugment_changes_images_as_the_cpu_randaugment_does(variant):
    image = np.random.default_rng(0).integers(40, 200, (32, 32, 3), dtype=np.uint8)
    batch = np.repeat(image[None], 2000, axis=0)
    device = _to_arrays(DeviceAugment(variant).randaugment(
        _to_tensor(batch), torch.Generator().manual_seed(3)))
    augment, rng = RandAugment(variant), np.random.default_rng(3)
    cpu = np.stack([np.asarray(augment(_pil(image), rng)) for _ in range(1000)])
    change_device, change_cpu = _mean_change(batch, device), _mean_change(batch[:1000], cpu)
    _assert_same_frequencies(change_device == 0, change_cpu == 0, (True,))
    assert abs(change_device.mean() - change_cpu.mean()) < 0.1 * change_cpu.mean()


def test_randaugment_applies_the_draws_of_sample():
    images = _to_tensor(_test_images(32, 32, 3)).repeat(40, 1, 1, 1)
    augment = DeviceAugment("paper", num_ops=3)
    draws = augment.sample(len(images), torch.Generator().manual_seed(4))
    expected = images
    for slot in range(3):
        expected = apply_ops(expected, draws.ops[:, slot], draws.levels[:, slot],
                             draws.signs[:, slot], "paper")
    out = augment.randaugment(images, torch.Generator().manual_seed(4))
    assert torch.equal(out, expected)
    assert len({tuple(row) for row in draws.ops.tolist()}) > 200  # per-image draws


@pytest.mark.parametrize("shape", [(8, 3, 32, 32), (8, 1, 28, 28), (4, 3, 24, 40)])
@pytest.mark.parametrize("variant", RANDAUGMENT_VARIANTS)
def test_same_seed_gives_the_same_views_and_another_seed_does_not(variant, shape):
    images = torch.randint(0, 256, shape, dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    original = images.clone()
    augment = DeviceAugment(variant)
    for view in (augment.weak, augment.strong):
        first = view(images, torch.Generator().manual_seed(5))
        assert first.dtype == torch.uint8 and first.shape == images.shape
        assert torch.equal(first, view(images, torch.Generator().manual_seed(5)))
        assert not torch.equal(first, view(images, torch.Generator().manual_seed(6)))
    assert torch.equal(images, original)


def test_invalid_settings_and_inputs_fail_with_one_clear_line():
    with pytest.raises(ValueError, match="official, paper, port"):
        DeviceAugment("offical")
    with pytest.raises(ValueError, match="uint8"):
        DeviceAugment().strong(torch.zeros(2, 3, 8, 8), torch.Generator())
    with pytest.raises(ValueError, match="C = 1 or 3"):
        DeviceAugment().weak(torch.zeros(2, 4, 8, 8, dtype=torch.uint8), torch.Generator())


# --- compiled views -----------------------------------------------------------------------

@pytest.mark.slow
def test_compiled_views_are_the_eager_views_up_to_rounding():
    """trainer.compile=true computes the same draws with torch.compile'd functions: weak views
    are identical; each op differs by at most one gray level (fused float arithmetic); whole
    strong views agree on almost every pixel (a changed level can flip a later threshold)."""
    images = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    eager, compiled = DeviceAugment(), DeviceAugment(compiled=True)
    assert torch.equal(compiled.weak(images, torch.Generator().manual_seed(1)),
                       eager.weak(images, torch.Generator().manual_seed(1)))
    strong = compiled.strong(images, torch.Generator().manual_seed(2))
    expected = eager.strong(images, torch.Generator().manual_seed(2))
    assert (strong != expected).float().mean() < 0.02
    table, fill = magnitude_table("official", images.device), 128
    levels = torch.rand(len(images), generator=torch.Generator().manual_seed(3)) * 10
    signs = torch.where(levels.floor().remainder(2) == 0, -1.0, 1.0)
    compiled_ops = torch.compile(ops_view, dynamic=False)
    for index, name in enumerate(OP_NAMES):
        ops = torch.full((len(images),), index)
        difference = (compiled_ops(images, ops, levels, signs, table, fill).int()
                      - ops_view(images, ops, levels, signs, table, fill).int()).abs()
        assert difference.max() <= 1, name
