"""From loader batches to model inputs on the device.

Loaders ship uint8 images (a quarter of the bytes of float32, and no float arithmetic in
the workers); here whole batches are copied to the device and normalised there, in the
memory format the model runs in.
"""

from typing import Sequence, Tuple

import torch

from fixmatch.data.normalization import Normalization

Batch = Tuple[torch.Tensor, torch.Tensor]


class DeviceInputs:
    """Copies batches to `device` and turns uint8 (N, C, H, W) images into normalised floats.

    Args:
        normalization: per-channel mean and std, in [0, 1] pixel units.
        device: where the model runs.
        channels_last: give images in the channels-last memory format (faster convolutions
            on tensor cores; the model must be converted too).
    """

    def __init__(self, normalization: Normalization, device: torch.device, channels_last: bool = False):
        self.device = device
        self.channels_last = channels_last
        mean = torch.tensor(normalization.mean, dtype=torch.float32)
        std = torch.tensor(normalization.std, dtype=torch.float32)
        # (x / 255 - mean) / std as one multiply-add; built once, so no per-step host copy.
        self._scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1).to(device)
        self._shift = (mean / std).view(1, -1, 1, 1).to(device)

    def images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) images, anywhere, as normalised float32 on the device.

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
        return targets.to(self.device, non_blocking=True)

    def labeled(self, batch: Sequence) -> Batch:
        """(images, labels) of a labeled batch."""
        images, targets = batch
        return self.images(images), self.targets(targets)

    def unlabeled(self, batch: Sequence) -> Tuple[Batch, torch.Tensor]:
        """((weak views, strong views), true labels or -1) of an unlabeled batch."""
        (weak, strong), targets = batch
        return (self.images(weak), self.images(strong)), self.targets(targets)
