"""CTAugment policies drawn in the main process: the vectorised draw, the lagged snapshots,
their checkpoint."""

import numpy as np
import pytest

from fixmatch.checkpoint import CHECKPOINT_FORMAT, CheckpointStore, load_checkpoint
from fixmatch.data.cta_policies import PolicySchedule, PolicyTable, sample_uniforms
from fixmatch.data.cta_ops import OP_NAMES
from fixmatch.data.ctaugment import CTAugment, decode_policies

CHI2_999 = {2: 13.82, 18: 42.31}  # upper 0.1 % points of the chi-square distribution


def _chi_square(counts: np.ndarray, expected_share: np.ndarray) -> float:
    expected = expected_share * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def _trained(seed: int = 3, updates: int = 2000) -> CTAugment:
    augment = CTAugment()
    rng = np.random.default_rng(seed)
    for _ in range(updates):
        augment.update(augment.sample_policy(rng, probe=True), float(rng.random() ** 4))
    return augment


class _Uniforms:
    """Stands in for a numpy Generator: `random()` returns the given values in order."""

    def __init__(self, values):
        self.values = iter(values)

    def random(self):
        return next(self.values)


def test_table_draws_the_values_ctaugment_would_from_the_same_uniforms():
    augment = _trained()
    table = PolicyTable(augment)
    rng = np.random.default_rng(0)
    for op, name in enumerate(OP_NAMES):
        uniforms = rng.random((50, 2, 5))
        uniforms[:, :, 0] = (op + 0.5) / len(OP_NAMES)  # both slots: this op
        encoded = table.draw(uniforms.reshape(50, -1))
        for row, policy in enumerate(decode_policies(encoded)):
            for slot, (drawn_name, values) in enumerate(policy):
                expected = augment.sample_values(name, _Uniforms(uniforms[row, slot, 1:]))
                assert drawn_name == name and values == expected


def test_training_policies_respect_threshold_and_weights():
    augment = CTAugment()
    rate = np.full(17, 0.2)
    rate[[3, 8, 12]] = [1.0, 0.9, 0.84]  # weights 1, 0.901, 0.842: allowed
    rate[5] = 0.79  # weight 0.792: just under the threshold 0.8
    augment.rates["rotate"][0][:] = rate
    table = PolicyTable(augment)
    policies = decode_policies(table.draw(np.random.default_rng(1).random((40000, 10))))
    ops = np.array([OP_NAMES.index(name) for policy in policies for name, _ in policy])
    assert _chi_square(np.bincount(ops, minlength=19), np.full(19, 1 / 19)) < CHI2_999[18]
    bins = np.array([int(values[0] * 17) for policy in policies
                     for name, values in policy if name == "rotate"])
    assert set(bins) == {3, 8, 12}
    counts = np.array([(bins == b).sum() for b in (3, 8, 12)])
    weights = rate[[3, 8, 12]] + 0.01
    assert _chi_square(counts, weights / weights.sum()) < CHI2_999[2]


def test_uniforms_are_a_pure_function_of_each_seed():
    seeds = [5, 2**62 + 7, 0, 123456789]
    together = sample_uniforms(seeds, 10)
    alone = np.concatenate([sample_uniforms([seed], 10) for seed in seeds])
    assert np.array_equal(together, alone) and together.shape == (4, 10)
    many = sample_uniforms(np.arange(20000), 10)
    assert many.min() >= 0.0 and many.max() < 1.0
    assert abs(many.mean() - 0.5) < 0.005 and abs(np.corrcoef(many[:, 0], many[:, 1])[0, 1]) < 0.03


def _rates(step: int) -> np.ndarray:
    """Distinct, recognisable rates for each step."""
    flat = CTAugment().flat_rates()
    flat[:] = np.random.default_rng(step).random(flat.size)
    return flat


def test_batch_k_samples_from_the_rates_after_step_k_minus_lag():
    schedule = PolicySchedule(CTAugment(), lag=3)
    seeds = list(range(100, 116))
    initial = PolicyTable(CTAugment()).draw(sample_uniforms(seeds, 10))
    assert all(np.array_equal(schedule.policies(k, seeds), initial, equal_nan=True) for k in range(4))
    for step in range(1, 11):
        schedule.record(step, _rates(step))
    reference = CTAugment()
    reference.set_flat_rates(_rates(7))
    expected = PolicyTable(reference).draw(sample_uniforms(seeds, 10))
    assert np.array_equal(schedule.policies(10, seeds), expected, equal_nan=True)
    assert schedule.state_dict()["steps"] == [7, 8, 9, 10]  # the newest lag + 1
    with pytest.raises(RuntimeError, match="batch 14 need the rates after step 11, but training has only reached step 10.*ssl.cta_policy_lag=3"):
        schedule.policies(14, seeds)  # a loader further ahead than the lag allows
    with pytest.raises(RuntimeError, match="after step 6, which are no longer held"):
        schedule.policies(9, seeds)  # already forgotten
    with pytest.raises(ValueError, match="one step at a time"):
        schedule.record(12, _rates(12))


def test_snapshots_round_trip_through_a_checkpoint(tmp_path):
    augment = _trained()
    schedule = PolicySchedule(CTAugment(), lag=2)
    for step in range(1, 6):
        schedule.record(step, _rates(step))
    store = CheckpointStore(tmp_path / "checkpoints", keep=1)
    state = {"format": CHECKPOINT_FORMAT, "ctaugment": {"rates": augment.state_dict(),
                                                        "snapshots": schedule.state_dict()}}
    loaded = load_checkpoint(store.save(state, 5))["ctaugment"]  # weights_only=True

    restored_augment, restored = CTAugment(), PolicySchedule(CTAugment(), lag=2)
    restored_augment.load_state_dict(loaded["rates"])
    restored.load_state_dict(loaded["snapshots"])
    assert np.array_equal(restored_augment.flat_rates(), augment.flat_rates())
    for step in (6, 7):
        restored.record(step, _rates(step))
        schedule.record(step, _rates(step))
    for batch in range(7, 10):  # batch k samples from step k - 2
        assert np.array_equal(restored.policies(batch, [1, 2, 3]), schedule.policies(batch, [1, 2, 3]),
                              equal_nan=True)
    with pytest.raises(ValueError, match="saved with lag 2"):
        PolicySchedule(CTAugment(), lag=4).load_state_dict(loaded["snapshots"])
    short = dict(loaded["snapshots"], steps=loaded["snapshots"]["steps"][1:])  # one step lost
    with pytest.raises(ValueError, match="do not fit"):
        PolicySchedule(CTAugment(), lag=2).load_state_dict(short)
