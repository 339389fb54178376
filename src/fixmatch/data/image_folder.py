"""Image folders -> arrays: `labeled/<class>/` (or `train/<class>/`), an optional
`unlabeled/` and `test/<class>/` are listed, checked, decoded to one size and mode, and
cached on disk (image_cache.py) so that later runs start in seconds. Also the one folder
listing and decoding that predict and evaluate share with training.
"""

import itertools
import logging
import multiprocessing
import os
import struct
import time
import unicodedata
import warnings
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fixmatch.config import DatasetConfig, Resize
from fixmatch.data.datasets import DatasetArrays, ImageSet
from fixmatch.data.image_cache import ImageCache, cache_key
from fixmatch.errors import UserError

log = logging.getLogger(__name__)
# The user's own photos: Pillow's two-line warnings for a large one (89-178 megapixels, past
# which it refuses, see unreadable_reason) or a corrupt EXIF block would interleave with the
# progress lines and change nothing; the image decodes either way.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
warnings.filterwarnings("ignore", message="Corrupt EXIF data", category=UserWarning)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")  # matched case-insensitively
LAYOUT = ("expected labeled/<class>/*, unlabeled/** (optional) and test/<class>/*, "
          "or train/<class>/* and test/<class>/*")
TEST_LAYOUT = "expected test/<class>/* with class folders named as the model's classes"
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


class EntryKind(Enum):
    """What a folder entry is, through links."""

    FOLDER = "folder"
    FILE = "file"
    BROKEN_LINK = "broken link"  # a link to nothing, or a link loop


@dataclass
class Skipped:
    """What a listing passed over: never silently, each kind is counted in the log."""

    not_images: List[str] = field(default_factory=list)  # other extensions, hidden, loose files
    broken_links: List[str] = field(default_factory=list)  # to nothing, loops, folders read already

    def log(self, root: Path) -> None:
        """One line per kind of skipped entry, with a few examples."""
        if self.not_images:
            log.info("ignored %d files of %s that are hidden, not images (%s) or not in a class "
                     "folder, e.g. %s", len(self.not_images), root, ", ".join(IMAGE_EXTENSIONS),
                     ", ".join(self.not_images[:3]))
        if self.broken_links:
            log.warning("skipped %d links of %s that point nowhere, loop back to a folder above "
                        "them or lead to a folder already read, e.g. %s", len(self.broken_links),
                        root, ", ".join(self.broken_links[:3]))


@dataclass(frozen=True)
class FolderListing:
    """The images of a folder in decoding order: training pool, unlabeled, test."""

    pool: str  # "labeled" or "train" (whose images carry training labels); "test": test/ only
    class_names: List[str]
    train: List[ImageFile]
    unlabeled: List[ImageFile]
    test: List[ImageFile]
    skipped: Skipped


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
        UserError: for a missing folder, an empty or unknown class folder, a class folder
            that is a broken link, an unreadable image (unless dataset.skip_bad_images), an
            image of the wrong size with dataset.resize=none, or bad dataset.channels /
            dataset.image_size.
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

    Raises:
        UserError: for a missing or empty test/, a class folder the model does not know or
            that is a broken link, an empty class folder or an unreadable image (unless
            dataset.skip_bad_images).
    """
    root = Path(config.root).expanduser().resolve()
    if not _is_folder(root / "test"):
        raise UserError(f"dataset.root={config.root}: no folder 'test/' found in {root}; "
                        f"{TEST_LAYOUT}")
    skipped = Skipped()
    folders = _class_folders(root, "test", skipped)
    if not folders:
        raise UserError(f"dataset.root={config.root}: {root / 'test'} has no class folders; "
                        f"{TEST_LAYOUT}")
    labels, unknown = _match_classes(folders, class_names)
    if unknown:
        raise UserError(f"{root / 'test' / unknown[0]} is not a class the model was trained on "
                        f"({', '.join(class_names)}); test/ must use those class names: "
                        "rename or remove it")
    test = _class_files(root, "test", labels, skipped)
    skipped.log(root)
    listing = FolderListing("test", list(class_names), [], [], test, skipped)
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
            folder, a class folder that is a broken link, or a test/ class that labeled/
            (or train/) does not have.
    """
    pool = _pool_folder(root, root_setting)
    skipped = Skipped()
    class_names = _class_folders(root, pool, skipped)
    if not class_names:
        raise UserError(f"{root / pool} has no class folders; {LAYOUT}")
    train = _class_files(root, pool, {name: label for label, name in enumerate(class_names)},
                         skipped)
    test_folders = _class_folders(root, "test", skipped)
    if not test_folders:
        raise UserError(f"{root / 'test'} has no class folders; {LAYOUT}")
    labels, unknown = _match_classes(test_folders, class_names)
    if unknown:
        raise UserError(f"{root / 'test' / unknown[0]} is not a class of {pool}/ (its classes: "
                        f"{', '.join(class_names)}); test/ must use the class names of {pool}/: "
                        "rename or remove it")
    test = _class_files(root, "test", labels, skipped)
    missing = [name for label, name in enumerate(class_names) if label not in labels.values()]
    if missing:
        log.warning("classes %s have no folder in %s: they are trained on but never evaluated",
                    ", ".join(missing), root / "test")
    unlabeled = [ImageFile(path, size, mtime, -1) for path, size, mtime in
                 (_walk(root, "unlabeled", skipped) if _is_folder(root / "unlabeled") else [])]
    skipped.log(root)
    return FolderListing(pool, class_names, train, unlabeled, test, skipped)


def _pool_folder(root: Path, root_setting: str) -> str:
    """"labeled" or "train", whichever `root` holds (beside test/)."""
    where = f"dataset.root={root_setting}"
    if not root.is_dir():
        raise UserError(f"{where}: no such folder ({root}); point dataset.root at the folder "
                        f"that holds labeled/ (or train/) and test/")
    pools = [name for name in ("labeled", "train") if _is_folder(root / name)]
    if not pools:
        raise UserError(f"{where}: no folder 'labeled/' or 'train/' found in {root}; {LAYOUT}")
    if len(pools) == 2:
        raise UserError(f"{where}: both labeled/ and train/ found in {root}; keep one of the "
                        f"two layouts ({LAYOUT})")
    if not _is_folder(root / "test"):
        raise UserError(f"{where}: no folder 'test/' found in {root}; {LAYOUT}")
    return pools[0]


def _is_folder(path: Path) -> bool:
    """Whether `path` is a folder (through links).

    Raises:
        UserError: `path` is a link to nothing or a link loop: a folder the user set up
            must not read as one that is absent.
    """
    if path.is_symlink() and not path.exists():
        raise UserError(f"{path} is a link to {os.readlink(path)}, which does not exist or "
                        "loops; point the link at a folder or remove it")
    return path.is_dir()


def _class_folders(root: Path, folder: str, skipped: Skipped) -> List[str]:
    """The class folder names of root/folder, sorted; files beside them are skipped.

    Raises:
        UserError: a class folder is a link to nothing (its class would silently vanish),
            or two names differ only in their Unicode normal form.
    """
    names = []
    for entry in _entries(root / folder):
        if entry.name.startswith("."):
            continue  # .ipynb_checkpoints, .git, .DS_Store: never a class
        kind = _kind(entry)
        if kind is EntryKind.BROKEN_LINK:
            raise UserError(f"class folder {root / folder / entry.name} is a link to "
                            f"{_link_target(entry)}, which does not exist or loops; point the "
                            "link at the class's images or remove it")
        if kind is EntryKind.FOLDER:
            names.append(entry.name)
        else:
            skipped.not_images.append(f"{folder}/{entry.name}")
    _refuse_twin_names(root / folder, names)
    return names


def _refuse_twin_names(folder: Path, names: Sequence[str]) -> None:
    first_of = {}
    for name in names:
        twin = first_of.setdefault(_nfc(name), name)
        if twin != name:
            raise UserError(f"{folder / twin} and {folder / name} are one name written in two "
                            "Unicode forms (composed and decomposed, as macOS writes it); "
                            "move the images into one of them and remove the other")


def same_class_names(first: Sequence[str], second: Sequence[str]) -> bool:
    """Whether two lists of class names are the same classes in the same order, whatever the
    Unicode form of each name (a folder copied between macOS and Linux)."""
    return [_nfc(name) for name in first] == [_nfc(name) for name in second]


def _nfc(name: str) -> str:
    """`name` in Unicode NFC: the form in which names that look alike compare equal."""
    return unicodedata.normalize("NFC", name)


def _match_classes(folders: Sequence[str], class_names: Sequence[str]
                   ) -> Tuple[Dict[str, int], List[str]]:
    """({folder: class index}, [folders that name no class]).

    Names are compared in NFC, so a test/ folder written on macOS (decomposed "café")
    matches its class written elsewhere; the class names themselves are kept as they are,
    since runs and checkpoints record them.
    """
    label_of = {_nfc(name): label for label, name in enumerate(class_names)}
    labels = {folder: label_of[_nfc(folder)] for folder in folders if _nfc(folder) in label_of}
    return labels, [folder for folder in folders if folder not in labels]


def _class_files(root: Path, folder: str, labels: Dict[str, int],
                 skipped: Skipped) -> List[ImageFile]:
    """The images of each class folder `root/folder/<name>` of `labels`, in class order."""
    files = []
    for name, label in sorted(labels.items(), key=lambda item: item[1]):
        found = _walk(root, f"{folder}/{name}", skipped)
        if not found:
            raise UserError(f"class folder {root / folder / name} holds no images "
                            f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder")
        files += [ImageFile(path, size, mtime, label) for path, size, mtime in found]
    return files


def _walk(root: Path, folder: str, skipped: Skipped) -> List[Tuple[str, int, int]]:
    """(path relative to root, size, mtime) of every image under root/folder."""
    return find_images(root / folder, skipped, prefix=f"{folder}/")


def find_images(top: Path, skipped: Skipped, prefix: str = "") -> List[Tuple[str, int, int]]:
    """(name, size in bytes, mtime in ns) of every image under `top`, recursively, sorted.

    Training and predict list folders with this one function, so both read the same files.
    A name is `prefix` + the "/"-separated path below `top`. Hidden entries (".*") are not
    read; hidden files and files of other extensions are counted in `skipped.not_images`.
    Linked folders are followed, each real folder once: a link to a folder already read,
    to one above it (a loop) or to nothing is counted in `skipped.broken_links`.

    Raises:
        UserError: a folder that cannot be listed.
    """
    top_real = Path(os.path.realpath(top))
    found, read = [], set()
    # (folder, its real path, its name + "/", whether it was reached through a link). Real
    # subfolders are read before linked ones, so a folder reached both ways keeps its name.
    real_folders, linked_folders = [(top, top_real, prefix, False)], []
    while real_folders or linked_folders:
        folder, real, name, linked = real_folders.pop() if real_folders else linked_folders.pop()
        if real in read:
            if linked:
                skipped.broken_links.append(name.rstrip("/"))
            continue
        read.add(real)
        for entry in _entries(folder):
            entry_name = f"{name}{entry.name}"
            kind = _kind(entry)
            if entry.name.startswith("."):
                if kind is not EntryKind.FOLDER:  # hidden folders (.git) go unmentioned
                    skipped.not_images.append(entry_name)
            elif kind is EntryKind.BROKEN_LINK:
                skipped.broken_links.append(entry_name)
            elif kind is EntryKind.FOLDER and not entry.is_symlink():
                real_folders.append((Path(entry.path), real / entry.name, f"{entry_name}/", False))
            elif kind is EntryKind.FOLDER:
                target = Path(os.path.realpath(entry.path))
                if target in real.parents or target in top_real.parents:  # a loop
                    skipped.broken_links.append(entry_name)
                else:
                    linked_folders.append((Path(entry.path), target, f"{entry_name}/", True))
            elif not entry.name.lower().endswith(IMAGE_EXTENSIONS):
                skipped.not_images.append(entry_name)
            else:
                stat = entry.stat()
                found.append((entry_name, stat.st_size, stat.st_mtime_ns))
    return sorted(found)


def _kind(entry: os.DirEntry) -> EntryKind:
    """What `entry` is, through links; its stat is cached on the entry for later."""
    try:
        if entry.is_dir():
            return EntryKind.FOLDER
        entry.stat()
        return EntryKind.FILE
    except OSError:  # ENOENT for a link to nothing, ELOOP for a loop
        return EntryKind.BROKEN_LINK


def _link_target(entry: os.DirEntry) -> str:
    try:
        return os.readlink(entry.path)
    except OSError:  # not a link after all (removed meanwhile)
        return "nothing"


def _entries(folder: Path) -> List[os.DirEntry]:
    """The entries of `folder`, sorted by name.

    Raises:
        UserError: the folder cannot be listed.
    """
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except OSError as error:
        raise UserError(f"cannot list {folder} ({error.strerror or error}); "
                        "make it readable or remove it") from None


# --- decoding --------------------------------------------------------------------------

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
    message: never an exception's class name."""
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
