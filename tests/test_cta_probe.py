"""CTAugment probes: the score, the update from every rank's probes, and what they must not
touch (BatchNorm statistics, gradients, the model's mode)."""

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from fixmatch.cta_probe import CTAProbe, probe_proximities
from fixmatch.data.cta_policies import PolicySchedule
from fixmatch.data.ctaugment import CTAugment, decode_policies, encode_policies
from fixmatch.data.device_inputs import DeviceInputs
from fixmatch.data.normalization import Normalization
from fixmatch.distributed import DistEnv
from fixmatch.models import ModelEMA, WideResNet

INPUTS = DeviceInputs(Normalization([0.5] * 3, [0.25] * 3, "config"), torch.device("cpu"))
NUM_CLASSES = 5


class FixedLogits(nn.Module):
    """Returns preset logits (one row per image), whatever the images."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits[:len(images)]


def _probe_batch(seed: int, size: int = 6):
    """uint8 probe views, encoded probe policies and labels, as the labeled loader gives them."""
    rng = np.random.default_rng(seed)
    policies = [CTAugment().sample_policy(rng, probe=True) for _ in range(size)]
    images = torch.from_numpy(rng.integers(0, 256, (size, 3, 8, 8), dtype=np.uint8))
    labels = torch.from_numpy(rng.integers(0, NUM_CLASSES, size))
    return images, torch.from_numpy(encode_policies(policies)), labels


def _logits(seed: int, size: int = 6) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed + 1000).normal(0, 3, (size, NUM_CLASSES))).float()


def test_update_scores_the_probes_and_moves_their_bins():
    augment = CTAugment()
    probe = CTAProbe(augment, PolicySchedule(augment, lag=2), INPUTS)
    images, policies, labels = _probe_batch(0)
    weak = torch.zeros_like(images)
    (labeled, probe_batch) = CTAProbe.split(([weak, images, policies], labels))
    assert labeled[0] is weak and probe_batch[0] is images and probe_batch[2] is labels

    model = FixedLogits(_logits(0))
    probe.update(model, None, probe_batch, step=1)

    scores = probe_proximities(model, INPUTS.images(images), labels)
    expected = CTAugment.proximity(F.softmax(_logits(0).double(), dim=1).numpy(), labels.numpy())
    assert scores.dtype == torch.float32 and np.allclose(scores.numpy(), expected, atol=1e-6)
    reference = CTAugment()
    reference.update_many(decode_policies(policies.numpy()), scores.double().numpy())
    assert np.array_equal(augment.flat_rates(), reference.flat_rates())
    assert not np.array_equal(augment.flat_rates(), CTAugment().flat_rates())
    assert probe.schedule.newest_step == 1
    assert np.array_equal(probe.schedule.state_dict()["rates"][-1].numpy(), augment.flat_rates())
    weights = probe.op_weights()
    assert len(weights) == 19 and all(name.startswith("ctaugment/") for name in weights)


def test_probe_changes_no_batchnorm_buffer_nor_gradient_nor_mode():
    torch.manual_seed(0)
    model = WideResNet(num_classes=NUM_CLASSES, depth=10, widen_factor=1, bn_momentum=0.5)
    ema = ModelEMA(model, 0.9)
    images = INPUTS.images(torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8))
    F.cross_entropy(model(images), torch.arange(8) % NUM_CLASSES).backward()  # grads, BN stats
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    ema_buffers = {name: b.clone() for name, b in ema.module.named_buffers()}
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}

    augment = CTAugment()
    probe = CTAProbe(augment, PolicySchedule(augment, lag=0), INPUTS)
    probe.update(model, None, _probe_batch(1, size=8)[:2] + (torch.arange(8) % NUM_CLASSES,), step=1)
    probe.update(model, ema, _probe_batch(2, size=8)[:2] + (torch.arange(8) % NUM_CLASSES,), step=2)

    assert model.training and not ema.module.training
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, buffers[name]), name
    for name, buffer in ema.module.named_buffers():
        assert torch.equal(buffer, ema_buffers[name]), name
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter.grad, grads[name]), name
    assert all(p.grad is None for p in ema.module.parameters())
    assert probe.schedule.newest_step == 2


def _rank_main(rank: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    try:
        augment = CTAugment()
        probe = CTAProbe(augment, PolicySchedule(augment, lag=4), INPUTS, DistEnv(rank=rank, world_size=2))
        for step in range(1, 4):
            seed = 10 * step + rank  # every rank probes other images with other policies
            probe.update(FixedLogits(_logits(seed)), None, _probe_batch(seed), step)
        np.save(Path(folder) / f"rank{rank}.npy", augment.flat_rates())
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_hold_identical_rates_from_all_probes(tmp_path):
    mp.spawn(_rank_main, args=(str(tmp_path),), nprocs=2, join=True)
    rates = [np.load(tmp_path / f"rank{rank}.npy") for rank in (0, 1)]
    assert np.array_equal(rates[0], rates[1])

    reference = CTAugment()  # one process applying both ranks' probes, rank 0 first
    for step in range(1, 4):
        for rank in (0, 1):
            images, policies, labels = _probe_batch(10 * step + rank)
            scores = probe_proximities(FixedLogits(_logits(10 * step + rank)), INPUTS.images(images), labels)
            reference.update_many(decode_policies(policies.numpy()), scores.double().numpy())
    assert np.array_equal(rates[0], reference.flat_rates())
