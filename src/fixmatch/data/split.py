"""The labeled split: a seeded sample of the training set (class-balanced, proportional to
class frequency, or a dataset's official fold), saved with the run.

Pure and drawn from its own RNG, so every process, every resume and every rerun with the
same seed sees exactly the same labels (the popular ports draw it from the global RNG).
"""

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from fixmatch.errors import UserError

log = logging.getLogger(__name__)

ALL_LABELED = -1  # ssl.num_labeled=-1: every training image keeps its label (not balanced)


@dataclass(frozen=True)
class LabeledSplit:
    """Which training images keep their labels."""

    indices: List[int]  # sorted indices into the training set
    num_per_class: List[int]  # labels drawn from each class, by class index
    seed: int  # the seed that drew them
    sha256: str  # of the sorted indices, to compare splits at a glance

    def save(self, path: Path, class_names: Optional[Sequence[str]] = None,
             training_set: Optional[dict] = None) -> None:
        """Write the split as `split.json`-style JSON, with the class names and the
        fingerprint of the training set it indexes (`DatasetArrays.training_set`) when given.

        Args:
            path: the file to write; an existing one is overwritten.
            class_names: the dataset's class names, by class index; left out when None.
            training_set: the number and sha256 of the training images the indices point
                into; left out when None.
        """
        record = asdict(self)
        if class_names is not None:
            record["class_names"] = list(class_names)
        if training_set is not None:
            record["training_set"] = training_set
        path.write_text(json.dumps(record, indent=1) + "\n")


def indices_sha256(indices: List[int]) -> str:
    """A short fingerprint of a set of indices (order-independent).

    Args:
        indices: indices into the training set, in any order.

    Returns:
        The hex sha256 of the sorted indices, written as comma-separated decimals.
    """
    text = ",".join(str(i) for i in sorted(indices))
    return hashlib.sha256(text.encode()).hexdigest()


def draw_labeled_split(
    targets: np.ndarray, num_labeled: int, num_classes: int, seed: int,
    class_names: Optional[Sequence[str]] = None,
) -> LabeledSplit:
    """Draw num_labeled / num_classes labels per class, as the paper does.

    Args:
        targets: class index of every training image.
        num_labeled: labels in all; a multiple of num_classes, or ALL_LABELED (-1) to
            keep every label.
        num_classes: number of classes.
        seed: seed of this split's own random generator.
        class_names: names for the error messages (by class index).

    Returns:
        The split, with sorted indices.

    Raises:
        UserError: when the count is not positive, not a multiple of the classes, or
            more than a class has.
    """
    if num_labeled == ALL_LABELED:
        return all_labeled_split(targets, num_classes, seed)
    smallest_class = int(np.bincount(targets, minlength=num_classes)[:num_classes].min())
    per_class = _labels_per_class(num_labeled, num_classes, smallest_class)
    return _draw_per_class(targets, [per_class] * num_classes, seed, num_labeled, class_names)


def all_labeled_split(targets: np.ndarray, num_classes: int, seed: int) -> LabeledSplit:
    """Every training image labeled (ssl.num_labeled=-1): per-class counts as they come.

    Args:
        targets: class index of every training image.
        num_classes: number of classes; labels at or above it are not counted per class.
        seed: recorded in the split; nothing is drawn.

    Returns:
        The split of every index 0 .. len(targets) - 1.
    """
    indices = list(range(len(targets)))
    per_class = np.bincount(targets, minlength=num_classes)[:num_classes]
    return LabeledSplit(indices=indices, num_per_class=per_class.tolist(), seed=seed,
                        sha256=indices_sha256(indices))


def _draw_per_class(targets: np.ndarray, counts: Sequence[int], seed: int,
                    num_labeled: int, class_names: Optional[Sequence[str]] = None) -> LabeledSplit:
    """Draw counts[c] images of each class c, class by class, from one generator."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label, count in enumerate(counts):
        members = np.flatnonzero(targets == label)
        if len(members) < count:
            name = f"{label} ({class_names[label]!r})" if class_names else f"{label}"
            raise UserError(
                f"ssl.num_labeled={num_labeled} needs {count} labeled images of class "
                f"{name}, but the training set has only {len(members)}; lower ssl.num_labeled, "
                f"or set ssl.num_labeled={ALL_LABELED} to label every training image"
            )
        chosen.append(rng.choice(members, size=count, replace=False))
    indices = sorted(int(i) for i in np.concatenate(chosen))
    return LabeledSplit(
        indices=indices,
        num_per_class=[int(count) for count in counts],
        seed=seed,
        sha256=indices_sha256(indices),
    )


def _labels_per_class(num_labeled: int, num_classes: int, smallest_class: int) -> int:
    if num_labeled <= 0 or num_labeled % num_classes:
        # The nearest count that works: per class, at least one and at most the smallest class.
        per_class = min(max(1, round(num_labeled / num_classes)), max(1, smallest_class))
        raise UserError(
            f"ssl.num_labeled={num_labeled} must be a positive multiple of the "
            f"{num_classes} classes (FixMatch draws the same number of labels per class), "
            f"e.g. ssl.num_labeled={num_classes * per_class} "
            f"(or {ALL_LABELED} to label every training image, or dataset.labeled_split="
            f"proportional to draw them in proportion to the class sizes)"
        )
    return num_labeled // num_classes


# --- imbalanced datasets (SVHN) and official folds (STL-10) ----------------------------

PROPORTIONAL_RULES = ("proportional", "largest_remainder")


def proportional_counts(class_sizes: Sequence[int], num_labeled: int, rule: str) -> List[int]:
    """Spread num_labeled labels over the classes in proportion to their sizes.

    Both rules give every class at least one label and sum exactly to num_labeled.

    Args:
        class_sizes: training images per class.
        num_labeled: labels in all, at least one per class.
        rule: "proportional", the official code's greedy rule (google-research/fixmatch
            scripts/create_split.py: each next label goes to the class that maximises
            size / largest size - labels / most labels of any class); or "largest_remainder" (Hamilton's method: floor of each exact quota, the rest to
            the largest fractional parts; when a quota is below one, that class gets one and
            the others share the rest in proportion to their quota above one).

    Returns:
        Labels per class.

    Raises:
        UserError: for an unknown rule, an empty class, fewer labels than classes or more
            labels than images.
    """
    sizes = np.asarray(class_sizes, dtype=np.int64)
    if rule not in PROPORTIONAL_RULES:
        raise UserError(f"dataset.labeled_split={rule!r} is not a proportional rule; "
                        f"use one of {PROPORTIONAL_RULES}")
    if (sizes == 0).any():
        raise UserError(f"class {int(np.argmin(sizes))} has no training images, so it cannot "
                        "get a label; check the dataset or use dataset.labeled_split=balanced")
    if not len(sizes) <= num_labeled <= sizes.sum():
        raise UserError(f"ssl.num_labeled={num_labeled} must be between the {len(sizes)} "
                        f"classes (one label each) and the {sizes.sum()} training images")
    if rule == "proportional":
        return _official_greedy_counts(sizes, num_labeled)
    return _largest_remainder_counts(sizes, num_labeled)


def _official_greedy_counts(sizes: np.ndarray, num_labeled: int) -> List[int]:
    # create_split.py, float64 arithmetic and first-index argmax kept so the counts match it.
    # Every class gets its first label before any gets a second.
    share = sizes / sizes.max()
    counts = np.zeros(len(sizes), dtype=np.int64)
    for _ in range(num_labeled):
        counts[np.argmax(share - counts / max(counts.max(), 1))] += 1
    return counts.tolist()


def _largest_remainder_counts(sizes: np.ndarray, num_labeled: int) -> List[int]:
    # Integer arithmetic (quotas in units of 1 / denominator), so ties are exact and broken
    # by class index. Reserving one label per class and apportioning the rest by the quota
    # above one equals plain largest remainder whenever every quota is at least one.
    rest = num_labeled - len(sizes)
    if rest == 0:
        return [1] * len(sizes)
    above_one = np.maximum(num_labeled * sizes - sizes.sum(), 0)
    quotas, remainders = np.divmod(rest * above_one, above_one.sum())
    counts = 1 + quotas
    order = sorted(range(len(sizes)), key=lambda label: (-remainders[label], label))
    counts[order[:rest - quotas.sum()]] += 1
    return counts.tolist()


def draw_proportional_split(targets: np.ndarray, num_labeled: int, num_classes: int, seed: int,
                            rule: str = "proportional") -> LabeledSplit:
    """Draw labels per class in proportion to class frequency (SVHN in the official code).

    Args:
        targets: class index of every training image.
        num_labeled: labels in all, at least one per class.
        num_classes: number of classes.
        seed: seed of this split's own random generator.
        rule: how counts are rounded, see `proportional_counts`.

    Returns:
        The split, with sorted indices.

    Raises:
        UserError: see `proportional_counts`.
    """
    sizes = np.bincount(targets, minlength=num_classes)[:num_classes]
    return _draw_per_class(targets, proportional_counts(sizes, num_labeled, rule), seed,
                           num_labeled)


def fold_split(targets: np.ndarray, folds: Sequence[Sequence[int]], num_classes: int,
               seed: int) -> LabeledSplit:
    """Take a dataset's official labeled fold: number seed mod len(folds).

    STL-10's fold_indices.txt holds 10 folds of 1000; the official code uses line `seed`
    of that file, which this mapping reproduces for seeds 0-9.

    Args:
        targets: class index of every training image.
        folds: the official folds, as indices into the training set.
        num_classes: number of classes.
        seed: the split seed; picks the fold.

    Returns:
        The split, with sorted indices.
    """
    fold = seed % len(folds)
    log.info("labeled split: official fold %d of %d (split seed %d mod %d)", fold, len(folds),
             seed, len(folds))
    indices = sorted(int(i) for i in folds[fold])
    per_class = np.bincount(targets[indices], minlength=num_classes)
    return LabeledSplit(indices=indices, num_per_class=per_class.tolist(), seed=seed,
                        sha256=indices_sha256(indices))


def draw_split(targets: np.ndarray, num_labeled: int, num_classes: int, seed: int,
               rule: str = "balanced",
               folds: Optional[Sequence[Sequence[int]]] = None,
               class_names: Optional[Sequence[str]] = None) -> LabeledSplit:
    """The labeled split a run uses: an official fold of that size when the dataset has
    folds, otherwise a draw by `rule`.

    Args:
        targets: class index of every training image.
        num_labeled: labels in all; ALL_LABELED (-1) keeps every label, whatever the rule.
        num_classes: number of classes.
        seed: seed of the draw, or the fold number (mod the number of folds).
        rule: "balanced" (`draw_labeled_split`) or a rule of `proportional_counts`.
        folds: the dataset's official folds, if any (STL-10).
        class_names: names for the error messages (by class index).

    Returns:
        The split, with sorted indices.

    Raises:
        UserError: when num_labeled cannot be drawn by the rule.
    """
    if num_labeled == ALL_LABELED:
        return all_labeled_split(targets, num_classes, seed)
    if folds and num_labeled == len(folds[0]):
        return fold_split(targets, folds, num_classes, seed)
    if rule == "balanced":
        return draw_labeled_split(targets, num_labeled, num_classes, seed, class_names)
    return draw_proportional_split(targets, num_labeled, num_classes, seed, rule)
