"""Image folders: both layouts, resize and crop, modes, normalisation, the decode cache, and a
clear line for every bad input. Every folder is a few generated PNGs in a tmp dir."""

import json
import logging
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import pytest
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue
from PIL import Image

from conftest import CONF_DIR, compose_config
from fixmatch.app import run_experiment
from fixmatch.checkpoint import load_checkpoint
from fixmatch.config import DatasetConfig, Resize
from fixmatch.data.datasets import load_dataset
from fixmatch.data.image_cache import CACHE_FOLDER_NAME
from fixmatch.data.normalization import channel_statistics, resolve_normalization
from fixmatch.data.split import draw_split
from fixmatch.errors import UserError

CLASSES = ["cat", "dog", "eel"]
MODES = ["RGB", "L", "RGBA", "P", "I;16"]  # mixed on purpose: each is converted
SIZES = [(20, 20), (24, 18), (16, 16), (30, 22)]


def gray(label: int) -> int:
    """Every image of class `label` is one flat gray level, whatever its mode and size."""
    return 60 * (label + 1)


def write_image(path: Path, value: int, size=(20, 20), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        image = Image.fromarray(np.full(size[::-1], value * 257, dtype=np.uint16))
    elif mode == "P":
        image = Image.new("L", size, value).convert("P")
        image.info["transparency"] = 0  # a palette PNG with a transparent entry
    else:
        image = Image.new("RGB", size, (value,) * 3).convert(mode)
    image.save(path)
    return path


def make_folder(root: Path, pool: str = "labeled", per_class: int = 4, test_per_class: int = 2,
                unlabeled: int = 3) -> Path:
    count = 0
    for label, name in enumerate(CLASSES):
        for folder, number in ((pool, per_class), ("test", test_per_class)):
            for i in range(number):
                extension = ".PNG" if i == 1 else ".png"  # extensions match in any case
                write_image(root / folder / name / f"{i:03d}{extension}", gray(label),
                            SIZES[count % len(SIZES)], MODES[count % len(MODES)])
                count += 1
    for i in range(unlabeled):
        write_image(root / "unlabeled" / f"batch{i % 2}" / "deep" / f"{i}.png", 128, SIZES[i % 4])
    return root


def folder_config(root: Path, **overrides) -> DatasetConfig:
    values = dict(name="folder", root=str(root), download=False, num_classes=0, channels=3,
                  image_size=16, resize=Resize.resize)
    values.update(overrides)
    return DatasetConfig(**values)


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_folder(tmp_path / "images")


# --- layouts -----------------------------------------------------------------------------

def test_labeled_unlabeled_test_layout_loads_classes_counts_and_shapes(folder):
    arrays = load_dataset(folder_config(folder))
    assert arrays.class_names == CLASSES
    assert arrays.train.images.shape == (12, 16, 16, 3) and arrays.train.images.dtype == np.uint8
    assert arrays.test.images.shape == (6, 16, 16, 3)
    assert arrays.unlabeled.shape == (3, 16, 16, 3)  # found in nested folders
    assert np.bincount(arrays.train.targets).tolist() == [4, 4, 4]
    assert np.bincount(arrays.test.targets).tolist() == [2, 2, 2]
    for part in (arrays.train, arrays.test):
        for image, label in zip(part.images, part.targets):
            assert (image == gray(int(label))).all()  # every mode converted, labels in place
    assert (arrays.unlabeled == 128).all()


def test_train_test_layout_loads_without_unlabeled_images(tmp_path):
    root = make_folder(tmp_path / "images", pool="train", unlabeled=0)
    arrays = load_dataset(folder_config(root))
    assert arrays.class_names == CLASSES
    assert arrays.train.images.shape == (12, 16, 16, 3) and arrays.unlabeled is None


def test_num_classes_zero_takes_the_folders_and_a_wrong_count_is_refused(folder):
    assert len(load_dataset(folder_config(folder, num_classes=3)).class_names) == 3
    with pytest.raises(UserError, match=r"has 3 classes \(cat, dog, eel\) but the config says "
                                        r"dataset\.num_classes=10; set dataset\.num_classes=3 \(or 0 "):
        load_dataset(folder_config(folder, num_classes=10))


# --- sizes and modes ---------------------------------------------------------------------

def test_center_crop_keeps_the_centre_at_its_scale_and_resize_squashes_the_whole_image(tmp_path):
    root = make_folder(tmp_path / "images", per_class=1, test_per_class=1, unlabeled=0)
    framed = np.zeros((40, 40, 3), dtype=np.uint8)
    framed[12:28, 12:28] = 200  # a 16 px square in the centre of a black 40 px frame
    Image.fromarray(framed).save(root / "labeled" / "cat" / "000.png")
    cropped = load_dataset(folder_config(root, resize=Resize.center_crop)).train.images[0]
    resized = load_dataset(folder_config(root, resize=Resize.resize)).train.images[0]
    assert (cropped == 200).all()
    assert resized[0, 0].max() < 20 and resized[8, 8].min() > 180


def test_center_crop_upscales_an_image_smaller_than_the_side(tmp_path):
    root = make_folder(tmp_path / "images", per_class=1, test_per_class=1, unlabeled=0)
    write_image(root / "labeled" / "cat" / "000.png", 90, size=(10, 12))
    arrays = load_dataset(folder_config(root, resize=Resize.center_crop))
    assert arrays.train.images.shape[1:] == (16, 16, 3) and (arrays.train.images[0] == 90).all()


def test_resize_none_accepts_the_right_size_and_names_a_wrong_one(tmp_path):
    root = tmp_path / "images"
    for folder in ("labeled", "test"):
        write_image(root / folder / "cat" / "a.png", 10, size=(16, 16))
    right_size = load_dataset(folder_config(root, resize=Resize.none))
    assert right_size.train.images.shape == (1, 16, 16, 3)
    wrong = write_image(root / "test" / "cat" / "b.png", 10, size=(17, 16))
    with pytest.raises(UserError, match="dataset.resize=none") as caught:
        load_dataset(folder_config(root, resize=Resize.none))
    assert str(wrong) in str(caught.value) and "17x16" in str(caught.value)


def test_channels_1_and_3_convert_every_mode_without_warnings(tmp_path):
    root = make_folder(tmp_path / "images")
    Image.new("RGB", (16, 16), (255, 0, 0)).save(root / "unlabeled" / "red.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. Pillow's warning on palette transparency
        gray_arrays = load_dataset(folder_config(root, channels=1))
        rgb_arrays = load_dataset(folder_config(root, channels=3))
    assert gray_arrays.train.images.shape == (12, 16, 16, 1)
    for image, label in zip(gray_arrays.train.images, gray_arrays.train.targets):
        assert (image == gray(int(label))).all()  # 16-bit scaled, palette and alpha dropped
    red = gray_arrays.unlabeled[-1]
    assert (red == 76).all()  # ITU-R 601 luma of pure red
    assert (rgb_arrays.unlabeled[-1] == [255, 0, 0]).all()


def test_every_image_extension_is_read_in_any_case(tmp_path):
    root = make_folder(tmp_path / "images", unlabeled=0)
    for name in ("a.jpg", "b.JPEG", "c.bmp", "d.Tif", "e.tiff"):
        write_image(root / "unlabeled" / name, 100)
    arrays = load_dataset(folder_config(root))
    assert len(arrays.unlabeled) == 5
    assert np.abs(arrays.unlabeled.astype(int) - 100).max() <= 2  # JPEG is lossy


@pytest.mark.parametrize("channels,size,message", [(2, 16, "dataset.channels=2"),
                                                   (3, 0, "dataset.image_size=0")])
def test_bad_channels_or_size_are_refused(folder, channels, size, message):
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        load_dataset(folder_config(folder, channels=channels, image_size=size))


# --- normalisation -----------------------------------------------------------------------

def test_mean_and_std_are_computed_from_the_training_images(folder):
    images = load_dataset(folder_config(folder)).train.images
    computed = resolve_normalization(None, None, images)
    pixels = images.reshape(-1, 3) / 255.0
    assert computed.source == "training images"
    np.testing.assert_allclose(computed.mean, pixels.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(computed.std, pixels.std(axis=0), atol=1e-12)
    given = resolve_normalization([0.5] * 3, [0.2] * 3, images)
    assert (given.mean, given.std, given.source) == ([0.5] * 3, [0.2] * 3, "config")
    saved = resolve_normalization(None, None, images, {"mean": [0.1] * 3, "std": [0.3] * 3})
    assert (saved.mean, saved.source) == ([0.1] * 3, "checkpoint")


def test_half_given_or_constant_statistics_are_refused():
    images = np.full((2, 4, 4, 1), 7, dtype=np.uint8)
    with pytest.raises(UserError, match="give both dataset.mean and dataset.std"):
        resolve_normalization([0.5], None, images)
    with pytest.raises(UserError, match="constant"):
        channel_statistics(images)


# --- the cache ---------------------------------------------------------------------------

@pytest.fixture
def count_decodes(monkeypatch):
    """Count calls of PIL.Image.open (the decoder processes are forked, so load serially)."""
    import fixmatch.data.image_folder as image_folder

    calls = []
    original = Image.open

    def counting_open(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(image_folder, "PARALLEL_MIN_FILES", 10**9)
    monkeypatch.setattr(Image, "open", counting_open)
    return calls


def test_second_load_reads_the_cache_without_decoding(folder, monkeypatch):
    first = load_dataset(folder_config(folder))
    assert len(list((folder / CACHE_FOLDER_NAME).glob("*.npy"))) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("an image was decoded although the cache is valid")

    monkeypatch.setattr(Image, "open", refuse)
    second = load_dataset(folder_config(folder))
    for before, after in ((first.train, second.train), (first.test, second.test)):
        assert np.array_equal(before.images, after.images)
        assert np.array_equal(before.targets, after.targets)
    assert np.array_equal(first.unlabeled, second.unlabeled)


def test_cache_is_invalidated_by_an_added_or_changed_file(folder, count_decodes):
    load_dataset(folder_config(folder))
    assert len(count_decodes) == 21
    write_image(folder / "labeled" / "dog" / "new.png", gray(1))
    assert len(load_dataset(folder_config(folder)).train.targets) == 13
    assert len(count_decodes) == 21 + 22
    changed = folder / "test" / "cat" / "000.png"
    write_image(changed, 33, size=(20, 20))
    os.utime(changed, ns=(1, 1))  # a new modification time, whatever the clock's resolution
    arrays = load_dataset(folder_config(folder))
    assert (arrays.test.images[0] == 33).all()
    assert len(list((folder / CACHE_FOLDER_NAME).glob("*.npy"))) == 1  # stale caches removed


def test_each_preprocessing_has_its_own_cache(folder, count_decodes):
    load_dataset(folder_config(folder, image_size=16))
    load_dataset(folder_config(folder, image_size=8))
    load_dataset(folder_config(folder, image_size=16))
    assert len(count_decodes) == 2 * 21
    assert len(list((folder / CACHE_FOLDER_NAME).glob("*.npy"))) == 2


def test_decoder_processes_give_the_serial_result(folder, monkeypatch):
    import fixmatch.data.image_folder as image_folder

    bad = folder / "test" / "dog" / "001.PNG"  # in a later chunk: positions must line up
    bad.write_bytes(b"broken")
    serial = load_dataset(folder_config(folder, skip_bad_images=True))
    monkeypatch.setattr(image_folder, "PARALLEL_MIN_FILES", 1)
    monkeypatch.setattr(image_folder, "CHUNK_FILES", 4)
    monkeypatch.setattr(image_folder, "_decoder_processes", lambda: 2)
    for cached in (folder / CACHE_FOLDER_NAME).glob("*.*"):
        cached.unlink()  # decode again, now in processes
    parallel = load_dataset(folder_config(folder, skip_bad_images=True))
    assert len(parallel.test.targets) == 5
    for before, after in ((serial.train, parallel.train), (serial.test, parallel.test)):
        assert np.array_equal(before.images, after.images)
        assert np.array_equal(before.targets, after.targets)


def test_unwritable_root_caches_in_the_user_cache_folder(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user_cache"))
    (folder / CACHE_FOLDER_NAME).write_text("a file, so no folder can be made here")
    load_dataset(folder_config(folder))
    assert len(list((tmp_path / "user_cache" / "fixmatch").glob("*/*.npy"))) == 1


# --- bad input ---------------------------------------------------------------------------

def _message(root: Path, **overrides) -> str:
    with pytest.raises(UserError) as caught:
        load_dataset(folder_config(root, **overrides))
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_missing_root_names_it(tmp_path):
    message = _message(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in message and "dataset.root" in message


@pytest.mark.parametrize("remove,expected", [
    ("labeled", "no folder 'labeled/' or 'train/'"),
    ("test", "no folder 'test/'"),
])
def test_missing_pool_or_test_folder_names_the_layout(folder, remove, expected):
    import shutil

    shutil.rmtree(folder / remove)
    message = _message(folder)
    assert expected in message and "labeled/<class>/*" in message and str(folder) in message


def test_both_layouts_at_once_are_ambiguous(folder):
    (folder / "train" / "cat").mkdir(parents=True)
    assert "both labeled/ and train/" in _message(folder)


@pytest.mark.parametrize("empty", ["labeled/fox", "test/dog"])
def test_an_empty_class_folder_is_named(folder, empty):
    import shutil

    shutil.rmtree(folder / empty, ignore_errors=True)
    (folder / empty).mkdir()
    (folder / empty / "notes.txt").write_text("no images here")
    message = _message(folder)
    assert str(folder / empty) in message and "holds no images" in message


def test_a_test_class_unknown_to_labeled_is_named(folder):
    write_image(folder / "test" / "fox" / "0.png", 1)
    message = _message(folder)
    assert str(folder / "test" / "fox") in message and "cat, dog, eel" in message


def test_a_labeled_class_missing_in_test_is_a_warning(folder, caplog):
    import shutil

    shutil.rmtree(folder / "test" / "eel")
    with caplog.at_level(logging.WARNING, logger="fixmatch"):
        arrays = load_dataset(folder_config(folder))
    assert arrays.class_names == CLASSES and set(arrays.test.targets.tolist()) == {0, 1}
    assert "eel" in caplog.text and "never evaluated" in caplog.text


@pytest.mark.parametrize("breaker", [lambda data: data[: len(data) // 2],
                                     lambda data: b"not a png"], ids=["truncated", "garbage"])
def test_an_unreadable_image_is_named_or_skipped_with_a_count(folder, caplog, breaker):
    bad = folder / "labeled" / "dog" / "002.png"
    bad.write_bytes(breaker(bad.read_bytes()))
    message = _message(folder)
    assert f"cannot read image {bad}" in message and "dataset.skip_bad_images=true" in message
    with caplog.at_level(logging.WARNING, logger="fixmatch"):
        arrays = load_dataset(folder_config(folder, skip_bad_images=True))
    assert np.bincount(arrays.train.targets).tolist() == [4, 3, 4]
    assert "skipped 1 unreadable images" in caplog.text


def test_a_class_left_empty_by_skipped_images_is_named(tmp_path):
    root = make_folder(tmp_path / "images", per_class=1, unlabeled=0)
    (root / "labeled" / "eel" / "000.png").write_bytes(b"broken")
    message = _message(root, skip_bad_images=True)
    assert str(root / "labeled" / "eel") in message and "no readable images" in message


def test_a_root_that_is_a_file_is_called_a_file(tmp_path):
    # Before: "no such folder", for a path that is there.
    (tmp_path / "chips.zip").write_bytes(b"PK")
    with pytest.raises(UserError, match=r"dataset.root=.*chips.zip: a file, not a folder"):
        load_dataset(folder_config(tmp_path / "chips.zip"))


def test_non_image_files_are_ignored_and_counted(folder, caplog):
    # labeled/.DS_Store: before, a hidden file beside the class folders was not counted.
    for name in ("labeled/cat/notes.txt", "labeled/cat/.DS_Store", "labeled/stray.png",
                 "test/cat/x.gif", "labeled/.DS_Store"):
        (folder / name).write_bytes(b"x")
    (folder / "labeled" / ".ipynb_checkpoints").mkdir()  # a hidden folder: never a class
    with caplog.at_level(logging.INFO, logger="fixmatch"):
        arrays = load_dataset(folder_config(folder))
    assert len(arrays.train.targets) == 12 and len(arrays.class_names) == 3
    assert "ignored 5 files" in caplog.text


def test_label_counts_that_the_folder_cannot_give_are_clear_errors(folder):
    targets = load_dataset(folder_config(folder)).train.targets
    with pytest.raises(UserError, match=r"needs 5 labeled images of class 0 \('cat'\), but the "
                                        r"training set has only 4.*ssl\.num_labeled=-1"):
        draw_split(targets, 15, 3, seed=1, class_names=CLASSES)
    with pytest.raises(UserError, match="multiple of the 3 classes"):
        draw_split(targets, 10, 3, seed=1, class_names=CLASSES)
    everything = draw_split(targets, -1, 3, seed=1)
    assert everything.indices == list(range(12)) and everything.num_per_class == [4, 4, 4]


# --- configs and a whole run -------------------------------------------------------------

def test_mstar_preset_is_88px_grayscale_center_crops_without_flips_on_wrn_37_2():
    config = OmegaConf.to_object(compose_config(["dataset=mstar", "dataset.root=/data/mstar"]))
    dataset = config.dataset
    assert (dataset.name, dataset.image_size, dataset.channels) == ("folder", 88, 1)
    assert dataset.resize is Resize.center_crop and dataset.hflip is False
    assert dataset.num_classes == 10 and dataset.mean is None and dataset.std is None
    assert (config.model.depth, config.model.num_stages) == (37, 4)


def test_folder_needs_a_root():
    cfg = compose_config(["dataset=folder"])
    with pytest.raises(MissingMandatoryValue):
        OmegaConf.to_object(cfg)
    with pytest.raises(UserError, match=r"dataset\.root must be given"):
        run_experiment(cfg, Path("/nonexistent/run"))


def test_tiny_run_on_a_folder_writes_class_names_and_normalization(folder, tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose_config([
        "dataset=folder", f"dataset.root={folder}", "dataset.image_size=16", "ssl.num_labeled=6",
        "ssl.batch_size=4", "ssl.unlabeled_ratio=2", "model.depth=10", "model.widen_factor=1",
        "trainer.total_steps=4", "trainer.eval_every_steps=2", "trainer.log_every_steps=2",
        "trainer.num_workers=0", "trainer.num_threads=2", "trainer.device=cpu",
    ])
    summary = run_experiment(cfg, run_dir)
    assert summary["status"] == "completed" and summary["step"] == 4
    split = json.loads((run_dir / "split.json").read_text())
    assert split["class_names"] == CLASSES and split["num_per_class"] == [2, 2, 2]
    normalization = json.loads((run_dir / "normalization.json").read_text())
    assert normalization["source"] == "training images" and len(normalization["mean"]) == 3
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert checkpoint["class_names"] == CLASSES
    assert checkpoint["normalization"] == {key: normalization[key] for key in ("mean", "std")}


def test_cli_with_a_missing_folder_prints_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, str(CONF_DIR.parent / "run.py"), "dataset=folder",
         f"dataset.root={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: dataset.root=")
    assert "no such folder" in lines[0]



def test_training_on_a_single_class_folder_is_refused(tmp_path):
    # Before: it trained a one-output model that scored 100 % by construction.
    root = make_folder(tmp_path / "images")
    for name in CLASSES[1:]:
        shutil.rmtree(root / "labeled" / name)
        shutil.rmtree(root / "test" / name)
    assert load_dataset(folder_config(root)).class_names == ["cat"]  # loading still works
    cfg = compose_config([
        "dataset=folder", f"dataset.root={root}", "dataset.image_size=16", "ssl.num_labeled=-1",
        "dataset.mean=[0.5,0.5,0.5]", "dataset.std=[0.25,0.25,0.25]", "ssl.batch_size=2",
        "ssl.unlabeled_ratio=1", "model.depth=10", "model.widen_factor=1",
        "trainer.total_steps=2", "trainer.eval_every_steps=2", "trainer.num_workers=0",
        "trainer.num_threads=2", "trainer.device=cpu"])
    with pytest.raises(UserError, match=r"has one class \(cat\); a classifier needs at least two"):
        run_experiment(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


# --- resuming a folder run -------------------------------------------------------------

def folder_run(root: Path, run_dir: Path, *extra: str) -> dict:
    """A seconds-long run on a `make_folder` folder, checkpointed every 2 steps."""
    return run_experiment(compose_config([
        "dataset=folder", f"dataset.root={root}", "dataset.image_size=16", "ssl.num_labeled=6",
        "ssl.batch_size=4", "ssl.unlabeled_ratio=2", "model.depth=10", "model.widen_factor=1",
        "trainer.total_steps=4", "trainer.eval_every_steps=2", "trainer.log_every_steps=2",
        "trainer.num_workers=0", "trainer.num_threads=2", "trainer.device=cpu", *extra]), run_dir)


def files_of(run_dir: Path) -> dict:
    return {str(path.relative_to(run_dir)): path.read_bytes()
            for path in sorted(run_dir.rglob("*")) if path.is_file()}


def test_a_refused_resume_leaves_every_file_of_the_run_as_it_was(folder, tmp_path):
    # Before: the refusal came after config_resolved.yaml was rewritten (naming the other
    # root) and metrics.json said "failed", so results counted a completed run as failed.
    run_dir = tmp_path / "run"
    folder_run(folder, run_dir)
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    for part in ("labeled", "test"):
        write_image(other / part / "fox" / "000.png", 250)
    before = files_of(run_dir)
    with pytest.raises(UserError, match=r"trained on the classes \['cat', 'dog', 'eel'\]"):
        folder_run(other, run_dir, "trainer.total_steps=6")
    assert files_of(run_dir) == before  # metrics, config, split, TensorBoard, checkpoints
    assert folder_run(folder, run_dir, "trainer.total_steps=6")["step"] == 6


def test_a_resume_scored_on_other_test_images_says_so(folder, tmp_path, caplog):
    # Before: silent, and the reported median mixed evaluations on 6 and 7 test images.
    run_dir = tmp_path / "run"
    folder_run(folder, run_dir)
    with caplog.at_level(logging.WARNING, logger="fixmatch"):
        folder_run(folder, run_dir, "trainer.total_steps=6")
    assert "other test images" not in caplog.text
    write_image(folder / "test" / "cat" / "new.png", 5)
    with caplog.at_level(logging.WARNING, logger="fixmatch"):
        assert folder_run(folder, run_dir, "trainer.total_steps=8")["step"] == 8
    assert "has other test images than the run's evaluations so far (6 then, 7 now): " \
        "evaluations from step 6 on score the new ones" in caplog.text


def test_the_start_line_counts_the_extra_unlabeled_images(folder, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="fixmatch"):
        folder_run(folder, tmp_path / "run")
    assert "12 training images, 6 labeled (per class [2, 2, 2]), 3 extra unlabeled images, 6 test " \
        "images" in caplog.text


def test_a_completed_run_rerun_on_other_data_is_refused_not_called_done(folder, tmp_path):
    # Before: "already completed 4 steps; nothing to do", so a sweep folder reused for new
    # data trained nothing and the results table showed the old run's numbers.
    run_dir = tmp_path / "run"
    folder_run(folder, run_dir)
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    shutil.rmtree(other / "labeled" / "eel")
    shutil.rmtree(other / "test" / "eel")
    for part in ("labeled", "test"):
        for index in range(4 if part == "labeled" else 2):
            write_image(other / part / "fox" / f"{index:03d}.png", 250)
    before = files_of(run_dir)
    with pytest.raises(UserError, match=r"holds a run completed on dataset.root=.*images, but "
                                        r"dataset.root=.*other has the classes \['cat', 'dog', 'fox'\], "
                                        r"the run was trained on \['cat', 'dog', 'eel'\]; use another"):
        folder_run(other, run_dir)
    shutil.rmtree(other)
    shutil.copytree(folder, other)
    _swap_labeled(other)
    with pytest.raises(UserError, match=r"has other training images than the run was trained on"):
        folder_run(other, run_dir)
    assert files_of(run_dir) == before
    moved = tmp_path / "moved"  # the run's own data in another place is still the same run
    shutil.copytree(folder, moved)
    assert folder_run(moved, run_dir)["status"] == "completed"
    assert files_of(run_dir) == before


def _add_labeled(root):
    write_image(root / "labeled" / "cat" / "00.png", gray(0))  # sorts first


def _swap_labeled(root):
    _add_labeled(root)
    (root / "labeled" / "eel" / "003.png").unlink()


def _add_unlabeled(root):
    write_image(root / "unlabeled" / "new.png", 128)


def _rename_unlabeled(root):
    (root / "unlabeled" / "batch0" / "deep" / "0.png").rename(root / "unlabeled" / "0.png")


@pytest.mark.parametrize("change,message", [
    (_add_labeled, r"has 13 training images, the run's split was drawn from 12: images were added"
                   r".*its labeled indices would name other images"),
    (_swap_labeled, r"has as many training images as the run's split was drawn from \(12\), but other"),
    (_add_unlabeled, r"has 4 extra unlabeled images, the run started with 3.*another unlabeled stream"),
    (_rename_unlabeled, r"has other extra unlabeled files than the run started with \(3 images\)"),
])
def test_resume_refuses_other_images(folder, tmp_path, change, message):
    # The split is stored as indices into the sorted training files, and the unlabeled stream
    # follows the pool's order. Before, an image added in front of the labeled ones resumed
    # silently with another labeled set (only an index past the end was noticed), and other
    # unlabeled images with another stream.
    run_dir = tmp_path / "run"
    folder_run(folder, run_dir)
    change(folder)
    before = files_of(run_dir)
    with pytest.raises(UserError, match=message + r".*restore the images .* another hydra.run.dir"):
        folder_run(folder, run_dir, "trainer.total_steps=6")
    assert files_of(run_dir) == before


def test_the_same_images_elsewhere_and_a_run_from_before_the_fingerprint_resume(folder, tmp_path):
    run_dir = tmp_path / "run"
    folder_run(folder, run_dir)
    fingerprint = json.loads((run_dir / "split.json").read_text())["training_set"]
    assert fingerprint["num_images"] == 12 and len(fingerprint["sha256"]) == 64
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)  # paths are compared relative to dataset.root
    assert folder_run(moved, run_dir, "trainer.total_steps=6")["step"] == 6
    newest = run_dir / "checkpoints" / "step_000000006.pt"
    state = load_checkpoint(newest)
    del state["training_set"], state["unlabeled_set"]  # as before the fingerprints: unknown
    torch.save(state, newest)
    assert folder_run(moved, run_dir, "trainer.total_steps=8")["step"] == 8
