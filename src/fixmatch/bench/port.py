"""A straightforward FixMatch data pipeline and training step, the way the popular PyTorch
port writes them: the yardstick of `python -m fixmatch.bench`.

Per unlabeled image: PIL flip + reflect-pad crop for the weak view; flip + crop +
RandAugment (2 ops, each with p = 0.5, level 1..9, ImageOps/ImageEnhance) + Cutout for the
strong view; then ToTensor and Normalize for each, in float32 through the loader workers.
The step interleaves the batch, calls `.item()` for its meters every step and updates the
EMA parameter by parameter. Same ops and output semantics as ours; only the engineering
differs. Not used for training.
"""

import random
from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageEnhance, ImageOps
from torch import nn
from torch.utils.data import Dataset
from torchvision import transforms


def _enhance(enhancer):
    return lambda img, v: enhancer(img).enhance(0.1 + 0.18 * v)


# The official magnitudes (docs/PROTOCOL.md), written as the port writes its pool.
POOL = [
    lambda img, v: ImageOps.autocontrast(img),
    _enhance(ImageEnhance.Brightness),
    _enhance(ImageEnhance.Color),
    _enhance(ImageEnhance.Contrast),
    lambda img, v: ImageOps.equalize(img),
    lambda img, v: img,
    lambda img, v: ImageOps.posterize(img, 4 - int(0.4 * v)),
    lambda img, v: img.rotate(3 * v * (1 if random.random() < 0.5 else -1), fillcolor=(128,) * len(img.getbands())),
    _enhance(ImageEnhance.Sharpness),
    lambda img, v: img.transform(img.size, Image.AFFINE, (1, 0.03 * v * random.choice((-1, 1)), 0, 0, 1, 0),
                                 fillcolor=(128,) * len(img.getbands())),
    lambda img, v: img.transform(img.size, Image.AFFINE, (1, 0, 0, 0.03 * v * random.choice((-1, 1)), 1, 0),
                                 fillcolor=(128,) * len(img.getbands())),
    lambda img, v: ImageOps.solarize(img, 256 - int(25.6 * v)),
    lambda img, v: img.transform(img.size, Image.AFFINE,
                                 (1, 0, int(v / 32 * img.size[0]) * random.choice((-1, 1)), 0, 1, 0),
                                 fillcolor=(128,) * len(img.getbands())),
    lambda img, v: img.transform(img.size, Image.AFFINE,
                                 (1, 0, 0, 0, 1, int(v / 32 * img.size[1]) * random.choice((-1, 1))),
                                 fillcolor=(128,) * len(img.getbands())),
]


class PortRandAugment:
    """2 ops with replacement, each applied with p = 0.5 at a level in 1..9, then Cutout."""

    def __call__(self, img: Image.Image) -> Image.Image:
        for op in random.choices(POOL, k=2):
            level = np.random.randint(1, 10)
            if random.random() < 0.5:
                img = op(img, level)
        return _cutout(img, int(img.size[0] * 0.5))


def _cutout(img: Image.Image, size: int) -> Image.Image:
    width, height = img.size
    x0, y0 = np.random.uniform(width), np.random.uniform(height)
    x0, y0 = int(max(0, x0 - size / 2.0)), int(max(0, y0 - size / 2.0))
    img = img.copy()
    ImageDraw.Draw(img).rectangle((x0, y0, min(width, x0 + size), min(height, y0 + size)),
                                  fill=(128,) * len(img.getbands()))
    return img


class PortWeakStrong:
    """(weak, strong) float32 tensors of a PIL image, each normalised.

    Args:
        side: the images' side in pixels; the crop pads by an eighth of it (reflected).
        mean: per-channel mean, in [0, 1] pixel units.
        std: per-channel standard deviation, in [0, 1] pixel units.
        hflip: random horizontal flip before the crop.
    """

    def __init__(self, side: int, mean: Sequence[float], std: Sequence[float], hflip: bool = True):
        flip = [transforms.RandomHorizontalFlip()] if hflip else []
        crop = transforms.RandomCrop(side, padding=int(side * 0.125), padding_mode="reflect")
        self.weak = transforms.Compose([*flip, crop])
        self.strong = transforms.Compose([*flip, crop, PortRandAugment()])
        self.normalize = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])

    def __call__(self, img: Image.Image) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.normalize(self.weak(img)), self.normalize(self.strong(img))

    def weak_only(self):
        """The labeled images' pipeline: the weak view, normalised.

        Returns:
            A transform from a PIL image to a normalised float32 (C, H, W) tensor.
        """
        return transforms.Compose([self.weak, self.normalize])


class PortImages(Dataset):
    """uint8 (N, H, W, C) images through `transform`, as the port's CIFAR dataset does.

    Args:
        images: uint8 (N, H, W, C) images; C is 1 or 3.
        transform: applied to each image as PIL; every item's label is 0.
    """

    def __init__(self, images: np.ndarray, transform):
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = np.asarray(self.images[index])
        image = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
        return self.transform(image), 0


def interleave(x: torch.Tensor, size: int) -> torch.Tensor:
    """Reorder rows as the port does: row i·size + j moves to row j·n + i (n = len(x) / size),
    so that each block of n rows mixes labeled and unlabeled images (for BatchNorm when
    DataParallel splits the batch).

    Args:
        x: the labeled then the unlabeled images, (n · size, ...).
        size: the chunk length; 2μ + 1 in the step, so that n is the labeled batch size.

    Returns:
        The same rows, reordered; `de_interleave` undoes it.
    """
    shape = list(x.shape)
    return x.reshape([-1, size] + shape[1:]).transpose(0, 1).reshape([-1] + shape[1:])


def de_interleave(x: torch.Tensor, size: int) -> torch.Tensor:
    """Undo `interleave` on the model's output.

    Args:
        x: interleaved rows (or the model's outputs for them), (n · size, ...).
        size: the chunk length `interleave` was given.

    Returns:
        The rows in their order before `interleave`.
    """
    shape = list(x.shape)
    return x.reshape([size, -1] + shape[1:]).transpose(0, 1).reshape([-1] + shape[1:])


class PortStep:
    """One FixMatch step as the port writes it (fp32, NCHW, per-parameter EMA, `.item()`).

    Args:
        model: the live model.
        ema_model: a copy of it that the step averages into.
        optimizer: the model's optimiser.
        mu: μ, unlabeled images per labeled one.
        threshold: τ, confidence needed to keep a pseudo-label.
        ema_decay: weight kept by the average at each step.
    """

    def __init__(self, model: nn.Module, ema_model: nn.Module, optimizer: torch.optim.Optimizer,
                 mu: int, threshold: float = 0.95, ema_decay: float = 0.999):
        self.model, self.ema_model, self.optimizer = model, ema_model, optimizer
        self.mu, self.threshold, self.ema_decay = mu, threshold, ema_decay
        self.meters: List[float] = []

    def __call__(self, inputs_x, targets_x, inputs_u_w, inputs_u_s) -> None:
        batch_size = inputs_x.shape[0]
        inputs = interleave(torch.cat((inputs_x, inputs_u_w, inputs_u_s)), 2 * self.mu + 1)
        logits = de_interleave(self.model(inputs), 2 * self.mu + 1)
        logits_x = logits[:batch_size]
        logits_u_w, logits_u_s = logits[batch_size:].chunk(2)
        loss_x = F.cross_entropy(logits_x, targets_x, reduction="mean")
        pseudo_label = torch.softmax(logits_u_w.detach(), dim=-1)
        max_probs, targets_u = torch.max(pseudo_label, dim=-1)
        mask = max_probs.ge(self.threshold).float()
        loss_u = (F.cross_entropy(logits_u_s, targets_u, reduction="none") * mask).mean()
        loss = loss_x + loss_u
        loss.backward()
        self.meters += [loss.item(), loss_x.item(), loss_u.item(), mask.mean().item()]
        self.optimizer.step()
        self.model.zero_grad()
        with torch.no_grad():
            model_state, ema_state = self.model.state_dict(), self.ema_model.state_dict()
            for name, parameter in self.model.named_parameters():
                ema_state[name].copy_(ema_state[name] * self.ema_decay
                                      + (1.0 - self.ema_decay) * model_state[name].detach())
            for name, buffer in self.model.named_buffers():
                ema_state[name].copy_(model_state[name])
