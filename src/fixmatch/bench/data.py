"""Data-pipeline throughput: augmentation pairs/s on one core and loader steps/s, ours and
the port's, measured alternately in one process so that both see the same machine."""

import time
from typing import Callable, Dict, List

import numpy as np
import torch
from torch.utils.data import DataLoader

from fixmatch.bench.port import PortImages, PortWeakStrong
from fixmatch.data.loaders import AugmentedImages, InfiniteBatchSampler, build_train_loader
from fixmatch.data.transforms import WeakStrongTransform, WeakTransform

ROUNDS = 3  # ours, port, ours, port, ...: the median of each cancels slow drift


def pairs_per_second(make_pair: Callable[[int], object], seconds: float) -> float:
    """How many (weak, strong) pairs `make_pair(i)` produces per second in this process.

    Args:
        make_pair: makes the pair of image number i (i counts up from 0).
        seconds: how long to keep calling it (checked every 32 calls).

    Returns:
        Pairs per second of wall time.
    """
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(32):
            make_pair(count)
            count += 1
    return count / (time.perf_counter() - started)


def augmentation_rates(images: np.ndarray, ours: WeakStrongTransform, port: PortWeakStrong,
                       seconds: float) -> Dict[str, List[float]]:
    """Pairs/s of both pipelines on one core (torch pinned to one thread), ROUNDS each.

    Args:
        images: uint8 (N, H, W, C) images, cycled through.
        ours: our weak/strong transform (seeded per image).
        port: the port's weak/strong transform.
        seconds: length of each round.

    Returns:
        ROUNDS rates per pipeline, under "ours" and "port", in alternating order of
        measurement.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    port_images = PortImages(images, port)
    rates = {"ours": [], "port": []}
    try:
        for _ in range(ROUNDS):
            rates["ours"].append(pairs_per_second(
                lambda i: ours(images[i % len(images)], np.random.default_rng(i)), seconds))
            rates["port"].append(pairs_per_second(lambda i: port_images[i % len(images)], seconds))
    finally:
        torch.set_num_threads(threads)
    return rates


def _steps_per_second(batches, num_steps: int, warmup: int) -> float:
    for _ in range(warmup):  # worker start-up and the first prefetch are not throughput
        next(batches)
    started = time.perf_counter()
    for _ in range(num_steps):
        next(batches)
    return num_steps / (time.perf_counter() - started)


def loader_rates(images: np.ndarray, ours: WeakStrongTransform, port: PortWeakStrong, hflip: bool,
                 batch_size: int, mu: int, num_workers: int, num_steps: int) -> Dict[str, List[float]]:
    """Training steps/s the loaders deliver (a labeled and an unlabeled batch per step).

    Args:
        images: uint8 (N, H, W, C) images; repeated until they fill one unlabeled batch.
        ours: our weak/strong transform for the unlabeled stream.
        port: the port's weak/strong transform.
        hflip: whether our labeled stream's weak view flips.
        batch_size: B, labeled images per step.
        mu: μ, unlabeled images per labeled one.
        num_workers: loader processes of each loader (0: the main process).
        num_steps: steps timed per round, after max(2, 2 · num_workers) warm-up steps.

    Returns:
        ROUNDS rates per pipeline, under "ours" and "port".
    """
    if len(images) < batch_size * mu:  # the port drops incomplete batches: it needs a full one
        images = np.concatenate([images] * -(-batch_size * mu // len(images)))
    targets = np.zeros(len(images), dtype=np.int64)
    indices = range(len(images))
    rates = {"ours": [], "port": []}
    warmup = max(2, 2 * num_workers)
    for round_ in range(ROUNDS):
        labeled = build_train_loader(
            AugmentedImages(images, targets, WeakTransform(hflip)),
            InfiniteBatchSampler(indices, batch_size, round_, 0), num_workers, pin_memory=False)
        unlabeled = build_train_loader(
            AugmentedImages(images, targets, ours),
            InfiniteBatchSampler(indices, batch_size * mu, round_, 1), num_workers, pin_memory=False)
        rates["ours"].append(_steps_per_second(_zip(labeled, unlabeled), num_steps, warmup))
        del labeled, unlabeled
        port_labeled = _endless(DataLoader(PortImages(images, port.weak_only()), batch_size,
                                           shuffle=True, num_workers=num_workers, drop_last=True))
        port_unlabeled = _endless(DataLoader(PortImages(images, port), batch_size * mu,
                                             shuffle=True, num_workers=num_workers, drop_last=True))
        rates["port"].append(_steps_per_second(_zip(port_labeled, port_unlabeled), num_steps, warmup))
    return rates


def _zip(first, second):
    while True:
        yield next(first), next(second)


def _endless(loader: DataLoader):
    # The port restarts its loaders at every epoch end; its workers start again then.
    while True:
        yield from loader
