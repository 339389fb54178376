"""GPU-resident training images (device augmentation): batch k is the loaders' batch k."""

import itertools

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config, tiny_cifar_overrides
from fixmatch import pipeline
from fixmatch.data.datasets import DatasetArrays, ImageSet
from fixmatch.data.resident import ResidentBatches, ResidentImages, fits_on_device
from fixmatch.data.split import draw_split
from fixmatch.distributed import DistEnv


def _arrays(with_extra: bool) -> DatasetArrays:
    rng = np.random.default_rng(0)
    train = ImageSet(rng.integers(0, 256, (60, 8, 8, 3), dtype=np.uint8), np.repeat(np.arange(10), 6))
    test = ImageSet(train.images[:10], train.targets[:10])
    extra = rng.integers(0, 256, (25, 8, 8, 3), dtype=np.uint8) if with_extra else None
    return DatasetArrays(train, test, [str(c) for c in range(10)], unlabeled=extra)


def _config(root, *overrides):
    return OmegaConf.to_object(compose_config(tiny_cifar_overrides(
        root, "trainer.augment_on=device", "ssl.num_labeled=20", *overrides)))


def _swap_in_resident(monkeypatch):
    """Make the loaders' streams gather from resident images (on the CPU, as a GPU would)."""
    def resident(config, arrays, device):
        images, targets = pipeline._unlabeled_pool(arrays)
        return ResidentImages.from_arrays(images.parts, targets, device)
    monkeypatch.setattr(pipeline, "resident_images", resident)


@pytest.mark.parametrize("with_extra", [False, True])
@pytest.mark.parametrize(("start_batch", "rank", "world_size"), [(0, 0, 1), (5, 0, 1), (3, 1, 2)])
def test_resident_batches_are_the_loaders_batches(tiny_cifar10, monkeypatch, with_extra,
                                                  start_batch, rank, world_size):
    # 60 training images + 25 extra; 10 unlabeled batches of 8 run over several epochs.
    config = _config(tiny_cifar10, "ssl.batch_size=4")
    arrays = _arrays(with_extra)
    split = draw_split(arrays.train.targets, 20, 10, config.ssl.split_seed)
    env = DistEnv(rank=rank, world_size=world_size)
    device = torch.device("cpu")
    streams = {}
    for source in ("loaders", "resident"):
        if source == "resident":
            _swap_in_resident(monkeypatch)
        resident = pipeline.resident_images(config, arrays, device)
        labeled = pipeline.labeled_batches(config, arrays, split, device, start_batch, env, None, resident)
        unlabeled = pipeline.unlabeled_batches(config, arrays, split, device, start_batch, env, None,
                                               resident)
        streams[source] = [list(itertools.islice(stream, 10)) for stream in (labeled, unlabeled)]
    assert isinstance(labeled, ResidentBatches)
    for loader_stream, resident_stream in zip(streams["loaders"], streams["resident"]):
        for (images, targets), (expected_images, expected_targets) in zip(resident_stream, loader_stream):
            assert images.dtype == torch.uint8 and images.shape == expected_images.shape
            assert torch.equal(images, expected_images) and torch.equal(targets, expected_targets)
    unlabeled_targets = torch.cat([targets for _, targets in streams["resident"][1]])
    assert (unlabeled_targets == -1).any() == with_extra  # extra images carry "unknown"


def test_images_stay_with_the_loaders_off_the_gpu_and_with_cpu_views(tiny_cifar10):
    arrays = _arrays(with_extra=True)
    assert pipeline.resident_images(_config(tiny_cifar10), arrays, torch.device("cpu")) is None
    config = _config(tiny_cifar10, "trainer.augment_on=cpu")
    assert pipeline.resident_images(config, arrays, torch.device("cuda")) is None
    assert not fits_on_device(1, torch.device("cpu"))


def test_resident_images_are_stacked_channels_first_in_order():
    parts = [np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3),
             np.full((3, 4, 5, 3), 7, dtype=np.uint8)]
    resident = ResidentImages.from_arrays(parts, np.array([1, 2, -1, -1, -1]), torch.device("cpu"))
    assert resident.images.shape == (5, 3, 4, 5)
    assert torch.equal(resident.images[:2], torch.from_numpy(parts[0]).permute(0, 3, 1, 2))
    assert (resident.images[2:] == 7).all()
    assert resident.targets.tolist() == [1, 2, -1, -1, -1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_device_views_gather_from_resident_images(tiny_cifar10):
    config = _config(tiny_cifar10)
    arrays = _arrays(with_extra=True)
    resident = pipeline.resident_images(config, arrays, torch.device("cuda"))
    assert resident is not None and resident.images.is_cuda


def test_a_run_on_resident_images_equals_the_run_on_loaders(tiny_cifar10, tmp_path, monkeypatch):
    from fixmatch.app import train
    from fixmatch.checkpoint import load_checkpoint

    def run(name):
        cfg = compose_config(tiny_cifar_overrides(tiny_cifar10, "trainer.augment_on=device"))
        train(OmegaConf.to_object(cfg), tmp_path / name, OmegaConf.to_yaml(cfg, resolve=True))
        return load_checkpoint(tmp_path / name / "checkpoints" / "step_000000006.pt")

    on_loaders = run("loaders")
    _swap_in_resident(monkeypatch)
    on_resident = run("resident")
    for name, value in on_loaders["model"].items():
        assert torch.equal(value, on_resident["model"][name]), name
