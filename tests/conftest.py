"""Shared fixtures: Hydra composition of the real conf/ tree, and tiny datasets on disk."""

import pickle
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torchvision
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from fixmatch.config import register_configs

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_config(overrides: List[str] = ()) -> DictConfig:
    """Compose conf/config.yaml with overrides, exactly as `python run.py` would."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def trained_ctaugment(seed: int = 3):
    """A CTAugment whose bin rates 500 random probes have moved away from the start."""
    from fixmatch.data.ctaugment import CTAugment

    augment = CTAugment()
    rng = np.random.default_rng(seed)
    for _ in range(500):
        augment.update(augment.sample_policy(rng, probe=True), float(rng.random()))
    return augment


def write_cifar10(root: Path, train_per_class: int, test_per_class: int, seed: int = 0) -> Path:
    """Write a small CIFAR-10 in torchvision's python format: class c is a bright square
    at a class-specific position on noise, so a model can learn it in a few steps."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(per_class: int) -> dict:
        labels = np.repeat(np.arange(10), per_class)
        images = rng.integers(0, 80, size=(len(labels), 3, 32, 32), dtype=np.uint8)
        for i, label in enumerate(labels):
            row, col = divmod(int(label), 5)
            images[i, :, 4 + row * 14:4 + row * 14 + 10, 1 + col * 6:1 + col * 6 + 6] = 230
        return {"data": images.reshape(len(labels), -1), "labels": labels.tolist()}

    train = batch(train_per_class)
    size = len(train["labels"])
    bounds = np.linspace(0, size, 6).astype(int)
    order = rng.permutation(size)
    for i in range(5):
        part = order[bounds[i]:bounds[i + 1]]
        payload = {"data": train["data"][part], "labels": [train["labels"][j] for j in part]}
        (folder / f"data_batch_{i + 1}").write_bytes(pickle.dumps(payload))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(test_per_class)))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    return root


def tiny_cifar_overrides(root: Path, *extra: str) -> list:
    """Overrides for a seconds-long CPU run of a WRN-10-1 on `write_cifar10` data."""
    return [
        f"dataset.root={root}", "dataset.download=false", "ssl.num_labeled=40",
        "ssl.batch_size=4", "ssl.unlabeled_ratio=2", "model.depth=10", "model.widen_factor=1",
        "trainer.total_steps=6", "trainer.eval_every_steps=3", "trainer.log_every_steps=2",
        "trainer.num_workers=0", "trainer.num_threads=2", "trainer.device=cpu",
        "trainer.eval_batch_size=64", *extra,
    ]


@pytest.fixture(scope="session")
def tiny_cifar10(tmp_path_factory) -> Path:
    return write_cifar10(tmp_path_factory.mktemp("cifar"), train_per_class=20, test_per_class=10)


@pytest.fixture
def forbid_download(monkeypatch):
    """Fail the test if anything asks torchvision to fetch a dataset."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args} {kwargs}")

    for name in ("CIFAR10", "CIFAR100", "SVHN", "STL10"):
        monkeypatch.setattr(torchvision.datasets, name, refuse)


# A shell inside a torchrun job, or a cluster's job environment, sets these; an in-process
# run would then wait for ranks that never come. Tests that need them set them themselves.
LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                      "MASTER_PORT", "TORCHELASTIC_RUN_ID", "GROUP_RANK")


@pytest.fixture(autouse=True)
def _no_launcher_environment(monkeypatch):
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()
