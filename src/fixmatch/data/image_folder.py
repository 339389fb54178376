"""Image folders -> arrays: the images that folder_listing.py lists (labeled/ or train/,
unlabeled/, test/) are decoded to one size and mode and cached on disk (image_cache.py) so
that later runs start in seconds. Also the one decoding that predict and evaluate share.
"""

import itertools
import logging
import multiprocessing
import os
import signal
import struct
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fixmatch.config import DatasetConfig, Resize
from fixmatch.data.datasets import DatasetArrays, ImageSet
from fixmatch.data.folder_listing import FolderListing, list_image_folder, list_test_folder
from fixmatch.data.image_cache import ImageCache, cache_key
from fixmatch.errors import UserError

log = logging.getLogger(__name__)
# The user's own photos: Pillow's two-line warnings for a large one (89-178 megapixels, past
# which it refuses, see unreadable_reason) or a corrupt EXIF block would interleave with the
# progress lines and change nothing; the image decodes either way.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
warnings.filterwarnings("ignore", message="Corrupt EXIF data", category=UserWarning)

PARALLEL_MIN_FILES = 2000  # below this, starting decoder processes costs more than it saves
CHUNK_FILES = 500
MAX_DECODER_PROCESSES = 8
# What Pillow raises on a corrupt, truncated or unsupported file (UnidentifiedImageError
# is an OSError; some format plugins raise SyntaxError, struct.error or EOFError).
UNREADABLE_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error,
               Image.DecompressionBombError)


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

    Args:
        config: the dataset settings (root, image_size, channels, resize, skip_bad_images).

    Returns:
        The training pool and test/ images, and unlabeled/'s (None when it has none), as
        (N, image_size, image_size, channels) uint8, with the class names and the paths of
        the training and unlabeled images relative to the root.

    Raises:
        UserError: for a missing folder, an empty or unknown class folder, a class folder
            that is a broken link (or any layout `list_image_folder` refuses), an unreadable
            image (unless dataset.skip_bad_images), a training class folder without a
            readable image, an image of the wrong size with dataset.resize=none, or bad
            dataset.channels / dataset.image_size.
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


def load_test_folder(config: DatasetConfig, class_names: Sequence[str]) -> ImageSet:
    """Read only `<root>/test/<class>/*`, labelled by a trained model's `class_names`
    (evaluate: labeled/, train/ and unlabeled/ are neither listed nor decoded). A class of
    the model may have no folder; folder names match in either Unicode normal form.

    Args:
        config: the dataset settings (root, image_size, channels, resize, skip_bad_images).
        class_names: the model's classes, in label order.

    Returns:
        The readable test images as (N, image_size, image_size, channels) uint8, with
        their class indices into `class_names`.

    Raises:
        UserError: for a missing or empty test/, a class folder the model does not know or
            that is a broken link, an empty class folder, an unreadable image (unless
            dataset.skip_bad_images) or an image of the wrong size with dataset.resize=none.
    """
    root = Path(config.root).expanduser().resolve()
    listing = list_test_folder(root, config.root, class_names)
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
    # A cache tag keeps only its newest key, so evaluate's test-only listing of a training
    # root has a tag of its own: it must not evict the training images' cache.
    cache = ImageCache(root, f"test-{prep.tag()}" if listing.pool == "test" else prep.tag())
    start = time.perf_counter()
    cached = cache.load(key)
    if cached is not None:
        log.info("read %d decoded images of %s from the cache (%.2f s)", len(cached[0]), root,
                 time.perf_counter() - start)
        return cached
    with cache.lock():
        cached = cache.load(key)  # another process (a DDP rank) may have decoded it meanwhile
        if cached is not None:
            log.info("read %d decoded images of %s from the cache another process wrote "
                     "(%.1f s with the wait)", len(cached[0]), root, time.perf_counter() - start)
            return cached
        images, index = _decode_listing(root, listing, prep)
        where = cache.save(key, images, index)
    log.info("decoded %d images of %s in %.1f s%s", len(files), root, time.perf_counter() - start,
             f"; cached in {where}" if where else "")
    return images, index


class WrongImageSize(UserError):
    """An image that is not image_size square, with dataset.resize=none (nothing resizes it).

    Args:
        path: the image file.
        size: its (width, height) in px.
        side: the side in px that the images must have.
    """

    def __init__(self, path: Path, size: Tuple[int, int], side: int):
        super().__init__(path, size, side)  # the arguments, so that it pickles across processes
        self.path, self.size, self.side = path, size, side

    def __str__(self) -> str:
        width, height = self.size
        return (f"{self.path} is {width}x{height} but dataset.image_size={self.side} and "
                "dataset.resize=none; set dataset.resize=resize or center_crop, or resize the "
                "images")


def unreadable_reason(error: Exception) -> str:
    """Why Pillow could not decode a file (one of UNREADABLE_IMAGE_ERRORS), in words for a
    message: never an exception's class name.

    Args:
        error: what decoding the file raised.

    Returns:
        A short reason, e.g. "not an image file that Pillow can identify" or
        "Permission denied".
    """
    if isinstance(error, UnidentifiedImageError):
        return "not an image file that Pillow can identify"
    if isinstance(error, Image.DecompressionBombError):
        return f"{str(error).split(', could be')[0]}, which Pillow refuses as a safety measure; " \
               "downscale the image"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror  # "Permission denied"; str(error) would repeat the path
    return str(error) or "a corrupt or truncated file"


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
        WrongImageSize: with dataset.resize=none, an image that is not image_size square.
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
        raise WrongImageSize(path, (width, height), side)
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
        except UNREADABLE_IMAGE_ERRORS as error:
            bad.append((position, unreadable_reason(error)))
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
    with multiprocessing.get_context("fork").Pool(workers, initializer=_leave_ctrl_c_to_the_parent) as pool:
        yield from zip(starts, pool.imap(_decode_chunk_arguments, arguments))


def _leave_ctrl_c_to_the_parent() -> None:
    # A terminal's Ctrl-C reaches every process of the group. A worker that died of it
    # printed a traceback and could leave imap waiting forever; the parent's interrupt ends
    # the `with` block, which terminates the workers (SIGTERM, still theirs to die of).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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
