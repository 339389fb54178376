"""Dataset sources: CIFAR-10/100 from torchvision's python format, sklearn digits, clear errors.

Nothing here downloads: CIFAR files are written by the tests, and every download is a
monkeypatched torchvision class.
"""

import pickle
import urllib.error
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torchvision

from conftest import write_cifar10
from fixmatch.config import DatasetConfig
from fixmatch.data.datasets import DatasetArrays, ImageSet, load_dataset
from fixmatch.errors import UserError

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]


def _cifar10_config(root: Path, **overrides) -> DatasetConfig:
    values = dict(name="cifar10", root=str(root), download=False, num_classes=10, channels=3,
                  image_size=32, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    values.update(overrides)
    return DatasetConfig(**values)


def _digits_config(**overrides) -> DatasetConfig:
    values = dict(name="digits", download=False, num_classes=10, channels=1, image_size=8,
                  mean=[0.3], std=[0.4], hflip=False)
    values.update(overrides)
    return DatasetConfig(**values)


def _square(label: int) -> tuple[slice, slice]:
    """Rows and columns (HWC) of the bright square that conftest's writer paints for `label`."""
    row, col = divmod(label, 5)
    return slice(4 + row * 14, 4 + row * 14 + 10), slice(1 + col * 6, 1 + col * 6 + 6)


# --- CIFAR-10 ------------------------------------------------------------------------

def test_cifar10_loads_arrays_with_the_right_shapes_types_and_counts(tiny_cifar10, forbid_download):
    arrays = load_dataset(_cifar10_config(tiny_cifar10))
    assert arrays.train.images.shape == (200, 32, 32, 3)
    assert arrays.test.images.shape == (100, 32, 32, 3)
    assert arrays.train.images.dtype == arrays.test.images.dtype == np.uint8
    assert arrays.train.targets.dtype == arrays.test.targets.dtype == np.int64
    assert np.bincount(arrays.train.targets, minlength=10).tolist() == [20] * 10
    assert np.bincount(arrays.test.targets, minlength=10).tolist() == [10] * 10
    assert arrays.class_names == CIFAR10_NAMES


def test_cifar10_pixels_are_height_width_channel_and_match_their_labels(tiny_cifar10):
    arrays = load_dataset(_cifar10_config(tiny_cifar10))
    for part in (arrays.train, arrays.test):
        for image, label in zip(part.images, part.targets):
            rows, cols = _square(int(label))
            assert (image[rows, cols, :] == 230).all()
            # The square of another class is noise (< 80) on this image.
            other_rows, other_cols = _square((int(label) + 1) % 10)
            assert image[other_rows, other_cols, :].max() < 80


def test_cifar10_class_names_come_from_batches_meta(tmp_path):
    root = write_cifar10(tmp_path, train_per_class=1, test_per_class=1)
    names = [f"class_{i}" for i in range(10)]
    meta = root / "cifar-10-batches-py" / "batches.meta"
    meta.write_bytes(pickle.dumps({"label_names": names}))
    assert load_dataset(_cifar10_config(root)).class_names == names


# --- CIFAR-100 -----------------------------------------------------------------------

def _write_cifar100(root: Path, train_per_class: int, test_per_class: int) -> Path:
    """CIFAR-100 in torchvision's python format; image i is filled with the value of its label."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)

    def batch(per_class: int) -> dict:
        labels = np.tile(np.arange(100), per_class)
        images = np.broadcast_to(labels[:, None, None, None].astype(np.uint8),
                                 (len(labels), 3, 32, 32)).copy()
        images[:, 0, 0, 1] = 255  # one marked pixel: red channel, row 0, column 1
        return {"data": images.reshape(len(labels), -1), "fine_labels": labels.tolist(),
                "coarse_labels": (labels // 5).tolist()}

    (folder / "train").write_bytes(pickle.dumps(batch(train_per_class)))
    (folder / "test").write_bytes(pickle.dumps(batch(test_per_class)))
    names = [f"fine_{i}" for i in range(100)]
    meta = {"fine_label_names": names, "coarse_label_names": [f"coarse_{i}" for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta))
    return root


def test_cifar100_loads_from_its_own_folder(tmp_path, forbid_download):
    root = _write_cifar100(tmp_path, train_per_class=2, test_per_class=1)
    arrays = load_dataset(_cifar10_config(root, name="cifar100", num_classes=100))
    assert arrays.train.images.shape == (200, 32, 32, 3)
    assert arrays.test.images.shape == (100, 32, 32, 3)
    assert arrays.train.images.dtype == np.uint8 and arrays.train.targets.dtype == np.int64
    assert np.bincount(arrays.train.targets, minlength=100).tolist() == [2] * 100
    assert np.bincount(arrays.test.targets, minlength=100).tolist() == [1] * 100
    assert arrays.class_names == [f"fine_{i}" for i in range(100)]
    # Fine labels (not coarse ones) go with their images, and the pixel layout is HWC.
    for part in (arrays.train, arrays.test):
        assert (part.images[:, 5, 5, 2] == part.targets).all()
        assert (part.images[:, 0, 1, 0] == 255).all()
        assert (part.images[:, 1, 0, 0] == part.targets).all()


# --- missing, failed downloads, corrupt files ----------------------------------------

@pytest.mark.parametrize("present", [[], CIFAR10_FILES[1:]], ids=["no-folder", "one-file-missing"])
def test_missing_cifar_without_download_names_the_folder_and_the_fix(tmp_path, forbid_download,
                                                                     present):
    folder = tmp_path / "cifar-10-batches-py"
    if present:
        write_cifar10(tmp_path, train_per_class=1, test_per_class=1)
        (folder / CIFAR10_FILES[0]).unlink()
    with pytest.raises(UserError) as caught:
        load_dataset(_cifar10_config(tmp_path, download=False))
    message = str(caught.value)
    assert str(folder.resolve()) in message
    assert "dataset.download=false" in message
    assert "put the extracted 'cifar-10-batches-py/' folder" in message
    assert "dataset.root" in message
    if present:  # names what is missing instead of "no dataset files"
        assert f"{folder.resolve()} is missing data_batch_1 and dataset.download=false" in message
    else:
        assert "no dataset files in" in message


@pytest.mark.parametrize("name,removed,expected", [
    ("cifar10", ["data_batch_3"], "is missing data_batch_3 and"),
    ("cifar10", ["data_batch_3", "batches.meta"], "is missing data_batch_3, batches.meta and"),
    ("cifar100", ["meta"], "is missing meta and"),
    ("cifar100", ["train", "test"], "is missing train, test and"),
])
def test_partly_present_cifar_names_the_missing_files(tmp_path, forbid_download, name, removed,
                                                      expected):
    # Before: "no dataset files in <folder>" although the other files were there.
    if name == "cifar10":
        folder = write_cifar10(tmp_path, train_per_class=1, test_per_class=1) / "cifar-10-batches-py"
    else:
        folder = _write_cifar100(tmp_path, train_per_class=1, test_per_class=1) / "cifar-100-python"
    for file_name in removed:
        (folder / file_name).unlink()
    with pytest.raises(UserError) as caught:
        load_dataset(_cifar10_config(tmp_path, name=name, num_classes=100 if name == "cifar100" else 10))
    message = str(caught.value)
    assert message.startswith(f"{name}: {folder.resolve()} {expected} dataset.download=false; ")
    assert "no dataset files" not in message


@pytest.mark.parametrize("error", [urllib.error.URLError("no route to host"),
                                   RuntimeError("File not found or corrupted.")])
@pytest.mark.parametrize("name,torchvision_class,folder", [
    ("cifar10", "CIFAR10", "cifar-10-batches-py"),
    ("cifar100", "CIFAR100", "cifar-100-python"),
])
def test_failed_download_is_a_user_error(tmp_path, monkeypatch, error, name, torchvision_class,
                                         folder):
    calls = []

    def failing_download(root, download):
        calls.append((root, download))
        raise error

    monkeypatch.setattr(torchvision.datasets, torchvision_class, failing_download)
    with pytest.raises(UserError) as caught:
        load_dataset(_cifar10_config(tmp_path, name=name, download=True, num_classes=100))
    message = str(caught.value)
    assert calls == [(str(tmp_path.resolve()), True)]
    assert "download failed" in message
    assert str(error).splitlines()[0] in message
    assert str((tmp_path / folder).resolve()) in message
    assert f"put the extracted '{folder}/' folder" in message


def test_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(UserError) as caught:
        load_dataset(_cifar10_config(tmp_path, download=False))
    message = str(caught.value)
    assert "dataset.download=false; set dataset.download=true to fetch them" in message
    assert "(the files come from https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz)" in message


def test_a_failed_download_leaves_no_empty_folder_behind(tmp_path, monkeypatch):
    # Before: every offline attempt left an empty ./data where the command ran.
    def failing_download(root, download):
        Path(root).mkdir(parents=True, exist_ok=True)  # as torchvision does before fetching
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", failing_download)
    (tmp_path / "kept").mkdir()
    with pytest.raises(UserError, match="download failed"):
        load_dataset(_cifar10_config(tmp_path / "kept" / "data" / "cifar", download=True))
    assert [path.name for path in tmp_path.iterdir()] == ["kept"]
    assert not any((tmp_path / "kept").iterdir())


def test_download_fills_the_root_then_loads(tmp_path, monkeypatch):
    def fake_download(root, download):
        assert download is True
        write_cifar10(Path(root), train_per_class=2, test_per_class=1)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_download)
    arrays = load_dataset(_cifar10_config(tmp_path, download=True))
    assert arrays.train.images.shape == (20, 32, 32, 3)
    assert arrays.test.images.shape == (10, 32, 32, 3)


def _write_and_break(root: Path, file_name: str, breaker) -> Path:
    write_cifar10(root, train_per_class=2, test_per_class=1)
    path = root / "cifar-10-batches-py" / file_name
    path.write_bytes(breaker(path.read_bytes()))
    return path


@pytest.mark.parametrize("file_name", ["data_batch_3", "test_batch", "batches.meta"])
@pytest.mark.parametrize("breaker", [
    lambda data: data[: len(data) // 2],
    lambda data: b"",
    lambda data: b"\x00" * len(data),
], ids=["truncated", "empty", "zeroed"])
def test_unreadable_cifar_file_is_a_user_error_naming_the_file(tmp_path, forbid_download,
                                                               file_name, breaker):
    path = _write_and_break(tmp_path, file_name, breaker)
    with pytest.raises(UserError, match="cannot read CIFAR file") as caught:
        load_dataset(_cifar10_config(tmp_path, download=True))
    assert str(path.resolve()) in str(caught.value)


@pytest.mark.parametrize("payload", [
    {"labels": [0, 1]},
    {"data": np.zeros((2, 100), dtype=np.uint8), "labels": [0, 1]},
    {"data": np.zeros((2, 3072), dtype=np.uint8), "labels": [0]},
], ids=["no-data-key", "wrong-image-size", "fewer-labels-than-images"])
def test_a_pickle_that_is_not_a_cifar_batch_is_a_user_error_naming_the_file(tmp_path, payload):
    path = _write_and_break(tmp_path, "data_batch_2", lambda data: pickle.dumps(payload))
    with pytest.raises(UserError) as caught:
        load_dataset(_cifar10_config(tmp_path, download=False))
    assert str(path.resolve()) in str(caught.value)


# --- names and config checks ---------------------------------------------------------

def test_unknown_dataset_name_lists_the_valid_names(tmp_path):
    with pytest.raises(UserError) as caught:
        load_dataset(_cifar10_config(tmp_path, name="cifar11"))
    message = str(caught.value)
    assert "dataset.name='cifar11'" in message
    for name in ("cifar10", "cifar100", "digits"):
        assert f"'{name}'" in message


@pytest.mark.parametrize("overrides,expected", [
    ({"image_size": 28}, "dataset.image_size=28"),
    ({"channels": 1, "mean": [0.5], "std": [0.25]}, "dataset.channels=1"),
    ({"num_classes": 100}, "dataset.num_classes=100"),
    ({"mean": [0.5]}, "dataset.mean"),
    ({"std": [0.25, 0.25]}, "dataset.std"),
])
def test_cifar10_that_does_not_match_the_config_is_a_user_error(tiny_cifar10, overrides, expected):
    with pytest.raises(UserError, match=expected.replace(".", r"\.")):
        load_dataset(_cifar10_config(tiny_cifar10, **overrides))


@pytest.mark.parametrize("overrides,expected", [
    ({"image_size": 32}, "dataset.image_size=32"),
    ({"channels": 3, "mean": [0.3] * 3, "std": [0.4] * 3}, "dataset.channels=3"),
    ({"num_classes": 100}, "dataset.num_classes=100"),
    ({"mean": [0.3, 0.3, 0.3]}, "dataset.mean"),
])
def test_digits_that_do_not_match_the_config_are_a_user_error(overrides, expected):
    with pytest.raises(UserError, match=expected.replace(".", r"\.")):
        load_dataset(_digits_config(**overrides))


# --- digits --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    return load_dataset(_digits_config())


def test_digits_split_has_the_documented_sizes_and_types(digits):
    assert digits.train.images.shape == (1297, 8, 8, 1)
    assert digits.test.images.shape == (500, 8, 8, 1)
    assert digits.train.images.dtype == digits.test.images.dtype == np.uint8
    assert digits.train.targets.dtype == digits.test.targets.dtype == np.int64
    assert np.bincount(digits.test.targets, minlength=10).tolist() == [50] * 10
    assert digits.class_names == [str(d) for d in range(10)]
    both = np.concatenate([digits.train.images, digits.test.images])
    assert both.min() == 0 and both.max() == 255


def test_digits_train_and_test_partition_the_sklearn_images(digits):
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    original = Counter(
        (image.astype(np.uint8).tobytes(), int(label))
        for image, label in zip(bunch.images, bunch.target)
    )
    loaded = Counter()
    for part in (digits.train, digits.test):
        # 0..16 was stretched to 0..255; undo it to compare with sklearn's own pixels.
        back = np.rint(part.images[..., 0].astype(np.float64) * 16 / 255).astype(np.uint8)
        loaded.update((image.tobytes(), int(label)) for image, label in zip(back, part.targets))
    assert loaded == original
    train_counts = np.bincount(digits.train.targets, minlength=10)
    assert (train_counts == np.bincount(bunch.target, minlength=10) - 50).all()


def test_digits_split_is_the_same_on_every_call(digits):
    again = load_dataset(_digits_config())
    for before, after in ((digits.train, again.train), (digits.test, again.test)):
        assert np.array_equal(before.images, after.images)
        assert np.array_equal(before.targets, after.targets)


def test_the_training_set_fingerprint_follows_labels_and_files_not_pixels():
    def arrays(targets, files=None, value=0):
        images = np.full((len(targets), 4, 4, 1), value, np.uint8)
        train = ImageSet(images, np.asarray(targets, dtype=np.int64))
        return DatasetArrays(train=train, test=train, class_names=["a", "b"], train_files=files)

    same = arrays([0, 1, 1]).training_set
    assert same["num_images"] == 3 and arrays([0, 1, 1], value=9).training_set == same
    assert arrays([1, 0, 1]).training_set != same
    named = arrays([0, 1, 1], ["labeled/a/1.png", "labeled/b/1.png", "labeled/b/2.png"])
    renamed = arrays([0, 1, 1], ["labeled/a/0.png", "labeled/b/1.png", "labeled/b/2.png"])
    assert named.training_set != renamed.training_set != same
