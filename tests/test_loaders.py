"""Loaders: the endless seeded batch stream, worker-independent augmentation, the eval pass."""

import itertools

import numpy as np
import pytest
import torch

from fixmatch.data.loaders import (
    AugmentedImages, InfiniteBatchSampler, build_eval_loader, build_train_loader,
)
from fixmatch.data.transforms import EvalTransform, WeakTransform



def _indices(sampler: InfiniteBatchSampler, num_batches: int) -> list[int]:
    """The image indices of the first `num_batches` batches, position by position."""
    return [index for batch in itertools.islice(sampler, num_batches) for index, _ in batch]


def _seeds(sampler: InfiniteBatchSampler, num_batches: int) -> list[int]:
    return [seed for batch in itertools.islice(sampler, num_batches) for _, seed in batch]


# --- InfiniteBatchSampler ------------------------------------------------------------

@pytest.mark.parametrize("num_indices,batch_size", [(10, 4), (10, 10), (3, 8), (7, 1)])
def test_every_epoch_is_a_permutation_of_the_indices(num_indices, batch_size):
    indices = [100 + 3 * i for i in range(num_indices)]  # not 0..n-1: values must come from here
    sampler = InfiniteBatchSampler(indices, batch_size, seed=1, stream=0)
    num_epochs = 6
    num_batches = -(-num_epochs * num_indices // batch_size)
    batches = list(itertools.islice(sampler, num_batches))
    assert all(len(batch) == batch_size for batch in batches)
    stream = [index for batch in batches for index, _ in batch]
    for epoch in range(num_epochs):
        assert sorted(stream[epoch * num_indices:(epoch + 1) * num_indices]) == indices


def test_epochs_are_reshuffled():
    indices = list(range(20))
    stream = _indices(InfiniteBatchSampler(indices, 5, seed=1, stream=0), 16)
    epochs = [tuple(stream[start:start + 20]) for start in range(0, 80, 20)]
    assert len(set(epochs)) == 4
    assert all(epoch != tuple(indices) for epoch in epochs)


def test_stream_is_deterministic_for_a_seed_and_differs_across_seeds_and_streams():
    def keys(seed, stream):
        return list(itertools.islice(InfiniteBatchSampler(range(50), 8, seed, stream), 20))

    first = keys(seed=1, stream=0)
    assert keys(seed=1, stream=0) == first
    other_seed, other_stream = keys(seed=2, stream=0), keys(seed=1, stream=1)
    for other in (other_seed, other_stream):
        assert [i for batch in other for i, _ in batch] != [i for batch in first for i, _ in batch]
        assert [s for batch in other for _, s in batch] != [s for batch in first for _, s in batch]


@pytest.mark.parametrize("start_batch", [1, 3, 7, 250])
def test_start_batch_continues_the_stream(start_batch):
    fresh = InfiniteBatchSampler(range(13), 5, seed=3, stream=1)
    expected = list(itertools.islice(fresh, start_batch + 4))[start_batch:]
    resumed = InfiniteBatchSampler(range(13), 5, seed=3, stream=1, start_batch=start_batch)
    assert list(itertools.islice(resumed, 4)) == expected


def test_batch_number_k_is_the_kth_yielded_batch():
    sampler = InfiniteBatchSampler(range(11), 4, seed=2, stream=0)
    yielded = list(itertools.islice(sampler, 12))
    assert [sampler.batch(k) for k in range(12)] == yielded
    # Out of order, and on a sampler that started elsewhere: still a pure function of k.
    later = InfiniteBatchSampler(range(11), 4, seed=2, stream=0, start_batch=9)
    assert [later.batch(k) for k in (5, 0, 11)] == [yielded[5], yielded[0], yielded[11]]


def test_per_sample_seeds_never_repeat_within_or_across_streams():
    num_batches = 500
    labeled = _seeds(InfiniteBatchSampler(range(10), 64, seed=1, stream=0), num_batches)
    unlabeled = _seeds(InfiniteBatchSampler(range(10), 64, seed=1, stream=1), num_batches)
    other_run = _seeds(InfiniteBatchSampler(range(10), 64, seed=2, stream=0), num_batches)
    assert len(set(labeled)) == len(labeled) == 64 * num_batches
    assert not set(labeled) & set(unlabeled)
    assert not set(labeled) & set(other_run)
    # Seeds are usable by numpy's generators (non-negative) and fit in int64.
    assert all(0 <= seed < 2**63 for seed in labeled + unlabeled + other_run)


@pytest.mark.parametrize("seed", [9, 42, 1234])
def test_any_run_seed_gives_a_stream(seed):
    sampler = InfiniteBatchSampler(range(10), 4, seed=seed, stream=1)
    batch = sampler.batch(0)
    assert sorted(i for i, _ in sampler.batch(0) + sampler.batch(1) + sampler.batch(2)[:2]) \
        == list(range(10))
    assert batch != InfiniteBatchSampler(range(10), 4, seed=seed + 1, stream=1).batch(0)


def test_empty_indices_are_rejected():
    with pytest.raises(ValueError, match="empty"):
        InfiniteBatchSampler([], 4, seed=1, stream=0)



def test_keys_carry_the_policy_source_gives_each_sample_on_every_rank():
    def policies(number: int, seeds: np.ndarray) -> np.ndarray:  # stand-in: from seed and batch
        return np.stack([(seeds % 1000).astype(np.float64), np.full(len(seeds), float(number))], axis=1)

    plain = InfiniteBatchSampler(range(50), 8, seed=3, stream=1)
    single = InfiniteBatchSampler(range(50), 8, seed=3, stream=1, policies=policies)
    ranks = [InfiniteBatchSampler(range(50), 8, seed=3, stream=1, rank=rank, world_size=2,
                                  policies=policies) for rank in (0, 1)]
    for number in range(5):
        keys = single.batch(number)
        assert [key[:2] for key in keys] == plain.batch(number)
        assert ranks[0].batch(number) + ranks[1].batch(number) == keys
        assert all(key[2] == (float(key[1] % 1000), float(number)) for key in keys)
    images, targets = np.zeros((50, 4, 4, 1), np.uint8), np.arange(50)
    dataset = AugmentedImages(images, targets, lambda image, rng, policy: policy)
    assert dataset[keys[0]] == (keys[0][2], keys[0][0])

# --- AugmentedImages + build_train_loader --------------------------------------------

@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8), rng.permutation(24) % 10


def _weak_dataset(images) -> AugmentedImages:
    pixels, targets = images
    return AugmentedImages(pixels, targets, WeakTransform(hflip=True))


def _train_batches(images, num_workers: int, seed: int = 1, start_batch: int = 0,
                   num_batches: int = 3):
    sampler = InfiniteBatchSampler(range(len(images[0])), 6, seed=seed, stream=0,
                                   start_batch=start_batch)
    loader = build_train_loader(_weak_dataset(images), sampler, num_workers, pin_memory=False)
    return list(itertools.islice(loader, num_batches))


def _assert_same_batches(left, right):
    assert len(left) == len(right)
    for (views_a, labels_a), (views_b, labels_b) in zip(left, right):
        assert torch.equal(views_a, views_b)
        assert torch.equal(labels_a, labels_b)


def test_a_sample_is_the_same_view_for_the_same_key_and_carries_its_label(images):
    dataset = _weak_dataset(images)
    view, label = dataset[(5, 1234)]
    again, _ = dataset[(5, 1234)]
    assert view.shape == (3, 32, 32) and view.dtype == torch.uint8
    assert torch.equal(view, again)
    assert label == int(images[1][5]) and isinstance(label, int)
    assert len(dataset) == 24


def test_train_batches_are_views_of_the_sampled_images(images):
    sampler = InfiniteBatchSampler(range(24), 6, seed=1, stream=0)
    batches = _train_batches(images, num_workers=0)
    for k, (views, labels) in enumerate(batches):
        indices = [index for index, _ in sampler.batch(k)]
        assert views.shape == (6, 3, 32, 32)
        assert labels.tolist() == images[1][indices].tolist()


def test_augmentation_does_not_depend_on_the_number_of_workers(images):
    _assert_same_batches(_train_batches(images, num_workers=0),
                         _train_batches(images, num_workers=2))


def test_two_fresh_loaders_with_one_seed_give_identical_batches(images):
    _assert_same_batches(_train_batches(images, 0, seed=4), _train_batches(images, 0, seed=4))


def test_another_seed_gives_other_batches(images):
    first, other = _train_batches(images, 0, seed=1), _train_batches(images, 0, seed=2)
    assert not any(torch.equal(a[0], b[0]) for a, b in zip(first, other))


def test_a_resumed_loader_continues_the_batches(images):
    uninterrupted = _train_batches(images, 0, num_batches=5)
    _assert_same_batches(_train_batches(images, 0, start_batch=3, num_batches=2),
                         uninterrupted[3:])


def test_each_sample_gets_its_own_augmentation():
    # One image drawn 16 times in a row: the views differ because every position has its seed.
    image = np.random.default_rng(1).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    dataset = AugmentedImages(image, np.array([3]), WeakTransform(hflip=True))
    sampler = InfiniteBatchSampler([0], 16, seed=1, stream=0)
    views, labels = next(build_train_loader(dataset, sampler, num_workers=0, pin_memory=False))
    assert labels.tolist() == [3] * 16
    distinct = {view.numpy().tobytes() for view in views}
    assert len(distinct) >= 8


# --- build_eval_loader ---------------------------------------------------------------

@pytest.mark.parametrize("num_workers", [0, 2])
def test_eval_loader_visits_every_image_once_in_order(images, num_workers):
    pixels, targets = images  # 24 images: batches of 10, 10 and a partial 4
    transform = EvalTransform()
    loader = build_eval_loader(AugmentedImages(pixels, targets, transform), batch_size=10,
                               num_workers=num_workers, pin_memory=False)
    batches = list(loader)
    assert [len(labels) for _, labels in batches] == [10, 10, 4]
    views = torch.cat([views for views, _ in batches])
    labels = torch.cat([labels for _, labels in batches])
    assert labels.tolist() == targets.tolist()
    expected = torch.stack([transform(image) for image in pixels])
    assert torch.equal(views, expected)
    # A second pass is the same pass.
    assert torch.equal(torch.cat([views for views, _ in loader]), views)
