"""Per-step statistics kept on the device: running means for the logs, and the guard that
notices a non-finite loss. Neither forces a host-device sync on every step."""

from typing import Dict

import torch

from fixmatch.distributed import DistEnv, all_reduce_sum
from fixmatch.errors import UserError

LOSS_TERMS = ("train/loss", "train/loss_x", "train/loss_u")


class RunningMeans:
    """Sums of per-step statistics, read (one sync) only when logged."""

    def __init__(self):
        self.sums: Dict[str, torch.Tensor] = {}
        self.steps = 0

    def add(self, stats: Dict[str, torch.Tensor]) -> None:
        """Add one step's statistics (no sync).

        Args:
            stats: metric names (train/...) to scalar tensors on the device.
        """
        for name, value in stats.items():
            self.sums[name] = self.sums[name] + value if name in self.sums else value.clone()
        self.steps += 1

    def means(self, env: DistEnv = DistEnv()) -> Dict[str, float]:
        """Per-step means since the last call, averaged over ranks (equal shards, so this is
        the global batch's mean); pseudo-label accuracy as correct / confident. Resets the
        sums. With several ranks it is a collective: every rank calls it.

        Args:
            env: this process's place in the job.

        Returns:
            Each statistic's mean per step; train/pseudo_label_correct and
            train/pseudo_label_count become train/pseudo_label_acc (NaN when no pseudo-label
            was confident).
        """
        names = sorted(self.sums)
        totals = torch.stack([self.sums[name].float() for name in names]) if names else torch.zeros(0)
        totals = all_reduce_sum(totals, env) / env.world_size
        values = dict(zip(names, totals.tolist()))
        correct = values.pop("train/pseudo_label_correct", None)
        count = values.pop("train/pseudo_label_count", None)
        means = {name: total / max(self.steps, 1) for name, total in values.items()}
        if count is not None:
            means["train/pseudo_label_acc"] = correct / count if count else float("nan")
        self.sums, self.steps = {}, 0
        return means

    def state_dict(self, env: DistEnv = DistEnv()) -> dict:
        """The sums added over ranks (a collective: every rank calls it), so a resumed job
        adds to what every rank had, not to rank 0's share counted once per rank.

        Args:
            env: this process's place in the job.

        Returns:
            The sums added over ranks (CPU tensors), the step count since the last `means`,
            and the flag over_ranks.
        """
        names = sorted(self.sums)
        totals = torch.stack([self.sums[name].float() for name in names]) if names else torch.zeros(0)
        totals = all_reduce_sum(totals, env).cpu()
        return {"sums": dict(zip(names, totals)), "steps": self.steps, "over_ranks": True}

    def load_state_dict(self, state: dict, device: torch.device, env: DistEnv = DistEnv()) -> None:
        """Continue from a checkpoint's `state_dict`: rank 0 takes the sums over ranks, the
        other ranks start from zero, so the sum over ranks is what it was.

        Args:
            state: a `state_dict` record (an older one without over_ranks is every rank's own).
            device: where the sums live.
            env: this process's place in the job.
        """
        sums = {name: total.to(device) for name, total in state["sums"].items()}
        if state.get("over_ranks") and not env.is_main:
            sums = {name: torch.zeros_like(total) for name, total in sums.items()}  # in rank 0's
        self.sums, self.steps = sums, state["steps"]


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite: the run diverged."""


class NonFiniteGuard:
    """Remembers, on the device, the first step whose loss terms were not finite."""

    def __init__(self, device: torch.device):
        self.first_step = torch.full((), -1, dtype=torch.long, device=device)
        self.terms = torch.zeros(len(LOSS_TERMS), device=device)

    def observe(self, step: int, stats: Dict[str, torch.Tensor]) -> None:
        """Note (on the device, no sync) whether this step's loss terms are all finite.

        Args:
            step: the step the statistics belong to.
            stats: the step's statistics; of them the LOSS_TERMS are looked at (a missing
                one counts as 0).
        """
        terms = torch.stack([stats[name].float() if name in stats else torch.zeros_like(self.terms[0])
                             for name in LOSS_TERMS])
        first_bad = ~torch.isfinite(terms).all() & (self.first_step < 0)
        self.first_step = torch.where(first_bad, torch.full_like(self.first_step, step), self.first_step)
        self.terms = torch.where(first_bad, terms, self.terms)

    def check(self, now: int, advice: str) -> None:
        """Raise if any observed step had a non-finite loss (one sync).

        Args:
            now: the step the run has reached (the one metrics.json will name), so the
                message says both when the loss went bad and when that was seen.
            advice: the message's end: what was kept, and what to change.

        Raises:
            NonFiniteLossError: naming the first such step and its loss terms.
        """
        step = int(self.first_step.item())
        if step < 0:
            return
        terms = ", ".join(f"{name}={value:g}" for name, value in zip(LOSS_TERMS, self.terms.tolist()))
        raise NonFiniteLossError(f"training diverged: non-finite loss at step {step} ({terms}; "
                                 f"seen at the check of step {now}); {advice}")
