"""The run's data decided from the typed config: the labeled split (drawn, or the
checkpoint's, checked against the data it indexes), the input normalisation, and the checks
that a resumed or finished run's data is the data it trained on. Part of the composition
root's data half (with pipeline.py): it reads several config nodes.
"""

import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from yaml import YAMLError

from fixmatch.checkpoint import CheckpointError
from fixmatch.config import Config
from fixmatch.data.datasets import DatasetArrays
from fixmatch.data.folder_listing import same_class_names
from fixmatch.data.normalization import Normalization, resolve_normalization
from fixmatch.data.split import LabeledSplit, draw_split, indices_sha256
from fixmatch.distributed import DistEnv, all_gather_objects
from fixmatch.errors import UserError
from fixmatch.resume import StartPlan

log = logging.getLogger(__name__)


def draw_new_split(config: Config, arrays: DatasetArrays) -> LabeledSplit:
    """The labeled split a new run draws from `arrays` as the config says.

    Args:
        config: the run's typed config (ssl.num_labeled, ssl.split_seed,
            dataset.labeled_split).
        arrays: the loaded dataset, with its class names and any official folds.

    Returns:
        The split, with sorted indices into the training images.

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

    Args:
        config: the run's typed config.
        arrays: the loaded dataset.
        plan: how the run starts; its checkpoint, when resuming, holds the split.

    Returns:
        The split; a resumed one has the checkpoint's indices, its per-class counts counted
        in this dataset's labels.

    Raises:
        UserError: a new run's split cannot be drawn (see `draw_new_split`).
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
    the record predates it).

    Args:
        config: the run's typed config (dataset.root, for the warning).
        arrays: the loaded dataset; its test-set fingerprint is compared.
        plan: how the run starts; nothing is compared for a new run.
    """
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

    Every rank must call it (it gathers from all of them).

    Args:
        split: this rank's split.
        env: this process's place in the job; a single process always passes.

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
    the values it started with.

    Args:
        config: the run's typed config (dataset.mean and dataset.std).
        arrays: the loaded dataset; its training images give the computed statistics.
        plan: how the run starts; a checkpoint's normalization record wins.

    Returns:
        The per-channel mean and std, in [0, 1] pixel units, and where they came from.

    Raises:
        UserError: only one of dataset.mean/std is given, or a std is not positive.
    """
    saved = plan.checkpoint.get("normalization") if plan.checkpoint else None
    normalization = resolve_normalization(config.dataset.mean, config.dataset.std,
                                          arrays.train.images, saved)
    log.info("normalisation (%s): mean %s, std %s", normalization.source,
             [round(value, 4) for value in normalization.mean],
             [round(value, 4) for value in normalization.std])
    return normalization
