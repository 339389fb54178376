"""Image folders as users' disks hold them: links (loops, dangling, to folders read
already), names that are not UTF-8, names in two Unicode forms, a test/ folder read alone.
Every folder is a few generated PNGs in a tmp dir."""

import hashlib
import json
import logging
import os
import re
import signal
import threading
import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixmatch.data.datasets import load_dataset
from fixmatch.data.folder_listing import same_class_names
from fixmatch.data.image_cache import CACHE_FOLDER_NAME, CACHE_FORMAT, ImageCache, cache_key
from fixmatch.data import image_folder
from fixmatch.data.image_folder import load_test_folder
from fixmatch.errors import UserError
from test_image_folder import CLASSES, folder_config, gray, make_folder, write_image

NFC_CAFE = unicodedata.normalize("NFC", "café")  # é as one code point (Linux, Windows)
NFD_CAFE = unicodedata.normalize("NFD", "café")  # e + a combining accent, as macOS writes it


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_folder(tmp_path / "images")


def _load_with_log(root: Path, caplog, **overrides):
    with caplog.at_level(logging.INFO, logger="fixmatch"):
        return load_dataset(folder_config(root, **overrides))


def _message(call) -> str:
    with pytest.raises(UserError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- links -------------------------------------------------------------------------------

@pytest.mark.parametrize("link,target", [
    ("labeled/cat/up", ".."),  # the class folder's parent: labeled/ again and again
    ("labeled/cat/root", "../.."),
    ("unlabeled/loop", ".."),
    ("unlabeled/batch0/here", "."),
    ("labeled/cat/self.png", "self.png"),  # a file link to itself
    ("test/dog/gone.png", "/nonexistent/gone.png"),
])
def test_a_link_that_loops_or_dangles_is_skipped_and_counted(folder, caplog, link, target):
    # Before: os.scandir followed the loop ~40 levels, then OSError [Errno 40] "Too many
    # levels of symbolic links" stopped training, evaluate and preview with a traceback.
    os.symlink(target, folder / link)
    arrays = _load_with_log(folder, caplog)
    assert np.bincount(arrays.train.targets).tolist() == [4, 4, 4]  # no class took another's
    assert np.bincount(arrays.test.targets).tolist() == [2, 2, 2]
    assert len(arrays.unlabeled) == 3
    assert f"skipped 1 links of {folder}" in caplog.text and link in caplog.text


def test_a_linked_folder_is_followed_and_each_real_folder_read_once(folder, tmp_path, caplog):
    elsewhere = tmp_path / "more_cats"
    for i in range(2):
        write_image(elsewhere / f"{i}.png", gray(0))
    os.symlink(elsewhere, folder / "labeled" / "cat" / "more")
    os.symlink(elsewhere, folder / "labeled" / "cat" / "again")  # the same folder twice
    write_image(folder / "labeled" / "dog" / "sub" / "0.png", gray(1))
    os.symlink("sub", folder / "labeled" / "dog" / "alias")  # a real folder, linked beside it
    arrays = _load_with_log(folder, caplog)
    assert np.bincount(arrays.train.targets).tolist() == [6, 5, 4]
    assert "labeled/dog/sub/0.png" in arrays.train_files  # named where it is, not by the link
    assert not any("/alias/" in name for name in arrays.train_files)
    assert f"skipped 2 links of {folder}" in caplog.text


@pytest.mark.parametrize("pool", ["labeled", "test"])
def test_two_class_folders_that_are_one_folder_are_refused(folder, pool):
    # Before: labeled/kitty -> cat trained every cat image as both cat and kitty.
    os.symlink("cat", folder / pool / "kitty")
    message = _message(lambda: load_dataset(folder_config(folder)))
    assert message == (f"{folder / pool / 'cat'} and {folder / pool / 'kitty'} are one folder (a "
                       "link); its images would be labeled as both classes: remove the link, "
                       "or give the class its own folder")


@pytest.mark.parametrize("link,target,name", [
    ("labeled/kitty", "cat/sub", "one inside the other"),  # a class folder inside another
])
def test_a_class_folder_inside_another_is_refused(folder, link, target, name):
    (folder / "labeled" / "cat" / "sub").mkdir()
    write_image(folder / "labeled" / "cat" / "sub" / "9.png", gray(0))
    os.symlink(target, folder / link)
    message = _message(lambda: load_dataset(folder_config(folder)))
    assert message.startswith(f"{folder / 'labeled' / 'cat'} and {folder / link} are {name}")


@pytest.mark.parametrize("link,target", [
    ("labeled/dog/cats", "../cat"),  # another class's images, inside a class folder
    ("labeled/eel/more", "../dog/../cat"),
    ("unlabeled/cats", "../labeled/cat"),  # labeled images, a second time in the stream
    ("unlabeled/all", "../labeled"),  # a folder holding the classes
    ("labeled/dog/0_cat.png", "../cat/0.png"),  # another class's image, as a file
    ("unlabeled/0_cat.png", "../labeled/cat/0.png"),
])
def test_a_link_to_another_class_is_skipped_not_read_twice(folder, caplog, link, target):
    # Before: dog/cats -> cat labeled each cat image as cat and dog, silently.
    os.symlink(target, folder / link)
    arrays = _load_with_log(folder, caplog)
    assert np.bincount(arrays.train.targets).tolist() == [4, 4, 4]
    assert len(arrays.unlabeled) == 3
    assert f"skipped 1 links of {folder}" in caplog.text and link in caplog.text


def test_an_outside_folder_linked_from_a_class_and_unlabeled_is_read_once(folder, tmp_path,
                                                                         caplog):
    elsewhere = tmp_path / "store"
    write_image(elsewhere / "0.png", gray(0))
    os.symlink(elsewhere, folder / "labeled" / "cat" / "more")
    os.symlink(elsewhere, folder / "unlabeled" / "more")
    arrays = _load_with_log(folder, caplog)
    assert np.bincount(arrays.train.targets).tolist() == [5, 4, 4] and len(arrays.unlabeled) == 3
    assert "unlabeled/more" in caplog.text


def test_a_link_around_a_class_folder_elsewhere_is_skipped(folder, tmp_path, caplog):
    # dog's folder is a link into a shared store; cat links the whole store.
    store = tmp_path / "store"
    store.mkdir()
    (folder / "labeled" / "dog").rename(store / "dog")
    os.symlink(store / "dog", folder / "labeled" / "dog")
    os.symlink(store, folder / "labeled" / "cat" / "store")
    arrays = _load_with_log(folder, caplog)
    assert np.bincount(arrays.train.targets).tolist() == [4, 4, 4]  # before: dog "held no images"
    assert "labeled/cat/store" in caplog.text


def test_two_classes_linking_one_outside_folder_read_it_once(folder, tmp_path, caplog):
    elsewhere = tmp_path / "shared"
    write_image(elsewhere / "0.png", gray(0))
    os.symlink(elsewhere, folder / "labeled" / "cat" / "more")
    os.symlink(elsewhere, folder / "labeled" / "dog" / "more")
    arrays = _load_with_log(folder, caplog)
    assert np.bincount(arrays.train.targets).tolist() == [5, 4, 4]  # cat's, the first class
    assert "labeled/dog/more" in caplog.text


@pytest.mark.parametrize("class_folder", ["labeled/fox", "test/dog"])
def test_a_class_folder_that_is_a_broken_link_is_named(folder, class_folder):
    # Before: the class vanished, with only an INFO line calling it a file that is not an image.
    target = folder / "unmounted_drive" / "images"
    if (folder / class_folder).exists():
        for image in (folder / class_folder).iterdir():
            image.unlink()
        (folder / class_folder).rmdir()
    os.symlink(target, folder / class_folder)
    message = _message(lambda: load_dataset(folder_config(folder)))
    assert message == (f"class folder {folder / class_folder} is a link to {target}, which does "
                       "not exist or loops; point the link at the class's images or remove it")


def test_a_broken_link_as_unlabeled_is_named_not_read_as_absent(folder):
    for path in sorted((folder / "unlabeled").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (folder / "unlabeled").rmdir()
    os.symlink(folder / "nowhere", folder / "unlabeled")
    message = _message(lambda: load_dataset(folder_config(folder)))
    assert f"{folder / 'unlabeled'} is a link to" in message and "remove it" in message


# --- names -------------------------------------------------------------------------------

def _latin1_name(folder: Path) -> Path:
    """A file name whose bytes are Latin-1, not UTF-8 (Python holds it with a surrogate)."""
    path = folder / os.fsdecode(b"caf\xe9.png")
    try:
        write_image(path, gray(0))
    except (OSError, UnicodeError):  # macOS and Windows file systems refuse such names
        pytest.skip("this file system takes UTF-8 names only")
    return path


def test_a_name_that_is_not_utf8_is_read_and_cached(folder, monkeypatch):
    # Before: cache_key's str.encode() raised UnicodeEncodeError: surrogates not allowed.
    _latin1_name(folder / "labeled" / "cat")
    first = load_dataset(folder_config(folder))
    assert np.bincount(first.train.targets).tolist() == [5, 4, 4]
    monkeypatch.setattr(Image, "open", lambda *args, **kwargs: pytest.fail("decoded again"))
    second = load_dataset(folder_config(folder))  # from the cache, whose index holds the name
    assert second.train_files == first.train_files
    # the fingerprints a run records (split.json, checkpoints) hash such names as their bytes
    assert first.training_set == second.training_set and first.training_set["num_images"] == 13


def test_the_cache_key_of_utf8_names_is_unchanged_so_existing_caches_stay_valid():
    files = [("labeled/cat/0.png", 10, 5), (f"labeled/{NFD_CAFE}/1.png", 20, 6)]
    settings = {"layout": "labeled", "preprocessing": "16px-3ch-resize"}
    header = json.dumps({"format": CACHE_FORMAT, **settings}, sort_keys=True)
    before = hashlib.sha256(header.encode())
    for path, size, mtime_ns in files:
        before.update(f"\n{path}\t{size}\t{mtime_ns}".encode())
    assert cache_key(files, settings) == before.hexdigest()
    assert cache_key([(os.fsdecode(b"caf\xe9.png"), 1, 1)], settings) != \
        cache_key([("caf\u00e9.png", 1, 1)], settings)  # other bytes on disk, another key


def _two_class_folder(root: Path, labeled_name: str, test_name: str) -> Path:
    for part, name in (("labeled", labeled_name), ("test", test_name)):
        for label, folder in enumerate((name, "dog")):
            for i in range(2):
                write_image(root / part / folder / f"{i}.png", gray(label))
    return root


@pytest.mark.parametrize("labeled_name,test_name", [(NFC_CAFE, NFD_CAFE), (NFD_CAFE, NFC_CAFE)],
                         ids=["nfd-test", "nfd-labeled"])
def test_class_names_in_two_unicode_forms_are_one_class_spelled_as_labeled(
        tmp_path, labeled_name, test_name):
    # Before: "test/café is not a class of labeled/ (its classes: café, dog)".
    root = _two_class_folder(tmp_path / "images", labeled_name, test_name)
    arrays = load_dataset(folder_config(root))
    assert arrays.class_names == [labeled_name, "dog"]  # as on disk: runs record these names
    assert arrays.test.targets.tolist() == [0, 0, 1, 1]


def test_two_class_folders_named_alike_in_two_unicode_forms_are_refused(tmp_path):
    root = _two_class_folder(tmp_path / "images", NFC_CAFE, NFC_CAFE)
    write_image(root / "labeled" / NFD_CAFE / "0.png", 5)
    message = _message(lambda: load_dataset(folder_config(root)))
    assert message.startswith(f"{root / 'labeled'}/") and "two Unicode forms" in message


# --- test/ read alone (evaluate) ------------------------------------------------------------

def test_the_test_folder_is_read_alone_labelled_by_the_models_classes(folder, monkeypatch):
    (folder / "labeled" / "cat" / "000.png").write_bytes(b"corrupt, but not read")
    write_image(folder / "labeled" / "fox" / "0.png", 1)  # a class the model does not have
    opened = []
    original = Image.open
    monkeypatch.setattr(Image, "open",
                        lambda path, *rest: opened.append(path) or original(path, *rest))
    test = load_test_folder(folder_config(folder), CLASSES)
    assert test.targets.tolist() == [0, 0, 1, 1, 2, 2]
    assert len(opened) == 6 and all("/test/" in str(path) for path in opened)


def test_reading_test_alone_keeps_the_training_cache(folder, monkeypatch):
    arrays = load_dataset(folder_config(folder))
    load_test_folder(folder_config(folder), CLASSES)
    monkeypatch.setattr(Image, "open", lambda *args, **kwargs: pytest.fail("decoded again"))
    assert np.array_equal(load_dataset(folder_config(folder)).train.images, arrays.train.images)
    assert np.array_equal(load_test_folder(folder_config(folder), CLASSES).images,
                          arrays.test.images)


def test_an_empty_or_missing_test_folder_asks_for_class_folders(folder):
    for image in sorted((folder / "test").rglob("*"), reverse=True):
        image.rmdir() if image.is_dir() else image.unlink()
    message = _message(lambda: load_test_folder(folder_config(folder), CLASSES))
    # Before: "<root>/test is not a class the model was trained on", test/ taken for a class.
    assert message == (f"dataset.root={folder}: {folder / 'test'} has no class folders; expected "
                       "test/<class>/* with class folders named as the model's classes")
    (folder / "test").rmdir()
    message = _message(lambda: load_test_folder(folder_config(folder), CLASSES))
    assert "no folder 'test/' found" in message and "test/<class>/*" in message


def test_test_folders_match_the_models_classes_in_either_unicode_form(tmp_path):
    root = _two_class_folder(tmp_path / "new", NFD_CAFE, NFD_CAFE)
    test = load_test_folder(folder_config(root), [NFC_CAFE, "dog"])
    assert test.targets.tolist() == [0, 0, 1, 1]


def test_an_unreadable_image_is_described_without_exception_names(folder):
    bad = folder / "labeled" / "dog" / "002.png"
    bad.write_bytes(bad.read_bytes()[:60])  # a truncated PNG
    message = _message(lambda: load_dataset(folder_config(folder)))
    assert message.startswith(f"cannot read image {bad} (") and "Error" not in message


def test_an_image_past_pillows_pixel_limit_is_named_with_what_to_do(folder, monkeypatch):
    # Before: "(DecompressionBombError ...); replace or delete it" for a large real photo.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # every 20x20 image is past it
    message = _message(lambda: load_dataset(folder_config(folder)))
    assert re.search(r"\(Image size \(400 pixels\) exceeds limit of \d+ pixels, which Pillow "
                     r"refuses as a safety measure; downscale the image\)", message)
    assert "Error" not in message


def test_class_names_match_across_unicode_forms_and_not_otherwise():
    # A run's checkpoint (and split.json) keep class names as labeled/ spelled them on the
    # machine that started it; the same folder copied from macOS spells them decomposed.
    assert same_class_names(["caf\u00e9", "dog"], [NFD_CAFE, "dog"])
    assert not same_class_names(["cafe", "dog"], [NFD_CAFE, "dog"])
    assert not same_class_names(["dog", "caf\u00e9"], ["caf\u00e9", "dog"])  # order matters


def test_decoder_processes_leave_ctrl_c_to_the_parent(monkeypatch):
    # Before: a terminal's Ctrl-C during a first decode killed the pool's workers with a
    # traceback each, and once left the run waiting on them forever.
    monkeypatch.setattr(image_folder, "_decoder_processes", lambda: 2)
    monkeypatch.setattr(image_folder, "_decode_chunk",
                        lambda root, paths, prep: signal.getsignal(signal.SIGINT))
    handlers = [handler for _, handler in image_folder._decode_chunks(
        Path("."), ["x.png"] * image_folder.PARALLEL_MIN_FILES, None)]
    assert len(handlers) > 1 and all(handler == signal.SIG_IGN for handler in handlers)
    assert signal.getsignal(signal.SIGINT) != signal.SIG_IGN  # the parent still takes it


def test_a_process_that_waits_for_another_ones_decode_says_so(tmp_path, caplog):
    # Before: under torchrun, rank 0 waiting while rank 1 decoded logged nothing at all.
    fcntl = pytest.importorskip("fcntl")
    cache = ImageCache(tmp_path, "32px-3ch-resize")
    (tmp_path / CACHE_FOLDER_NAME).mkdir()
    entered = threading.Event()

    def wait_for_the_lock():
        with cache.lock():
            entered.set()

    with open(tmp_path / CACHE_FOLDER_NAME / "32px-3ch-resize.lock", "w") as other_process:
        fcntl.flock(other_process, fcntl.LOCK_EX)  # another open file: flock makes it wait
        with caplog.at_level(logging.INFO, logger="fixmatch"):
            waiter = threading.Thread(target=wait_for_the_lock)
            waiter.start()
            time.sleep(0.2)
            assert not entered.is_set()
            fcntl.flock(other_process, fcntl.LOCK_UN)
            waiter.join(timeout=10)
    assert entered.is_set()
    assert "another process (a DDP rank, a sweep's job) is decoding these images" in caplog.text
