"""The composition root: typed config -> split, data, model, optimiser -> Trainer.fit.

The only module that reads more than one config node. Objects are built in the order a
reader would explain a run: split, datasets, loaders, model, EMA, optimiser, schedule,
metric writer, trainer.
"""

import logging
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fixmatch.algorithms import build_algorithm
from fixmatch.checkpoint import CHECKPOINT_DIR, CheckpointError, CheckpointStore
from fixmatch.config import AugmentOn, Config, StrongAugment
from fixmatch.cta_probe import CTAProbe, build_cta_probe
from fixmatch.data.cta_views import (
    CTASampledStrongTransform,
    CTAStrongTransform,
    CTAWeakStrongTransform,
    WeakProbeTransform,
)
from fixmatch.data.ctaugment import CTAugment
from fixmatch.data.datasets import DatasetArrays, load_dataset
from fixmatch.data.device_augment import DeviceAugment
from fixmatch.data.device_inputs import DeviceInputs, DeviceViews
from fixmatch.data.loaders import (
    AugmentedImages,
    InfiniteBatchSampler,
    StackedImages,
    batches_ahead,
    build_eval_loader,
    build_train_loader,
)
from fixmatch.data.normalization import Normalization, resolve_normalization
from fixmatch.data.randaugment import RandAugment
from fixmatch.data.split import LabeledSplit, draw_split, indices_sha256
from fixmatch.data.transforms import (
    EvalTransform,
    Pipeline,
    StrongTransform,
    WeakStrongTransform,
    WeakTransform,
)
from fixmatch.distributed import (
    DistEnv,
    all_gather_objects,
    broadcast_object,
    destroy_process_group,
    environment,
    init_process_group,
)
from fixmatch.errors import UserError
from fixmatch.metrics import MetricWriter
from fixmatch.models import ModelEMA, WideResNet
from fixmatch.models.ema import unwrap_model
from fixmatch.optim import build_optimizer, build_schedule
from fixmatch.resume import StartPlan, finished_summary, plan_on_rank_zero
from fixmatch.runtime import configure_threads, resolve_precision, select_device, seed_everything
from fixmatch.trainer import Trainer, TrainingParts

log = logging.getLogger(__name__)

LABELED_STREAM, UNLABELED_STREAM = 0, 1  # keep the two sample streams' seeds apart


def run_experiment(cfg: DictConfig, run_dir: Optional[Path] = None) -> dict:
    """Train as `cfg` says, writing everything into `run_dir` (Hydra's output dir by default).

    Under torchrun every rank calls this; rank 0's folder is the run's folder.

    Returns:
        The final metrics.json summary (status `completed` or `preempted`).
    """
    try:
        config: Config = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as error:
        raise UserError(f"{error.full_key} must be given (it is ??? in the config): add "
                        f"{error.full_key}=... to the command") from None
    env = environment()
    if not env.is_main:
        logging.getLogger("fixmatch").setLevel(logging.WARNING)  # rank 0 reports for all
    device = select_device(config.trainer.device, env.local_rank if env.is_distributed else None)
    init_process_group(env, device)
    try:
        run_dir = broadcast_object(Path(run_dir or HydraConfig.get().runtime.output_dir), env)
        summary = train(config, run_dir, OmegaConf.to_yaml(cfg, resolve=True), env, device)
    except BaseException:
        destroy_process_group()  # no barrier: the other ranks may never get there
        raise
    destroy_process_group(finished=True)
    return summary


def train(config: Config, run_dir: Path, resolved_yaml: str, env: DistEnv = DistEnv(),
          device: Optional[torch.device] = None) -> dict:
    """Build every part of the run from the typed config and train it, or continue it.

    Args:
        config: the composed, validated configuration.
        run_dir: where the run writes its files; a run already there is continued.
        resolved_yaml: the config as YAML with interpolations resolved.
        env: this process's rank in a torchrun job (one rank by default).
        device: where to train (chosen from the config when None).

    Returns:
        The final metrics.json summary.

    Raises:
        UserError: for any input the user can fix (reported as one line by run.py).
    """
    device = device or select_device(config.trainer.device)
    plan = plan_on_rank_zero(run_dir, resolved_yaml, config.trainer.resume,
                             config.trainer.keep_checkpoints, env)
    run_dir = plan.run_dir
    finished = finished_summary(plan, config.trainer.total_steps)
    if finished is not None:
        log.info("%s already completed %d steps; nothing to do", run_dir, finished["step"])
        return finished
    if env.is_main:
        (run_dir / "config_resolved.yaml").write_text(resolved_yaml)
    state = plan.checkpoint or {}
    writer = MetricWriter(run_dir, config.trainer.total_steps, history=state.get("history"),
                          elapsed_s=state.get("elapsed_s", 0.0), resume_step=state.get("step"),
                          write=env.is_main)
    trainer = None
    try:
        _check_config(config, env)
        trainer = _build_trainer(config, run_dir, resolved_yaml, writer, plan, env, device)
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
                   plan: StartPlan, env: DistEnv, device: torch.device) -> Trainer:
    resolve_precision(config.trainer.precision, device)  # refuses fp16 off CUDA before any loading
    configure_threads(config.trainer.num_threads)
    seed_everything(config.seed)

    arrays = load_dataset(config.dataset)
    split = _labeled_split(config, arrays, plan)
    _check_same_split_on_all_ranks(split, env)
    normalization = _normalization(config, arrays, plan)
    if env.is_main:
        split.save(run_dir / "split.json", arrays.class_names)
        normalization.save(run_dir / "normalization.json")
    log.info("%s: %d training images, %d labeled (per class %s), %d test images; device %s%s",
             config.dataset.name, len(arrays.train.targets), len(split.indices),
             split.num_per_class, len(arrays.test.targets), device,
             f", {env.world_size} ranks" if env.is_distributed else "")
    start_batch = plan.checkpoint["loader_position"]["labeled_batches"] if plan.checkpoint else 0
    cta_state = plan.checkpoint.get("ctaugment") if plan.checkpoint else None
    parts = build_training_parts(config, arrays, split, normalization, device, start_batch, env,
                                 cta_state)
    parts.model = _distribute(parts.model, config.trainer.sync_bn, device, env)
    if config.trainer.compile:
        # In place, so state dicts keep their keys; DDP's hooks stay on the parameters.
        unwrap_model(parts.model).compile()
    trainer = Trainer(
        parts,
        config.trainer,
        writer,
        CheckpointStore(run_dir / CHECKPOINT_DIR, config.trainer.keep_checkpoints),
        checkpoint_extras={"config_yaml": resolved_yaml, "labeled_indices": split.indices,
                           "split_sha256": split.sha256, "class_names": arrays.class_names,
                           "normalization": normalization.as_record()},
    )
    if plan.checkpoint:
        try:
            trainer.load_state_dict(plan.checkpoint)
        except CheckpointError as error:
            raise CheckpointError(f"cannot resume from {plan.checkpoint_path}: {error}") from None
    return trainer


def _check_same_split_on_all_ranks(split: LabeledSplit, env: DistEnv) -> None:
    # The popular port drew a split per rank: a "40-label" run saw up to 40 x world labels.
    fingerprints = all_gather_objects(split.sha256, env)
    if env.is_distributed:
        log.info("labeled split sha256 on ranks 0..%d: %s", env.world_size - 1, fingerprints)
    if len(set(fingerprints)) != 1:
        raise UserError(f"the ranks drew different labeled splits ({fingerprints}); "
                        "every rank must read the same dataset.root")


def _labeled_split(config: Config, arrays: DatasetArrays, plan: StartPlan) -> LabeledSplit:
    """Draw the split, or take it from the checkpoint when resuming (never re-drawn)."""
    if not plan.checkpoint:
        return draw_split(arrays.train.targets, config.ssl.num_labeled, len(arrays.class_names),
                          config.ssl.split_seed, config.dataset.labeled_split.value,
                          arrays.labeled_folds, class_names=arrays.class_names)
    indices = list(plan.checkpoint["labeled_indices"])
    if max(indices) >= len(arrays.train.targets):
        raise CheckpointError(
            f"cannot resume from {plan.checkpoint_path}: its labeled split indexes past the "
            f"{len(arrays.train.targets)} training images of dataset.root={config.dataset.root}"
        )
    per_class = np.bincount(arrays.train.targets[indices], minlength=len(arrays.class_names))
    return LabeledSplit(indices=indices, num_per_class=per_class.tolist(),
                        seed=config.ssl.split_seed, sha256=indices_sha256(indices))


def build_training_parts(
    config: Config, arrays: DatasetArrays, split: LabeledSplit, normalization: Normalization,
    device: torch.device, start_batch: int = 0, env: DistEnv = DistEnv(),
    cta_state: Optional[dict] = None,
) -> TrainingParts:
    """Datasets, loaders (this rank's share, from batch `start_batch` on), model, EMA,
    optimiser and schedule; with CTAugment its probes, resumed from `cta_state` (the
    checkpoint's "ctaugment") when `start_batch` > 0."""
    algorithm = build_algorithm(config.ssl)
    inputs = _device_inputs(config, normalization, device, start_batch, env)
    cta_probe = None
    if algorithm.uses_unlabeled and config.ssl.strong_augment is StrongAugment.ctaugment:
        cta_probe = build_cta_probe(config.ssl, inputs, start_batch, cta_state, env)
    labeled_batches = _labeled_batches(config, arrays, split, device, start_batch, env, cta_probe)
    unlabeled_batches = (
        _unlabeled_batches(config, arrays, split, device, start_batch, env, cta_probe)
        if algorithm.uses_unlabeled else None
    )
    test_set = AugmentedImages(arrays.test.images, arrays.test.targets, EvalTransform())
    test_loader = build_eval_loader(
        test_set, config.trainer.eval_batch_size, config.trainer.num_workers, device.type == "cuda",
        env.rank, env.world_size,
    )
    model = build_model(config, len(arrays.class_names)).to(device)
    if _channels_last(config, device, env):
        model = model.to(memory_format=torch.channels_last)
    ema = None
    if config.optim.ema_enabled:
        ema = ModelEMA(model, config.optim.ema_decay, warmup=config.optim.ema_warmup)
    optimizer = build_optimizer(model, config.optim)
    schedule = build_schedule(optimizer, config.trainer.total_steps, config.optim.cosine_fraction)
    return TrainingParts(model, ema, optimizer, schedule, algorithm, labeled_batches,
                         unlabeled_batches, test_loader, inputs, env, cta_probe)


def _device_inputs(config: Config, normalization: Normalization, device: torch.device,
                   start_batch: int, env: DistEnv) -> DeviceInputs:
    views = None
    if config.trainer.augment_on is AugmentOn.device:
        ssl = config.ssl
        try:
            augment = DeviceAugment(ssl.randaugment_variant, ssl.randaugment_num_ops,
                                    config.dataset.hflip, ssl.cutout_fraction)
        except ValueError as error:
            raise UserError(f"trainer.augment_on=device: {error}") from None
        views = DeviceViews(augment, config.seed, start_batch, env.rank)
    return DeviceInputs(normalization, device, _channels_last(config, device, env), views)


def _channels_last(config: Config, device: torch.device, env: DistEnv) -> bool:
    # gloo DDP on the CPU with channels_last weights gives updates that differ from the
    # single-process step (tests/test_distributed.py); the CPU ranks keep NCHW.
    return config.trainer.channels_last and not (env.is_distributed and device.type == "cpu")


def _distribute(model: nn.Module, sync_bn: bool, device: torch.device, env: DistEnv) -> nn.Module:
    if not env.is_distributed:
        return model
    if sync_bn:
        # Off by default: the paper's towers each normalise their own share of the batch.
        if device.type != "cuda":
            raise UserError("trainer.sync_bn=true needs CUDA (PyTorch's SyncBatchNorm); "
                            "on the CPU each rank normalises its own share, as the paper's towers")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # Every parameter takes part in every step, so find_unused_parameters stays off.
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def build_model(config: Config, num_classes: int) -> WideResNet:
    """The WideResNet the config describes, for the dataset's channels and `num_classes`."""
    if config.model.name != "wide_resnet":
        raise UserError(f"model.name={config.model.name!r} is not a known model; use model=wide_resnet")
    try:
        return WideResNet(
            num_classes=num_classes,
            depth=config.model.depth,
            widen_factor=config.model.widen_factor,
            in_channels=config.dataset.channels,
            num_stages=config.model.num_stages,
            bn_momentum=config.model.bn_momentum,
            leaky_slope=config.model.leaky_slope,
        )
    except ValueError as error:
        raise UserError(f"model: {error}") from None


def _labeled_batches(config: Config, arrays: DatasetArrays, split: LabeledSplit,
                     device: torch.device, start_batch: int, env: DistEnv,
                     cta_probe: Optional[CTAProbe]):
    on_cpu = config.trainer.augment_on is AugmentOn.cpu
    transform = WeakTransform(config.dataset.hflip) if on_cpu else EvalTransform()
    if cta_probe is not None:
        # Each labeled image also yields a probe view and its policy (CTAProbe.split).
        transform = WeakProbeTransform(config.dataset.hflip, CTAugment(config.ssl.cta_depth))
    dataset = AugmentedImages(arrays.train.images, arrays.train.targets, transform)
    sampler = InfiniteBatchSampler(split.indices, config.ssl.batch_size, config.seed,
                                   LABELED_STREAM, start_batch, env.rank, env.world_size)
    return build_train_loader(dataset, sampler, config.trainer.num_workers, device.type == "cuda")


def build_views(config: Config) -> Tuple[WeakTransform, Pipeline]:
    """The weak and strong pipelines of the unlabeled images (also what `preview` draws).

    With CTAugment the strong pipeline draws its policy from the initial rates; training
    passes policies from the main process instead (`_unlabeled_batches`).

    Raises:
        UserError: for a RandAugment variant that does not exist.
    """
    dataset, ssl = config.dataset, config.ssl
    if ssl.strong_augment is StrongAugment.ctaugment:
        return WeakTransform(dataset.hflip), CTASampledStrongTransform(
            CTAStrongTransform(dataset.hflip, ssl.cutout_fraction),
            CTAugment(ssl.cta_depth, ssl.cta_threshold, ssl.cta_decay))
    try:
        randaugment = RandAugment(ssl.randaugment_variant, ssl.randaugment_num_ops)
    except ValueError as error:
        raise UserError(f"ssl.randaugment_variant: {error}") from None
    weak = WeakTransform(dataset.hflip)
    strong = StrongTransform(dataset.hflip, randaugment, ssl.cutout_fraction)
    return weak, strong


def _unlabeled_batches(config: Config, arrays: DatasetArrays, split: LabeledSplit,
                       device: torch.device, start_batch: int, env: DistEnv,
                       cta_probe: Optional[CTAProbe]):
    ssl = config.ssl
    weak, strong = build_views(config)
    policies = None
    if cta_probe is not None:
        # CTAugment: the sampler draws each sample's policy in this process, from the rates of
        # `ssl.cta_policy_lag` steps ago (cta_policies explains why); the workers apply it.
        strong = CTAStrongTransform(config.dataset.hflip, ssl.cutout_fraction)
        policies = cta_probe.schedule.policies
    # The paper's unlabeled set is the whole training set (labels dropped), plus any
    # images that never had labels; the latter carry the target -1 ("unknown").
    extra = arrays.unlabeled if arrays.unlabeled is not None else arrays.train.images[:0]
    images = StackedImages(arrays.train.images, extra)
    targets = np.concatenate([arrays.train.targets, np.full(len(extra), -1, dtype=np.int64)])
    on_cpu = config.trainer.augment_on is AugmentOn.cpu
    # Device augmentation: the loaders ship each image once, as it is (DeviceInputs draws both views).
    pair = CTAWeakStrongTransform if cta_probe is not None else WeakStrongTransform
    transform = pair(weak, strong) if on_cpu else EvalTransform()
    dataset = AugmentedImages(images, targets, transform)
    indices = range(len(targets))
    if not ssl.include_labeled_in_unlabeled:
        labeled = set(split.indices)
        indices = [index for index in indices if index not in labeled]
    if not indices:
        raise UserError("no unlabeled images: the training set is all labeled and "
                        "ssl.include_labeled_in_unlabeled=false; add unlabeled images or set it true")
    batch_size = ssl.batch_size * ssl.unlabeled_ratio
    sampler = InfiniteBatchSampler(list(indices), batch_size, config.seed, UNLABELED_STREAM,
                                   start_batch, env.rank, env.world_size, policies)
    return build_train_loader(dataset, sampler, config.trainer.num_workers, device.type == "cuda")


def _normalization(config: Config, arrays: DatasetArrays, plan: StartPlan) -> Normalization:
    """dataset.mean/std, or (null) computed from the training images; a resumed run keeps
    the values it started with."""
    saved = plan.checkpoint.get("normalization") if plan.checkpoint else None
    normalization = resolve_normalization(config.dataset.mean, config.dataset.std,
                                          arrays.train.images, saved)
    log.info("normalisation (%s): mean %s, std %s", normalization.source,
             [round(value, 4) for value in normalization.mean],
             [round(value, 4) for value in normalization.std])
    return normalization


def _check_config(config: Config, env: DistEnv) -> None:
    if config.ssl.batch_size % env.world_size:
        raise UserError(
            f"ssl.batch_size={config.ssl.batch_size} is the global labeled batch and must be "
            f"divisible by the {env.world_size} ranks (each takes batch_size / world_size)")
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
    if config.ssl.strong_augment is StrongAugment.ctaugment and build_algorithm(config.ssl).uses_unlabeled:
        _check_ctaugment(config)


def _check_ctaugment(config: Config) -> None:
    ssl, trainer = config.ssl, config.trainer
    if trainer.augment_on is AugmentOn.device:
        raise UserError("trainer.augment_on=device has no CTAugment (the batched ops are "
                        "RandAugment's); use trainer.augment_on=cpu with ssl=fixmatch_cta")
    ahead = batches_ahead(trainer.num_workers)
    if ssl.cta_policy_lag < ahead:
        # Batch k samples from the rates after step k - lag; a loader asks for batch k while
        # training is only at step k - ahead, so a shorter lag needs rates not yet learned.
        raise UserError(f"ssl.cta_policy_lag={ssl.cta_policy_lag} must be at least 2 x "
                        f"trainer.num_workers={trainer.num_workers} (= {ahead}, the batches the "
                        "loader prepares ahead); raise ssl.cta_policy_lag or lower trainer.num_workers")
