"""CTAugment's rate learner: bin sampling, probes, the rate update, state, policy encoding."""

import numpy as np
import pytest
import torch

from conftest import trained_ctaugment
from fixmatch.data.cta_ops import OP_NAMES, OPS, OpCall
from fixmatch.data.ctaugment import CTAugment, decode_policies, encode_policies

# Upper 0.1 % points of the chi-square distribution, by degrees of freedom.
CHI2_999 = {2: 13.82, 9: 27.88, 18: 42.31}


def _chi_square(counts: np.ndarray, expected_share: np.ndarray) -> float:
    expected = expected_share * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def test_bins_per_parameter_follow_the_official_table():
    bins = {name: [len(rate) for rate in rates] for name, rates in CTAugment().rates.items()}
    assert len(bins) == 19 and bins["identity"] == []
    assert bins["posterize"] == [8] and bins["rescale"] == [17, 6]
    others = set(OP_NAMES) - {"identity", "posterize", "rescale"}
    assert all(bins[name] == [17] for name in others)
    assert CTAugment().flat_rates().shape == (16 * 17 + 8 + 17 + 6,)


def test_probabilities_offset_normalise_and_threshold():
    augment = CTAugment()
    weights = augment.probabilities(np.array([1.0, 0.5, 0.79, 0.9]))
    # (rate + 0.01) / 1.01: 0.80 / 1.01 = 0.792 falls under the threshold 0.8.
    assert weights == pytest.approx([1.0, 0.0, 0.0, 0.91 / 1.01])
    assert augment.probabilities(np.zeros(5)) == pytest.approx(np.ones(5))


def test_training_bins_respect_threshold_and_weights():
    augment = CTAugment()
    rate = np.full(17, 0.2)
    rate[[3, 8, 12]] = [1.0, 0.9, 0.84]  # weights 1, 0.901, 0.842: allowed
    rate[5] = 0.79  # weight 0.792: just under the threshold
    augment.rates["rotate"][0][:] = rate
    rng = np.random.default_rng(0)
    values = np.array([augment.sample_values("rotate", rng)[0] for _ in range(30000)])
    bins = np.floor(values * 17).astype(int)
    assert set(bins) == {3, 8, 12}
    counts = np.array([(bins == b).sum() for b in (3, 8, 12)])
    share = (rate[[3, 8, 12]] + 0.01) / (rate[[3, 8, 12]] + 0.01).sum()
    assert _chi_square(counts, share) < CHI2_999[2]
    # Uniform inside the bin: the position within it has mean 1/2 and spreads over [0, 1).
    within = values * 17 - bins
    assert abs(within.mean() - 0.5) < 4 * np.sqrt(1 / 12 / within.size)
    assert within.min() < 0.01 and within.max() > 0.99

    # The same through whole training policies: every other op still has uniform rates.
    policies = [augment.sample_policy(rng, probe=False) for _ in range(3000)]
    rotate_bins = {int(v[0] * 17) for p in policies for name, v in p if name == "rotate"}
    assert rotate_bins == {3, 8, 12}


def test_probe_policies_are_uniform_over_ops_and_values():
    augment = CTAugment()
    for rates in augment.rates.values():  # the rates must not matter to probes
        for rate in rates:
            rate[:] = 0.0
            rate[0] = 1.0
    rng = np.random.default_rng(1)
    calls = [call for _ in range(20000) for call in augment.sample_policy(rng, probe=True)]
    assert len(calls) == 40000
    counts = np.array([sum(call.name == name for call in calls) for name in OP_NAMES])
    assert _chi_square(counts, np.full(len(OP_NAMES), 1 / len(OP_NAMES))) < CHI2_999[18]
    values = np.array([v for call in calls for v in call.values])
    assert values.min() >= 0.0 and values.max() < 1.0
    deciles = np.bincount((values * 10).astype(int), minlength=10)
    assert _chi_square(deciles, np.full(10, 0.1)) < CHI2_999[9]
    for call in calls[:200]:
        assert len(call.values) == len(OPS[call.name].categories)


def test_update_moves_exactly_the_used_bins():
    augment = CTAugment()
    before = augment.flat_rates()
    policy = (OpCall("rotate", (0.3,)), OpCall("rescale", (0.99, 0.5)))
    augment.update(policy, 0.7)
    # bin = int(value * bins * 0.999): rotate 0.3 -> 5, scale 0.99 -> 16, method 0.5 -> 2.
    expected = 1.0 * 0.99 + 0.7 * 0.01
    assert augment.rates["rotate"][0][5] == expected
    assert augment.rates["rescale"][0][16] == expected
    assert augment.rates["rescale"][1][2] == expected
    changed = np.flatnonzero(augment.flat_rates() != before)
    assert len(changed) == 3


def test_update_bin_has_the_official_0_999_factor_and_repeats():
    augment = CTAugment()
    augment.update((OpCall("solarize", (16.01 / 17,)), OpCall("solarize", (16.01 / 17,))), 0.0)
    # A value just inside bin 16 counts for bin 15; the op drawn twice decays it twice.
    assert augment.rates["solarize"][0][15] == pytest.approx(0.99**2)
    assert augment.rates["solarize"][0][16] == 1.0
    augment.update((OpCall("identity", ()),) * 2, 0.0)  # nothing to update


def test_update_many_equals_updates_in_order():
    rng = np.random.default_rng(2)
    one_by_one, batched = CTAugment(), CTAugment()
    policies = [one_by_one.sample_policy(rng, probe=True) for _ in range(200)]
    proximities = rng.random(200)
    for policy, proximity in zip(policies, proximities):
        one_by_one.update(policy, proximity)
    batched.update_many(policies, proximities)
    assert np.array_equal(one_by_one.flat_rates(), batched.flat_rates())
    with pytest.raises(ValueError, match="2 policies and 1 proximities"):
        batched.update_many(policies[:2], proximities[:1])


def test_proximity_matches_hand_computation():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.0, 0.0, 1.0]])
    # 1 - 0.5 * (0.3 + 0.2 + 0.1); 1 - 0.5 * (0.1 + 0.6 + 0.7); a sure hit.
    assert CTAugment.proximity(probs, np.array([0, 2, 2])) == pytest.approx([0.7, 0.3, 1.0])


def test_state_dict_round_trips_through_a_weights_only_checkpoint(tmp_path):
    augment = trained_ctaugment()
    torch.save({"ctaugment": augment.state_dict()}, tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)["ctaugment"]
    restored = CTAugment()
    restored.load_state_dict(state)
    for name in OP_NAMES:
        for saved, loaded in zip(augment.rates[name], restored.rates[name]):
            assert np.array_equal(saved, loaded)
    draw = [a.sample_policy(np.random.default_rng(4), probe=False) for a in (augment, restored)]
    assert draw[0] == draw[1]


def test_load_state_dict_rejects_other_bins_or_ops():
    state = trained_ctaugment().state_dict()
    with pytest.raises(ValueError, match=r"op 'autocontrast' has bins \[17\] in the state, \[9\]"):
        CTAugment(num_bins=9).load_state_dict(state)
    del state["rates"]["blur"]
    with pytest.raises(ValueError, match="expected rates of ops"):
        CTAugment().load_state_dict(state)
    with pytest.raises(ValueError, match="no 'rates' mapping"):
        CTAugment().load_state_dict({})


def test_flat_rates_round_trip_and_op_weights():
    augment, copy = trained_ctaugment(), CTAugment()
    copy.set_flat_rates(augment.flat_rates())
    assert np.array_equal(copy.flat_rates(), augment.flat_rates())
    with pytest.raises(ValueError, match="shape \\(303,\\)"):
        copy.set_flat_rates(np.zeros(5))
    weights = CTAugment().op_weights()
    assert set(weights) == set(OP_NAMES) and all(w == 1.0 for w in weights.values())
    augment = CTAugment()
    augment.rates["rotate"][0][:] = 0.0
    augment.rates["rotate"][0][:3] = 1.0
    assert augment.op_weights()["rotate"] == pytest.approx(3 / 17)


def test_policies_encode_and_decode_exactly():
    augment = trained_ctaugment()
    rng = np.random.default_rng(5)
    policies = [augment.sample_policy(rng, probe=bool(i % 2)) for i in range(50)]
    encoded = encode_policies(policies)
    assert encoded.shape == (50, 2, 3)
    assert decode_policies(encoded) == policies
    with pytest.raises(ValueError, match="one depth"):
        encode_policies([policies[0], policies[0][:1]])
