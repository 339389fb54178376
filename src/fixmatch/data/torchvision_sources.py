"""SVHN and STL-10 sources: read torchvision's on-disk formats directly into uint8 arrays.

torchvision is used only to download missing files; reading the files here keeps the
pixel layout explicit and lets tests write tiny files in the same formats.
"""

from pathlib import Path
from typing import List

import numpy as np

from fixmatch.config import DatasetConfig
from fixmatch.data.datasets import DatasetArrays, ImageSet, download_with_torchvision
from fixmatch.errors import UserError

# --- SVHN: <root>/{train,test}_32x32.mat ---------------------------------------------

SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}  # no "extra": the paper's SVHN


def load_svhn(config: DatasetConfig) -> DatasetArrays:
    """Read SVHN's train and test splits from `<root>/*_32x32.mat`, downloading them first
    when allowed. Class k is the digit k (the files' label 10 is the digit 0).

    Args:
        config: the dataset settings (root, download).

    Returns:
        The train and test splits as (N, 32, 32, 3) uint8, classes "0" to "9".

    Raises:
        UserError: when a file is missing and cannot be downloaded, or cannot be read.
    """
    folder = Path(config.root).expanduser().resolve()
    expected = list(SVHN_FILES.values())
    for split, name in SVHN_FILES.items():
        if not (folder / name).is_file():
            missing = [file for file in expected if not (folder / file).is_file()]
            hint = (f"expected {' and '.join(expected)} (torchvision's SVHN format) there, "
                    f"missing {', '.join(missing)}; put them in {folder} or point dataset.root "
                    "at the folder that holds them")
            download_with_torchvision(config, folder, hint, "SVHN", str(folder), split=split)
            _require_files(config, folder, [name], hint)
    return DatasetArrays(
        train=_read_svhn(folder / SVHN_FILES["train"]),
        test=_read_svhn(folder / SVHN_FILES["test"]),
        class_names=[str(digit) for digit in range(10)],
    )


def _read_svhn(path: Path) -> ImageSet:
    import scipy.io  # slow to import; only SVHN needs it
    from scipy.io.matlab import MatReadError

    fix = "delete it to download it again"
    try:
        mat = scipy.io.loadmat(str(path), variable_names=["X", "y"])
        images, labels = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    except (OSError, ValueError, KeyError, TypeError, MatReadError) as error:
        raise UserError(f"cannot read SVHN file {path} ({type(error).__name__}: {error}); {fix}") from None
    if images.ndim != 4 or images.shape[:3] != (32, 32, 3) or images.shape[3] != len(labels):
        raise UserError(f"cannot read SVHN file {path}: expected X of shape (32, 32, 3, N) and "
                        f"N labels y, got X {images.shape} and {len(labels)} labels; {fix}")
    if len(labels) and not np.isin(labels, np.arange(1, 11)).all():
        raise UserError(f"cannot read SVHN file {path}: labels must be 1..10, got "
                        f"{sorted(set(labels.tolist()) - set(range(1, 11)))[:5]}; {fix}")
    # .mat stores X as (row, column, channel, image); the digit 0 has the label 10.
    return ImageSet(images=np.ascontiguousarray(images.transpose(3, 0, 1, 2), dtype=np.uint8),
                    targets=(labels.astype(np.int64) % 10))


# --- STL-10: <root>/stl10_binary/ ----------------------------------------------------

STL10_FOLDER = "stl10_binary"
STL10_FILES = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "unlabeled_X.bin",
               "class_names.txt", "fold_indices.txt")
STL10_SIDE = 96
_STL10_IMAGE_BYTES = 3 * STL10_SIDE * STL10_SIDE


def load_stl10(config: DatasetConfig) -> DatasetArrays:
    """Read STL-10 from `<root>/stl10_binary/`, downloading it first when allowed.

    The 100,000 unlabeled images are memory-mapped, not read (2.7 GB); the 10 official
    folds of 1000 labeled images come with them.

    Args:
        config: the dataset settings (root, download).

    Returns:
        The train and test images as (N, 96, 96, 3) uint8, the class names of
        class_names.txt, the unlabeled images (memory-mapped) and the official folds.

    Raises:
        UserError: when files are missing and cannot be downloaded, or cannot be read.
    """
    folder = Path(config.root).expanduser().resolve() / STL10_FOLDER
    if not all((folder / name).is_file() for name in STL10_FILES):
        hint = (f"put the extracted '{STL10_FOLDER}/' folder (torchvision's STL-10 binary format: "
                f"{', '.join(STL10_FILES)}) under {folder.parent} or point dataset.root at "
                "the folder that holds it")
        download_with_torchvision(config, folder, hint, "STL10", str(folder.parent), split="train")
        _require_files(config, folder, list(STL10_FILES), hint)
    train = _read_stl10_labeled(folder, "train")
    return DatasetArrays(
        train=train,
        test=_read_stl10_labeled(folder, "test"),
        class_names=_read_lines(folder / "class_names.txt"),
        unlabeled=_stl10_images(folder / "unlabeled_X.bin", in_memory=False),
        labeled_folds=_read_folds(folder / "fold_indices.txt", len(train.targets)),
    )


def _stl10_images(path: Path, in_memory: bool) -> np.ndarray:
    size = path.stat().st_size
    if size == 0 or size % _STL10_IMAGE_BYTES:
        raise UserError(f"cannot read STL-10 file {path}: {size} bytes is not a whole number of "
                        f"96x96x3 images ({_STL10_IMAGE_BYTES} bytes each); delete it to "
                        "download it again")
    shape = (size // _STL10_IMAGE_BYTES, 3, STL10_SIDE, STL10_SIDE)
    if in_memory:
        data = np.fromfile(path, dtype=np.uint8).reshape(shape)
    else:
        data = np.memmap(path, dtype=np.uint8, mode="r", shape=shape)
    # Each channel is stored column-major (MATLAB order): data[n, c, x, y] is pixel (y, x).
    images = data.transpose(0, 3, 2, 1)
    return np.ascontiguousarray(images) if in_memory else images


def _read_stl10_labeled(folder: Path, split: str) -> ImageSet:
    images = _stl10_images(folder / f"{split}_X.bin", in_memory=True)
    labels_path = folder / f"{split}_y.bin"
    labels = np.fromfile(labels_path, dtype=np.uint8).astype(np.int64)
    if len(labels) != len(images) or not np.isin(labels, np.arange(1, 11)).all():
        raise UserError(f"cannot read STL-10 file {labels_path}: expected {len(images)} labels "
                        f"in 1..10 (one byte each), got {len(labels)} bytes; delete the "
                        f"'{STL10_FOLDER}/' folder to download it again")
    return ImageSet(images=images, targets=labels - 1)  # stored 1..10


def _read_lines(path: Path) -> List[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _read_folds(path: Path, num_train: int) -> List[List[int]]:
    """fold_indices.txt: one line per fold, 0-based indices into the training images."""
    try:
        folds = [[int(index) for index in line.split()] for line in _read_lines(path)]
    except ValueError as error:
        raise UserError(f"cannot read STL-10 file {path} ({error}); expected lines of "
                        "whitespace-separated image indices") from None
    sizes = {len(fold) for fold in folds}
    problems = [
        "no folds" if not folds else "",
        f"folds of different sizes {sorted(sizes)}" if len(sizes) > 1 else "",
        f"an index outside 0..{num_train - 1}" if any(
            not 0 <= index < num_train for fold in folds for index in fold) else "",
        "a repeated index within a fold" if any(len(set(fold)) != len(fold) for fold in folds) else "",
    ]
    problems = [problem for problem in problems if problem]
    if problems:
        raise UserError(f"cannot read STL-10 file {path}: {'; '.join(problems)}; delete the "
                        f"'{STL10_FOLDER}/' folder to download it again")
    return folds


def _require_files(config: DatasetConfig, folder: Path, names: List[str], hint: str) -> None:
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise UserError(f"{config.name}: the download finished but {', '.join(missing)} is still "
                        f"missing in {folder}; {hint}")
