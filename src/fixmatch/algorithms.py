"""How each algorithm turns one step's batches into a loss and the statistics to log.

FixMatch runs a single forward pass over the labeled batch and both views of the
unlabeled batch, so BatchNorm normalises all of them together (docs/PROTOCOL.md, "Loss").
"""

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from fixmatch.config import Algorithm, SSLConfig
from fixmatch.losses import fixmatch_loss

Batch = Tuple[torch.Tensor, torch.Tensor]  # images, labels
UnlabeledBatch = Tuple[Tuple[torch.Tensor, torch.Tensor], torch.Tensor]  # (weak, strong), true labels
StepStats = Dict[str, torch.Tensor]  # 0-d tensors, kept on the device until logged


class FixMatch:
    """Labeled cross-entropy plus confidence-masked pseudo-labels (Sohn et al. 2020, Eq. 4)."""

    uses_unlabeled = True

    def __init__(self, threshold: float, lambda_u: float):
        self.threshold = threshold
        self.lambda_u = lambda_u

    def __call__(
        self, model: nn.Module, labeled: Batch, unlabeled: Optional[UnlabeledBatch]
    ) -> Tuple[torch.Tensor, StepStats]:
        images_x, targets_x = labeled
        (images_u_weak, images_u_strong), true_targets_u = unlabeled
        logits = model(torch.cat([images_x, images_u_weak, images_u_strong]))
        logits_x = logits[: len(images_x)]
        logits_u_weak, logits_u_strong = logits[len(images_x):].chunk(2)
        out = fixmatch_loss(
            logits_x.float(), targets_x, logits_u_weak.float(), logits_u_strong.float(),
            self.threshold, self.lambda_u,
        )
        stats = {
            "train/loss": out.loss.detach(),
            "train/loss_x": out.loss_x.detach(),
            "train/loss_u": out.loss_u.detach(),
            "train/mask_rate": out.mask.mean(),
            **pseudo_label_stats(out.pseudo_targets, out.mask, true_targets_u),
        }
        return out.loss, stats


class Supervised:
    """The labeled-only baseline: cross-entropy on the weakly augmented labeled batch."""

    uses_unlabeled = False

    def __call__(
        self, model: nn.Module, labeled: Batch, unlabeled: Optional[UnlabeledBatch]
    ) -> Tuple[torch.Tensor, StepStats]:
        images_x, targets_x = labeled
        loss = F.cross_entropy(model(images_x).float(), targets_x)
        return loss, {"train/loss": loss.detach(), "train/loss_x": loss.detach()}


def pseudo_label_stats(
    pseudo_targets: torch.Tensor, mask: torch.Tensor, true_targets: torch.Tensor
) -> StepStats:
    """How often the confident pseudo-labels are right, where true labels are known (>= 0).

    Returned as a correct count and a confident count, so averages over many steps
    weigh every confident pseudo-label equally.

    Args:
        pseudo_targets: (μB,) argmax of the weak views.
        mask: (μB,) 1.0 where the pseudo-label is confident, else 0.0.
        true_targets: (μB,) the unlabeled images' true labels, -1 where unknown.

    Returns:
        "train/pseudo_label_correct" and "train/pseudo_label_count", as 0-d float tensors.
    """
    known = (true_targets >= 0).float() * mask
    correct = (pseudo_targets == true_targets).float() * known
    return {"train/pseudo_label_correct": correct.sum(), "train/pseudo_label_count": known.sum()}


def build_algorithm(config: SSLConfig):
    """The objective of `config.algorithm`.

    Args:
        config: the ssl settings (algorithm, threshold τ, lambda_u λu).

    Returns:
        FixMatch (labeled plus masked pseudo-label loss) or Supervised (labeled loss only).

    Raises:
        ValueError: for an algorithm with no objective here (the config's enum has none).
    """
    if config.algorithm is Algorithm.fixmatch:
        return FixMatch(config.threshold, config.lambda_u)
    if config.algorithm is Algorithm.supervised:
        return Supervised()
    raise ValueError(f"ssl.algorithm={config.algorithm} has no objective")
