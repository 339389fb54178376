"""Test-set scoring of a model: top-1, top-5 and mean cross-entropy over a loader.

DDP-aware: each rank scores its shard of the test set and the counts are summed.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from fixmatch.distributed import DistEnv, all_reduce_sum


@dataclass(frozen=True)
class EvalResult:
    top1: float  # accuracy in percent
    top5: float  # percent; equals 100 when there are at most 5 classes
    loss: float  # mean cross-entropy
    num_images: int


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device,
             env: DistEnv = DistEnv()) -> EvalResult:
    """Score `model` on every image of `loader` in eval mode, then restore its mode.

    Args:
        model: the classifier (the EMA copy or the live model, unwrapped from DDP).
        loader: yields (images, labels); with several ranks, this rank's shard.
        device: where the model lives.
        env: the ranks whose shards are summed.

    Returns:
        Accuracies and loss over the whole loader.
    """
    was_training = model.training
    model.eval()
    correct1 = torch.zeros((), device=device)
    correct5 = torch.zeros((), device=device)
    loss_sum = torch.zeros((), device=device)
    count = torch.zeros((), device=device)
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        logits = model(images).float()
        loss_sum += F.cross_entropy(logits, targets, reduction="sum")
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == targets[:, None]
        correct1 += hits[:, 0].sum()
        correct5 += hits.any(dim=1).sum()
        count += len(targets)
    # Leaving the model in eval mode after evaluation is a bug the popular ports have.
    model.train(was_training)
    totals = all_reduce_sum(torch.stack([correct1, correct5, loss_sum, count]).double(), env)
    correct1, correct5, loss_sum, count = totals.tolist()
    return EvalResult(
        top1=100.0 * correct1 / count,
        top5=100.0 * correct5 / count,
        loss=loss_sum / count,
        num_images=int(count),
    )
