"""Checks of the composed config that need the run's context (its ranks, the loaders'
look-ahead): one clear line per mistake, before anything is loaded or built."""

from fixmatch.algorithms import build_algorithm
from fixmatch.config import AugmentOn, Config, StrongAugment
from fixmatch.data.loaders import batches_ahead
from fixmatch.distributed import DistEnv
from fixmatch.errors import UserError


def check_config(config: Config, env: DistEnv) -> None:
    """Refuse values the schema's types let through but the run cannot use.

    Args:
        config: the composed, typed configuration.
        env: this process's place in the job (the batch is shared among its ranks).

    Raises:
        UserError: naming the key, its value and what would work instead.
    """
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
