"""SGD with Nesterov momentum on decayed/undecayed parameter groups, and the FixMatch schedule."""

import math

import torch
from torch import nn

from fixmatch.config import OptimConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list:
    """Split parameters so weight decay reaches conv and linear weights only.

    The official code decays only kernels; BatchNorm scales/shifts and biases (all 1-D)
    are left alone, since decaying them changes the function's scale, not its complexity.
    """
    decayed, undecayed = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decayed if parameter.ndim > 1 else undecayed).append(parameter)
    return [
        {"params": decayed, "weight_decay": weight_decay},
        {"params": undecayed, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.SGD:
    """SGD as in the paper: momentum 0.9, Nesterov, coupled weight decay on kernels."""
    return torch.optim.SGD(
        parameter_groups(model, config.weight_decay),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
    )


def cosine_factor(step: int, total_steps: int, cosine_fraction: float) -> float:
    """The learning-rate multiplier cos(7πk / 16K) at step k (7/16 = cosine_fraction).

    It never reaches zero: the last step trains at cos(7π/16) ≈ 0.195 of the base rate.
    """
    return math.cos(math.pi * cosine_fraction * step / total_steps)


def build_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, cosine_fraction: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step scheduler for `cosine_factor`; call `.step()` after every optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_factor(step, total_steps, cosine_fraction)
    )
