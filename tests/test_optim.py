"""Parameter groups, SGD settings and the cos(7πk/16K) schedule."""

import math
from copy import deepcopy

import pytest
import torch
from torch import nn

from fixmatch.config import OptimConfig
from fixmatch.optim import (build_optimizer, build_schedule, cosine_factor, load_optimizer_state,
                            parameter_groups)


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(),
                         nn.Linear(4 * 2 * 2, 10))


def test_weight_decay_reaches_conv_and_linear_weights_only():
    net = small_net()
    optimizer = build_optimizer(net, OptimConfig(weight_decay=5e-4))
    decayed = {id(p) for group in optimizer.param_groups if group["weight_decay"] > 0
               for p in group["params"]}
    assert decayed == {id(net[0].weight), id(net[3].weight)}
    assert all(group["nesterov"] and group["momentum"] == 0.9 and group["lr"] == 0.03
               for group in optimizer.param_groups)
    counted = sum(len(group["params"]) for group in optimizer.param_groups)
    assert counted == len(list(net.parameters()))


def test_schedule_end_points():
    assert cosine_factor(0, 1000, 7 / 16) == 1.0
    assert math.isclose(cosine_factor(1000, 1000, 7 / 16), math.cos(7 * math.pi / 16))
    assert math.isclose(cosine_factor(1000, 1000, 7 / 16), 0.19509, abs_tol=1e-5)
    assert math.isclose(cosine_factor(500, 1000, 7 / 16), math.cos(7 * math.pi / 32))


def test_scheduler_steps_the_learning_rate_per_optimizer_step():
    net = small_net()
    optimizer = build_optimizer(net, OptimConfig())
    schedule = build_schedule(optimizer, total_steps=16, cosine_fraction=7 / 16)
    rates = []
    for _ in range(16):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] == pytest.approx(0.03)
    assert rates[8] == pytest.approx(0.03 * math.cos(7 * math.pi * 8 / (16 * 16)))
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.03 * 0.19509, rel=1e-4)


def test_a_step_with_zero_gradients_shrinks_only_the_decayed_weights():
    net = small_net()
    with torch.no_grad():
        net[1].weight.fill_(2.0)
        net[3].bias.fill_(1.0)
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    optimizer = build_optimizer(net, OptimConfig(weight_decay=0.5))
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    after = dict(net.named_parameters())
    # Coupled decay: g = 0 + wd·w, Nesterov's first update is lr·(g + 0.9·g).
    assert torch.allclose(after["0.weight"], before["0.weight"] * (1 - 0.03 * 0.5 * 1.9))
    assert torch.allclose(after["3.weight"], before["3.weight"] * (1 - 0.03 * 0.5 * 1.9))
    for name in ["1.weight", "1.bias", "3.bias"]:
        assert torch.equal(after[name], before[name]), name


def test_the_fused_update_equals_the_foreach_reference_over_steps():
    torch.manual_seed(0)
    fused_net = small_net()
    reference_net = deepcopy(fused_net)
    fused = build_optimizer(fused_net, OptimConfig(weight_decay=5e-4))
    assert all(group["fused"] for group in fused.param_groups)
    reference = torch.optim.SGD(parameter_groups(reference_net, 5e-4), lr=0.03, momentum=0.9,
                                nesterov=True, foreach=True)
    images = torch.randn(8, 3, 4, 4)
    for _ in range(5):
        for net, optimizer in ((fused_net, fused), (reference_net, reference)):
            optimizer.zero_grad(set_to_none=True)
            net(images).logsumexp(1).mean().backward()
            optimizer.step()
    for (name, p), q in zip(fused_net.named_parameters(), reference_net.parameters()):
        assert torch.allclose(p, q, rtol=1e-6, atol=1e-7), name


def test_loading_a_checkpoint_keeps_this_machines_implementation():
    net = small_net()
    written_elsewhere = torch.optim.SGD(parameter_groups(net, 5e-4), lr=0.01, momentum=0.9,
                                        nesterov=True, foreach=True)
    net(torch.randn(2, 3, 4, 4)).sum().backward()
    written_elsewhere.step()
    optimizer = build_optimizer(net, OptimConfig(weight_decay=5e-4))
    load_optimizer_state(optimizer, written_elsewhere.state_dict())
    assert all(group["fused"] and not group["foreach"] for group in optimizer.param_groups)
    assert optimizer.param_groups[0]["lr"] == 0.01  # what it computes comes from the checkpoint
    # and its groups hold the keys a fresh optimiser's hold, none added (before: capturable=None)
    fresh = build_optimizer(small_net(), OptimConfig(weight_decay=5e-4))
    assert [set(group) for group in optimizer.param_groups] == [set(group) for group in fresh.param_groups]
    momentum = written_elsewhere.state[net[0].weight]["momentum_buffer"]
    assert torch.equal(optimizer.state[net[0].weight]["momentum_buffer"], momentum)
