"""The composition root: typed config -> split, data, model, optimiser -> Trainer.fit.

The only module that reads more than one config node. Objects are built in the order a
reader would explain a run: split, datasets, loaders, model, EMA, optimiser, schedule,
metric writer, trainer.
"""

import logging
from pathlib import Path
from typing import Optional

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fixmatch.algorithms import build_algorithm
from fixmatch.config import Config
from fixmatch.data.datasets import DatasetArrays, load_dataset
from fixmatch.data.loaders import (
    AugmentedImages,
    InfiniteBatchSampler,
    build_eval_loader,
    build_train_loader,
)
from fixmatch.data.randaugment import RandAugment
from fixmatch.data.split import LabeledSplit, draw_labeled_split
from fixmatch.data.transforms import (
    EvalTransform,
    StrongTransform,
    WeakStrongTransform,
    WeakTransform,
)
from fixmatch.errors import UserError
from fixmatch.metrics import MetricWriter
from fixmatch.models import ModelEMA, WideResNet
from fixmatch.optim import build_optimizer, build_schedule
from fixmatch.runtime import check_precision, configure_threads, select_device, seed_everything
from fixmatch.trainer import Trainer, TrainingParts

log = logging.getLogger(__name__)

LABELED_STREAM, UNLABELED_STREAM = 0, 1  # keep the two sample streams' seeds apart


def run_experiment(cfg: DictConfig, run_dir: Optional[Path] = None) -> Optional[float]:
    """Train as `cfg` says, writing everything into `run_dir` (Hydra's output dir by default).

    Returns:
        The paper's figure for this run: the median top-1 of the last 20 evaluations.
    """
    run_dir = Path(run_dir or HydraConfig.get().runtime.output_dir)
    config: Config = OmegaConf.to_object(cfg)
    return train(config, run_dir, OmegaConf.to_yaml(cfg, resolve=True))["top1_ema_median_last20"]


def train(config: Config, run_dir: Path, resolved_yaml: str) -> dict:
    """Build every part of the run from the typed config and train it.

    Args:
        config: the composed, validated configuration.
        run_dir: where the run writes its files.
        resolved_yaml: the config as YAML with interpolations resolved.

    Returns:
        The final metrics.json summary.

    Raises:
        UserError: for any input the user can fix (reported as one line by run.py).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    _refuse_existing_run(run_dir)
    (run_dir / "config_resolved.yaml").write_text(resolved_yaml)
    writer = MetricWriter(run_dir, config.trainer.total_steps)
    trainer = None
    try:
        trainer = _build_trainer(config, run_dir, resolved_yaml, writer)
        summary = trainer.fit()
    except BaseException as error:
        # metrics.json must say "failed" (with why) whatever stopped the run.
        writer.summary("failed", trainer.step if trainer else 0, error=f"{type(error).__name__}: {error}")
        raise
    finally:
        writer.close()
    log.info("done: final top-1 %.2f %% (EMA), median of the last %d evaluations %.2f %%",
             summary["top1_ema_final"], min(20, summary["num_evaluations"]),
             summary["top1_ema_median_last20"])
    return summary


def _build_trainer(config: Config, run_dir: Path, resolved_yaml: str, writer: MetricWriter) -> Trainer:
    _check_config(config)
    device = select_device(config.trainer.device)
    check_precision(config.trainer.precision, device)
    configure_threads(config.trainer.num_threads)
    seed_everything(config.seed)

    arrays = load_dataset(config.dataset)
    split = draw_labeled_split(
        arrays.train.targets, config.ssl.num_labeled, config.dataset.num_classes, config.ssl.split_seed
    )
    split.save(run_dir / "split.json")
    log.info("%s: %d training images, %d labeled (%d per class), %d test images; device %s",
             config.dataset.name, len(arrays.train.targets), len(split.indices),
             split.num_per_class[0], len(arrays.test.targets), device)
    return Trainer(
        build_training_parts(config, arrays, split, device),
        config.trainer,
        writer,
        run_dir,
        checkpoint_extras={"config_yaml": resolved_yaml, "labeled_indices": split.indices,
                           "class_names": arrays.class_names},
    )


def build_training_parts(
    config: Config, arrays: DatasetArrays, split: LabeledSplit, device
) -> TrainingParts:
    """Datasets, loaders, model, EMA, optimiser and schedule, in that order."""
    algorithm = build_algorithm(config.ssl)
    labeled_batches = _labeled_batches(config, arrays, split, device)
    unlabeled_batches = (
        _unlabeled_batches(config, arrays, split, device) if algorithm.uses_unlabeled else None
    )
    test_set = AugmentedImages(arrays.test.images, arrays.test.targets, _eval_transform(config))
    test_loader = build_eval_loader(
        test_set, config.trainer.eval_batch_size, config.trainer.num_workers, device.type == "cuda"
    )
    model = build_model(config).to(device)
    ema = None
    if config.optim.ema_enabled:
        ema = ModelEMA(model, config.optim.ema_decay, warmup=config.optim.ema_warmup)
    optimizer = build_optimizer(model, config.optim)
    schedule = build_schedule(optimizer, config.trainer.total_steps, config.optim.cosine_fraction)
    return TrainingParts(model, ema, optimizer, schedule, algorithm, labeled_batches,
                         unlabeled_batches, test_loader, device)


def build_model(config: Config) -> WideResNet:
    """The WideResNet the config describes, for the dataset's channels and classes."""
    if config.model.name != "wide_resnet":
        raise UserError(f"model.name={config.model.name!r} is not a known model; use model=wide_resnet")
    try:
        return WideResNet(
            num_classes=config.dataset.num_classes,
            depth=config.model.depth,
            widen_factor=config.model.widen_factor,
            in_channels=config.dataset.channels,
            num_stages=config.model.num_stages,
            bn_momentum=config.model.bn_momentum,
            leaky_slope=config.model.leaky_slope,
        )
    except ValueError as error:
        raise UserError(f"model: {error}") from None


def _labeled_batches(config: Config, arrays: DatasetArrays, split: LabeledSplit, device):
    transform = WeakTransform(config.dataset.mean, config.dataset.std, config.dataset.hflip)
    dataset = AugmentedImages(arrays.train.images, arrays.train.targets, transform)
    sampler = InfiniteBatchSampler(split.indices, config.ssl.batch_size, config.seed, LABELED_STREAM)
    return build_train_loader(dataset, sampler, config.trainer.num_workers, device.type == "cuda")


def _unlabeled_batches(config: Config, arrays: DatasetArrays, split: LabeledSplit, device):
    dataset_config, ssl = config.dataset, config.ssl
    if ssl.strong_augment != "randaugment":
        raise UserError(f"ssl.strong_augment={ssl.strong_augment!r} is not available; use randaugment")
    try:
        randaugment = RandAugment(ssl.randaugment_variant, ssl.randaugment_num_ops)
    except ValueError as error:
        raise UserError(f"ssl.randaugment_variant: {error}") from None
    weak = WeakTransform(dataset_config.mean, dataset_config.std, dataset_config.hflip)
    strong = StrongTransform(dataset_config.mean, dataset_config.std, dataset_config.hflip,
                             randaugment, ssl.cutout_fraction)
    dataset = AugmentedImages(arrays.train.images, arrays.train.targets, WeakStrongTransform(weak, strong))
    indices = range(len(arrays.train.targets))
    if not ssl.include_labeled_in_unlabeled:
        labeled = set(split.indices)
        indices = [index for index in indices if index not in labeled]
    batch_size = ssl.batch_size * ssl.unlabeled_ratio
    sampler = InfiniteBatchSampler(list(indices), batch_size, config.seed, UNLABELED_STREAM)
    return build_train_loader(dataset, sampler, config.trainer.num_workers, device.type == "cuda")


def _eval_transform(config: Config) -> EvalTransform:
    return EvalTransform(config.dataset.mean, config.dataset.std)


def _check_config(config: Config) -> None:
    positive = {
        "trainer.total_steps": config.trainer.total_steps,
        "trainer.eval_every_steps": config.trainer.eval_every_steps,
        "trainer.log_every_steps": config.trainer.log_every_steps,
        "trainer.eval_batch_size": config.trainer.eval_batch_size,
        "ssl.batch_size": config.ssl.batch_size,
        "ssl.unlabeled_ratio": config.ssl.unlabeled_ratio,
    }
    for key, value in positive.items():
        if value <= 0:
            raise UserError(f"{key}={value} must be positive")
    not_negative = {
        "seed": config.seed,
        "ssl.split_seed": config.ssl.split_seed,
        "trainer.num_workers": config.trainer.num_workers,
        "trainer.checkpoint_every_steps": config.trainer.checkpoint_every_steps,
    }
    for key, value in not_negative.items():
        if value < 0:
            raise UserError(f"{key}={value} must not be negative")


def _refuse_existing_run(run_dir: Path) -> None:
    # Until runs can resume, a second run into the same folder would overwrite the first's
    # checkpoint and metrics; a run that failed before its first evaluation left neither.
    if (run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists():
        raise UserError(
            f"{run_dir} already holds a run (metrics.jsonl, checkpoints/); choose another "
            "hydra.run.dir so its checkpoint and metrics are kept"
        )
