"""From loader batches to model inputs on the device.

Loaders ship uint8 images (a quarter of the bytes of float32, and no float arithmetic in
the workers); here whole batches are copied to the device and normalised there, in the
memory format the model runs in. With device augmentation the loaders ship the images as
they are and the weak and strong views are drawn here, in batches.
"""

from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from fixmatch.data.device_augment import DeviceAugment
from fixmatch.data.normalization import Normalization

Batch = Tuple[torch.Tensor, torch.Tensor]


class DeviceViews:
    """Weak and strong views drawn on the device, batch k of a stream from its own generator.

    The generator of batch k is seeded from (run seed, stream, k, rank), so a resumed run
    draws the same views as an uninterrupted one.

    Args:
        augment: the batched augmentation.
        seed: the run seed.
        start_batch: the first batch number of both streams (a resumed run's step).
        rank: this process's rank (each rank augments its own share).
    """

    def __init__(self, augment: DeviceAugment, seed: int, start_batch: int = 0, rank: int = 0):
        self.augment = augment
        self.seed = seed
        self.rank = rank
        self.next_batch = {"labeled": start_batch, "unlabeled": start_batch}

    def generator(self, stream: str, device: torch.device) -> torch.Generator:
        """The generator of the next batch of `stream`, whose batch count it advances.

        Args:
            stream: "labeled" or "unlabeled".
            device: where the generator draws, the device of the batch it augments.

        Returns:
            A fresh generator seeded from (run seed, stream, batch number, rank).
        """
        number = self.next_batch[stream]
        self.next_batch[stream] += 1
        key = [self.seed, 0 if stream == "labeled" else 1, number, self.rank]
        seed = int(np.random.SeedSequence(key).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
        return torch.Generator(device).manual_seed(seed)


class DeviceInputs:
    """Copies batches to `device` and turns uint8 (N, C, H, W) images into normalised floats.

    Args:
        normalization: per-channel mean and std, in [0, 1] pixel units.
        device: where the model runs.
        channels_last: give images in the channels-last memory format (faster convolutions
            on CPUs and tensor cores; the model must be converted too).
        views: draw the training views here (the loaders then ship raw images); None when
            the loaders augment.
    """

    def __init__(self, normalization: Normalization, device: torch.device, channels_last: bool = False,
                 views: Optional[DeviceViews] = None):
        self.device = device
        self.channels_last = channels_last
        self.views = views
        mean = torch.tensor(normalization.mean, dtype=torch.float32)
        std = torch.tensor(normalization.std, dtype=torch.float32)
        # (x / 255 - mean) / std as one multiply-add; built once, so no per-step host copy.
        self._scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1).to(device)
        self._shift = (mean / std).view(1, -1, 1, 1).to(device)

    def images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) images, anywhere, as normalised float32 on the device.

        Args:
            images: the batch, on any device; C must match the normalisation's channels.

        Returns:
            (x / 255 - mean) / std per channel, float32 on `device`, channels-last if asked.

        Raises:
            ValueError: the images do not have as many channels as the normalisation.
        """
        if images.ndim != 4 or images.shape[1] != self._scale.shape[1]:
            raise ValueError(f"expected (N, {self._scale.shape[1]}, H, W) images, got shape "
                             f"{tuple(images.shape)}")
        images = images.to(self.device, non_blocking=True).float()
        images = torch.addcmul(-self._shift, images, self._scale)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def targets(self, targets: torch.Tensor) -> torch.Tensor:
        """The (N,) targets of a batch (class indices, -1 where unknown), copied to the device."""
        return targets.to(self.device, non_blocking=True)

    def labeled(self, batch: Sequence) -> Batch:
        """(images, labels) of a labeled batch (weak views, or raw images to augment here).

        Args:
            batch: (uint8 (N, C, H, W) images, (N,) labels) from the labeled loader.

        Returns:
            The normalised weak views and the labels, both on the device.

        Raises:
            ValueError: the images do not fit the normalisation (see `images`) or, augmented
                here, are not a uint8 (N, 1 or 3, H >= 3, W >= 3) batch.
        """
        images, targets = batch
        if self.views is not None:
            images = images.to(self.device, non_blocking=True)
            images = self.views.augment.weak(images, self.views.generator("labeled", self.device))
        return self.images(images), self.targets(targets)

    def unlabeled(self, batch: Sequence) -> Tuple[Batch, torch.Tensor]:
        """((weak views, strong views), true labels or -1) of an unlabeled batch.

        Args:
            batch: ((weak, strong) uint8 views, targets) from the unlabeled loader, or
                (raw uint8 images, targets) when the views are drawn here.

        Returns:
            The normalised weak and strong views and the targets (-1 where the label is not
            known), all on the device.

        Raises:
            ValueError: the images do not fit the normalisation (see `images`) or, augmented
                here, are not a uint8 (N, 1 or 3, H >= 3, W >= 3) batch.
        """
        if self.views is None:
            (weak, strong), targets = batch
        else:
            raw, targets = batch
            raw = raw.to(self.device, non_blocking=True)
            generator = self.views.generator("unlabeled", self.device)
            weak = self.views.augment.weak(raw, generator)
            strong = self.views.augment.strong(raw, generator)
        return (self.images(weak), self.images(strong)), self.targets(targets)
