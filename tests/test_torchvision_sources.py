"""SVHN and STL-10 sources: file formats, pixel layout, labels, folds, offline errors,
their configs, and a tiny end-to-end run at 96 px.

Every file here is written by the test in the dataset's own format; nothing downloads.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torchvision
from omegaconf import OmegaConf
from PIL import Image

from conftest import compose_config
from fixmatch.app import run_experiment
from fixmatch.config import DatasetConfig, LabeledSplitRule
from fixmatch.data.datasets import load_dataset
from fixmatch.data.randaugment import RandAugment, apply_op
from fixmatch.data.split import draw_split
from fixmatch.data.transforms import StrongTransform, weak_augment
from fixmatch.errors import UserError
from fixmatch.models import WideResNet

SVHN_COUNTS = [4948, 13861, 10585, 8497, 7458, 6882, 5727, 5595, 5045, 4659]  # train, digits 0..9
STL10_NAMES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
STL10_FILES = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "unlabeled_X.bin",
               "class_names.txt", "fold_indices.txt"]


# --- writers of tiny files in the real formats ----------------------------------------

def write_svhn(root: Path, train_labels, test_labels) -> Path:
    """`<root>/{train,test}_32x32.mat` as the SVHN site ships them: X (32, 32, 3, N) uint8,
    y (N, 1) with labels 1..10 (10 is the digit 0). Image n is filled with n and has one
    marked pixel: row 1, column 2, green = 250."""
    root.mkdir(parents=True, exist_ok=True)
    for name, labels in (("train", train_labels), ("test", test_labels)):
        labels = np.asarray(labels, dtype=np.uint8)
        images = np.broadcast_to(np.arange(len(labels), dtype=np.uint8), (32, 32, 3, len(labels))).copy()
        images[1, 2, 1, :] = 250
        scipy.io.savemat(root / f"{name}_32x32.mat", {"X": images, "y": labels[:, None]})
    return root


def write_stl10(root: Path, train_per_class: int = 4, test_per_class: int = 2,
                num_unlabeled: int = 6, fold_size: int = 8, seed: int = 0) -> Path:
    """`<root>/stl10_binary/` in STL-10's binary format. Each channel of each image is
    stored column-major: byte c*96*96 + x*96 + y of an image is pixel (row y, column x).
    Image n of a file has the value n in pixel (row 5, column 70) of channel 1, else 0."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)

    def images(count: int) -> bytes:
        data = np.zeros((count, 3 * 96 * 96), dtype=np.uint8)
        data[:, 1 * 96 * 96 + 70 * 96 + 5] = np.arange(count) % 256
        return data.tobytes()

    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(1, 11), per_class)).astype(np.uint8)
        (folder / f"{split}_X.bin").write_bytes(images(len(labels)))
        (folder / f"{split}_y.bin").write_bytes(labels.tobytes())
    (folder / "unlabeled_X.bin").write_bytes(images(num_unlabeled))
    (folder / "class_names.txt").write_text("\n".join(STL10_NAMES) + "\n")
    folds = [rng.choice(10 * train_per_class, fold_size, replace=False) for _ in range(10)]
    # The official file ends each line with a space.
    (folder / "fold_indices.txt").write_text("".join(" ".join(map(str, f)) + " \n" for f in folds))
    return root


def _config(name: str, root: Path, **overrides) -> DatasetConfig:
    size = 96 if name == "stl10" else 32
    values = dict(name=name, root=str(root), download=False, num_classes=10, channels=3,
                  image_size=size, mean=[0.5] * 3, std=[0.25] * 3)
    values.update(overrides)
    return DatasetConfig(**values)


# --- SVHN ------------------------------------------------------------------------------

def test_svhn_reads_both_mat_files_with_hwc_pixels_and_digit_labels(tmp_path, forbid_download):
    write_svhn(tmp_path, train_labels=[10, 1, 2, 9, 10, 5], test_labels=[3, 10])
    arrays = load_dataset(_config("svhn", tmp_path))
    assert arrays.train.images.shape == (6, 32, 32, 3) and arrays.test.images.shape == (2, 32, 32, 3)
    assert arrays.train.images.dtype == np.uint8 and arrays.train.targets.dtype == np.int64
    assert arrays.train.targets.tolist() == [0, 1, 2, 9, 0, 5]  # label 10 is the digit 0
    assert arrays.test.targets.tolist() == [3, 0]
    assert arrays.class_names == [str(d) for d in range(10)]
    assert arrays.unlabeled is None and arrays.labeled_folds is None
    for n, image in enumerate(arrays.train.images):  # image n, (row, column, channel) order
        assert image[1, 2, 1] == 250 and image[2, 1, 1] == n and image[1, 2, 0] == n


@pytest.mark.parametrize("present,missing", [
    (False, "missing train_32x32.mat, test_32x32.mat"),
    (True, "missing test_32x32.mat"),
], ids=["no-files", "test-missing"])
def test_svhn_offline_is_one_line_naming_the_folder_and_files(tmp_path, forbid_download, present,
                                                             missing):
    if present:
        write_svhn(tmp_path, [1, 2], [1])
        (tmp_path / "test_32x32.mat").unlink()
    with pytest.raises(UserError) as caught:
        load_dataset(_config("svhn", tmp_path))
    message = str(caught.value)
    assert "\n" not in message and "dataset.download=false" in message
    assert str(tmp_path.resolve()) in message
    assert "expected train_32x32.mat and test_32x32.mat" in message and missing in message


def test_svhn_failed_download_is_a_user_error(tmp_path, monkeypatch):
    calls = []

    def offline(root, download, split):
        calls.append((root, download, split))
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.datasets, "SVHN", offline)
    with pytest.raises(UserError, match="download failed .*Temporary failure") as caught:
        load_dataset(_config("svhn", tmp_path, download=True))
    assert calls == [(str(tmp_path.resolve()), True, "train")]
    assert "\n" not in str(caught.value)


def test_svhn_download_fills_the_root_then_loads(tmp_path, monkeypatch):
    def fake(root, download, split):
        write_svhn(Path(root), [1, 2, 3], [4]) if split == "train" else None

    monkeypatch.setattr(torchvision.datasets, "SVHN", fake)
    assert load_dataset(_config("svhn", tmp_path, download=True)).train.targets.tolist() == [1, 2, 3]


@pytest.mark.parametrize("payload,message", [
    (b"", "cannot read SVHN file"),
    (b"not a mat file" * 20, "cannot read SVHN file"),
    ({"X": np.zeros((28, 28, 3, 2), np.uint8), "y": np.ones((2, 1))}, r"\(32, 32, 3, N\)"),
    ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[0], [11]])}, "labels must be 1..10"),
], ids=["empty", "garbage", "wrong-size", "bad-labels"])
def test_unreadable_svhn_is_a_user_error_naming_the_file(tmp_path, payload, message):
    write_svhn(tmp_path, [1, 2], [1])
    path = tmp_path / "train_32x32.mat"
    if isinstance(payload, bytes):
        path.write_bytes(payload)
    else:
        scipy.io.savemat(path, payload)
    with pytest.raises(UserError, match=message) as caught:
        load_dataset(_config("svhn", tmp_path))
    assert str(path.resolve()) in str(caught.value)


# --- STL-10 ----------------------------------------------------------------------------

def test_stl10_reads_train_test_unlabeled_names_and_folds(tmp_path, forbid_download):
    write_stl10(tmp_path, train_per_class=4, test_per_class=2, num_unlabeled=6, fold_size=8)
    arrays = load_dataset(_config("stl10", tmp_path))
    assert arrays.train.images.shape == (40, 96, 96, 3) and arrays.test.images.shape == (20, 96, 96, 3)
    assert arrays.unlabeled.shape == (6, 96, 96, 3) and arrays.unlabeled.dtype == np.uint8
    assert arrays.train.targets.dtype == np.int64
    assert np.bincount(arrays.train.targets, minlength=10).tolist() == [4] * 10  # 1..10 -> 0..9
    labels = np.frombuffer((tmp_path / "stl10_binary" / "train_y.bin").read_bytes(), np.uint8)
    assert arrays.train.targets.tolist() == (labels.astype(int) - 1).tolist()
    assert arrays.class_names == STL10_NAMES
    assert len(arrays.labeled_folds) == 10 and {len(f) for f in arrays.labeled_folds} == {8}
    first = (tmp_path / "stl10_binary" / "fold_indices.txt").read_text().splitlines()[0]
    assert arrays.labeled_folds[0] == [int(i) for i in first.split()]


def test_stl10_column_major_pixels_become_row_column_channel(tmp_path):
    write_stl10(tmp_path, num_unlabeled=6)
    arrays = load_dataset(_config("stl10", tmp_path))
    for images in (arrays.train.images, arrays.test.images, arrays.unlabeled):
        assert (images[:, 5, 70, 1] == np.arange(len(images))).all()  # row 5, column 70, green
        marked = np.zeros(images.shape[1:], dtype=bool)
        marked[5, 70, 1] = True
        assert not images[3][~marked].any()  # nothing else, e.g. not (row 70, column 5)


def test_stl10_unlabeled_images_are_memory_mapped_not_read(tmp_path):
    write_stl10(tmp_path, num_unlabeled=6)
    unlabeled = load_dataset(_config("stl10", tmp_path)).unlabeled
    assert isinstance(unlabeled.base, np.memmap) or isinstance(unlabeled, np.memmap)
    assert not unlabeled.flags.writeable


@pytest.mark.parametrize("missing", ["unlabeled_X.bin", "fold_indices.txt", "test_y.bin"])
def test_stl10_offline_names_the_folder_and_every_expected_file(tmp_path, forbid_download, missing):
    write_stl10(tmp_path)
    (tmp_path / "stl10_binary" / missing).unlink()
    with pytest.raises(UserError) as caught:
        load_dataset(_config("stl10", tmp_path))
    message = str(caught.value)
    assert "\n" not in message and "dataset.download=false" in message
    assert str((tmp_path / "stl10_binary").resolve()) in message
    assert all(name in message for name in STL10_FILES)


def test_stl10_failed_download_is_a_user_error(tmp_path, monkeypatch):
    def offline(root, download, split):
        raise RuntimeError("File not found or corrupted.")

    monkeypatch.setattr(torchvision.datasets, "STL10", offline)
    with pytest.raises(UserError, match=r"download failed \(File not found or corrupted.\)"):
        load_dataset(_config("stl10", tmp_path, download=True))


@pytest.mark.parametrize("file_name,content,message", [
    ("train_X.bin", b"\x00" * 1000, "not a whole number of 96x96x3 images"),
    ("train_y.bin", b"\x01" * 3, "expected 40 labels in 1..10"),
    ("test_y.bin", b"\x00" * 20, "expected 20 labels in 1..10"),
    ("fold_indices.txt", "1 2 x\n", "whitespace-separated image indices"),
    ("fold_indices.txt", "1 2 40\n", "an index outside 0..39"),
    ("fold_indices.txt", "1 2 3\n4 5\n", "folds of different sizes"),
    ("fold_indices.txt", "1 1 2\n", "a repeated index"),
], ids=["images-size", "few-labels", "label-zero", "not-ints", "out-of-range", "ragged", "repeat"])
def test_broken_stl10_files_are_user_errors_naming_the_file(tmp_path, file_name, content, message):
    write_stl10(tmp_path)
    path = tmp_path / "stl10_binary" / file_name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    with pytest.raises(UserError, match=message) as caught:
        load_dataset(_config("stl10", tmp_path))
    assert str(path.resolve()) in str(caught.value)


# --- splits: STL-10 folds, SVHN proportions -------------------------------------------

def test_1000_labels_take_the_official_fold_seed_mod_10_other_counts_are_drawn(tmp_path):
    write_stl10(tmp_path, fold_size=8)
    arrays = load_dataset(_config("stl10", tmp_path))
    targets = arrays.train.targets
    for seed in (0, 3, 13):
        split = draw_split(targets, 8, 10, seed, "balanced", arrays.labeled_folds)
        assert split.indices == sorted(arrays.labeled_folds[seed % 10])
        assert split.seed == seed and sum(split.num_per_class) == 8
        assert split.num_per_class == np.bincount(targets[split.indices], minlength=10).tolist()
    drawn = draw_split(targets, 20, 10, 3, "balanced", arrays.labeled_folds)
    assert drawn.num_per_class == [2] * 10  # not a fold size: class-balanced draw


def test_svhn_preset_spreads_labels_like_the_official_code():
    targets = np.repeat(np.arange(10), SVHN_COUNTS)
    rule = OmegaConf.to_object(compose_config(["dataset=svhn"])).dataset.labeled_split.value
    split = draw_split(targets, 40, 10, seed=1, rule=rule)
    # google-research/fixmatch scripts/create_split.py on SVHN's train counts, 40 labels.
    assert split.num_per_class == [3, 7, 6, 4, 4, 4, 3, 3, 3, 3]
    assert np.bincount(targets[split.indices], minlength=10).tolist() == split.num_per_class


# --- configs ---------------------------------------------------------------------------

def test_stl10_config_selects_wrn37_2_with_four_stages_at_96_px():
    config = OmegaConf.to_object(compose_config(["dataset=stl10"]))
    assert (config.model.depth, config.model.widen_factor, config.model.num_stages) == (37, 2, 4)
    assert (config.dataset.image_size, config.dataset.channels, config.dataset.hflip) == (96, 3, True)
    assert config.optim.weight_decay == 5e-4
    assert config.dataset.labeled_split is LabeledSplitRule.balanced
    model = WideResNet(num_classes=10, depth=config.model.depth,
                       widen_factor=config.model.widen_factor, num_stages=config.model.num_stages)
    assert len(model.stages) == 4 and {len(stage) for stage in model.stages} == {4}
    assert model.num_features == 16 * 2 * 8  # widths 32, 64, 128, 256
    features = model.stages(model.stem(torch.zeros(1, 3, 96, 96)))
    assert features.shape[-2:] == (12, 12)  # 96 / 2^3, as 32 px ends at 8 x 8


def test_svhn_config_is_wrn28_2_without_flip_and_proportional_labels():
    config = OmegaConf.to_object(compose_config(["dataset=svhn", "ssl.num_labeled=40"]))
    assert (config.model.depth, config.model.widen_factor, config.model.num_stages) == (28, 2, 3)
    assert config.dataset.hflip is False and config.dataset.image_size == 32
    assert config.dataset.labeled_split is LabeledSplitRule.proportional
    assert config.optim.weight_decay == 5e-4


# --- augmentation at 96 px ---------------------------------------------------------------

def test_weak_pad_translate_and_cutout_scale_with_the_96_px_side():
    rows, cols = np.indices((96, 96))
    image = np.stack([rows, cols, np.zeros_like(rows)], axis=2).astype(np.uint8)
    shifts = set()
    for seed in range(200):
        out = weak_augment(image, np.random.default_rng(seed), hflip=False)
        # Reflect padding mirrors at the border: inside, row r of out is row r + shift.
        shifts.add(int(out[48, 48, 0]) - 48)
    assert shifts == set(range(-12, 13))  # 12.5 % of 96 = 12 px of padding
    translate = [apply_op(Image.fromarray(image), "TranslateX", level, np.random.default_rng(1))
                 for level in (1, 9)]
    moved = [abs(int(np.asarray(t)[48, 48, 1]) - 48) for t in translate]
    assert moved == [3, 27]  # L px per 32 px of side: 3L px at 96
    strong = StrongTransform(hflip=False, randaugment=RandAugment(num_ops=0))
    sides = set()
    for seed in range(30):
        filled = (strong(np.zeros((96, 96, 3), np.uint8), np.random.default_rng(seed)) == 128).all(dim=0)
        sides.add((int(filled.any(dim=1).sum()), int(filled.any(dim=0).sum())))
    assert (48, 48) in sides and all(24 <= r <= 48 and 24 <= c <= 48 for r, c in sides)


# --- a tiny end-to-end run on fake STL-10 ------------------------------------------------

def test_tiny_stl10_run_trains_a_four_stage_model_on_the_official_fold(tmp_path):
    root = write_stl10(tmp_path / "data", train_per_class=4, test_per_class=2, num_unlabeled=12,
                       fold_size=20)
    cfg = compose_config([
        "dataset=stl10", f"dataset.root={root}", "dataset.download=false", "seed=2",
        "ssl.num_labeled=20", "ssl.batch_size=4", "ssl.unlabeled_ratio=2",
        "model.depth=13", "model.widen_factor=1",  # 4 stages of 1 block: WRN-13-1
        "trainer.total_steps=2", "trainer.eval_every_steps=2", "trainer.log_every_steps=1",
        "trainer.num_workers=0", "trainer.num_threads=2", "trainer.device=cpu",
        "trainer.eval_batch_size=32",
    ])
    assert cfg.model.num_stages == 4
    summary = run_experiment(cfg, tmp_path / "run")
    assert summary["status"] == "completed" and summary["step"] == 2
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    folds = (root / "stl10_binary" / "fold_indices.txt").read_text().splitlines()
    assert split["indices"] == sorted(int(i) for i in folds[2].split())  # seed 2 -> fold 2
    assert split["seed"] == 2 and sum(split["num_per_class"]) == 20
