"""The labeled split: class-balanced or proportional, exact, deterministic per seed, official
folds, clear errors."""

import json

import numpy as np
import pytest

from fixmatch.data.split import (
    draw_labeled_split, draw_proportional_split, draw_split, fold_split, indices_sha256,
    proportional_counts,
)
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
    # the count suggested is one the classes can give (before: 99990 for 99995)
    (99995, r"multiple of the 10 classes .*, e\.g\. ssl\.num_labeled=500 "),
    (7, r"e\.g\. ssl\.num_labeled=10 "),
])
def test_impossible_label_counts_fail_with_a_clear_message(num_labeled, message):
    with pytest.raises(UserError, match=message):
        draw_labeled_split(TARGETS, num_labeled, 10, seed=1)


# --- proportional to class frequency (SVHN), official folds (STL-10) -------------------

SVHN_COUNTS = [4948, 13861, 10585, 8497, 7458, 6882, 5727, 5595, 5045, 4659]  # train, digits 0..9
IMBALANCED = np.repeat(np.arange(10), [5, 60, 40, 30, 20, 15, 10, 8, 6, 2])


def _official_create_split_counts(sizes, size):
    """google-research/fixmatch scripts/create_split.py, the counting loop as published."""
    train_stats = np.array(sizes, np.float64)
    train_stats /= train_stats.max()
    npos = np.zeros(len(sizes), np.int64)
    for _ in range(size):
        c = np.argmax(train_stats - npos / max(npos.max(), 1))
        npos[c] += 1
    return npos.tolist()


@pytest.mark.parametrize("rule", ["proportional", "largest_remainder"])
@pytest.mark.parametrize("num_labeled", [10, 11, 40, 97, 250, 1000, 4000])
def test_proportional_counts_sum_exactly_and_give_every_class_a_label(rule, num_labeled):
    counts = proportional_counts(SVHN_COUNTS, num_labeled, rule)
    assert sum(counts) == num_labeled and min(counts) >= 1


@pytest.mark.parametrize("num_labeled", [10, 20, 40, 100, 250, 1000, 4000])
def test_proportional_rule_matches_the_official_create_split(num_labeled):
    assert (proportional_counts(SVHN_COUNTS, num_labeled, "proportional")
            == _official_create_split_counts(SVHN_COUNTS, num_labeled))


def test_official_counts_for_the_paper_svhn_cells():
    assert proportional_counts(SVHN_COUNTS, 40, "proportional") == [3, 7, 6, 4, 4, 4, 3, 3, 3, 3]
    assert proportional_counts(SVHN_COUNTS, 250, "proportional") == [17, 47, 36, 29, 25, 24, 20, 19, 17, 16]
    assert proportional_counts(SVHN_COUNTS, 1000, "proportional") == [68, 189, 144, 116, 102, 94, 78, 76, 69, 64]


@pytest.mark.parametrize("num_labeled", [40, 97, 250, 1000, 4000])
def test_largest_remainder_is_within_one_of_every_exact_quota(num_labeled):
    quotas = num_labeled * np.array(SVHN_COUNTS) / sum(SVHN_COUNTS)
    counts = np.array(proportional_counts(SVHN_COUNTS, num_labeled, "largest_remainder"))
    # Every quota here is above one, so each class gets its quota rounded down or up.
    assert all(count in (np.floor(quota), np.ceil(quota)) for count, quota in zip(counts, quotas))


def test_largest_remainder_by_hand():
    # Quotas 5 * (6, 3, 1) / 10 = 3.0, 1.5, 0.5: floors 3, 1, 0 and one label left; the
    # class of quota 0.5 must get one anyway, so the rest (2) goes to quotas above one.
    assert proportional_counts([6, 3, 1], 5, "largest_remainder") == [3, 1, 1]
    # Quotas 7 * (5, 3, 2) / 10 = 3.5, 2.1, 1.4: floors 3, 2, 1, one left to the largest
    # fraction (0.5).
    assert proportional_counts([5, 3, 2], 7, "largest_remainder") == [4, 2, 1]
    # Exact ties (quotas 1.5, 1.5) go to the lower class index.
    assert proportional_counts([2, 2], 3, "largest_remainder") == [2, 1]
    assert proportional_counts([4, 4, 4], 3, "largest_remainder") == [1, 1, 1]


@pytest.mark.parametrize("rule", ["proportional", "largest_remainder"])
def test_proportional_split_draws_the_counts_deterministically_from_its_own_seed(rule):
    first = draw_proportional_split(IMBALANCED, 30, 10, seed=3, rule=rule)
    np.random.seed(123)
    assert draw_proportional_split(IMBALANCED, 30, 10, seed=3, rule=rule) == first
    assert draw_proportional_split(IMBALANCED, 30, 10, seed=4, rule=rule).indices != first.indices
    assert len(set(first.indices)) == 30 and first.indices == sorted(first.indices)
    assert np.bincount(IMBALANCED[first.indices], minlength=10).tolist() == first.num_per_class
    assert first.num_per_class == proportional_counts(np.bincount(IMBALANCED), 30, rule)
    assert first.num_per_class[1] > first.num_per_class[0] >= 1


@pytest.mark.parametrize("sizes,num_labeled,rule,message", [
    ([5, 5, 5], 2, "proportional", "between the 3 classes"),
    ([5, 5, 5], 16, "largest_remainder", "and the 15 training images"),
    ([5, 0, 5], 4, "proportional", "class 1 has no training images"),
    ([5, 5], 4, "balanced", "not a proportional rule"),
])
def test_impossible_proportional_counts_fail_with_a_clear_message(sizes, num_labeled, rule, message):
    with pytest.raises(UserError, match=message):
        proportional_counts(sizes, num_labeled, rule)


def test_fold_split_takes_fold_seed_mod_the_number_of_folds():
    folds = [[0, 10, 20], [5, 15, 25], [1, 2, 3]]
    split = fold_split(TARGETS, folds, 10, seed=4)
    assert split.indices == [5, 15, 25] and split.seed == 4
    assert split.num_per_class == np.bincount(TARGETS[[5, 15, 25]], minlength=10).tolist()


def test_draw_split_picks_fold_then_rule():
    folds = [list(range(i, 500, 50))[:10] for i in range(10)]
    assert draw_split(TARGETS, 10, 10, 7, "proportional", folds).indices == sorted(folds[7])
    assert draw_split(TARGETS, 40, 10, 7, "balanced", folds) == draw_labeled_split(TARGETS, 40, 10, 7)
    assert draw_split(TARGETS, 40, 10, 7, "largest_remainder", None) == \
        draw_proportional_split(TARGETS, 40, 10, 7, "largest_remainder")


@pytest.mark.parametrize("rule", ["balanced", "proportional"])
def test_minus_one_keeps_every_label_whatever_the_rule(rule):
    imbalanced = np.concatenate([TARGETS, np.zeros(7, dtype=TARGETS.dtype)])
    split = draw_split(imbalanced, -1, 10, seed=3, rule=rule)
    assert split.indices == list(range(507)) and split.seed == 3
    assert split.num_per_class == [57] + [50] * 9


def test_split_saves_class_names_when_given_and_names_the_short_class(tmp_path):
    names = [f"class_{i}" for i in range(10)]
    split = draw_split(TARGETS, 20, 10, seed=5, class_names=names)
    split.save(tmp_path / "split.json", names)
    assert json.loads((tmp_path / "split.json").read_text())["class_names"] == names
    with pytest.raises(UserError, match=r"class 0 \('class_0'\).*ssl\.num_labeled=-1"):
        draw_split(TARGETS, 510, 10, seed=1, class_names=names)
