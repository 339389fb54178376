"""Image folders -> arrays: `labeled/<class>/` (or `train/<class>/`), an optional
`unlabeled/` and `test/<class>/` are listed, checked, decoded to one size and mode, and
cached on disk (image_cache.py) so that later runs start in seconds.
"""

import itertools
import logging
import multiprocessing
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fixmatch.config import DatasetConfig, Resize
from fixmatch.data.datasets import DatasetArrays, ImageSet
from fixmatch.data.image_cache import ImageCache, cache_key
from fixmatch.errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")  # matched case-insensitively
LAYOUT = ("expected labeled/<class>/*, unlabeled/** (optional) and test/<class>/*, "
          "or train/<class>/* and test/<class>/*")
PARALLEL_MIN_FILES = 2000  # below this, starting decoder processes costs more than it saves
CHUNK_FILES = 500
MAX_DECODER_PROCESSES = 8
# What Pillow raises on a corrupt, truncated or unsupported file (UnidentifiedImageError
# is an OSError; some format plugins raise SyntaxError, struct.error or EOFError).
UNREADABLE_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error,
               Image.DecompressionBombError)


@dataclass(frozen=True)
class ImageFile:
    """One image file, relative to the folder's root, with what the cache key needs."""

    path: str  # relative to the root, "/"-separated
    size: int  # bytes
    mtime_ns: int
    target: int  # class index; -1 for unlabeled/


@dataclass(frozen=True)
class FolderListing:
    """The images of a folder in decoding order: training pool, unlabeled, test."""

    pool: str  # "labeled" or "train": the folder whose images carry training labels
    class_names: List[str]
    train: List[ImageFile]
    unlabeled: List[ImageFile]
    test: List[ImageFile]
    ignored: List[str]  # files that are not images (by extension) or not in a class folder


@dataclass(frozen=True)
class Preprocessing:
    """How every image is decoded: mode, then size."""

    image_size: int
    channels: int
    resize: Resize

    def tag(self) -> str:
        """Names the preprocessing in cache file names, e.g. "32px-3ch-resize"."""
        return f"{self.image_size}px-{self.channels}ch-{self.resize.value}"


def load_image_folder(config: DatasetConfig) -> DatasetArrays:
    """Read `dataset.root` in either layout into uint8 arrays (decoded once, then cached).

    Raises:
        UserError: for a missing folder, an empty or unknown class folder, an unreadable
            image (unless dataset.skip_bad_images), an image of the wrong size with
            dataset.resize=none, or bad dataset.channels / dataset.image_size.
    """
    if config.channels not in (1, 3):
        raise UserError(f"dataset.channels={config.channels} must be 1 (grayscale) or 3 (RGB)")
    if config.image_size < 1:
        raise UserError(f"dataset.image_size={config.image_size} must be positive")
    root = Path(config.root).expanduser().resolve()
    listing = list_image_folder(root, config.root)
    prep = Preprocessing(config.image_size, config.channels, config.resize)
    images, index = _decoded_images(root, listing, prep)
    return _to_arrays(root, images, index, config.skip_bad_images)


def is_test_only(config: DatasetConfig) -> bool:
    """`dataset.root` holds test/ and neither labeled/ nor train/: new data for a trained model."""
    root = Path(config.root).expanduser().resolve()
    return (root / "test").is_dir() and not any((root / pool).is_dir() for pool in ("labeled", "train"))


def load_test_folder(config: DatasetConfig, class_names: Sequence[str]) -> ImageSet:
    """Read only `<root>/test/<class>/*`, labelled by a trained model's `class_names`
    (evaluate on new data; a class of the model may have no folder).

    Raises:
        UserError: for a missing test/, a class folder the model does not know, an empty
            class folder or an unreadable image (unless dataset.skip_bad_images).
    """
    root = Path(config.root).expanduser().resolve()
    if not (root / "test").is_dir():
        raise UserError(f"dataset.root={config.root}: no folder 'test/' found in {root}; "
                        "expected test/<class>/*")
    ignored: List[str] = []
    names = _class_folders(root, "test", ignored)
    unknown = sorted(set(names) - set(class_names))
    if not names or unknown:
        raise UserError(f"{root / 'test' / (unknown[0] if unknown else '')} is not a class the "
                        f"model was trained on ({', '.join(class_names)}); test/ must use those "
                        "class names: rename or remove it")
    test = _class_files(root, "test", [name for name in class_names if name in names], ignored,
                        class_names)
    listing = FolderListing("test", list(class_names), [], [], test, ignored)
    images, index = _decoded_images(root, listing, Preprocessing(config.image_size,
                                                                 config.channels, config.resize))
    _check_bad_images(root, index, config.skip_bad_images)
    return ImageSet(images=images, targets=np.asarray(index["targets"], dtype=np.int64))


def _decoded_images(root: Path, listing: FolderListing,
                    prep: Preprocessing) -> Tuple[np.ndarray, dict]:
    """The listing's images and index from the cache; decoded and cached on a miss."""
    files = listing.train + listing.unlabeled + listing.test
    key = cache_key([(file.path, file.size, file.mtime_ns) for file in files],
                    {"layout": listing.pool, "preprocessing": prep.tag()})
    cache = ImageCache(root, prep.tag())
    start = time.perf_counter()
    cached = cache.load(key)
    if cached is not None:
        log.info("read %d decoded images of %s from the cache (%.2f s)", len(cached[0]), root,
                 time.perf_counter() - start)
        return cached
    with cache.lock():
        cached = cache.load(key)  # another process (a DDP rank) may have decoded it meanwhile
        if cached is not None:
            return cached
        images, index = _decode_listing(root, listing, prep)
        where = cache.save(key, images, index)
    log.info("decoded %d images of %s in %.1f s%s", len(files), root, time.perf_counter() - start,
             f"; cached in {where}" if where else "")
    return images, index


def list_image_folder(root: Path, root_setting: str) -> FolderListing:
    """List and check a folder's layout, without opening any image.

    Args:
        root: the folder, absolute.
        root_setting: dataset.root as the user wrote it (for the messages).

    Raises:
        UserError: for a missing root, labeled/ (or train/) or test/, an empty class
            folder, or a test/ class that labeled/ (or train/) does not have.
    """
    where = f"dataset.root={root_setting}"
    if not root.is_dir():
        raise UserError(f"{where}: no such folder ({root}); point dataset.root at the folder "
                        f"that holds labeled/ (or train/) and test/")
    pools = [name for name in ("labeled", "train") if (root / name).is_dir()]
    if not pools:
        raise UserError(f"{where}: no folder 'labeled/' or 'train/' found in {root}; {LAYOUT}")
    if len(pools) == 2:
        raise UserError(f"{where}: both labeled/ and train/ found in {root}; keep one of the "
                        f"two layouts ({LAYOUT})")
    if not (root / "test").is_dir():
        raise UserError(f"{where}: no folder 'test/' found in {root}; {LAYOUT}")
    pool = pools[0]
    ignored: List[str] = []
    class_names = _class_folders(root, pool, ignored)
    if not class_names:
        raise UserError(f"{root / pool} has no class folders; {LAYOUT}")
    train = _class_files(root, pool, class_names, ignored)
    test_names = _class_folders(root, "test", ignored)
    if not test_names:
        raise UserError(f"{root / 'test'} has no class folders; {LAYOUT}")
    unknown = sorted(set(test_names) - set(class_names))
    if unknown:
        raise UserError(f"{root / 'test' / unknown[0]} is not a class of {pool}/ (its classes: "
                        f"{', '.join(class_names)}); test/ must use the class names of {pool}/: "
                        "rename or remove it")
    test = _class_files(root, "test", [name for name in class_names if name in test_names],
                        ignored, class_names)
    missing = [name for name in class_names if name not in test_names]
    if missing:
        log.warning("classes %s have no folder in %s: they are trained on but never evaluated",
                    ", ".join(missing), root / "test")
    unlabeled = [ImageFile(path, size, mtime, -1) for path, size, mtime in
                 (_walk(root, "unlabeled", ignored) if (root / "unlabeled").is_dir() else [])]
    if ignored:
        log.info("ignored %d files of %s that are not images (%s) or not in a class folder, "
                 "e.g. %s", len(ignored), root, ", ".join(IMAGE_EXTENSIONS), ", ".join(ignored[:3]))
    return FolderListing(pool, class_names, train, unlabeled, test, ignored)


def _class_folders(root: Path, folder: str, ignored: List[str]) -> List[str]:
    names = []
    with os.scandir(root / folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue  # .ipynb_checkpoints, .git, .DS_Store: never a class
            if entry.is_dir():
                names.append(entry.name)
            else:
                ignored.append(f"{folder}/{entry.name}")
    return sorted(names)


def _class_files(root: Path, folder: str, names: Sequence[str], ignored: List[str],
                 all_names: Optional[Sequence[str]] = None) -> List[ImageFile]:
    label_of = {name: label for label, name in enumerate(all_names or names)}
    files = []
    for name in names:
        found = _walk(root, f"{folder}/{name}", ignored)
        if not found:
            raise UserError(f"class folder {root / folder / name} holds no images "
                            f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder")
        files += [ImageFile(path, size, mtime, label_of[name]) for path, size, mtime in found]
    return files


def _walk(root: Path, folder: str, ignored: List[str]) -> List[Tuple[str, int, int]]:
    """(path, size, mtime) of every image under root/folder, recursively, sorted by path."""
    found = []
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            entries = list(os.scandir(root / current))
        except OSError as error:
            raise UserError(f"cannot list {root / current} ({error.strerror or error}); "
                            "make it readable or remove it") from None
        for entry in entries:
            relative = f"{current}/{entry.name}"
            if entry.is_dir():
                if not entry.name.startswith("."):
                    pending.append(relative)
            elif entry.name.startswith(".") or not entry.name.lower().endswith(IMAGE_EXTENSIONS):
                ignored.append(relative)
            else:
                try:
                    stat = entry.stat()
                except OSError:  # a broken link
                    ignored.append(relative)
                    continue
                found.append((relative, stat.st_size, stat.st_mtime_ns))
    return sorted(found)


# --- decoding --------------------------------------------------------------------------

def decode_image(path: Path, prep: Preprocessing) -> np.ndarray:
    """Decode one file to a uint8 (image_size, image_size, channels) array.

    Any mode is converted: alpha is dropped, palettes expanded, 16-bit values scaled to
    8 bits, 32-bit integer values clipped to 0..255, float values in [0, 1] scaled by 255
    (others clipped); EXIF orientation is applied.

    Args:
        path: the image file.
        prep: the target size, channels and resize rule.

    Returns:
        The image as uint8 (image_size, image_size, channels).

    Raises:
        OSError: the file is corrupt, truncated or not an image (or another exception of
            UNREADABLE_IMAGE_ERRORS, depending on the format's plugin).
        UserError: with dataset.resize=none, an image that is not image_size square.
    """
    with Image.open(path) as opened:
        opened.load()
        image = _convert(ImageOps.exif_transpose(opened), prep.channels)
    image = _fit(image, prep, path)
    array = np.asarray(image, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def _convert(image: Image.Image, channels: int) -> Image.Image:
    mode = "L" if channels == 1 else "RGB"
    if image.mode.startswith("I;16"):  # Pillow's convert() would clip 16-bit values at 255
        wide = np.asarray(image).astype(np.uint32)
        image = Image.fromarray(((wide + 128) // 257).astype(np.uint8))
    elif image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F" and values.size and values.min() >= 0 and values.max() <= 1:
            values = values * 255
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # what Pillow asks for before dropping the alpha
    return image if image.mode == mode else image.convert(mode)


def _fit(image: Image.Image, prep: Preprocessing, path: Path) -> Image.Image:
    side = prep.image_size
    width, height = image.size
    if (width, height) == (side, side):
        return image
    if prep.resize is Resize.none:
        raise UserError(f"{path} is {width}x{height} but dataset.image_size={side} and "
                        "dataset.resize=none; set dataset.resize=resize or center_crop, or "
                        "resize the images")
    if prep.resize is Resize.resize:
        # Pillow widens the bilinear kernel when shrinking, so this is antialiased.
        return image.resize((side, side), Image.Resampling.BILINEAR)
    if min(width, height) < side:  # upscale only as much as the crop needs
        scale = side / min(width, height)
        width, height = max(side, round(width * scale)), max(side, round(height * scale))
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def _decode_chunk(root: Path, paths: Sequence[str], prep: Preprocessing
                  ) -> Tuple[np.ndarray, List[Tuple[int, str]]]:
    """Decode `paths`; returns their images and (position, reason) of the unreadable ones."""
    images = np.zeros((len(paths), prep.image_size, prep.image_size, prep.channels), np.uint8)
    bad = []
    for position, path in enumerate(paths):
        try:
            images[position] = decode_image(root / path, prep)
        except UnidentifiedImageError:
            bad.append((position, "not an image file that Pillow can identify"))
        except UNREADABLE_IMAGE_ERRORS as error:
            bad.append((position, f"{type(error).__name__}: {error}"))
    return images, bad


def _decode_listing(root: Path, listing: FolderListing,
                    prep: Preprocessing) -> Tuple[np.ndarray, dict]:
    """Decode every image of the listing; the index records what is where (and what failed)."""
    files = listing.train + listing.unlabeled + listing.test
    paths = [file.path for file in files]
    log.info("decoding %d images of %s to %s (once: later runs read the cache)", len(paths), root,
             prep.tag())
    images = np.empty((len(paths), prep.image_size, prep.image_size, prep.channels), np.uint8)
    bad = {}
    for start, (chunk, chunk_bad) in _decode_chunks(root, paths, prep):
        images[start:start + len(chunk)] = chunk
        bad.update({start + position: reason for position, reason in chunk_bad})
    keep = np.array([i not in bad for i in range(len(files))], dtype=bool)
    parts = [len(listing.train), len(listing.unlabeled), len(listing.test)]
    bounds = np.cumsum([0] + parts)
    index = {
        "pool": listing.pool,
        "class_names": listing.class_names,
        "files": [path for path, kept in zip(paths, keep) if kept],
        "targets": [file.target for file, kept in zip(files, keep) if kept],
        "parts": [int(keep[bounds[i]:bounds[i + 1]].sum()) for i in range(3)],
        "bad_images": [[paths[i], reason] for i, reason in sorted(bad.items())],
    }
    return (images[keep] if bad else images), index


def _decode_chunks(root: Path, paths: Sequence[str], prep: Preprocessing) -> Iterator:
    """(first position, _decode_chunk result) of consecutive chunks of `paths`, in order."""
    starts = range(0, len(paths), CHUNK_FILES)
    arguments = [(root, paths[start:start + CHUNK_FILES], prep) for start in starts]
    workers = _decoder_processes()
    if len(paths) < PARALLEL_MIN_FILES or workers < 2:
        yield from zip(starts, itertools.starmap(_decode_chunk, arguments))
        return
    # fork, as the DataLoader workers do: the children need no imports or pickled state.
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield from zip(starts, pool.imap(_decode_chunk_arguments, arguments))


def _decode_chunk_arguments(arguments: tuple) -> Tuple[np.ndarray, List[Tuple[int, str]]]:
    return _decode_chunk(*arguments)


def _decoder_processes() -> int:
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(cores or 1, MAX_DECODER_PROCESSES)


def _check_bad_images(root: Path, index: dict, skip_bad_images: bool) -> None:
    bad = index["bad_images"]
    if bad and not skip_bad_images:
        path, reason = bad[0]
        more = f" ({len(bad)} unreadable images in all)" if len(bad) > 1 else ""
        raise UserError(f"cannot read image {root / path} ({reason}){more}; replace or delete it, "
                        "or set dataset.skip_bad_images=true to skip unreadable images")
    if bad:
        log.warning("skipped %d unreadable images of %s (dataset.skip_bad_images=true), e.g. %s",
                    len(bad), root, ", ".join(path for path, _ in bad[:3]))


def _to_arrays(root: Path, images: np.ndarray, index: dict, skip_bad_images: bool) -> DatasetArrays:
    _check_bad_images(root, index, skip_bad_images)
    num_train, num_unlabeled, _ = index["parts"]
    targets = np.asarray(index["targets"], dtype=np.int64)
    class_names = index["class_names"]
    present = np.bincount(targets[:num_train], minlength=len(class_names))
    if (present == 0).any():
        empty = class_names[int(np.argmin(present))]
        raise UserError(f"class folder {root / index['pool'] / empty} has no readable images; "
                        "add images or remove the folder")
    first_test = num_train + num_unlabeled
    return DatasetArrays(
        train=ImageSet(images=images[:num_train], targets=targets[:num_train]),
        test=ImageSet(images=images[first_test:], targets=targets[first_test:]),
        class_names=list(class_names),
        unlabeled=images[num_train:first_test] if num_unlabeled else None,
        train_files=list(index["files"][:num_train]),
        unlabeled_files=list(index["files"][num_train:first_test]) if num_unlabeled else None,
    )
