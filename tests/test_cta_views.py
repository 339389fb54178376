"""CTAugment's worker-side views: the strong view from a given policy, the labeled probe view."""

import numpy as np
import torch
from PIL import Image

from fixmatch.data.cta_views import (
    CTASampledStrongTransform, CTAStrongTransform, CTAWeakStrongTransform, WeakProbeTransform,
    decode_policy,
)
from fixmatch.data.cta_ops import OpCall, apply_policy, strong_view
from fixmatch.data.ctaugment import CTAugment, encode_policies
from fixmatch.data.transforms import WeakTransform, weak_augment


def _image(channels: int = 3) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (32, 32, channels), dtype=np.uint8)


def test_strong_view_applies_the_given_policy_after_the_weak_view():
    policy = (OpCall("invert", (1.0,)), OpCall("rotate", (0.9,)))
    encoded = encode_policies([policy]).ravel()
    assert decode_policy(tuple(encoded)) == policy
    view = CTAStrongTransform(hflip=True)(_image(), np.random.default_rng(5), tuple(encoded))
    rng = np.random.default_rng(5)
    expected = strong_view(weak_augment(_image(), rng, True), policy, rng)
    assert view.dtype == torch.uint8 and torch.equal(view, torch.from_numpy(expected.transpose(2, 0, 1)))
    other = CTAStrongTransform(hflip=True)(_image(), np.random.default_rng(5),
                                           encode_policies([(OpCall("identity", ()),) * 2]).ravel())
    assert not torch.equal(view, other)


def test_unlabeled_pair_and_preview_views():
    weak, strong = WeakTransform(True), CTAStrongTransform(True)
    encoded = encode_policies([(OpCall("solarize", (0.2,)), OpCall("blur", (0.7,)))]).ravel()
    weak_view, strong_view_ = CTAWeakStrongTransform(weak, strong)(_image(1), np.random.default_rng(2), encoded)
    assert weak_view.shape == strong_view_.shape == (1, 32, 32)
    assert torch.equal(weak_view, weak(_image(1), np.random.default_rng(2)))
    sampled = CTASampledStrongTransform(strong)
    views = [sampled(_image(), np.random.default_rng(3)) for _ in range(2)]
    assert views[0].shape == (3, 32, 32) and torch.equal(views[0], views[1])


def test_probe_view_is_the_weak_view_under_a_random_probe_policy():
    transform = WeakProbeTransform(hflip=True)
    for seed in range(20):
        weak, probe, encoded = transform(_image(), np.random.default_rng(seed))
        assert torch.equal(weak, WeakTransform(True)(_image(), np.random.default_rng(seed)))
        rng = np.random.default_rng(seed)
        weak_array = weak_augment(_image(), rng, True)
        policy = CTAugment().sample_policy(rng, probe=True)
        expected = np.asarray(apply_policy(Image.fromarray(weak_array), policy, rng))
        assert decode_policy(encoded) == policy and encoded.shape == (2, 3)
        assert torch.equal(probe, torch.from_numpy(expected.transpose(2, 0, 1).copy()))
