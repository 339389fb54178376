"""CTAugment training policies of the unlabeled stream, drawn in the main process.

Batch k samples its policies from the CTAugment rates as they were after step k - lag (the
initial rates while k - lag <= 0). The loaders ask for a batch at most 2 x num_workers
batches ahead of the one training consumes, so with lag >= that every snapshot a batch needs
already exists: policies are a pure function of the batch number and the snapshots, whatever
the worker count, and an exact resume needs only the last lag + 1 snapshots. Drawing here,
not in the workers, spares sharing mutable rates with worker processes (whose view of them
would depend on timing) and costs a few numpy calls per batch.
"""

from collections import OrderedDict
from typing import Dict, List, Sequence

import numpy as np
import torch

from fixmatch.data.cta_ops import MAX_PARAMETERS, OP_NAMES
from fixmatch.data.ctaugment import CTAugment
from fixmatch.data.loaders import mix64

POLICY_WIDTH = 1 + MAX_PARAMETERS  # one op of an encoded policy: op index, then its values
# Uniforms per op: its choice, then per parameter one for the bin and one within the bin.
_DRAWS_PER_OP = 1 + 2 * MAX_PARAMETERS
# Keeps the policy draws of a sample apart from its weak/strong draws, which seed a numpy
# generator with the same per-sample seed.
_POLICY_SALT = np.uint64(0x5EED_C7A0_0000_0001)


def sample_uniforms(seeds: Sequence[int], count: int) -> np.ndarray:
    """`count` uniforms in [0, 1) per sample, a pure function of the sample's seed.

    A counter-based generator (SplitMix64, as the loaders' per-sample seeds), so a whole batch
    is drawn in a few vectorised numpy calls instead of one `numpy.random.Generator` per sample
    (which costs about 50 us per sample: 20 ms per paper-sized unlabeled batch).

    Args:
        seeds: one non-negative 64-bit seed per sample (the loaders' per-sample seeds).
        count: uniforms to draw per sample.

    Returns:
        A float64 (len(seeds), count) array; row i depends only on seeds[i].
    """
    keys = mix64(np.asarray(seeds, dtype=np.uint64) ^ _POLICY_SALT)
    with np.errstate(over="ignore"):
        counters = keys[:, None] + np.arange(count, dtype=np.uint64)[None, :]
    return (mix64(counters) >> np.uint64(11)).astype(np.float64) * 2.0**-53


class PolicyTable:
    """The training-policy distribution of one set of rates: per op and parameter, the
    cumulative bin weights of `CTAugment.probabilities` (threshold applied).

    Args:
        augment: the CTAugment whose current rates (and depth, threshold, decay) to use.
    """

    def __init__(self, augment: CTAugment):
        self.depth = augment.depth
        self.cumulative = [[np.cumsum(augment.probabilities(rate)) for rate in augment.rates[name]]
                           for name in OP_NAMES]

    def draw(self, uniforms: np.ndarray) -> np.ndarray:
        """Policies from uniforms, as `CTAugment.sample_policy(probe=False)` draws them: ops
        uniform with replacement; per parameter a bin drawn by weight, a value uniform in it.

        Args:
            uniforms: (N, depth * (1 + 2 * MAX_PARAMETERS)) values in [0, 1).

        Returns:
            Encoded policies (`encode_policies`' layout), float64 (N, depth, POLICY_WIDTH).
        """
        count = len(uniforms)
        uniforms = uniforms.reshape(count, self.depth, _DRAWS_PER_OP)
        encoded = np.full((count, self.depth, POLICY_WIDTH), np.nan)
        ops = np.minimum((uniforms[..., 0] * len(OP_NAMES)).astype(np.int64), len(OP_NAMES) - 1)
        encoded[..., 0] = ops
        for op in np.unique(ops):
            rows, slots = np.nonzero(ops == op)
            for parameter, cumulative in enumerate(self.cumulative[op]):
                draws = uniforms[rows, slots, 1 + 2 * parameter:3 + 2 * parameter]
                encoded[rows, slots, 1 + parameter] = _draw_values(cumulative, draws)
        return encoded


def _draw_values(cumulative: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """`CTAugment.sample_values` for one parameter, vectorised: draws[:, 0] picks the bin
    (by weight), draws[:, 1] the position inside it."""
    bins = np.searchsorted(cumulative, draws[:, 0] * cumulative[-1], side="right")
    # A draw that rounds up to the total takes the last allowed bin, as sample_values does.
    last_allowed = int(np.flatnonzero(np.diff(cumulative, prepend=0.0))[-1])
    bins = np.where(bins >= len(cumulative), last_allowed, bins)
    return (bins + draws[:, 1]) / len(cumulative)


class PolicySchedule:
    """The rates snapshots that batches sample their policies from, lagged by `lag` steps.

    The trainer records the rates after every step; `policies(k, seeds)` draws batch k's
    policies from the snapshot of step max(0, k - lag). Only the newest lag + 1 snapshots are
    kept (and checkpointed): no later batch needs an older one.

    Args:
        augment: the settings (depth, threshold, decay, bins) and the initial rates.
        lag: steps between a batch and the rates it samples from; at least twice the loader
            workers (a DataLoader requests batches 2 x num_workers ahead).

    Raises:
        ValueError: a negative `lag`.
    """

    def __init__(self, augment: CTAugment, lag: int):
        if lag < 0:
            raise ValueError(f"the CTAugment policy lag must not be negative, got {lag}")
        self.lag = lag
        self._template = CTAugment(augment.depth, augment.threshold, augment.decay, augment.num_bins)
        self._snapshots: "OrderedDict[int, np.ndarray]" = OrderedDict({0: augment.flat_rates()})
        self._tables: Dict[int, PolicyTable] = {}

    @property
    def newest_step(self) -> int:
        """The step of the newest recorded snapshot (0 for the initial rates)."""
        return next(reversed(self._snapshots))

    def record(self, step: int, flat_rates: np.ndarray) -> None:
        """Keep the rates after `step` (`CTAugment.flat_rates`) and forget those no batch needs.

        Args:
            step: the training step just taken; one more than `newest_step`.
            flat_rates: the rates after that step, from `CTAugment.flat_rates`.

        Raises:
            ValueError: `step` does not follow the newest recorded step.
        """
        if step != self.newest_step + 1:
            raise ValueError(f"CTAugment snapshot of step {step} recorded after step {self.newest_step}; "
                             "snapshots must come one step at a time")
        self._snapshots[step] = np.array(flat_rates, dtype=np.float32)
        while len(self._snapshots) > self.lag + 1:
            oldest, _ = self._snapshots.popitem(last=False)
            self._tables.pop(oldest, None)

    def source_step(self, batch_number: int) -> int:
        """The step whose rates batch `batch_number` samples from.

        Args:
            batch_number: the batch's number in its stream, counted from 0.

        Returns:
            max(0, batch_number - lag): 0 means the initial rates.
        """
        return max(0, batch_number - self.lag)

    def policies(self, batch_number: int, seeds: Sequence[int]) -> np.ndarray:
        """Encoded training policies of a batch, one per sample seed.

        Args:
            batch_number: the batch's number in the unlabeled stream, counted from 0.
            seeds: the per-sample seeds of the batch's images; each seed alone fixes its policy
                (given the rates).

        Returns:
            float64 (len(seeds), depth, POLICY_WIDTH), as `encode_policies`.

        Raises:
            RuntimeError: the snapshot this batch needs is not (or no longer) held; sampling
                from other rates would break exact resume, so it is never done.
        """
        step = self.source_step(batch_number)
        if step > self.newest_step:
            raise RuntimeError(
                f"CTAugment policies of batch {batch_number} need the rates after step {step}, but "
                f"training has only reached step {self.newest_step}: the loader runs more than "
                f"ssl.cta_policy_lag={self.lag} batches ahead; raise ssl.cta_policy_lag to at "
                "least 2 x trainer.num_workers")
        if step not in self._snapshots:
            raise RuntimeError(
                f"CTAugment policies of batch {batch_number} need the rates after step {step}, "
                f"which are no longer held (the oldest is of step {next(iter(self._snapshots))}); "
                f"a stream cannot go back more than ssl.cta_policy_lag={self.lag} batches")
        table = self._tables.get(step)
        if table is None:
            self._template.set_flat_rates(self._snapshots[step])
            table = self._tables[step] = PolicyTable(self._template)
        return table.draw(sample_uniforms(seeds, self._template.depth * _DRAWS_PER_OP))

    def state_dict(self) -> dict:
        """The held snapshots, for the checkpoint.

        Returns:
            `lag`, `steps` (ints, oldest first) and `rates`, a float32 (len(steps), total_bins)
            tensor whose row i holds the rates after steps[i].
        """
        steps: List[int] = list(self._snapshots)
        return {"lag": self.lag, "steps": steps,
                "rates": torch.from_numpy(np.stack([self._snapshots[s] for s in steps]))}

    def load_state_dict(self, state: dict) -> None:
        """Replace the snapshots with those of `state_dict()`.

        Args:
            state: a `state_dict()` of a schedule with the same lag and CTAugment bins.

        Raises:
            ValueError: the state was saved with another lag or number of bins, is empty, or
                has not one rate row per step.
        """
        rates = torch.as_tensor(state["rates"], dtype=torch.float32).numpy().copy()
        steps = [int(step) for step in state["steps"]]
        bins = self._template.flat_rates().shape[0]
        if (int(state["lag"]) != self.lag or rates.ndim != 2 or rates.shape[1] != bins
                or not steps or len(steps) != rates.shape[0]):
            raise ValueError(f"CTAugment snapshots do not fit: saved with lag {state['lag']}, "
                             f"{len(steps)} steps and rates of shape {tuple(rates.shape)}, "
                             f"expected lag {self.lag} and ({len(steps)}, {bins})")
        self._snapshots = OrderedDict(zip(steps, rates))
        self._tables = {}

