"""The CTAugment rate learner (Berthelot et al. 2020, ReMixMatch Sec. 3.2.2): per-bin rates of
the ops of `cta_ops` learned from labeled probes, training and probe policies drawn from them.

Facts marked "official" come from google-research/fixmatch, libml/ctaugment.py and
cta/lib/train.py. Every random choice is drawn from an explicit `numpy.random.Generator`.
"""

from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from fixmatch.data.cta_ops import MAX_PARAMETERS, OP_NAMES, OPS, OpCall, Policy, apply_policy


def encode_policies(policies: Sequence[Policy]) -> np.ndarray:
    """Pack policies of equal depth into a float64 (N, depth, 1 + MAX_PARAMETERS) array.

    Entry [..., 0] is the op's index in `OP_NAMES`, then its values, NaN where it has fewer
    parameters. Floats keep the values exact, so `decode_policies` returns equal policies.

    Args:
        policies: the policies, all with the same number of ops.

    Returns:
        A float64 (len(policies), depth, 1 + MAX_PARAMETERS) array; depth 0 when there are
        no policies.

    Raises:
        ValueError: the policies do not all have the same depth.
    """
    depths = {len(policy) for policy in policies}
    if len(depths) > 1:
        raise ValueError(f"encode_policies needs policies of one depth, "
                         f"got depths {sorted(depths)}")
    depth = depths.pop() if depths else 0
    encoded = np.full((len(policies), depth, 1 + MAX_PARAMETERS), np.nan)
    for row, policy in enumerate(policies):
        for column, (name, values) in enumerate(policy):
            encoded[row, column, 0] = OP_NAMES.index(name)
            encoded[row, column, 1:1 + len(values)] = values
    return encoded


def decode_policies(encoded: np.ndarray) -> list[Policy]:
    """Unpack the array of `encode_policies` into policies.

    Args:
        encoded: an (N, depth, 1 + MAX_PARAMETERS) array from `encode_policies`.

    Returns:
        N policies, each a tuple of `OpCall`s in the order they apply.
    """
    policies = []
    for row in np.asarray(encoded, dtype=np.float64):
        policy = []
        for op_row in row:
            name = OP_NAMES[int(op_row[0])]
            count = len(OPS[name].categories)
            policy.append(OpCall(name, tuple(float(v) for v in op_row[1:1 + count])))
        policies.append(tuple(policy))
    return policies


class CTAugment:
    """Control Theory Augment: per-bin rates of magnitude that track how well the model still
    classifies augmented labeled probes (Berthelot et al. 2020, Sec. 3.2.2).

    Args:
        depth: ops per policy (official 2).
        threshold: bins whose normalised weight falls below it are never drawn (official
            FixMatch flag `ath` = 0.80; the class default of the official code is 0.85).
        decay: rate update `rate = decay * rate + (1 - decay) * proximity` (official 0.99).
        num_bins: bins of each continuous parameter (official 17).

    Attributes:
        rates: per op name, one float array per parameter, one entry per bin; all start at 1.

    Raises:
        ValueError: a setting outside its range.
    """

    def __init__(self, depth: int = 2, threshold: float = 0.8, decay: float = 0.99,
                 num_bins: int = 17) -> None:
        if depth < 1 or num_bins < 1:
            raise ValueError(f"CTAugment depth and num_bins must be >= 1, got {depth}, {num_bins}")
        if not 0.0 < threshold <= 1.0 or not 0.0 < decay < 1.0:
            raise ValueError(f"CTAugment needs 0 < threshold <= 1 and 0 < decay < 1, "
                             f"got threshold={threshold}, decay={decay}")
        self.depth, self.threshold, self.decay, self.num_bins = depth, threshold, decay, num_bins
        self.rates: dict[str, list[np.ndarray]] = {
            name: [np.ones(num_bins if bins is None else bins) for bins in spec.categories]
            for name, spec in OPS.items()
        }

    def probabilities(self, rate: np.ndarray) -> np.ndarray:
        """Sampling weights of one parameter's bins (official `rate_to_p`).

        Args:
            rate: the parameter's per-bin rates (an entry of `rates`).

        Returns:
            (rate + 1 - decay) / max, with entries below `threshold` set to 0: the best bin has
            weight 1; sampling divides by the sum.
        """
        # The 1 - decay offset keeps the weights defined when every rate has decayed to 0.
        weights = np.asarray(rate, dtype=np.float64) + (1.0 - self.decay)
        weights = weights / weights.max()
        weights[weights < self.threshold] = 0.0
        return weights

    def sample_values(self, name: str, rng: np.random.Generator) -> tuple[float, ...]:
        """Training values of op `name`: per parameter a bin drawn by weight, uniform within it.

        Args:
            name: an op name from `OP_NAMES`.
            rng: the source of the bin and the position inside it.

        Returns:
            One value in [0, 1) per parameter of the op (none for identity).
        """
        values = []
        for rate in self.rates[name]:
            weights = self.probabilities(rate)
            cumulative = np.cumsum(weights)
            drawn = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
            if drawn == len(rate):  # the draw rounded up to the total: take the last allowed bin
                drawn = int(np.flatnonzero(weights)[-1])
            values.append((drawn + rng.random()) / len(rate))
        return tuple(values)

    def sample_policy(self, rng: np.random.Generator, probe: bool) -> Policy:
        """Draw `depth` ops uniformly (with replacement) and their values.

        Args:
            rng: the source of every random choice.
            probe: official probe policy (values uniform in [0, 1], the rates ignored), used on
                labeled images to update the rates; otherwise a training policy.

        Returns:
            A tuple of `OpCall`s, in the order they apply.
        """
        policy = []
        for _ in range(self.depth):
            name = OP_NAMES[int(rng.integers(len(OP_NAMES)))]
            if probe:
                values = tuple(float(v) for v in rng.random(len(OPS[name].categories)))
            else:
                values = self.sample_values(name, rng)
            policy.append(OpCall(name, values))
        return tuple(policy)

    def apply(self, image: Image.Image, policy: Policy, rng: np.random.Generator) -> Image.Image:
        """Apply `policy` to `image`: `cta_ops.apply_policy` (its arguments and errors)."""
        return apply_policy(image, policy, rng)

    def update(self, policy: Policy, proximity: float) -> None:
        """Move the rate of every bin that `policy` used towards `proximity` (official rule).

        An op drawn twice is updated twice. The bin is int(value * bins * 0.999), as in the
        official code: a value just above a bin's lower edge counts for the bin below.

        Args:
            policy: the probe policy that was applied (values in [0, 1]).
            proximity: its score from `proximity`, in [0, 1]: the target the used bins'
                rates move towards.
        """
        for name, values in policy:
            for value, rate in zip(values, self.rates[name]):
                index = int(value * len(rate) * 0.999)
                rate[index] = rate[index] * self.decay + proximity * (1.0 - self.decay)

    def update_many(self, policies: Sequence[Policy], proximities: Sequence[float]) -> None:
        """`update` with each policy and its proximity, in order.

        Args:
            policies: the probe policies that were applied.
            proximities: one score per policy, from `proximity`.

        Raises:
            ValueError: the two have different lengths.
        """
        if len(policies) != len(proximities):
            raise ValueError(f"update_many got {len(policies)} policies and "
                             f"{len(proximities)} proximities")
        for policy, proximity in zip(policies, proximities):
            self.update(policy, float(proximity))

    @staticmethod
    def proximity(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Official probe score 1 - 0.5 * ||probs - onehot(label)||_1, in [0, 1] per row.

        Args:
            probs: (N, K) class probabilities of the probe images (official: the EMA model).
            labels: (N,) integer labels.

        Returns:
            A float64 (N,) array; 1 is a confident correct prediction.

        Raises:
            ValueError: `probs` is not (N, K) or `labels` not (N,).
        """
        probs = np.asarray(probs, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.int64)
        if probs.ndim != 2 or labels.shape != probs.shape[:1]:
            raise ValueError(f"proximity needs (N, K) probs and (N,) labels, "
                             f"got {probs.shape} and {labels.shape}")
        error = np.abs(probs - np.eye(probs.shape[1])[labels]).sum(axis=1)
        return 1.0 - 0.5 * error

    def flat_rates(self) -> np.ndarray:
        """All rates as float32 (total_bins,): ops in `OP_NAMES` order, then parameters, bins.

        Float32 is for sharing with loader workers, which only sample; `state_dict` is exact.

        Returns:
            A new float32 array, the input of `set_flat_rates`.
        """
        return np.concatenate([rate for name in OP_NAMES for rate in self.rates[name]],
                              dtype=np.float32)

    def set_flat_rates(self, flat: np.ndarray) -> None:
        """Overwrite all rates from the array of `flat_rates` (e.g. sent to loader workers).

        Args:
            flat: a (total_bins,) array in the layout of `flat_rates`.

        Raises:
            ValueError: `flat` does not have that shape.
        """
        flat = np.asarray(flat)
        total = sum(rate.size for rates in self.rates.values() for rate in rates)
        if flat.shape != (total,):
            raise ValueError(f"set_flat_rates needs shape ({total},), got {flat.shape}")
        start = 0
        for name in OP_NAMES:
            for rate in self.rates[name]:
                rate[:] = flat[start:start + rate.size]
                start += rate.size

    def op_weights(self) -> dict[str, float]:
        """Per op, the mean of `probabilities` over its bins (1 when every bin is drawn equally;
        1 for identity, which has none): a summary for TensorBoard.

        Returns:
            Per op name, its mean weight in (0, 1] (each parameter's best bin weighs 1).
        """
        return {
            name: float(np.mean([w for rate in rates for w in self.probabilities(rate)]))
            if rates else 1.0
            for name, rates in self.rates.items()
        }

    def state_dict(self) -> dict[str, dict[str, list[list[float]]]]:
        """The rates as plain lists, loadable by `torch.load(weights_only=True)`."""
        return {"rates": {name: [rate.tolist() for rate in rates]
                          for name, rates in self.rates.items()}}

    def load_state_dict(self, state: Mapping[str, Mapping[str, Sequence[Sequence[float]]]]) -> None:
        """Restore the rates of `state_dict`.

        Args:
            state: a `state_dict()` of an augmenter with the same ops and bins.

        Raises:
            ValueError: the state's ops or bins differ from this augmenter's.
        """
        saved = state.get("rates") if isinstance(state, Mapping) else None
        if not isinstance(saved, Mapping) or set(saved) != set(self.rates):
            found = sorted(saved) if isinstance(saved, Mapping) else "no 'rates' mapping"
            raise ValueError(f"CTAugment state does not match: expected rates of ops "
                             f"{sorted(self.rates)}, found {found}")
        for name, rates in self.rates.items():
            shapes = [len(rate) for rate in rates]
            saved_shapes = [len(rate) for rate in saved[name]]
            if saved_shapes != shapes:
                raise ValueError(f"CTAugment state does not match: op {name!r} has bins "
                                 f"{saved_shapes} in the state, {shapes} here "
                                 f"(was it saved with another num_bins?)")
        for name, rates in self.rates.items():
            for rate, values in zip(rates, saved[name]):
                rate[:] = values
