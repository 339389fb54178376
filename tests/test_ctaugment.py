"""CTAugment: bin sampling, probes, the rate update, state, ops and the strong view."""

import numpy as np
import pytest
import torch
from PIL import Image

from fixmatch.data.ctaugment import (
    OP_NAMES, OPS, CTAugment, OpCall, apply_op, decode_policies, encode_policies, strong_view,
)

# Upper 0.1 % points of the chi-square distribution, by degrees of freedom.
CHI2_999 = {2: 13.82, 9: 27.88, 18: 42.31}

BLEND_OPS = ("autocontrast", "blur", "equalize", "invert", "smooth")
ENHANCE_OPS = ("brightness", "color", "contrast", "sharpness")
CENTRED_OPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")


def _chi_square(counts: np.ndarray, expected_share: np.ndarray) -> float:
    expected = expected_share * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def _noise(side: int, mode: str, seed: int = 0) -> Image.Image:
    shape = (side, side) if mode == "L" else (side, side, 3)
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


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


def _trained(seed: int = 3) -> CTAugment:
    augment = CTAugment()
    rng = np.random.default_rng(seed)
    for _ in range(500):
        augment.update(augment.sample_policy(rng, probe=True), float(rng.random()))
    return augment


def test_state_dict_round_trips_through_a_weights_only_checkpoint(tmp_path):
    augment = _trained()
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
    state = _trained().state_dict()
    with pytest.raises(ValueError, match=r"op 'autocontrast' has bins \[17\] in the state, \[9\]"):
        CTAugment(num_bins=9).load_state_dict(state)
    del state["rates"]["blur"]
    with pytest.raises(ValueError, match="expected rates of ops"):
        CTAugment().load_state_dict(state)
    with pytest.raises(ValueError, match="no 'rates' mapping"):
        CTAugment().load_state_dict({})


def test_flat_rates_round_trip_and_op_weights():
    augment, copy = _trained(), CTAugment()
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
    augment = _trained()
    rng = np.random.default_rng(5)
    policies = [augment.sample_policy(rng, probe=bool(i % 2)) for i in range(50)]
    encoded = encode_policies(policies)
    assert encoded.shape == (50, 2, 3)
    assert decode_policies(encoded) == policies
    with pytest.raises(ValueError, match="one depth"):
        encode_policies([policies[0], policies[0][:1]])


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("name", OP_NAMES)
def test_every_op_keeps_size_and_mode(name, mode):
    img = _noise(32, mode)
    count = len(OPS[name].categories)
    for value in (0.0, 0.5, 1.0):
        out = apply_op(img, name, (value,) * count, np.random.default_rng(0))
        assert out.mode == mode and out.size == img.size
        assert np.asarray(out).dtype == np.uint8


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_ops_are_identity_at_their_neutral_value(mode):
    img = _noise(32, mode)
    rng = np.random.default_rng(0)
    neutral = {**{name: (0.0,) for name in BLEND_OPS}, **{name: (9 / 19,) for name in ENHANCE_OPS},
               **{name: (0.5,) for name in CENTRED_OPS},
               "posterize": (1.0,), "rescale": (0.0, 0.5), "identity": ()}
    for name, values in neutral.items():
        out = apply_op(img, name, values, rng)
        assert np.array_equal(np.asarray(out), np.asarray(img)), name


def test_op_magnitudes_at_their_ends():
    gray = _noise(32, "L")
    rng = np.random.default_rng(0)
    pixels = np.asarray(gray)
    assert np.array_equal(np.asarray(apply_op(gray, "solarize", (0.0,), rng)), 255 - pixels)
    assert set(np.unique(apply_op(gray, "posterize", (0.0,), rng))) <= {0, 128}
    assert np.array_equal(np.asarray(apply_op(gray, "invert", (1.0,), rng)), 255 - pixels)
    columns = Image.fromarray(np.tile(np.arange(1, 33, dtype=np.uint8), (32, 1)))
    shifted = np.asarray(apply_op(columns, "translate_x", (1.0,), rng))[0]
    # round(0.3 * 32) = 10 px to the left, black fill on the right.
    assert np.array_equal(shifted, np.r_[np.arange(11, 33), np.zeros(10)])
    rotated = apply_op(gray, "rotate", (1.0,), rng)
    assert np.array_equal(np.asarray(rotated), np.asarray(gray.rotate(45)))


def test_cutout_op_square_grows_with_the_value():
    img = Image.fromarray(np.zeros((32, 32, 3), np.uint8))
    for value, side in ((1.0, 16), (0.5, 8)):  # size 1 + int(v * 32 * 0.499): 16 and 8
        areas = [(np.asarray(apply_op(img, "cutout", (value,), np.random.default_rng(s)))[..., 0]
                  == 128).sum() for s in range(30)]
        assert max(areas) == side * side and min(areas) > 0


def test_apply_op_rejects_bad_calls():
    img = _noise(8, "RGB")
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown CTAugment op 'Rotate'"):
        apply_op(img, "Rotate", (0.5,), rng)
    with pytest.raises(ValueError, match="takes 2 values, got 1"):
        apply_op(img, "rescale", (0.5,), rng)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        apply_op(img, "rotate", (1.5,), rng)


@pytest.mark.parametrize("channels", [1, 3])
def test_strong_view_shape_dtype_and_cutout(channels):
    image = np.full((32, 32, channels), 7, np.uint8)
    identity = (OpCall("identity", ()), OpCall("identity", ()))
    out = strong_view(image, identity, np.random.default_rng(0))
    assert out.shape == image.shape and out.dtype == np.uint8
    rows, cols = np.nonzero(out[..., 0] == 128)
    # One axis-aligned square of side 16 clipped at the borders, everything else untouched.
    assert rows.size == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
    assert 8 <= np.ptp(rows) + 1 <= 16 and 8 <= np.ptp(cols) + 1 <= 16
    assert np.all((out == 7) | (out == 128))

    augment = _trained()
    noise = np.random.default_rng(1).integers(0, 256, (32, 32, channels), dtype=np.uint8)
    policy = augment.sample_policy(np.random.default_rng(2), probe=False)
    views = [strong_view(noise, policy, np.random.default_rng(3)) for _ in range(2)]
    assert views[0].shape == noise.shape and np.array_equal(views[0], views[1])
    with pytest.raises(ValueError, match="uint8 \\(H, W, 1\\) or \\(H, W, 3\\)"):
        strong_view(noise.astype(np.float32), policy, np.random.default_rng(3))
