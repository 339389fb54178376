"""The labeled split: a class-balanced, seeded sample of the training set, saved with the run.

Pure and drawn from its own RNG, so every process, every resume and every rerun with the
same seed sees exactly the same labels (the popular ports draw it from the global RNG).
"""

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List

import numpy as np

from fixmatch.errors import UserError


@dataclass(frozen=True)
class LabeledSplit:
    """Which training images keep their labels."""

    indices: List[int]  # sorted indices into the training set
    num_per_class: List[int]  # labels drawn from each class, by class index
    seed: int  # the seed that drew them
    sha256: str  # of the sorted indices, to compare splits at a glance

    def save(self, path: Path) -> None:
        """Write the split as `split.json`-style JSON."""
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")


def indices_sha256(indices: List[int]) -> str:
    """A short fingerprint of a set of indices (order-independent)."""
    text = ",".join(str(i) for i in sorted(indices))
    return hashlib.sha256(text.encode()).hexdigest()


def draw_labeled_split(
    targets: np.ndarray, num_labeled: int, num_classes: int, seed: int
) -> LabeledSplit:
    """Draw num_labeled / num_classes labels per class, as the paper does.

    Args:
        targets: class index of every training image.
        num_labeled: labels in all; a multiple of num_classes.
        num_classes: number of classes.
        seed: seed of this split's own random generator.

    Returns:
        The split, with sorted indices.

    Raises:
        UserError: when the count is not positive, not a multiple of the classes, or
            more than a class has.
    """
    per_class = _labels_per_class(num_labeled, num_classes)
    rng = np.random.default_rng(seed)
    chosen = []
    for label in range(num_classes):
        members = np.flatnonzero(targets == label)
        if len(members) < per_class:
            raise UserError(
                f"ssl.num_labeled={num_labeled} needs {per_class} labeled images of class "
                f"{label}, but the training set has only {len(members)}; lower ssl.num_labeled"
            )
        chosen.append(rng.choice(members, size=per_class, replace=False))
    indices = sorted(int(i) for i in np.concatenate(chosen))
    return LabeledSplit(
        indices=indices,
        num_per_class=[per_class] * num_classes,
        seed=seed,
        sha256=indices_sha256(indices),
    )


def _labels_per_class(num_labeled: int, num_classes: int) -> int:
    if num_labeled <= 0 or num_labeled % num_classes:
        raise UserError(
            f"ssl.num_labeled={num_labeled} must be a positive multiple of the "
            f"{num_classes} classes (FixMatch draws the same number of labels per class), "
            f"e.g. ssl.num_labeled={num_classes * max(1, round(num_labeled / num_classes))}"
        )
    return num_labeled // num_classes
