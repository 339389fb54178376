"""Checks of the composed config: values the schema's types admit but no run can use, and
those that depend on the run's context (its ranks, the loaders' look-ahead). One clear line
per mistake, before the run's folder is set up or anything is loaded."""

import difflib
from dataclasses import fields, is_dataclass

import torch

from fixmatch.algorithms import build_algorithm
from fixmatch.config import AugmentOn, Config, Device, StrongAugment
from fixmatch.data.loaders import batches_ahead
from fixmatch.data.normalization import check_mean_std
from fixmatch.data.randaugment import RANDAUGMENT_VARIANTS
from fixmatch.distributed import DistEnv
from fixmatch.errors import UserError
from fixmatch.models.wide_resnet import blocks_per_stage


def check_config(config: Config, env: DistEnv) -> None:
    """Refuse values the schema's types let through but the run cannot use.

    Args:
        config: the composed, typed configuration.
        env: this process's place in the job (the batch is shared among its ranks).

    Raises:
        UserError: naming the key, its value and what would work instead.
    """
    _check_known_keys(config)
    cuda = config.trainer.device is not Device.cpu and torch.cuda.is_available()
    if config.trainer.sync_bn and env.is_distributed and not cuda:
        raise UserError("trainer.sync_bn=true needs CUDA (PyTorch's SyncBatchNorm); on the CPU "
                        "each rank normalises its own share, as the paper's towers")
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
        "ssl.lambda_u": config.ssl.lambda_u,
        "ssl.randaugment_num_ops": config.ssl.randaugment_num_ops,
        "optim.lr": config.optim.lr,
        "optim.weight_decay": config.optim.weight_decay,
    }
    for key, value in not_negative.items():
        if value < 0:
            raise UserError(f"{key}={value} must not be negative")
    fractions = {  # values in [0, 1]; e.g. a threshold above 1 would never keep a pseudo-label
        "ssl.threshold": config.ssl.threshold,
        "ssl.cutout_fraction": config.ssl.cutout_fraction,
        "optim.ema_decay": config.optim.ema_decay,
    }
    for key, value in fractions.items():
        if not 0 <= value <= 1:
            raise UserError(f"{key}={value} must lie in [0, 1]")
    if not 0 <= config.optim.momentum < 1:
        raise UserError(f"optim.momentum={config.optim.momentum} must lie in [0, 1) (the paper: 0.9)")
    if config.optim.nesterov and config.optim.momentum == 0:
        raise UserError("optim.nesterov=true needs optim.momentum > 0; set optim.momentum=0.9 "
                        "or optim.nesterov=false")
    _check_model(config)
    check_mean_std(config.dataset.mean, config.dataset.std, config.dataset.channels)
    if config.ssl.randaugment_variant not in RANDAUGMENT_VARIANTS:
        raise UserError(f"ssl.randaugment_variant={config.ssl.randaugment_variant!r} is not a "
                        f"RandAugment variant; use one of {', '.join(RANDAUGMENT_VARIANTS)} "
                        "(docs/PROTOCOL.md)")
    if config.ssl.strong_augment is StrongAugment.ctaugment and build_algorithm(config.ssl).uses_unlabeled:
        _check_ctaugment(config)


def _check_model(config: Config) -> None:
    model = config.model
    if model.name != "wide_resnet":
        raise UserError(f"model.name={model.name!r} is not a known model; use model=wide_resnet")
    if model.widen_factor < 1:
        raise UserError(f"model.widen_factor={model.widen_factor} must be at least 1")
    try:
        blocks_per_stage(model.depth, model.num_stages)
    except ValueError as error:
        raise UserError(str(error)) from None


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


def _check_known_keys(config: Config) -> None:
    # Hydra's `+key=value` adds a key the schema lacks (Hydra's own message for a typo
    # suggests it); OmegaConf then sets it as a stray attribute that nothing ever reads.
    nodes = [("", config)] + [(f"{field.name}.", getattr(config, field.name))
                              for field in fields(config) if is_dataclass(getattr(config, field.name))]
    for prefix, node in nodes:
        known = [field.name for field in fields(node)]
        for name in sorted(set(vars(node)) - set(known)):
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {prefix}{close[0]}? " if close else ""
            raise UserError(f"{prefix}{name} is not a setting (added with '+', it would be "
                            f"ignored); {hint}`python run.py --cfg job` lists every key")
