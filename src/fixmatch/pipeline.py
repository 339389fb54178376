"""The data half of the composition root: the input stage on the device and the train/test
batch streams, wired from the typed config (run_data.py decides the split and the
normalisation they use).

app.py calls these in construction order; like it, this module reads several config nodes.
"""

import logging
from typing import Iterator, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from fixmatch.config import AugmentOn, Config, StrongAugment
from fixmatch.cta_probe import CTAProbe
from fixmatch.data.cta_views import (
    CTASampledStrongTransform,
    CTAStrongTransform,
    CTAWeakStrongTransform,
    WeakProbeTransform,
)
from fixmatch.data.ctaugment import CTAugment
from fixmatch.data.datasets import DatasetArrays
from fixmatch.data.device_augment import DeviceAugment
from fixmatch.data.device_inputs import DeviceInputs, DeviceViews
from fixmatch.data.loaders import (
    AugmentedImages,
    InfiniteBatchSampler,
    StackedImages,
    build_eval_loader,
    build_train_loader,
)
from fixmatch.data.normalization import Normalization
from fixmatch.data.randaugment import RandAugment
from fixmatch.data.resident import ResidentBatches, ResidentImages, fits_on_device
from fixmatch.data.split import LabeledSplit
from fixmatch.data.transforms import (
    EvalTransform,
    Pipeline,
    StrongTransform,
    WeakStrongTransform,
    WeakTransform,
)
from fixmatch.distributed import DistEnv
from fixmatch.errors import UserError

log = logging.getLogger(__name__)

LABELED_STREAM, UNLABELED_STREAM = 0, 1  # keep the two sample streams' seeds apart


def device_inputs(config: Config, normalization: Normalization, device: torch.device,
                  start_batch: int, env: DistEnv) -> DeviceInputs:
    """The stage that normalises batches on `device` (and, with trainer.augment_on=device,
    draws the training views there, from batch `start_batch` on).

    Args:
        config: the run's typed config.
        normalization: the per-channel mean and std the images are normalised with.
        device: where the model runs.
        start_batch: the first training batch still to come (0, or the step resumed from).
        env: this process's place in the torchrun job.

    Returns:
        The input stage; it draws views only with trainer.augment_on=device, and gives
        channels-last images with trainer.channels_last, except to DDP ranks on the CPU.

    Raises:
        UserError: device augmentation cannot do the configured RandAugment.
    """
    views = None
    if config.trainer.augment_on is AugmentOn.device:
        ssl = config.ssl
        try:
            # trainer.compile compiles the views too: hundreds of small kernels become a few.
            augment = DeviceAugment(ssl.randaugment_variant, ssl.randaugment_num_ops,
                                    config.dataset.hflip, ssl.cutout_fraction,
                                    compiled=config.trainer.compile)
        except ValueError as error:
            raise UserError(f"trainer.augment_on=device: {error}") from None
        views = DeviceViews(augment, config.seed, start_batch, env.rank)
    return DeviceInputs(normalization, device, _channels_last(config, device, env), views)


def _channels_last(config: Config, device: torch.device, env: DistEnv) -> bool:
    # gloo DDP on the CPU with channels_last weights gives updates that differ from the
    # single-process step (tests/test_distributed.py); the CPU ranks keep NCHW.
    return config.trainer.channels_last and not (env.is_distributed and device.type == "cpu")


def _unlabeled_pool(arrays: DatasetArrays) -> Tuple[StackedImages, np.ndarray]:
    # The paper's unlabeled set is the whole training set (labels dropped), plus any
    # images that never had labels; the latter carry the target -1 ("unknown").
    extra = arrays.unlabeled if arrays.unlabeled is not None else arrays.train.images[:0]
    images = StackedImages(arrays.train.images, extra)
    targets = np.concatenate([arrays.train.targets, np.full(len(extra), -1, dtype=np.int64)])
    return images, targets


def resident_images(config: Config, arrays: DatasetArrays, device: torch.device) -> Optional[ResidentImages]:
    """With trainer.augment_on=device on a GPU, the training images (and any extra unlabeled
    ones) copied to it once, for both training streams to gather from; None where the loaders
    keep serving them (CPU views, a CPU device, or images too large for the GPU).

    Args:
        config: the run's typed config.
        arrays: the loaded dataset.
        device: where the model runs.

    Returns:
        The images of the unlabeled pool (the training set, then any extra unlabeled ones,
        whose target is -1) on the device, or None.
    """
    if config.trainer.augment_on is not AugmentOn.device or device.type != "cuda":
        return None
    images, targets = _unlabeled_pool(arrays)
    num_bytes = sum(part.nbytes for part in images.parts)
    if not fits_on_device(num_bytes, device):
        log.info("training images (%.1f GiB) stay with the loaders: too large to keep on %s",
                 num_bytes / 2**30, device)
        return None
    log.info("training images (%.2f GiB) kept on %s; batches are gathered there", num_bytes / 2**30, device)
    return ResidentImages.from_arrays(images.parts, targets, device)


def labeled_batches(config: Config, arrays: DatasetArrays, split: LabeledSplit,
                    device: torch.device, start_batch: int, env: DistEnv,
                    cta_probe: Optional[CTAProbe], resident: Optional[ResidentImages] = None) -> Iterator:
    """This rank's endless stream of labeled batches (weak views), from batch `start_batch` on;
    with CTAugment each image also brings a probe view and its policy. With `resident` images
    the batches are gathered from them on the device (raw, for device views).

    Args:
        config: the run's typed config.
        arrays: the loaded dataset.
        split: the labeled split; its indices are the images drawn from.
        device: where the model runs (pinned memory on CUDA).
        start_batch: index of the first batch to yield, to continue the stream on a resume.
        env: this process's rank and world size; each rank gets its share of every batch.
        cta_probe: the CTAugment probe, None without CTAugment.
        resident: the images already on the device (`resident_images`), or None.

    Returns:
        An endless iterator of this rank's shares of the labeled batches (ssl.batch_size
        images over all ranks).
    """
    sampler = InfiniteBatchSampler(split.indices, config.ssl.batch_size, config.seed,
                                   LABELED_STREAM, start_batch, env.rank, env.world_size)
    if resident is not None:
        return ResidentBatches(resident, sampler)  # labeled indices lie in its training part
    on_cpu = config.trainer.augment_on is AugmentOn.cpu
    transform = WeakTransform(config.dataset.hflip) if on_cpu else EvalTransform()
    if cta_probe is not None:
        # Each labeled image also yields a probe view and its policy (CTAProbe.split).
        transform = WeakProbeTransform(config.dataset.hflip, CTAugment(config.ssl.cta_depth))
    dataset = AugmentedImages(arrays.train.images, arrays.train.targets, transform)
    return build_train_loader(dataset, sampler, config.trainer.num_workers, device.type == "cuda")


def build_views(config: Config) -> Tuple[WeakTransform, Pipeline]:
    """The weak and strong pipelines of the unlabeled images (also what `preview` draws).

    With CTAugment the strong pipeline draws its policy from the initial rates; training
    passes policies from the main process instead (`unlabeled_batches`).

    Args:
        config: the run's typed config (dataset.hflip and the ssl augmentation settings).

    Returns:
        The weak pipeline and the strong one (RandAugment or CTAugment, then Cutout).

    Raises:
        UserError: for a RandAugment variant that does not exist.
    """
    dataset, ssl = config.dataset, config.ssl
    if ssl.strong_augment is StrongAugment.ctaugment:
        return WeakTransform(dataset.hflip), CTASampledStrongTransform(
            CTAStrongTransform(dataset.hflip, ssl.cutout_fraction),
            CTAugment(ssl.cta_depth, ssl.cta_threshold, ssl.cta_decay))
    try:
        randaugment = RandAugment(ssl.randaugment_variant, ssl.randaugment_num_ops)
    except ValueError as error:
        raise UserError(f"ssl.randaugment_variant: {error}") from None
    weak = WeakTransform(dataset.hflip)
    strong = StrongTransform(dataset.hflip, randaugment, ssl.cutout_fraction)
    return weak, strong


def unlabeled_batches(config: Config, arrays: DatasetArrays, split: LabeledSplit,
                      device: torch.device, start_batch: int, env: DistEnv,
                      cta_probe: Optional[CTAProbe], resident: Optional[ResidentImages] = None) -> Iterator:
    """This rank's endless stream of unlabeled (weak, strong) batches, from batch `start_batch` on
    (raw images gathered on the device when `resident` is given).

    Args:
        config: the run's typed config.
        arrays: the loaded dataset; the pool is its training images plus any extra
            unlabeled ones.
        split: the labeled split, left out of the pool when
            ssl.include_labeled_in_unlabeled is false.
        device: where the model runs (pinned memory on CUDA).
        start_batch: index of the first batch to yield, to continue the stream on a resume.
        env: this process's rank and world size; each rank gets its share of every batch.
        cta_probe: the CTAugment probe whose policies the strong views apply, None without
            CTAugment.
        resident: the images already on the device (`resident_images`), or None.

    Returns:
        An endless iterator of this rank's shares of the unlabeled batches, each of
        ssl.batch_size x ssl.unlabeled_ratio images over all ranks.

    Raises:
        UserError: no image is left unlabeled, or the RandAugment variant does not exist.
    """
    ssl = config.ssl
    weak, strong = build_views(config)
    policies = None
    if cta_probe is not None:
        # CTAugment: the sampler draws each sample's policy in this process, from the rates of
        # `ssl.cta_policy_lag` steps ago (cta_policies explains why); the workers apply it.
        strong = CTAStrongTransform(config.dataset.hflip, ssl.cutout_fraction)
        policies = cta_probe.schedule.policies
    images, targets = _unlabeled_pool(arrays)
    indices = range(len(targets))
    if not ssl.include_labeled_in_unlabeled:
        labeled = set(split.indices)
        indices = [index for index in indices if index not in labeled]
    if not indices:
        raise UserError("no unlabeled images: the training set is all labeled and "
                        "ssl.include_labeled_in_unlabeled=false; add unlabeled images or set it true")
    batch_size = ssl.batch_size * ssl.unlabeled_ratio
    sampler = InfiniteBatchSampler(list(indices), batch_size, config.seed, UNLABELED_STREAM,
                                   start_batch, env.rank, env.world_size, policies)
    if resident is not None:
        return ResidentBatches(resident, sampler)
    on_cpu = config.trainer.augment_on is AugmentOn.cpu
    # Device augmentation: the loaders ship each image once, as it is (DeviceInputs draws both views).
    pair = CTAWeakStrongTransform if cta_probe is not None else WeakStrongTransform
    transform = pair(weak, strong) if on_cpu else EvalTransform()
    dataset = AugmentedImages(images, targets, transform)
    return build_train_loader(dataset, sampler, config.trainer.num_workers, device.type == "cuda")


def eval_batches(config: Config, arrays: DatasetArrays, device: torch.device,
                 env: DistEnv) -> DataLoader:
    """This rank's share of the test images, unaugmented, in trainer.eval_batch_size batches.

    Args:
        config: the run's typed config.
        arrays: the loaded dataset; its test part is evaluated.
        device: where the model runs (pinned memory on CUDA).
        env: this process's rank and world size; each rank takes every world_size-th image.

    Returns:
        A loader that goes through this rank's test images once, in order.
    """
    test_set = AugmentedImages(arrays.test.images, arrays.test.targets, EvalTransform())
    return build_eval_loader(
        test_set, config.trainer.eval_batch_size, config.trainer.num_workers, device.type == "cuda",
        env.rank, env.world_size,
    )
