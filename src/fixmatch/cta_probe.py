"""CTAugment's probes: after every step, score the labeled probe views with the evaluated model,
move the rates the same way on every rank, and record the snapshot the unlabeled stream will
sample its policies from (Berthelot et al. 2020, Sec. 3.2.2; official cta/lib/train.py).
"""

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fixmatch.checkpoint import CheckpointError
from fixmatch.config import SSLConfig
from fixmatch.data.cta_policies import PolicySchedule
from fixmatch.data.ctaugment import CTAugment, decode_policies
from fixmatch.data.device_inputs import DeviceInputs
from fixmatch.distributed import DistEnv, all_gather_objects
from fixmatch.errors import UserError
from fixmatch.evaluate import eval_mode
from fixmatch.models.ema import ModelEMA, unwrap_model

ProbeBatch = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # probe views, policies, labels


@torch.no_grad()
def probe_proximities(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The official probe score 1 - ½·Σ|p_model - onehot(label)| of each image, on its device.

    The model runs in eval mode under no_grad: BatchNorm uses (and keeps) its running
    statistics and no gradient is touched, so the training step is exactly as without probes.
    A model that was training is put back in training mode.

    Args:
        model: a plain module (never a DDP wrapper: its forward would sync buffers).
        images: normalised (N, C, H, W) probe views.
        targets: (N,) labels.

    Returns:
        A float32 (N,) tensor in [0, 1].
    """
    with eval_mode(model):
        logits = model(images)
    probs = logits.float().softmax(dim=1)
    onehot = F.one_hot(targets, probs.shape[1]).to(probs.dtype)
    return 1.0 - 0.5 * (probs - onehot).abs().sum(dim=1)


class CTAProbe:
    """Owns CTAugment's rates during training and their lagged snapshots.

    Args:
        augment: the CTAugment whose rates the probes move.
        schedule: the snapshots the unlabeled sampler draws policies from (shared with it).
        inputs: turns the uint8 probe views into model input on the device.
        env: the job's ranks; every rank applies every rank's probes, in rank order.
    """

    def __init__(self, augment: CTAugment, schedule: PolicySchedule, inputs: DeviceInputs,
                 env: DistEnv = DistEnv()):
        self.augment = augment
        self.schedule = schedule
        self.inputs = inputs
        self.env = env

    @staticmethod
    def split(batch: Sequence) -> Tuple[Tuple[torch.Tensor, torch.Tensor], ProbeBatch]:
        """A labeled loader batch of `WeakProbeTransform` views -> ((weak views, labels),
        (probe views, encoded policies, labels)).

        Args:
            batch: `((weak views, probe views, encoded policies), labels)` from the loader.

        Returns:
            The batch for the training step and the probe batch for `update`.
        """
        (weak, probe, policies), targets = batch
        return (weak, targets), (probe, policies, targets)

    def update(self, model: nn.Module, ema: Optional[ModelEMA], batch: ProbeBatch, step: int) -> None:
        """Score this step's probes, update the rates from every rank's probes, record the
        snapshot of `step`.

        Args:
            model: the live model (possibly DDP-wrapped); used, unwrapped and in eval mode,
                only when there is no EMA.
            ema: the EMA, whose model classifies the probes as in the official code.
            batch: this rank's probe batch (from `split`).
            step: optimiser steps taken so far, this one included.
        """
        images, policies, targets = batch
        scorer = ema.module if ema is not None else unwrap_model(model)
        proximities = probe_proximities(scorer, self.inputs.images(images), self.inputs.targets(targets))
        # One small device-to-host copy per step (a sync on CUDA): CTAugment's bins live on
        # the host, where the sampler reads them.
        scores = proximities.cpu().numpy().astype(np.float64)
        # Rank order on every rank, so the float updates, and the rates, are identical.
        for rank_policies, rank_scores in all_gather_objects((policies.numpy(), scores), self.env):
            self.augment.update_many(decode_policies(rank_policies), rank_scores)
        self.schedule.record(step, self.augment.flat_rates())

    def op_weights(self) -> Dict[str, float]:
        """`ctaugment/<op>`: per op the mean sampling weight of its bins (1 = all bins alike).

        Returns:
            One metric per CTAugment op, keyed `ctaugment/<op name>`.
        """
        return {f"ctaugment/{name}": weight for name, weight in self.augment.op_weights().items()}

    def state_dict(self) -> dict:
        """The exact rates and the snapshots later batches still sample from."""
        return {"rates": self.augment.state_dict(), "snapshots": self.schedule.state_dict()}

    def load_state_dict(self, state: dict, step: int) -> None:
        """Restore `state_dict()` of a checkpoint of `step`; call before the loaders start.

        Args:
            state: `state_dict()` output, from the checkpoint's "ctaugment" record.
            step: the checkpoint's step; the newest snapshot must be of it.

        Raises:
            ValueError: the state does not fit these settings, or is not of `step`.
        """
        self.augment.load_state_dict(state["rates"])
        self.schedule.load_state_dict(state["snapshots"])
        if self.schedule.newest_step != step:
            raise ValueError(f"the CTAugment snapshots end at step {self.schedule.newest_step}, "
                             f"the checkpoint is of step {step}")


def build_cta_probe(ssl: SSLConfig, inputs: DeviceInputs, start_batch: int = 0,
                    state: Optional[dict] = None, env: DistEnv = DistEnv()) -> CTAProbe:
    """CTAugment's rates, snapshots and probes as `ssl.cta_*` say. A resumed run's
    (`start_batch` > 0) are restored from `state` here, before any loader starts: the unlabeled
    sampler draws from the snapshots at once.

    Args:
        ssl: the SSL config; its cta_depth, cta_threshold, cta_decay and cta_policy_lag are read.
        inputs: turns the uint8 probe views into model input on the device.
        start_batch: the step the run starts at; 0 for a new run.
        state: the checkpoint's "ctaugment" record; read only when `start_batch` > 0.
        env: the job's ranks.

    Returns:
        The probe, with fresh rates, or the checkpoint's when resuming.

    Raises:
        UserError: a CTAugment setting out of range.
        CheckpointError: `state` is missing or does not fit these settings.
    """
    try:
        augment = CTAugment(ssl.cta_depth, ssl.cta_threshold, ssl.cta_decay)
        schedule = PolicySchedule(augment, ssl.cta_policy_lag)
    except ValueError as error:
        raise UserError(f"ssl.cta_*: {error}") from None
    probe = CTAProbe(augment, schedule, inputs, env)
    if start_batch:
        try:
            probe.load_state_dict(state, start_batch)
        except (TypeError, KeyError, ValueError) as error:
            raise CheckpointError(f"the checkpoint's CTAugment state does not fit "
                                  f"({type(error).__name__}: {error})") from None
    return probe
