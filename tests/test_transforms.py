"""Weak augmentation and the eval / weak / strong / weak-strong pipelines."""

import warnings

import numpy as np
import pytest
import torch

from fixmatch.data.device_inputs import DeviceInputs
from fixmatch.data.normalization import Normalization
from fixmatch.data.randaugment import RandAugment
from fixmatch.data.transforms import (
    EvalTransform, StrongTransform, WeakStrongTransform, WeakTransform, to_chw_tensor, weak_augment,
)


def _noise(side: int, channels: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (side, side, channels), dtype=np.uint8)


def _index_image(side: int) -> np.ndarray:
    """Channel 0 holds the row index, channel 1 the column index: every window is unique."""
    rows, cols = np.indices((side, side), dtype=np.uint8)
    return np.stack([rows, cols, np.zeros_like(rows)], axis=2)


def _crop_offsets(out: np.ndarray, source: np.ndarray, pad: int) -> list[tuple[int, int]]:
    """Every (top, left) at which `out` is a window of `source` reflect-padded by `pad`."""
    padded = np.pad(source, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    side = source.shape[0]
    return [
        (top, left)
        for top in range(2 * pad + 1)
        for left in range(2 * pad + 1)
        if np.array_equal(padded[top:top + side, left:left + side], out)
    ]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("side", [8, 32, 96])
def test_weak_augment_keeps_shape_and_dtype(side, channels):
    out = weak_augment(_noise(side, channels), np.random.default_rng(0), hflip=True)
    assert out.shape == (side, side, channels) and out.dtype == np.uint8


@pytest.mark.parametrize(("side", "pad"), [(8, 1), (32, 4)])
def test_weak_augment_is_a_window_of_the_reflect_padded_image(side, pad):
    image = _index_image(side)
    offsets = set()
    for seed in range(300):
        out = weak_augment(image, np.random.default_rng(seed), hflip=False)
        matches = _crop_offsets(out, image, pad)
        assert len(matches) == 1  # never flipped, never shifted beyond the pad
        offsets.update(matches)
    tops, lefts = zip(*offsets)
    assert set(tops) == set(lefts) == set(range(2 * pad + 1))  # every offset in the pad occurs


def test_weak_augment_flips_about_half_the_time():
    image = _index_image(32)
    flipped = 0
    for seed in range(200):
        out = weak_augment(image, np.random.default_rng(seed), hflip=True)
        as_is, mirrored = _crop_offsets(out, image, 4), _crop_offsets(out, image[:, ::-1], 4)
        assert len(as_is) + len(mirrored) == 1
        flipped += len(mirrored)
    assert 70 < flipped < 130


def test_weak_augment_is_deterministic_for_a_seed():
    image = _noise(32, 3)
    first = weak_augment(image, np.random.default_rng(5), hflip=True)
    again = weak_augment(image, np.random.default_rng(5), hflip=True)
    assert np.array_equal(first, again)


def test_normalisation_of_a_constant_image_on_the_device_side():
    image = np.full((4, 4, 3), 51, dtype=np.uint8)  # 0.2 in [0, 1] units
    view = EvalTransform()(image)
    assert view.dtype == torch.uint8 and torch.equal(view, torch.full((3, 4, 4), 51, dtype=torch.uint8))
    inputs = DeviceInputs(Normalization([0.2, 0.4, 0.6], [0.5, 0.5, 0.25], "config"), torch.device("cpu"))
    out = inputs.images(view[None])
    assert out.shape == (1, 3, 4, 4) and out.dtype == torch.float32
    expected = torch.tensor([0.0, -0.4, -1.6]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    assert torch.allclose(out, expected, atol=1e-6)


def test_device_inputs_match_the_float_formula_and_keep_channels_last():
    images = torch.from_numpy(_noise(8, 3)).permute(2, 0, 1)[None].repeat(2, 1, 1, 1)
    normalization = Normalization([0.49, 0.48, 0.45], [0.25, 0.24, 0.26], "config")
    out = DeviceInputs(normalization, torch.device("cpu"), channels_last=True).images(images)
    mean = torch.tensor(normalization.mean).view(1, 3, 1, 1)
    std = torch.tensor(normalization.std).view(1, 3, 1, 1)
    assert torch.allclose(out, (images.float() / 255 - mean) / std, atol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(("side", "channels"), [(8, 1), (32, 3), (96, 1)])
def test_pipelines_give_uint8_chw_tensors(side, channels):
    image = _noise(side, channels)
    pipelines = [
        EvalTransform(), WeakTransform(hflip=True),
        StrongTransform(hflip=True, randaugment=RandAugment("official")),
    ]
    for pipeline in pipelines:
        out = pipeline(image, np.random.default_rng(0))
        assert out.shape == (channels, side, side) and out.dtype == torch.uint8


def test_strong_view_has_a_mid_gray_cutout_of_at_most_half_the_side():
    strong = StrongTransform(hflip=False, randaugment=RandAugment(num_ops=0))
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    for seed in range(20):
        out = strong(image, np.random.default_rng(seed))
        filled = (out == 128).all(dim=0)
        rows, cols = filled.any(dim=1).sum(), filled.any(dim=0).sum()
        assert 8 <= rows <= 16 and 8 <= cols <= 16 and filled.sum() == rows * cols


def test_strong_transform_is_deterministic_for_a_seed():
    strong = StrongTransform(hflip=True)
    image = _noise(32, 3)
    assert torch.equal(strong(image, np.random.default_rng(3)),
                       strong(image, np.random.default_rng(3)))


def test_weak_strong_returns_a_weak_then_a_strong_view():
    weak, strong = WeakTransform(hflip=True), StrongTransform(hflip=True)
    image = _noise(32, 3)
    weak_view, strong_view = WeakStrongTransform(weak, strong)(image, np.random.default_rng(0))
    assert weak_view.shape == strong_view.shape == (3, 32, 32)
    assert not torch.equal(weak_view, strong_view)
    rng = np.random.default_rng(0)
    assert torch.equal(weak_view, weak(image, rng))
    assert torch.equal(strong_view, strong(image, rng))


def test_normalisation_channels_must_match_the_images():
    inputs = DeviceInputs(Normalization([0.5] * 3, [0.2] * 3, "config"), torch.device("cpu"))
    with pytest.raises(ValueError, match=r"expected \(N, 3, H, W\) images"):
        inputs.images(torch.zeros((2, 1, 8, 8), dtype=torch.uint8))


def test_images_without_a_channel_axis_are_rejected():
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        EvalTransform()(np.zeros((8, 8), dtype=np.uint8))


@pytest.mark.parametrize("channels", [1, 3])
def test_a_read_only_image_becomes_a_tensor_without_a_warning(channels):
    # np.asarray(PIL image) is read-only; for one channel the transpose made no copy and
    # torch warned "The given NumPy array is not writable" for every image.
    image = np.arange(4 * 5 * channels, dtype=np.uint8).reshape(4, 5, channels)
    image.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tensor = to_chw_tensor(image)
    assert torch.equal(tensor, torch.from_numpy(image.transpose(2, 0, 1).copy()))
