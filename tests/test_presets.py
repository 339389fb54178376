"""The paper presets (conf/experiment/<dataset>_<labels>[_cta].yaml) each equal docs/PROTOCOL.md."""

import pytest
from omegaconf import OmegaConf

from conftest import CONF_DIR, compose_config
from fixmatch.config import Algorithm, Config

# preset -> (dataset, labels, WRN depth, WRN width, stages, weight decay, flip, split rule),
# from docs/PROTOCOL.md
PAPER_PRESETS = {
    "cifar10_40": ("cifar10", 40, 28, 2, 3, 5e-4, True, "balanced"),
    "cifar10_250": ("cifar10", 250, 28, 2, 3, 5e-4, True, "balanced"),
    "cifar10_4000": ("cifar10", 4000, 28, 2, 3, 5e-4, True, "balanced"),
    "cifar100_400": ("cifar100", 400, 28, 8, 3, 1e-3, True, "balanced"),
    "cifar100_2500": ("cifar100", 2500, 28, 8, 3, 1e-3, True, "balanced"),
    "cifar100_10000": ("cifar100", 10000, 28, 8, 3, 1e-3, True, "balanced"),
    "svhn_40": ("svhn", 40, 28, 2, 3, 5e-4, False, "proportional"),
    "svhn_250": ("svhn", 250, 28, 2, 3, 5e-4, False, "proportional"),
    "svhn_1000": ("svhn", 1000, 28, 2, 3, 5e-4, False, "proportional"),
    "stl10_1000": ("stl10", 1000, 37, 2, 4, 5e-4, True, "balanced"),
}
# The same cells with CTAugment (Table 2's "FixMatch (CTA)" rows): preset -> (RA preset, augment)
AUGMENTED_PRESETS = {
    **{name: (name, "randaugment") for name in PAPER_PRESETS},
    **{f"{name}_cta": (name, "ctaugment") for name in PAPER_PRESETS},
}


@pytest.mark.parametrize("preset", sorted(AUGMENTED_PRESETS))
def test_paper_preset_equals_protocol(preset):
    cell, strong_augment = AUGMENTED_PRESETS[preset]
    dataset, num_labeled, depth, width, stages, weight_decay, hflip, rule = PAPER_PRESETS[cell]
    config: Config = OmegaConf.to_object(compose_config([f"experiment={preset}"]))

    assert config.dataset.name == dataset and config.dataset.hflip == hflip
    assert config.ssl.num_labeled == num_labeled
    assert config.dataset.labeled_split.value == rule
    assert (config.model.name, config.model.depth, config.model.widen_factor) == (
        "wide_resnet", depth, width)
    assert (config.model.num_stages, config.model.bn_momentum, config.model.leaky_slope) == (
        stages, 0.001, 0.1)
    assert config.optim.weight_decay == weight_decay
    assert (config.optim.lr, config.optim.momentum, config.optim.nesterov) == (0.03, 0.9, True)
    assert config.optim.cosine_fraction == 7 / 16
    assert (config.optim.ema_enabled, config.optim.ema_decay, config.optim.ema_warmup) == (
        True, 0.999, False)
    assert config.ssl.algorithm is Algorithm.fixmatch
    assert (config.ssl.batch_size, config.ssl.unlabeled_ratio) == (64, 7)
    assert (config.ssl.threshold, config.ssl.lambda_u) == (0.95, 1.0)
    assert (config.ssl.strong_augment.value, config.ssl.randaugment_variant) == (strong_augment, "official")
    assert (config.ssl.cta_depth, config.ssl.cta_threshold, config.ssl.cta_decay) == (2, 0.8, 0.99)
    assert (config.ssl.randaugment_num_ops, config.ssl.cutout_fraction) == (2, 0.5)
    assert config.ssl.include_labeled_in_unlabeled
    assert config.ssl.split_seed == config.seed
    assert config.trainer.total_steps == 2**20 and config.trainer.eval_every_steps == 1024
    # bf16 autocast on CUDA, fp32 on the CPU; trainer.precision=fp32 is the paper's arithmetic.
    assert config.trainer.precision.value == "auto"


def test_every_paper_preset_is_tested():
    presets = {path.stem for path in (CONF_DIR / "experiment").glob("*.yaml")}
    assert presets - {"quickstart"} == set(AUGMENTED_PRESETS)


def test_preset_takes_a_seed_and_other_algorithm():
    config = compose_config(["experiment=cifar100_2500", "seed=3", "ssl=supervised"])
    assert config.ssl.split_seed == 3 and config.ssl.num_labeled == 2500
    assert config.ssl.algorithm is Algorithm.supervised and config.model.widen_factor == 8
