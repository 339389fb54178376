"""The FixMatch objective as a pure function of logits (Eq. 1-4, Sohn et al. 2020)."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class FixMatchLoss:
    """The loss to back-propagate and the statistics a run logs, all on the logits' device."""

    loss: torch.Tensor  # Lx + λu·Lu
    loss_x: torch.Tensor
    loss_u: torch.Tensor
    mask: torch.Tensor  # 1.0 where the weak view's confidence reached τ
    pseudo_targets: torch.Tensor  # argmax of the weak view


def fixmatch_loss(
    logits_x: torch.Tensor,
    targets_x: torch.Tensor,
    logits_u_weak: torch.Tensor,
    logits_u_strong: torch.Tensor,
    threshold: float,
    lambda_u: float,
) -> FixMatchLoss:
    """Supervised cross-entropy plus confidence-masked pseudo-label cross-entropy.

    Args:
        logits_x: (B, C) logits of the weakly augmented labeled images.
        targets_x: (B,) their labels.
        logits_u_weak: (μB, C) logits of the weak views; no gradient flows through them.
        logits_u_strong: (μB, C) logits of the strong views of the same images.
        threshold: τ, the confidence a pseudo-label needs (0.95 in the paper).
        lambda_u: λu, the weight of the unlabeled loss (1 in the paper).

    Returns:
        The loss and its parts. Lu averages over all μB unlabeled images, confident or
        not (Eq. 4), so few confident predictions mean a small Lu, not a noisy one.
    """
    loss_x = F.cross_entropy(logits_x, targets_x)
    # The pseudo-label q̂_b of Eq. 4 is a fixed target (the official code stops its gradient):
    # no gradient through the weak view.
    probs_u_weak = torch.softmax(logits_u_weak.detach().float(), dim=-1)
    confidence, pseudo_targets = probs_u_weak.max(dim=-1)
    mask = (confidence >= threshold).float()
    per_image = F.cross_entropy(logits_u_strong, pseudo_targets, reduction="none")
    loss_u = (per_image * mask).mean()
    return FixMatchLoss(
        loss=loss_x + lambda_u * loss_u,
        loss_x=loss_x,
        loss_u=loss_u,
        mask=mask,
        pseudo_targets=pseudo_targets,
    )
