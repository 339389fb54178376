"""Dataset sources: each turns a DatasetConfig into uint8 image arrays and integer labels.

A source knows where the images live and how they are stored, nothing about
augmentation, splits or models. Add a dataset by adding a function to DATASET_SOURCES.
"""

import hashlib
import importlib
import os
import pickle
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from fixmatch.config import DatasetConfig
from fixmatch.data.normalization import check_mean_std
from fixmatch.errors import UserError


@dataclass(frozen=True)
class ImageSet:
    """Images as (N, H, W, C) uint8 with their (N,) int64 labels."""

    images: np.ndarray
    targets: np.ndarray


@dataclass(frozen=True)
class DatasetArrays:
    """The training and test images of one dataset and the names of its classes."""

    train: ImageSet
    test: ImageSet
    class_names: List[str]
    # Images without labels beyond the training set (STL-10's 100k, a folder's
    # unlabeled/), as (N, H, W, C) uint8; None when the dataset has none.
    unlabeled: Optional[np.ndarray] = None
    # The dataset's official labeled subsets, as indices into `train` (STL-10's 10 folds
    # of 1000); used instead of a drawn split when ssl.num_labeled equals their size.
    labeled_folds: Optional[List[List[int]]] = None
    # Where each training image came from, relative to dataset.root ("labeled/cat/01.png"),
    # for sources that read a file per image; None for array files (CIFAR, SVHN, ...).
    train_files: Optional[List[str]] = None
    # The same for the `unlabeled` images ("unlabeled/0001.png"); None for array files.
    unlabeled_files: Optional[List[str]] = None

    @cached_property  # hashing a large folder's paths takes a moment; asked for thrice
    def training_set(self) -> Dict[str, object]:
        """What a labeled split is drawn from, to recognise it on resume: the number of
        training images and a sha256 of their labels and (image folders) their paths.

        Paths are relative, so the same images under another dataset.root match; an image
        added to or removed from the pool changes it (and shifts the indices a split holds).
        """
        digest = hashlib.sha256(np.ascontiguousarray(self.train.targets, dtype="<i8").tobytes())
        if self.train_files is not None:
            # os.fsencode: a name that is not UTF-8 (surrogate-escaped) hashes as its bytes
            digest.update(os.fsencode("\n".join(self.train_files)))
        return {"num_images": int(len(self.train.targets)), "sha256": digest.hexdigest()}

    @cached_property
    def test_set(self) -> Dict[str, object]:
        """The images every evaluation scores, to notice on resume that they changed: their
        number and a sha256 of their labels and pixels."""
        digest = hashlib.sha256(np.ascontiguousarray(self.test.targets, dtype="<i8").tobytes())
        digest.update(np.ascontiguousarray(self.test.images).data)
        return {"num_images": int(len(self.test.targets)), "sha256": digest.hexdigest()}

    @cached_property
    def unlabeled_set(self) -> Optional[Dict[str, object]]:
        """The extra unlabeled images, to recognise them on resume: their number and (image
        folders) a sha256 of their relative paths; None when the dataset has none."""
        if self.unlabeled is None:
            return None
        files = self.unlabeled_files
        digest = hashlib.sha256(os.fsencode("\n".join(files))).hexdigest() if files is not None else None
        return {"num_images": int(len(self.unlabeled)), "sha256": digest}


def load_dataset(config: DatasetConfig) -> DatasetArrays:
    """Load the dataset that `config.name` names and check it against the config.

    Args:
        config: the dataset settings (name, root, download, image size, channels, number of
            classes, mean/std).

    Returns:
        The training and test images with the class names and, where the dataset has them,
        its unlabeled images, official folds and file names.

    Raises:
        UserError: for an unknown name, missing files, images that do not match
            the configured size, channels or number of classes, or a dataset.mean/std that
            does not fit the channels.
    """
    if config.name not in DATASET_SOURCES:
        raise UserError(
            f"dataset.name={config.name!r} is not a known dataset; "
            f"choose one of {sorted(DATASET_SOURCES)}"
        )
    arrays = DATASET_SOURCES[config.name](config)
    _check_matches_config(arrays, config)
    return arrays


def _check_matches_config(arrays: DatasetArrays, config: DatasetConfig) -> None:
    _, height, width, channels = arrays.train.images.shape
    if (height, width, channels) != (config.image_size, config.image_size, config.channels):
        raise UserError(
            f"dataset {config.name!r} has {height}x{width}x{channels} images but the config "
            f"says dataset.image_size={config.image_size}, dataset.channels={config.channels}"
        )
    for part, images in (("test", arrays.test.images), ("unlabeled", arrays.unlabeled)):
        if images is not None and len(images) and images.shape[1:] != (height, width, channels):
            raise UserError(f"dataset {config.name!r}: its {part} images are "
                            f"{'x'.join(map(str, images.shape[1:]))}, its training images "
                            f"{height}x{width}x{channels}; every image must have the same size")
    # num_classes 0 takes the dataset's own count (an image folder's class folders).
    if config.num_classes and len(arrays.class_names) != config.num_classes:
        where = f" (dataset.root={config.root})" if config.root else ""
        raise UserError(
            f"dataset {config.name!r}{where} has {len(arrays.class_names)} classes "
            f"({_listed(arrays.class_names)}) but the config says dataset.num_classes="
            f"{config.num_classes}; set dataset.num_classes={len(arrays.class_names)}"
            + (" (or 0 to take the class folders as they are)" if config.name == "folder" else "")
            + " or point dataset.root at the right data"
        )
    check_mean_std(config.mean, config.std, channels)


# --- CIFAR in torchvision's python format -------------------------------------------

@dataclass(frozen=True)
class _CifarLayout:
    folder: str  # what the official archive unpacks to
    train_files: Tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    torchvision_class: str


_CIFAR10 = _CifarLayout(
    "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
    "batches.meta", "labels", "label_names", "CIFAR10",
)
_CIFAR100 = _CifarLayout(
    "cifar-100-python", ("train",), "test", "meta", "fine_labels", "fine_label_names",
    "CIFAR100",
)


def load_cifar(config: DatasetConfig, layout: _CifarLayout) -> DatasetArrays:
    """Read CIFAR-10/100 from `<root>/<folder>/`, downloading it first when allowed.

    Args:
        config: the dataset settings (root, download).
        layout: which of the two: file names, label keys and torchvision class.

    Returns:
        The training batches joined in order and the test batch, as (N, 32, 32, 3) uint8,
        with the class names of the archive's meta file.

    Raises:
        UserError: when files are missing and cannot be downloaded, or a file is not a
            readable CIFAR batch.
    """
    folder = Path(config.root).expanduser().resolve() / layout.folder
    if not _cifar_complete(folder, layout):
        _download_cifar(config, layout, folder)
    train = _concat([_read_cifar_batch(folder / name, layout) for name in layout.train_files])
    test = _read_cifar_batch(folder / layout.test_file, layout)
    meta = _unpickle(folder / layout.meta_file)
    return DatasetArrays(train=train, test=test, class_names=list(meta[layout.names_key]))


def _cifar_files(layout: _CifarLayout) -> Tuple[str, ...]:
    return layout.train_files + (layout.test_file, layout.meta_file)


def _cifar_complete(folder: Path, layout: _CifarLayout) -> bool:
    return all((folder / name).is_file() for name in _cifar_files(layout))


def _download_cifar(config: DatasetConfig, layout: _CifarLayout, folder: Path) -> None:
    hint = (
        f"put the extracted '{layout.folder}/' folder (torchvision's python format) "
        f"under {folder.parent} or point dataset.root at the folder that holds it"
    )
    missing = [name for name in _cifar_files(layout) if not (folder / name).is_file()]
    lacking = None
    if len(missing) < len(_cifar_files(layout)):  # some are there: name the others
        lacking = f"{folder} is missing {', '.join(missing)}"
    download_with_torchvision(config, folder, hint, layout.torchvision_class, str(folder.parent),
                              lacking=lacking)


def download_with_torchvision(config: DatasetConfig, folder: Path, hint: str,
                              torchvision_class: str, root: str, *, lacking: Optional[str] = None,
                              **kwargs) -> None:
    """Fetch missing files with `torchvision.datasets.<torchvision_class>(root, download=True)`.

    Args:
        config: the dataset config (its name and `download` flag).
        folder: where the files were expected (named in the error).
        hint: how to put the files there by hand.
        torchvision_class: the torchvision dataset class that knows the download.
        root: its `root` argument.
        lacking: what is missing, for the message, when some files are there
            ("<folder> is missing data_batch_3"); "no dataset files in <folder>" by default.
        **kwargs: its other arguments (e.g. `split="train"`).

    Raises:
        UserError: when downloads are off or the download fails (offline, say).
    """
    lacking = lacking or f"no dataset files in {folder}"
    import torchvision  # only needed for the download (and where it would fetch from)

    source = _source_url(getattr(torchvision.datasets, torchvision_class), kwargs.get("split"))
    hint += f" (the files come from {source})" if source else ""
    if not config.download:
        raise UserError(f"{config.name}: {lacking} and dataset.download=false; set "
                        f"dataset.download=true to fetch them (needs internet), or {hint}")

    created = [path for path in (Path(root), *Path(root).parents) if not path.exists()]
    try:
        getattr(torchvision.datasets, torchvision_class)(root, download=True, **kwargs)
    except (OSError, RuntimeError, ValueError) as error:  # URLError is an OSError
        _remove_empty(created)  # a failed download (offline) leaves no empty ./data behind
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"{config.name}: {lacking} and the download failed ({reason}); {hint}") from None


def _source_url(dataset_class, split: Optional[str]) -> Optional[str]:
    """Where torchvision downloads the dataset from, for the message of a failed download
    (the user may fetch it on another machine); None when the class does not say."""
    if isinstance(getattr(dataset_class, "url", None), str):
        return dataset_class.url  # CIFAR-10/100, STL-10
    files = getattr(dataset_class, "split_list", {}).get(split)  # SVHN: per split
    return files[0] if files and isinstance(files[0], str) else None


def _remove_empty(folders: Sequence[Path]) -> None:
    """Remove the folders (deepest first) that are empty; others are left as they are."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            pass


def _unpickle(path: Path) -> dict:
    # The CIFAR distribution is itself a pickle; only read files the user put in dataset.root.
    try:
        with path.open("rb") as file:
            return pickle.load(file, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as error:
        raise UserError(f"cannot read CIFAR file {path} ({error}); delete it to download it again") from None


def _read_cifar_batch(path: Path, layout: _CifarLayout) -> ImageSet:
    batch = _unpickle(path)
    try:
        images = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        targets = np.asarray(batch[layout.label_key], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(f"cannot read CIFAR file {path} (not a CIFAR batch: {error!r}); "
                        "delete it to download it again") from None
    if len(images) != len(targets):
        raise UserError(f"cannot read CIFAR file {path} ({len(images)} images but "
                        f"{len(targets)} labels); delete it to download it again")
    return ImageSet(images=np.ascontiguousarray(images), targets=targets)


def _concat(parts: List[ImageSet]) -> ImageSet:
    return ImageSet(
        images=np.concatenate([part.images for part in parts]),
        targets=np.concatenate([part.targets for part in parts]),
    )


# --- scikit-learn's handwritten digits (offline quickstart) --------------------------

DIGITS_TEST_PER_CLASS = 50  # 500 test images, the rest (1,297) for training
DIGITS_SPLIT_SEED = 0  # fixed, so every run and every seed is scored on the same test set


def load_digits(config: DatasetConfig) -> DatasetArrays:
    """The 1,797 8x8 digits bundled with scikit-learn, in a fixed stratified split.

    Args:
        config: unused: the digits ship with scikit-learn (no root, no download).

    Returns:
        1,297 training and 500 test images (50 per class, the same for every run and seed)
        as (N, 8, 8, 1) uint8 stretched from 0..16 to 0..255, classes "0" to "9".
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    # Pixel values are 0..16; stretch them to 0..255 so every source is uint8 images.
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    targets = bunch.target.astype(np.int64)
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    test_mask = np.zeros(len(targets), dtype=bool)
    for label in range(10):
        members = np.flatnonzero(targets == label)
        test_mask[rng.choice(members, size=DIGITS_TEST_PER_CLASS, replace=False)] = True
    return DatasetArrays(
        train=ImageSet(images=images[~test_mask], targets=targets[~test_mask]),
        test=ImageSet(images=images[test_mask], targets=targets[test_mask]),
        class_names=[str(digit) for digit in range(10)],
    )


def _source_in(module: str, function: str) -> Callable[[DatasetConfig], DatasetArrays]:
    """A source defined in another module, imported on first use: that module imports this
    one's types, so importing it here at load time would be circular."""
    def load(config: DatasetConfig) -> DatasetArrays:
        return getattr(importlib.import_module(module), function)(config)

    return load


# Shipped inside a package, with no files to point at: dataset.root does not apply to them.
BUNDLED_DATASETS = ("digits",)

DATASET_SOURCES: Dict[str, Callable[[DatasetConfig], DatasetArrays]] = {
    "cifar10": lambda config: load_cifar(config, _CIFAR10),
    "cifar100": lambda config: load_cifar(config, _CIFAR100),
    "digits": load_digits,
    "svhn": _source_in("fixmatch.data.torchvision_sources", "load_svhn"),
    "stl10": _source_in("fixmatch.data.torchvision_sources", "load_stl10"),
    "folder": _source_in("fixmatch.data.image_folder", "load_image_folder"),
}


def _listed(names: Sequence[str], shown: int = 12) -> str:
    """Class names for a message: all of them, or the first `shown` and how many more."""
    more = f", ... {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
