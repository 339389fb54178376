"""The data half of the composition root: the labeled split, the normalisation, the input
stage on the device and the train/test batch streams, wired from the typed config.

app.py calls these in construction order; like it, this module reads several config nodes.
"""

import json
import logging
from pathlib import Path
from typing import Callable, Iterator, Optional, Tuple

import numpy as np
import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch.utils.data import DataLoader
from yaml import YAMLError

from fixmatch.checkpoint import CheckpointError
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
from fixmatch.data.folder_listing import same_class_names
from fixmatch.data.loaders import (
    AugmentedImages,
    InfiniteBatchSampler,
    StackedImages,
    build_eval_loader,
    build_train_loader,
)
from fixmatch.data.normalization import Normalization, resolve_normalization
from fixmatch.data.randaugment import RandAugment
from fixmatch.data.resident import ResidentBatches, ResidentImages, fits_on_device
from fixmatch.data.split import LabeledSplit, draw_split, indices_sha256
from fixmatch.data.transforms import (
    EvalTransform,
    Pipeline,
    StrongTransform,
    WeakStrongTransform,
    WeakTransform,
)
from fixmatch.distributed import DistEnv, all_gather_objects
from fixmatch.errors import UserError
from fixmatch.resume import StartPlan

log = logging.getLogger(__name__)

LABELED_STREAM, UNLABELED_STREAM = 0, 1  # keep the two sample streams' seeds apart


def draw_new_split(config: Config, arrays: DatasetArrays) -> LabeledSplit:
    """The labeled split a new run draws from `arrays` as the config says.

    Raises:
        UserError: the dataset has one class, or the label count cannot be drawn from it.
    """
    if len(arrays.class_names) < 2:  # a one-output model would score 100 % by construction
        raise UserError(f"dataset {config.dataset.name!r} (dataset.root={config.dataset.root}) "
                        f"has one class ({', '.join(arrays.class_names)}); a classifier needs at "
                        "least two: add a class folder per class")
    return draw_split(arrays.train.targets, config.ssl.num_labeled, len(arrays.class_names),
                      config.ssl.split_seed, config.dataset.labeled_split.value,
                      arrays.labeled_folds, class_names=arrays.class_names)


def labeled_split(config: Config, arrays: DatasetArrays, plan: StartPlan) -> LabeledSplit:
    """Draw the split, or take it from the checkpoint when resuming (never re-drawn).

    Raises:
        CheckpointError: the checkpoint was trained on other classes or on other training
            images, or its split indexes past this dataset's training images.
    """
    if not plan.checkpoint:
        return draw_new_split(config, arrays)
    trained_on = plan.checkpoint.get("class_names")
    if trained_on is not None and not same_class_names(trained_on, arrays.class_names):
        # dataset.root may change on resume (the data moved), the classes may not.
        raise CheckpointError(
            f"cannot resume from {plan.checkpoint_path}: it was trained on the classes "
            f"{list(trained_on)}, but dataset.root={config.dataset.root} has "
            f"{list(arrays.class_names)}; point dataset.root at the run's data, or use another "
            "hydra.run.dir for a new run")
    _check_same_training_set(config, arrays, plan)
    _check_same_unlabeled_images(config, arrays, plan)
    indices = list(plan.checkpoint["labeled_indices"])
    if max(indices) >= len(arrays.train.targets):
        raise CheckpointError(
            f"cannot resume from {plan.checkpoint_path}: its labeled split indexes past the "
            f"{len(arrays.train.targets)} training images of dataset.root={config.dataset.root}"
        )
    per_class = np.bincount(arrays.train.targets[indices], minlength=len(arrays.class_names))
    return LabeledSplit(indices=indices, num_per_class=per_class.tolist(),
                        seed=config.ssl.split_seed, sha256=indices_sha256(indices))


def _check_same_training_set(config: Config, arrays: DatasetArrays, plan: StartPlan) -> None:
    """The split is a list of indices: they name the run's labeled images only in the
    training set they were drawn from (a checkpoint without its fingerprint predates it)."""
    saved = plan.checkpoint.get("training_set")
    current = arrays.training_set
    if saved is None or saved == current:
        return
    if saved["num_images"] != current["num_images"]:
        changed = (f"has {current['num_images']} training images, the run's split was drawn "
                   f"from {saved['num_images']}: images were added or removed")
    else:
        changed = (f"has as many training images as the run's split was drawn from "
                   f"({saved['num_images']}), but other files or labels")
    raise CheckpointError(
        f"cannot resume from {plan.checkpoint_path}: dataset.root={config.dataset.root} "
        f"{changed}, so its labeled indices would name other images; restore the images the "
        "run was trained on, or use another hydra.run.dir for a new run")


def _check_same_unlabeled_images(config: Config, arrays: DatasetArrays, plan: StartPlan) -> None:
    """The unlabeled stream is a function of the pool's order: other extra unlabeled images
    would resume a run that no longer equals the uninterrupted one (a checkpoint without the
    record predates it)."""
    if "unlabeled_set" not in plan.checkpoint:
        return
    saved, current = plan.checkpoint["unlabeled_set"], arrays.unlabeled_set
    if saved == current:
        return
    before, now = (record["num_images"] if record else 0 for record in (saved, current))
    if before != now:
        changed = f"has {now} extra unlabeled images, the run started with {before}"
    else:
        changed = f"has other extra unlabeled files than the run started with ({before} images)"
    raise CheckpointError(
        f"cannot resume from {plan.checkpoint_path}: dataset.root={config.dataset.root} "
        f"{changed}, so the resumed run would see another unlabeled stream; restore the "
        "images the run was trained on, or use another hydra.run.dir for a new run")


def warn_if_other_test_images(config: Config, arrays: DatasetArrays, plan: StartPlan) -> None:
    """A resumed run may be scored on other test images (a mislabeled one fixed, say), but
    its reported median then mixes evaluations on both sets: say so (a checkpoint without
    the record predates it)."""
    saved = plan.checkpoint.get("test_set") if plan.checkpoint else None
    current = arrays.test_set
    if saved is None or saved == current:
        return
    log.warning("dataset.root=%s has other test images than the run's evaluations so far "
                "(%d then, %d now): evaluations from step %d on score the new ones, and the "
                "median of the last 20 mixes both until 20 of them are on the new ones",
                config.dataset.root, saved["num_images"], current["num_images"], plan.checkpoint["step"])


def check_finished_run_data(config: Config, run_dir: Path, load: Callable[[], DatasetArrays]) -> None:
    """Refuse to call a completed run done when dataset.root now holds other data.

    A rerun of a completed run is only "nothing to do" if its root holds the run's classes
    and training images: dataset.root may change between runs of one experiment (the data
    moved), and the files below one root may change too (a class folder renamed, images
    added); then the user meant a new run and would get the old results.

    Args:
        config: the current config.
        run_dir: the completed run's folder (its config_resolved.yaml and split.json).
        load: loads the dataset at config.dataset.root.

    Raises:
        UserError: the root holds other classes or other training images.
    """
    try:
        saved = OmegaConf.load(run_dir / "config_resolved.yaml")
        recorded = json.loads((run_dir / "split.json").read_text())
    except (OSError, ValueError, OmegaConfBaseException, YAMLError):
        return  # nothing to compare with; the run's own files are not ours to judge
    saved_root = OmegaConf.select(saved, "dataset.root")
    if "class_names" not in recorded:
        return  # a run saved before split.json named its classes
    try:
        arrays = load()
    except UserError as error:  # the data is gone (deleted once trained): nothing to compare
        log.warning("%s: cannot read dataset.root to compare it with the completed run's data "
                    "(%s); the run is left as it is", run_dir, error)
        return
    if not same_class_names(recorded["class_names"], arrays.class_names):
        found = f"the classes {list(arrays.class_names)}, the run was trained on {list(recorded['class_names'])}"
    elif recorded.get("training_set", arrays.training_set) != arrays.training_set:
        found = "other training images than the run was trained on"
    else:
        return
    now = "now " if saved_root == config.dataset.root else ""
    raise UserError(
        f"{run_dir} holds a run completed on dataset.root={saved_root}, but dataset.root="
        f"{config.dataset.root} {now}has {found}; use another hydra.run.dir for a new run (the "
        "completed run's results are left as they are)")


def check_same_split_on_all_ranks(split: LabeledSplit, env: DistEnv) -> None:
    """Refuse a job whose ranks drew different labeled splits.

    Raises:
        UserError: the ranks' split fingerprints differ (they read different data).
    """
    # The popular port drew a split per rank: a "40-label" run saw up to 40 x world labels.
    fingerprints = all_gather_objects(split.sha256, env)
    if env.is_distributed:
        log.info("labeled split sha256 on ranks 0..%d: %s", env.world_size - 1, fingerprints)
    if len(set(fingerprints)) != 1:
        raise UserError(f"the ranks drew different labeled splits ({fingerprints}); "
                        "every rank must read the same dataset.root")


def input_normalization(config: Config, arrays: DatasetArrays, plan: StartPlan) -> Normalization:
    """dataset.mean/std, or (null) computed from the training images; a resumed run keeps
    the values it started with."""
    saved = plan.checkpoint.get("normalization") if plan.checkpoint else None
    normalization = resolve_normalization(config.dataset.mean, config.dataset.std,
                                          arrays.train.images, saved)
    log.info("normalisation (%s): mean %s, std %s", normalization.source,
             [round(value, 4) for value in normalization.mean],
             [round(value, 4) for value in normalization.std])
    return normalization


def device_inputs(config: Config, normalization: Normalization, device: torch.device,
                  start_batch: int, env: DistEnv) -> DeviceInputs:
    """The stage that normalises batches on `device` (and, with trainer.augment_on=device,
    draws the training views there, from batch `start_batch` on).

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
    keep serving them (CPU views, a CPU device, or images too large for the GPU)."""
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
    the batches are gathered from them on the device (raw, for device views)."""
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

    Raises:
        UserError: no image is left unlabeled.
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
    """This rank's share of the test images, unaugmented, in trainer.eval_batch_size batches."""
    test_set = AugmentedImages(arrays.test.images, arrays.test.targets, EvalTransform())
    return build_eval_loader(
        test_set, config.trainer.eval_batch_size, config.trainer.num_workers, device.type == "cuda",
        env.rank, env.world_size,
    )
