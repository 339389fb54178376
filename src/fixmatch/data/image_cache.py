"""On-disk cache of decoded image folders: one uint8 .npy array and a JSON index per folder
and preprocessing, keyed by the files they came from, so a folder is decoded only once.
"""

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Tuple

import numpy as np

from fixmatch.atomic_files import replaced_atomically

try:  # POSIX only; elsewhere concurrent first loads each decode on their own
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump whenever decoding changes, so no run reads images decoded the old way
CACHE_FOLDER_NAME = ".fixmatch_cache"


def cache_key(files: Iterable[Tuple[str, int, int]], settings: dict) -> str:
    """A fingerprint of a folder's files and of how they are decoded.

    Args:
        files: (relative path, size in bytes, modification time in ns) of every image, in
            the order they are decoded.
        settings: the decoding settings (size, channels, resize rule, ...).

    Returns:
        A hex sha256: any added, removed, renamed, resized or touched file changes it.
    """
    header = json.dumps({"format": CACHE_FORMAT, **settings}, sort_keys=True)
    digest = hashlib.sha256(header.encode())
    for path, size, mtime_ns in files:
        # os.fsencode gives a name's bytes on disk back: a Linux name that is not UTF-8
        # ("caf\xe9.png" from Latin-1) reaches Python with surrogates that .encode() refuses.
        # For UTF-8 names the bytes, and so the keys of existing caches, are unchanged.
        digest.update(b"\n" + os.fsencode(path) + f"\t{size}\t{mtime_ns}".encode())
    return digest.hexdigest()


def user_cache_folder(root: Path) -> Path:
    """Where a read-only root's cache goes: $XDG_CACHE_HOME (or ~/.cache)/fixmatch/<hash>.

    Args:
        root: the image folder (absolute).

    Returns:
        The folder, not created here; <hash> is the first 16 hex digits of the sha256 of
        the root's path.
    """
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return home / "fixmatch" / hashlib.sha256(os.fsencode(root)).hexdigest()[:16]  # as cache_key


class ImageCache:
    """Decoded images of one folder: `<root>/.fixmatch_cache/`, or the user cache folder
    when the root is not writable.

    Files are `<tag>-<key>.npy` (the images) and `<tag>-<key>.json` (the index, written
    last, so a half-written cache is never read). Writing a new key removes that tag's
    older files, which describe the folder as it was.

    Args:
        root: the image folder (absolute).
        tag: names the preprocessing, e.g. "32px-3ch-resize"; each tag has its own cache.
    """

    def __init__(self, root: Path, tag: str):
        self.tag = tag
        self.folders = [root / CACHE_FOLDER_NAME, user_cache_folder(root)]

    def load(self, key: str) -> Optional[Tuple[np.ndarray, dict]]:
        """The cached images (memory-mapped, read-only) and index, or None on a miss.

        The folder under the root is tried first, then the user cache folder; a cache that
        cannot be read or does not match its index is passed over with a warning.

        Args:
            key: the `cache_key` of the folder's files and preprocessing.

        Returns:
            (images as (N, H, W, C) uint8, the index), or None when neither folder holds a
            usable cache for `key`.
        """
        for folder in self.folders:
            images_path, index_path = self._paths(folder, key)
            if not index_path.is_file():
                continue
            try:
                index = json.loads(index_path.read_text())
                images = np.load(images_path, mmap_mode="r")
            except (OSError, ValueError) as error:
                log.warning("ignoring the unreadable image cache %s (%s)", index_path, error)
                continue
            if (index.get("key") != key or images.dtype != np.uint8
                    or len(images) != index.get("num_images")):
                log.warning("ignoring the image cache %s: it does not match its index", images_path)
                continue
            return images, index
        return None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the cache's lock, so concurrent first runs (DDP ranks, a sweep) decode once.

        Locks nothing when no cache folder is writable or the platform has no fcntl.
        """
        folder = self._writable_folder()
        if folder is None or fcntl is None:
            yield
            return
        with open(folder / f"{self.tag}.lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # say why nothing seems to happen for a while
                log.info("another process (a DDP rank, a sweep's job) is decoding these images "
                         "into %s: waiting for it", folder)
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def save(self, key: str, images: np.ndarray, index: dict) -> Optional[Path]:
        """Store `images` and `index` under `key`; returns the .npy path, None if unwritable.

        Both files are written atomically, the index last, into the first writable cache
        folder; once they are, that folder's files of this tag under other keys are removed.

        Args:
            key: the `cache_key` the images were decoded for.
            images: the decoded images, (N, H, W, C) uint8.
            index: what is where (files, targets, parts, ...); `key` and `num_images` are
                added to it in the file.

        Returns:
            The .npy file, or None when no cache folder can be written (logged as a warning,
            never raised).
        """
        folder = self._writable_folder()
        if folder is None:
            log.warning("no writable cache folder (tried %s): the images will be decoded again "
                        "at the next start", ", ".join(str(f) for f in self.folders))
            return None
        images_path, index_path = self._paths(folder, key)
        try:
            _atomic_write(images_path, lambda handle: np.save(handle, images))
            text = json.dumps({**index, "key": key, "num_images": len(images)})
            _atomic_write(index_path, lambda handle: handle.write(text.encode()))
        except OSError as error:
            log.warning("cannot write the image cache %s (%s): the images will be decoded "
                        "again at the next start", images_path, error.strerror or error)
            return None
        for stale in self._stale_files(folder, key):
            stale.unlink(missing_ok=True)
        return images_path

    def _writable_folder(self) -> Optional[Path]:
        for folder in self.folders:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError:
                continue
            if os.access(folder, os.W_OK):
                return folder
        return None

    def _paths(self, folder: Path, key: str) -> Tuple[Path, Path]:
        stem = f"{self.tag}-{key[:32]}"
        return folder / f"{stem}.npy", folder / f"{stem}.json"

    def _stale_files(self, folder: Path, key: str) -> List[Path]:
        current = set(self._paths(folder, key))
        return [path for suffix in ("npy", "json") for path in folder.glob(f"{self.tag}-*.{suffix}")
                if path not in current]


def _atomic_write(path: Path, write) -> None:
    with replaced_atomically(path, "wb") as handle:
        write(handle)
