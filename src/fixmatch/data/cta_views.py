"""CTAugment's views, made where the images are augmented (the loader workers): the strong
view from a policy the main process drew, and the labeled probe view with its own policy.

Each pipeline draws only from the per-sample generator it is given, like `transforms`.
"""

from dataclasses import dataclass, field
from typing import Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from fixmatch.data.cta_ops import apply_policy, strong_view
from fixmatch.data.cta_policies import POLICY_WIDTH
from fixmatch.data.ctaugment import CTAugment, decode_policies, encode_policies
from fixmatch.data.transforms import Pipeline, to_chw_tensor, weak_augment


def decode_policy(encoded: Sequence[float]):
    """One policy from its flat encoding (`encode_policies` row, flattened).

    Args:
        encoded: depth * POLICY_WIDTH values, as the unlabeled sampler ships them.

    Returns:
        The policy: a tuple of `OpCall`s in the order they apply.
    """
    return decode_policies(np.asarray(encoded, dtype=np.float64).reshape(1, -1, POLICY_WIDTH))[0]


@dataclass(frozen=True)
class CTAStrongTransform:
    """Strong view with CTAugment: `weak_augment`, the given policy, Cutout (Sohn et al. 2020).

    Args:
        hflip: random horizontal flip in the weak augmentation (False for SVHN).
        cutout_fraction: side of the final Cutout square as a fraction of the image side.
    """

    hflip: bool
    cutout_fraction: float = 0.5

    def __call__(self, image: np.ndarray, rng: np.random.Generator,
                 policy: Sequence[float]) -> torch.Tensor:
        """The strong view of a uint8 (H, W, C) image as a uint8 (C, H, W) tensor.

        Args:
            image: the image.
            rng: the sample's generator (crop, flip, cutout positions).
            policy: the sample's encoded policy, flattened (from the unlabeled sampler).
        """
        weak = weak_augment(image, rng, self.hflip)
        return to_chw_tensor(strong_view(weak, decode_policy(policy), rng, self.cutout_fraction))


@dataclass(frozen=True)
class CTAWeakStrongTransform:
    """Unlabeled sample with CTAugment: a weak view and a strong view made with `policy`."""

    weak: Pipeline
    strong: CTAStrongTransform

    def __call__(self, image: np.ndarray, rng: np.random.Generator,
                 policy: Sequence[float]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Return `(weak_view, strong_view)`, drawn in that order from `rng`."""
        return self.weak(image, rng), self.strong(image, rng, policy)


@dataclass(frozen=True)
class CTASampledStrongTransform:
    """A strong view whose policy is drawn from `augment`'s rates with the sample's own
    generator: what `python -m fixmatch.preview` shows (training draws its policies in the
    main process instead, see `cta_policies`)."""

    strong: CTAStrongTransform
    augment: CTAugment = field(default_factory=CTAugment)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        policy = self.augment.sample_policy(rng, probe=False)
        return self.strong(image, rng, encode_policies([policy]).ravel())


@dataclass(frozen=True)
class WeakProbeTransform:
    """Labeled sample with CTAugment probes: the weak view, and a probe view (the weak view
    under a uniformly random policy, no Cutout) with its encoded policy.

    The official code probes the way here: `cta.policy(probe=True)` applied to the weakly
    augmented labeled image (libml/augment.py). The probe policy ignores the rates, so the
    workers never need them.

    Args:
        hflip: random horizontal flip in the weak augmentation (False for SVHN).
        augment: draws the probe policies; only its depth matters (probes ignore the rates).
    """

    hflip: bool
    augment: CTAugment = field(default_factory=CTAugment)

    def __call__(self, image: np.ndarray,
                 rng: np.random.Generator) -> Tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """Return `(weak_view, probe_view, probe_policy)`: uint8 (C, H, W) tensors and the
        float64 (depth, POLICY_WIDTH) encoded policy; the weak view is drawn first, so it equals
        `WeakTransform`'s view of the same sample."""
        weak = weak_augment(image, rng, self.hflip)
        policy = self.augment.sample_policy(rng, probe=True)
        channels = weak.shape[2]
        probe = apply_policy(Image.fromarray(weak[:, :, 0] if channels == 1 else weak), policy, rng)
        probe_array = np.asarray(probe).reshape(weak.shape)
        return to_chw_tensor(weak), to_chw_tensor(probe_array), encode_policies([policy])[0]
