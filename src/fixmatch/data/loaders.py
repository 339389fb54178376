"""Loaders: endless seeded batch streams for training, a plain pass for evaluation.

Every sample in a training batch carries its own seed, derived from the run seed and
its position in the stream, and is augmented with a generator made from that seed.
Augmentations therefore do not depend on the number of loader workers or on which
worker handles a batch, and batch k of a stream can be recomputed without the k - 1
before it (what an exact resume needs). A stream may also give each sample a policy
(CTAugment's, drawn in the main process from the sample's seed, see `cta_policies`): the
sample's key then carries it to the worker.
"""

from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from torch.utils.data import DataLoader, Dataset, Sampler

from fixmatch.preemption import ignore_stop_signals_in_worker

Transform = Callable[..., object]  # (image, rng[, policy]) -> view(s)
# (image index, augmentation seed[, encoded augmentation policy, flattened])
SampleKey = Union[Tuple[int, int], Tuple[int, int, Tuple[float, ...]]]
# (batch number, the samples' seeds) -> one encoded policy per sample
PolicySource = Callable[[int, np.ndarray], np.ndarray]
PREFETCH_FACTOR = 2  # batches each loader worker prepares ahead (DataLoader's default)


def batches_ahead(num_workers: int) -> int:
    """How many batches past the one training consumes a loader may already have asked its
    sampler for: PREFETCH_FACTOR per worker, none without workers.

    Args:
        num_workers: the loader's worker processes (0: batches are made in the main process).

    Returns:
        The number of batches, PREFETCH_FACTOR * num_workers.
    """
    return PREFETCH_FACTOR * num_workers


class AugmentedImages(Dataset):
    """Images and labels whose transform draws from a per-sample seeded generator (and gets
    the sample's policy too when the key carries one)."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, transform: Transform):
        self.images = images
        self.targets = targets
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: SampleKey):
        index, seed, *policy = key
        view = self.transform(self.images[index], np.random.default_rng(seed), *policy)
        return view, int(self.targets[index])


class StackedImages:
    """Several image arrays indexed as one, without copying them into one array."""

    def __init__(self, *parts: np.ndarray):
        self.parts = [part for part in parts if len(part)]
        self.starts = np.cumsum([0] + [len(part) for part in self.parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: int) -> np.ndarray:
        part = int(np.searchsorted(self.starts, index, side="right")) - 1
        return self.parts[part][index - self.starts[part]]


def mix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: spreads consecutive integers into unrelated 64-bit seeds.

    Args:
        values: uint64 integers, any shape.

    Returns:
        The mixed values, uint64 of the same shape (the arithmetic wraps modulo 2**64).
    """
    with np.errstate(over="ignore"):
        z = values + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class InfiniteBatchSampler(Sampler):
    """Endless batches over `indices`: each epoch a fresh permutation, batches span epochs.

    Args:
        indices: the dataset indices to draw from (e.g. the labeled split).
        batch_size: samples per batch.
        seed: run seed; `stream` keeps the labeled and unlabeled streams independent.
        stream: a small integer naming this stream.
        start_batch: index of the first batch to yield (to continue a stream).
        rank: this process's rank; with `world_size` ranks each yields its contiguous
            share of every global batch, so together they see exactly the samples (and
            augmentation seeds) a single process would.
        world_size: number of ranks; must divide batch_size.
        policies: when given, each key also carries the policy this returns for the sample
            (from the batch number and the samples' seeds, so ranks agree with one process).

    Raises:
        ValueError: for empty `indices`, or a batch_size that world_size does not divide.
    """

    def __init__(
        self, indices: Sequence[int], batch_size: int, seed: int, stream: int, start_batch: int = 0,
        rank: int = 0, world_size: int = 1, policies: Optional[PolicySource] = None,
    ):
        if len(indices) == 0:
            raise ValueError("cannot sample batches from an empty set of indices")
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by {world_size} ranks")
        self.rank = rank
        self.world_size = world_size
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.stream = stream
        self.start_batch = start_batch
        self.policies = policies
        # One 64-bit key per (seed, stream), so every seed value (any size) and every
        # stream gets its own unrelated sequence of per-sample seeds.
        self._stream_key = np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0]

    def __iter__(self) -> Iterator[List[SampleKey]]:
        batch = self.start_batch
        while True:
            yield self.batch(batch)
            batch += 1

    def batch(self, number: int) -> List[SampleKey]:
        """This rank's keys of batch `number` of this stream (a pure function of the number).

        Args:
            number: the batch's position in the stream, from 0 (start_batch is not added).

        Returns:
            batch_size / world_size keys (image index, augmentation seed[, policy]): this
            rank's contiguous share of the global batch.
        """
        first = number * self.batch_size
        positions = np.arange(first, first + self.batch_size, dtype=np.int64)
        epochs, offsets = np.divmod(positions, len(self.indices))
        chosen = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(epochs):
            in_epoch = epochs == epoch
            chosen[in_epoch] = self.indices[self._permutation(int(epoch))[offsets[in_epoch]]]
        with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design
            keys = positions.astype(np.uint64) + self._stream_key
        seeds = mix64(keys) >> np.uint64(1)  # keep seeds within int64
        share = self.batch_size // self.world_size
        mine = slice(self.rank * share, (self.rank + 1) * share)
        keys = [(int(i), int(s)) for i, s in zip(chosen[mine], seeds[mine])]
        if self.policies is None:
            return keys
        encoded = self.policies(number, seeds[mine]).reshape(len(keys), -1)
        return [(*key, tuple(row)) for key, row in zip(keys, encoded.tolist())]

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, self.stream, epoch]).permutation(len(self.indices))


def build_train_loader(
    dataset: AugmentedImages,
    sampler: InfiniteBatchSampler,
    num_workers: int,
    pin_memory: bool,
) -> Iterator:
    """An endless iterator of training batches (one DataLoader pass that never ends).

    Args:
        dataset: the images with their training transform.
        sampler: the stream of batch keys, which fixes each batch's images and seeds.
        num_workers: loader worker processes (0: augment in the main process).
        pin_memory: put batches in page-locked memory, for faster copies to a GPU.

    Returns:
        The started iterator of collated (views, labels) batches; its workers start now.
    """
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        worker_init_fn=ignore_stop_signals_in_worker,
        prefetch_factor=PREFETCH_FACTOR if num_workers else None,
    )
    return iter(loader)


def build_eval_loader(
    dataset: AugmentedImages, batch_size: int, num_workers: int, pin_memory: bool,
    rank: int = 0, world_size: int = 1,
) -> DataLoader:
    """All images once, in order, with the deterministic eval transform.

    With several ranks each takes every world_size-th image; summing the ranks' counts
    gives exactly the single-process figures.

    Args:
        dataset: the images with the evaluation transform (every image gets seed 0).
        batch_size: images per batch on this rank.
        num_workers: loader worker processes (0: in the main process).
        pin_memory: put batches in page-locked memory, for faster copies to a GPU.
        rank: this process's rank; it takes images rank, rank + world_size, ...
        world_size: number of ranks.

    Returns:
        A loader of this rank's (views, labels) batches, in image order.
    """
    keys = [(index, 0) for index in range(rank, len(dataset), world_size)]
    batches = [keys[start:start + batch_size] for start in range(0, len(keys), batch_size)]
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, pin_memory=pin_memory,
                      worker_init_fn=ignore_stop_signals_in_worker)

