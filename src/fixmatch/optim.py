"""SGD with Nesterov momentum on decayed/undecayed parameter groups, and the FixMatch schedule."""

import math

import torch
from torch import nn

from fixmatch.config import OptimConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list:
    """Split parameters so weight decay reaches conv and linear weights only.

    The official code decays only kernels; BatchNorm scales/shifts and biases (all 1-D)
    are left alone, since decaying them changes the function's scale, not its complexity.

    Args:
        model: the network whose trainable parameters are grouped.
        weight_decay: the decay of the kernels' group (optim.weight_decay).

    Returns:
        Two SGD parameter groups: the kernels with `weight_decay`, the rest with 0.
    """
    decayed, undecayed = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decayed if parameter.ndim > 1 else undecayed).append(parameter)
    return [
        {"params": decayed, "weight_decay": weight_decay},
        {"params": undecayed, "weight_decay": 0.0},
    ]


# Devices with torch's fused SGD kernel: the whole update (decay, momentum, Nesterov) in one
# multi-tensor kernel instead of several foreach passes; on a GPU that is ~5x fewer launches.
FUSED_SGD_DEVICES = ("cpu", "cuda")
# Group settings that choose how torch computes the update, not what it computes.
IMPLEMENTATION_KEYS = ("fused", "foreach", "differentiable", "capturable")


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.SGD:
    """SGD as in the paper: momentum 0.9, Nesterov, coupled weight decay on kernels.

    The fused implementation is used where torch has it for the model's device (same
    arithmetic as the foreach one, to rounding; tested).

    Args:
        model: the network to optimise, already on its device.
        config: optim.lr, momentum, nesterov and weight_decay.

    Returns:
        The optimiser, over `parameter_groups(model, config.weight_decay)`.
    """
    devices = {parameter.device.type for parameter in model.parameters()}
    return torch.optim.SGD(
        parameter_groups(model, config.weight_decay),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        fused=devices <= set(FUSED_SGD_DEVICES) or None,
    )


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """`optimizer.load_state_dict(state)`, keeping this optimizer's implementation.

    torch restores every group setting from the checkpoint, including `fused` and
    `foreach`; a checkpoint written elsewhere (a CPU run resumed on a GPU, or an older
    version) would otherwise switch the kernel this machine runs.

    Args:
        optimizer: the optimiser built for this run (`build_optimizer`).
        state: its state dict from a checkpoint.
    """
    implementation = [{key: group[key] for key in IMPLEMENTATION_KEYS if key in group}
                      for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, kept in zip(optimizer.param_groups, implementation):
        for key in IMPLEMENTATION_KEYS:  # the checkpoint's own, where this torch has none
            group.pop(key, None)
        group.update(kept)


def cosine_factor(step: int, total_steps: int, cosine_fraction: float) -> float:
    """The learning-rate multiplier cos(7πk / 16K) at step k (7/16 = cosine_fraction).

    It never reaches zero: the last step trains at cos(7π/16) ≈ 0.195 of the base rate.

    Args:
        step: k, the optimiser steps taken so far (0 for the first).
        total_steps: K, the run's length (trainer.total_steps).
        cosine_fraction: the fraction of π the cosine spans over the run (7/16).

    Returns:
        The factor in (0, 1] the base learning rate is multiplied by.
    """
    return math.cos(math.pi * cosine_fraction * step / total_steps)


def build_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, cosine_fraction: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step scheduler for `cosine_factor`; call `.step()` after every optimizer step.

    Args:
        optimizer: the optimiser whose groups' learning rates it sets.
        total_steps: K, the run's length.
        cosine_fraction: as in `cosine_factor`.

    Returns:
        The scheduler; its `last_epoch` counts optimiser steps.
    """
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_factor(step, total_steps, cosine_fraction)
    )
