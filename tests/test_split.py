"""The labeled split: class-balanced, exact, deterministic per seed, clear errors."""

import json

import numpy as np
import pytest

from fixmatch.data.split import draw_labeled_split, indices_sha256
from fixmatch.errors import UserError

TARGETS = np.repeat(np.arange(10), 50)[np.random.default_rng(0).permutation(500)]


def test_split_is_class_balanced_and_exact():
    split = draw_labeled_split(TARGETS, 40, 10, seed=1)
    assert len(split.indices) == len(set(split.indices)) == 40
    assert np.bincount(TARGETS[split.indices], minlength=10).tolist() == [4] * 10
    assert split.num_per_class == [4] * 10
    assert split.indices == sorted(split.indices)


def test_split_is_deterministic_for_a_seed_and_differs_across_seeds():
    first = draw_labeled_split(TARGETS, 250 - 50, 10, seed=3)
    again = draw_labeled_split(TARGETS, 200, 10, seed=3)
    other = draw_labeled_split(TARGETS, 200, 10, seed=4)
    assert first == again
    assert first.indices != other.indices
    assert first.sha256 == indices_sha256(list(reversed(first.indices)))


def test_split_ignores_the_global_random_state():
    np.random.seed(0)
    first = draw_labeled_split(TARGETS, 40, 10, seed=2)
    np.random.seed(99)
    np.random.rand(10)
    assert draw_labeled_split(TARGETS, 40, 10, seed=2) == first


def test_split_saves_indices_counts_seed_and_hash(tmp_path):
    split = draw_labeled_split(TARGETS, 20, 10, seed=5)
    split.save(tmp_path / "split.json")
    saved = json.loads((tmp_path / "split.json").read_text())
    assert saved == {"indices": split.indices, "num_per_class": [2] * 10, "seed": 5,
                     "sha256": split.sha256}


@pytest.mark.parametrize("num_labeled,message", [
    (45, "multiple of the 10 classes"),
    (0, "positive multiple"),
    (-10, "positive multiple"),
    (510, "only 50"),
])
def test_impossible_label_counts_fail_with_a_clear_message(num_labeled, message):
    with pytest.raises(UserError, match=message):
        draw_labeled_split(TARGETS, num_labeled, 10, seed=1)
