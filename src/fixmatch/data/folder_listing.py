"""Image folders on disk -> FolderListing: which files are a dataset's images and of which
class, with the layout checked and nothing decoded. Training, evaluate and predict list
folders here, so all three read the same files (each real folder once, links included).
"""

import itertools
import logging
import os
import unicodedata
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

from fixmatch.errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")  # matched case-insensitively
LAYOUT = ("expected labeled/<class>/*, unlabeled/** (optional) and test/<class>/*, "
          "or train/<class>/* and test/<class>/*")
TEST_LAYOUT = "expected test/<class>/* with class folders named as the model's classes"


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
    # to nothing, loops, folders read already, into (or around) another class's folder
    broken_links: List[str] = field(default_factory=list)

    def log(self, root: Path) -> None:
        """One line per kind of skipped entry, with a few examples.

        Args:
            root: the listed folder, named in the lines.
        """
        if self.not_images:
            log.info("ignored %d files of %s that are hidden, not images (%s) or not in a class "
                     "folder, e.g. %s", len(self.not_images), root, ", ".join(IMAGE_EXTENSIONS),
                     ", ".join(self.not_images[:3]))
        if self.broken_links:
            log.warning("skipped %d links of %s that point nowhere, loop back to a folder above "
                        "them, lead to a folder already read, or into another class's folder "
                        "(its images would get two labels or come twice), e.g. %s",
                        len(self.broken_links), root, ", ".join(self.broken_links[:3]))


@dataclass(frozen=True)
class FolderListing:
    """The images of a folder in decoding order: training pool, unlabeled, test."""

    pool: str  # "labeled" or "train" (whose images carry training labels); "test": test/ only
    class_names: List[str]
    train: List[ImageFile]
    unlabeled: List[ImageFile]
    test: List[ImageFile]
    skipped: Skipped


def list_image_folder(root: Path, root_setting: str) -> FolderListing:
    """List and check a folder's layout, without opening any image.

    Args:
        root: the folder, absolute.
        root_setting: dataset.root as the user wrote it (for the messages).

    Returns:
        The training pool (labeled/ or train/), unlabeled/ (empty when absent) and test/,
        each in class order, then by path; classes are the pool's folders, sorted by name.

    Raises:
        UserError: for a missing root, labeled/ (or train/) or test/, both labeled/ and
            train/, a pool or test/ without class folders, an empty class folder, a class
            folder that is a broken link, two class folders whose names differ only in
            Unicode form or are one folder (a link), a test/ class that labeled/ (or train/)
            does not have, or a folder that cannot be listed.
    """
    pool = _pool_folder(root, root_setting)
    skipped = Skipped()
    class_names = _class_folders(root, pool, skipped)
    if not class_names:
        raise UserError(f"{root / pool} has no class folders; {LAYOUT}")
    read: Set[Path] = set()  # folders read once in labeled/ and unlabeled/ together
    train = _class_files(root, pool, {name: label for label, name in enumerate(class_names)},
                         skipped, read)
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
    unlabeled = []
    if _is_folder(root / "unlabeled"):
        # A link into a class folder would add its images to the stream a second time.
        found = _walk(root, "unlabeled", skipped, read, _real_folders(root / pool, class_names))
        unlabeled = [ImageFile(path, size, mtime, -1) for path, size, mtime in found]
    skipped.log(root)
    return FolderListing(pool, class_names, train, unlabeled, test, skipped)


def list_test_folder(root: Path, root_setting: str, class_names: Sequence[str]) -> FolderListing:
    """List only `root/test/<class>/*`, labelled by a trained model's `class_names`, without
    opening any image. A class of the model may have no folder; folder names match in either
    Unicode normal form.

    Args:
        root: the folder, absolute.
        root_setting: dataset.root as the user wrote it (for the messages).
        class_names: the model's classes, in label order.

    Returns:
        A listing of pool "test" with only `test` filled, labelled by `class_names`.

    Raises:
        UserError: for a missing or empty test/, a class folder the model does not know or
            that is a broken link, an empty class folder, two class folders whose names
            differ only in Unicode form, or a folder that cannot be listed.
    """
    if not _is_folder(root / "test"):
        raise UserError(f"dataset.root={root_setting}: no folder 'test/' found in {root}; "
                        f"{TEST_LAYOUT}")
    skipped = Skipped()
    folders = _class_folders(root, "test", skipped)
    if not folders:
        raise UserError(f"dataset.root={root_setting}: {root / 'test'} has no class folders; "
                        f"{TEST_LAYOUT}")
    labels, unknown = _match_classes(folders, class_names)
    if unknown:
        raise UserError(f"{root / 'test' / unknown[0]} is not a class the model was trained on "
                        f"({', '.join(class_names)}); test/ must use those class names: "
                        "rename or remove it")
    test = _class_files(root, "test", labels, skipped)
    skipped.log(root)
    return FolderListing("test", list(class_names), [], [], test, skipped)


def _pool_folder(root: Path, root_setting: str) -> str:
    """"labeled" or "train", whichever `root` holds (beside test/)."""
    where = f"dataset.root={root_setting}"
    if not root.is_dir():
        what = "a file, not a folder" if root.exists() else "no such folder"
        raise UserError(f"{where}: {what} ({root}); point dataset.root at the folder "
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
            two names differ only in their Unicode normal form, or two are one folder.
    """
    names = []
    for entry in _entries(root / folder):
        kind = _kind(entry)
        if entry.name.startswith("."):  # .ipynb_checkpoints, .git, .DS_Store: never a class
            if kind is EntryKind.FILE:  # counted, as hidden files inside a class are
                skipped.not_images.append(f"{folder}/{entry.name}")
            continue
        if kind is EntryKind.BROKEN_LINK:
            raise UserError(f"class folder {root / folder / entry.name} is a link to "
                            f"{_link_target(entry)}, which does not exist or loops; point the "
                            "link at the class's images or remove it")
        if kind is EntryKind.FOLDER:
            names.append(entry.name)
        else:
            skipped.not_images.append(f"{folder}/{entry.name}")
    _refuse_twin_names(root / folder, names)
    _refuse_shared_folders(root / folder, names)
    return names


def _refuse_shared_folders(folder: Path, names: Sequence[str]) -> None:
    # Links are followed, so `kitty -> cat` (or -> cat/sub) would label cat's images twice.
    real = dict(zip(names, _real_folders(folder, names)))
    for first, second in itertools.combinations(sorted(names), 2):
        if _overlap(real[first], real[second]):
            relation = "one folder" if real[first] == real[second] else "one inside the other"
            raise UserError(f"{folder / first} and {folder / second} are {relation} (a link); "
                            "its images would be labeled as both classes: remove the link, or "
                            "give the class its own folder")


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
    Unicode form of each name (a folder copied between macOS and Linux).

    Args:
        first: class names, in label order.
        second: the other class names, in label order.

    Returns:
        True when both have the same length and equal names in NFC, position by position.
    """
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


def _real_folders(folder: Path, names: Sequence[str]) -> List[Path]:
    return [Path(os.path.realpath(folder / name)) for name in names]


def _class_files(root: Path, folder: str, labels: Dict[str, int], skipped: Skipped,
                 read: Optional[Set[Path]] = None) -> List[ImageFile]:
    """The images of each class folder `root/folder/<name>` of `labels`, in class order.

    A linked folder is read once in the whole pool (and in what shares `read`): one in or
    around another class's folder, or one an earlier class read already, is skipped (its
    images would get two labels), and so is a linked file in another class's folder."""
    files, read = [], set() if read is None else read
    tops = dict(zip(labels, _real_folders(root / folder, list(labels))))
    for name, label in sorted(labels.items(), key=lambda item: item[1]):
        found = _walk(root, f"{folder}/{name}", skipped, read,
                      elsewhere=[top for other, top in tops.items() if other != name])
        if not found:
            raise UserError(f"class folder {root / folder / name} holds no images "
                            f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder")
        files += [ImageFile(path, size, mtime, label) for path, size, mtime in found]
    return files


def _walk(root: Path, folder: str, skipped: Skipped, read: Optional[Set[Path]] = None,
          elsewhere: Sequence[Path] = ()) -> List[Tuple[str, int, int]]:
    """(path relative to root, size, mtime) of every image under root/folder."""
    return find_images(root / folder, skipped, prefix=f"{folder}/", read=read, elsewhere=elsewhere)


def find_images(top: Path, skipped: Skipped, prefix: str = "", read: Optional[Set[Path]] = None,
                elsewhere: Sequence[Path] = ()) -> List[Tuple[str, int, int]]:
    """(name, size in bytes, mtime in ns) of every image under `top`, recursively, sorted.

    Training and predict list folders with this one function, so both read the same files.
    A name is `prefix` + the "/"-separated path below `top`. Hidden entries (".*") are not
    read; hidden files and files of other extensions are counted in `skipped.not_images`.
    Linked folders are followed, each real folder once: a link to a folder already read,
    to one above it (a loop) or to nothing is counted in `skipped.broken_links`.

    Args:
        top: the folder to search.
        skipped: collects what was passed over (appended to, not cleared).
        prefix: put before every name ("labeled/cat/", or the folder as the user gave it).
        read: real paths of folders read already (by earlier calls of one listing); those
            this call reads are added.
        elsewhere: real folders another call reads (the other classes): a link to one of
            them, into one or around one (a folder holding it), and a linked file in one, are
            skipped as links to what is read there.

    Returns:
        (name, size in bytes, mtime in ns) of each image, sorted by name.

    Raises:
        UserError: a folder that cannot be listed.
    """
    top_real = Path(os.path.realpath(top))
    found, read = [], set() if read is None else read
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
                looped = target in real.parents or target in top_real.parents
                read_there = any(_overlap(target, other) for other in elsewhere)
                if looped or read_there:
                    skipped.broken_links.append(entry_name)
                else:
                    linked_folders.append((Path(entry.path), target, f"{entry_name}/", True))
            elif not entry.name.lower().endswith(IMAGE_EXTENSIONS):
                skipped.not_images.append(entry_name)
            elif entry.is_symlink() and any(other in Path(os.path.realpath(entry.path)).parents
                                            for other in elsewhere):
                skipped.broken_links.append(entry_name)  # another class's image
            else:
                stat = entry.stat()
                found.append((entry_name, stat.st_size, stat.st_mtime_ns))
    return sorted(found)


def _overlap(target: Path, folder: Path) -> bool:
    """Whether reading `target` would read (part of) `folder`: it is the folder, lies inside
    it, or holds it."""
    return target == folder or folder in target.parents or target in folder.parents


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

