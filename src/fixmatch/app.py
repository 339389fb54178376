"""The composition root: typed config -> split, data, model, optimiser -> Trainer.fit.

The only module that reads more than one config node. Objects are built in the order a
reader would explain a run: split, datasets, loaders, model, EMA, optimiser, schedule,
metric writer, trainer.
"""

import logging
from pathlib import Path
from typing import Optional

import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fixmatch.algorithms import build_algorithm
from fixmatch.checkpoint import CHECKPOINT_DIR, CheckpointError, CheckpointStore
from fixmatch.config import Config
from fixmatch.data.datasets import DatasetArrays, load_dataset
from fixmatch.data.loaders import (
    AugmentedImages,
    InfiniteBatchSampler,
    StackedImages,
    build_eval_loader,
    build_train_loader,
)
from fixmatch.data.randaugment import RandAugment
from fixmatch.data.split import LabeledSplit, draw_labeled_split, indices_sha256
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
from fixmatch.resume import StartPlan, plan_start
from fixmatch.runtime import check_precision, configure_threads, select_device, seed_everything
from fixmatch.trainer import Trainer, TrainingParts

log = logging.getLogger(__name__)

LABELED_STREAM, UNLABELED_STREAM = 0, 1  # keep the two sample streams' seeds apart


def run_experiment(cfg: DictConfig, run_dir: Optional[Path] = None) -> dict:
    """Train as `cfg` says, writing everything into `run_dir` (Hydra's output dir by default).

    Returns:
        The final metrics.json summary (status `completed` or `preempted`).
    """
    run_dir = Path(run_dir or HydraConfig.get().runtime.output_dir)
    config: Config = OmegaConf.to_object(cfg)
    return train(config, run_dir, OmegaConf.to_yaml(cfg, resolve=True))


def train(config: Config, run_dir: Path, resolved_yaml: str) -> dict:
    """Build every part of the run from the typed config and train it, or continue it.

    Args:
        config: the composed, validated configuration.
        run_dir: where the run writes its files; a run already there is continued.
        resolved_yaml: the config as YAML with interpolations resolved.

    Returns:
        The final metrics.json summary.

    Raises:
        UserError: for any input the user can fix (reported as one line by run.py).
    """
    _make_writable(run_dir)
    # Decided before anything is written: a refused resume must leave the old run as it was.
    plan = plan_start(run_dir, resolved_yaml, config.trainer.resume, config.trainer.keep_checkpoints)
    run_dir = plan.run_dir
    _make_writable(run_dir)
    (run_dir / "config_resolved.yaml").write_text(resolved_yaml)
    state = plan.checkpoint or {}
    writer = MetricWriter(run_dir, config.trainer.total_steps, history=state.get("history"),
                          elapsed_s=state.get("elapsed_s", 0.0), resume_step=state.get("step"))
    trainer = None
    try:
        _check_config(config)
        trainer = _build_trainer(config, run_dir, resolved_yaml, writer, plan)
        summary = trainer.fit()
    except BaseException as error:
        # metrics.json must say "failed" (with why) whatever stopped the run.
        writer.summary("failed", trainer.step if trainer else state.get("step", 0),
                       error=f"{type(error).__name__}: {error}")
        raise
    finally:
        writer.close()
    if summary["top1_ema_final"] is not None:
        log.info("%s at step %d: final top-1 %.2f %% (EMA), median of the last %d evaluations %.2f %%",
                 summary["status"], summary["step"], summary["top1_ema_final"],
                 min(20, summary["num_evaluations"]), summary["top1_ema_median_last20"])
    return summary


def _build_trainer(config: Config, run_dir: Path, resolved_yaml: str, writer: MetricWriter,
                   plan: StartPlan) -> Trainer:
    device = select_device(config.trainer.device)
    check_precision(config.trainer.precision, device)
    configure_threads(config.trainer.num_threads)
    seed_everything(config.seed)

    arrays = load_dataset(config.dataset)
    split = _labeled_split(config, arrays, plan)
    split.save(run_dir / "split.json")
    log.info("%s: %d training images, %d labeled (%d per class), %d test images; device %s",
             config.dataset.name, len(arrays.train.targets), len(split.indices),
             split.num_per_class[0], len(arrays.test.targets), device)
    start_batch = plan.checkpoint["loader_position"]["labeled_batches"] if plan.checkpoint else 0
    trainer = Trainer(
        build_training_parts(config, arrays, split, device, start_batch),
        config.trainer,
        writer,
        CheckpointStore(run_dir / CHECKPOINT_DIR, config.trainer.keep_checkpoints),
        checkpoint_extras={"config_yaml": resolved_yaml, "labeled_indices": split.indices,
                           "split_sha256": split.sha256, "class_names": arrays.class_names},
    )
    if plan.checkpoint:
        try:
            trainer.load_state_dict(plan.checkpoint)
        except CheckpointError as error:
            raise CheckpointError(f"cannot resume from {plan.checkpoint_path}: {error}") from None
    return trainer


def _labeled_split(config: Config, arrays: DatasetArrays, plan: StartPlan) -> LabeledSplit:
    """Draw the split, or take it from the checkpoint when resuming (never re-drawn)."""
    if not plan.checkpoint:
        return draw_labeled_split(arrays.train.targets, config.ssl.num_labeled,
                                  config.dataset.num_classes, config.ssl.split_seed)
    indices = list(plan.checkpoint["labeled_indices"])
    if max(indices) >= len(arrays.train.targets):
        raise CheckpointError(
            f"cannot resume from {plan.checkpoint_path}: its labeled split indexes past the "
            f"{len(arrays.train.targets)} training images of dataset.root={config.dataset.root}"
        )
    per_class = np.bincount(arrays.train.targets[indices], minlength=config.dataset.num_classes)
    return LabeledSplit(indices=indices, num_per_class=per_class.tolist(),
                        seed=config.ssl.split_seed, sha256=indices_sha256(indices))


def build_training_parts(
    config: Config, arrays: DatasetArrays, split: LabeledSplit, device, start_batch: int = 0
) -> TrainingParts:
    """Datasets, loaders (from batch `start_batch` on), model, EMA, optimiser and schedule."""
    algorithm = build_algorithm(config.ssl)
    labeled_batches = _labeled_batches(config, arrays, split, device, start_batch)
    unlabeled_batches = (
        _unlabeled_batches(config, arrays, split, device, start_batch)
        if algorithm.uses_unlabeled else None
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


def _labeled_batches(config: Config, arrays: DatasetArrays, split: LabeledSplit, device,
                     start_batch: int):
    transform = WeakTransform(config.dataset.mean, config.dataset.std, config.dataset.hflip)
    dataset = AugmentedImages(arrays.train.images, arrays.train.targets, transform)
    sampler = InfiniteBatchSampler(split.indices, config.ssl.batch_size, config.seed,
                                   LABELED_STREAM, start_batch)
    return build_train_loader(dataset, sampler, config.trainer.num_workers, device.type == "cuda")


def _unlabeled_batches(config: Config, arrays: DatasetArrays, split: LabeledSplit, device,
                       start_batch: int):
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
    # The paper's unlabeled set is the whole training set (labels dropped), plus any
    # images that never had labels; the latter carry the target -1 ("unknown").
    extra = arrays.unlabeled if arrays.unlabeled is not None else arrays.train.images[:0]
    images = StackedImages(arrays.train.images, extra)
    targets = np.concatenate([arrays.train.targets, np.full(len(extra), -1, dtype=np.int64)])
    dataset = AugmentedImages(images, targets, WeakStrongTransform(weak, strong))
    indices = range(len(targets))
    if not ssl.include_labeled_in_unlabeled:
        labeled = set(split.indices)
        indices = [index for index in indices if index not in labeled]
    if not indices:
        raise UserError("no unlabeled images: the training set is all labeled and "
                        "ssl.include_labeled_in_unlabeled=false; add unlabeled images or set it true")
    batch_size = ssl.batch_size * ssl.unlabeled_ratio
    sampler = InfiniteBatchSampler(list(indices), batch_size, config.seed, UNLABELED_STREAM,
                                   start_batch)
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


def _make_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write to the output folder {run_dir} ({error.strerror or error}); "
                        "set hydra.run.dir to a writable folder") from None
