"""The paper's reference figures (Sohn et al. 2020, Table 2, the "FixMatch (RA)" and
"FixMatch (CTA)" rows), so a results table can print them beside a sweep's own numbers, and
the protocol those figures were trained with, so it can tell when a row's runs are not."""

from dataclasses import dataclass
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class PaperResult:
    """One cell of the paper's table: test error rate (%), mean ± std over 5 folds."""

    error_mean: float
    error_std: float

    @property
    def accuracy_mean(self) -> float:
        """Mean test accuracy (%): 100 minus the error rate, to two decimals."""
        return round(100.0 - self.error_mean, 2)

    @property
    def accuracy_std(self) -> float:
        """Standard deviation of the accuracy (%): the error rate's."""
        return self.error_std


# Error rates (%) exactly as Table 2 of arXiv 2001.07685 prints them, RandAugment rows; the
# accuracies in docs/PROTOCOL.md are 100 minus these. Keys: (dataset.name, ssl.num_labeled).
# The SVHN column is the paper's SVHN without the "extra" split; STL-10 is WRN-37-2.
PAPER_ERROR_RATES: Dict[Tuple[str, int], PaperResult] = {
    ("cifar10", 40): PaperResult(13.81, 3.37),
    ("cifar10", 250): PaperResult(5.07, 0.65),
    ("cifar10", 4000): PaperResult(4.26, 0.05),
    ("cifar100", 400): PaperResult(48.85, 1.75),
    ("cifar100", 2500): PaperResult(28.29, 0.11),
    ("cifar100", 10000): PaperResult(22.60, 0.12),
    ("svhn", 40): PaperResult(3.96, 2.17),
    ("svhn", 250): PaperResult(2.48, 0.38),
    ("svhn", 1000): PaperResult(2.28, 0.11),
    ("stl10", 1000): PaperResult(7.98, 1.50),
}

# The CTAugment rows of the same table (ssl.strong_augment=ctaugment), same keys.
PAPER_CTA_ERROR_RATES: Dict[Tuple[str, int], PaperResult] = {
    ("cifar10", 40): PaperResult(11.39, 3.35),
    ("cifar10", 250): PaperResult(5.07, 0.33),
    ("cifar10", 4000): PaperResult(4.31, 0.15),
    ("cifar100", 400): PaperResult(49.95, 3.01),
    ("cifar100", 2500): PaperResult(28.64, 0.24),
    ("cifar100", 10000): PaperResult(23.18, 0.11),
    ("svhn", 40): PaperResult(7.65, 7.65),
    ("svhn", 250): PaperResult(2.64, 0.64),
    ("svhn", 1000): PaperResult(2.36, 0.19),
    ("stl10", 1000): PaperResult(5.17, 0.63),
}

_BY_STRONG_AUGMENT = {"randaugment": PAPER_ERROR_RATES, "ctaugment": PAPER_CTA_ERROR_RATES}


def paper_result(
    dataset: str, num_labeled: int, algorithm: str, strong_augment: str
) -> Optional[PaperResult]:
    """The paper's figure for a cell, if the paper reports one.

    Args:
        dataset: `dataset.name` of the runs (cifar10, cifar100, svhn, stl10).
        num_labeled: `ssl.num_labeled`.
        algorithm: `ssl.algorithm`; only FixMatch has a paper figure here.
        strong_augment: `ssl.strong_augment`: randaugment or ctaugment pick the row.

    Returns:
        The paper's error rate (and accuracy) or None when the paper has no such cell.
    """
    if algorithm != "fixmatch" or strong_augment not in _BY_STRONG_AUGMENT:
        return None
    return _BY_STRONG_AUGMENT[strong_augment].get((dataset, num_labeled))


# The paper's protocol (docs/PROTOCOL.md) in the keys that change a cell's figure, as
# config_resolved.yaml writes them (dotted): a row whose runs differ from it in any of these
# is not a reproduction of the paper's cell, and the results table says so (`fixmatch.results`,
# `protocol_differences`). These are the values the paper presets compose to
# (conf/experiment/<dataset>_<labels>[_cta].yaml; tests/test_results.py checks each preset
# against this). RandAugment or CTAugment picks the paper's row itself; the settings of each
# are in STRONG_AUGMENT_PROTOCOL.
PROTOCOL: Dict[str, object] = {
    "model.name": "wide_resnet",
    "model.depth": 28,
    "model.widen_factor": 2,
    "model.num_stages": 3,
    "model.bn_momentum": 0.001,
    "model.leaky_slope": 0.1,
    "ssl.batch_size": 64,  # B
    "ssl.unlabeled_ratio": 7,  # mu
    "ssl.threshold": 0.95,
    "ssl.lambda_u": 1.0,
    "ssl.cutout_fraction": 0.5,
    "ssl.include_labeled_in_unlabeled": True,
    "dataset.hflip": True,
    "dataset.labeled_split": "balanced",
    "trainer.total_steps": 2**20,
    "trainer.eval_every_steps": 1024,  # the median of the last 20 evaluations spans 20 x 1024 steps
    "optim.lr": 0.03,
    "optim.momentum": 0.9,
    "optim.nesterov": True,
    "optim.weight_decay": 5e-4,
    "optim.cosine_fraction": 7 / 16,
    "optim.ema_enabled": True,  # the paper reports the EMA model
    "optim.ema_decay": 0.999,
    "optim.ema_warmup": False,
}
STRONG_AUGMENT_PROTOCOL: Dict[str, Dict[str, object]] = {
    "randaugment": {"ssl.randaugment_variant": "official", "ssl.randaugment_num_ops": 2},
    "ctaugment": {"ssl.cta_depth": 2, "ssl.cta_threshold": 0.8, "ssl.cta_decay": 0.99},
}
# Where a dataset's protocol differs (conf/dataset_model/, conf/dataset_optim/).
PROTOCOL_BY_DATASET: Dict[str, Dict[str, object]] = {
    "cifar100": {"model.widen_factor": 8, "optim.weight_decay": 1e-3},  # WRN-28-8
    "stl10": {"model.depth": 37, "model.num_stages": 4},  # WRN-37-2
    # no flip for digits; labels in proportion to the class sizes (the official create_split)
    "svhn": {"dataset.hflip": False, "dataset.labeled_split": "proportional"},
}


def paper_protocol(dataset: str, strong_augment: str = "randaugment") -> Dict[str, object]:
    """The paper's protocol for a dataset's cells with one strong augmentation: `PROTOCOL`
    with that dataset's changes and that augmentation's settings.

    Args:
        dataset: `dataset.name` (a dataset without changes of its own gets `PROTOCOL`).
        strong_augment: `ssl.strong_augment`; randaugment or ctaugment add their settings,
            any other adds none.

    Returns:
        A new dict of dotted config keys (as config_resolved.yaml writes them) to the
        paper's values.
    """
    return {**PROTOCOL, **STRONG_AUGMENT_PROTOCOL.get(strong_augment, {}),
            **PROTOCOL_BY_DATASET.get(dataset, {})}
