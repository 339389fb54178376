"""WideResNet: sizes, shapes, BatchNorm/activation settings and the pre-activation wiring."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fixmatch.models import WideResNet
from fixmatch.models.wide_resnet import PreActBlock


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def expected_parameters(num_classes, depth, k, in_channels=3, num_stages=3) -> int:
    """Parameter count of the official architecture, from its description alone."""
    n = (depth - num_stages - 1) // (2 * num_stages)
    total = in_channels * 16 * 9  # stem conv, no bias
    c_in = 16
    for s in range(num_stages):
        width = 16 * k * 2**s
        for i in range(n):
            cin = c_in if i == 0 else width
            total += 2 * cin + 9 * cin * width  # BN1 + conv1
            total += 2 * width + 9 * width * width  # BN2 + conv2
            total += cin * width if cin != width else 0  # 1x1 projection
        c_in = width
    return total + 2 * c_in + c_in * num_classes + num_classes  # head BN + linear


@pytest.mark.parametrize(
    "num_classes, depth, k, paper_count",
    [(10, 28, 2, 1.47e6), (100, 28, 8, 23.4e6)],
    ids=["wrn-28-2", "wrn-28-8"],
)
def test_parameter_count_matches_paper(num_classes, depth, k, paper_count):
    count = count_parameters(WideResNet(num_classes, depth=depth, widen_factor=k))
    assert count == expected_parameters(num_classes, depth, k), f"got {count:,}"
    assert abs(count - paper_count) / paper_count < 0.005, f"got {count:,}"


def test_parameter_count_small_and_stl10():
    wrn_10_1 = count_parameters(WideResNet(10, depth=10, widen_factor=1))
    assert wrn_10_1 == expected_parameters(10, 10, 1) and wrn_10_1 < 100_000, f"{wrn_10_1:,}"
    wrn_37_2 = count_parameters(WideResNet(10, depth=37, num_stages=4))
    assert wrn_37_2 == expected_parameters(10, 37, 2, num_stages=4), f"{wrn_37_2:,}"


@pytest.mark.parametrize(
    "kwargs, image_shape",
    [
        (dict(num_classes=10), (3, 32, 32)),
        (dict(num_classes=7, in_channels=1), (1, 8, 8)),
        (dict(num_classes=10, depth=37, num_stages=4), (3, 96, 96)),
    ],
    ids=["rgb-32", "gray-8", "wrn-37-2-96"],
)
def test_output_shape(kwargs, image_shape):
    model = WideResNet(**kwargs)
    logits = model(torch.randn(2, *image_shape))
    assert logits.shape == (2, kwargs["num_classes"])
    assert torch.isfinite(logits).all()


def test_train_mode_backward_reaches_every_parameter():
    model = WideResNet(5, depth=10, widen_factor=1).train()
    model(torch.randn(4, 3, 16, 16)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize(
    "depth, num_stages, valid",
    [(27, 3, "10, 16, 22, 28"), (28, 4, "13, 21, 29, 37"), (4, 3, "10, 16")],
)
def test_invalid_depth_message(depth, num_stages, valid):
    with pytest.raises(ValueError, match=f"depth={depth} is invalid for num_stages={num_stages}"):
        WideResNet(10, depth=depth, num_stages=num_stages)
    with pytest.raises(ValueError) as error:
        WideResNet(10, depth=depth, num_stages=num_stages)
    assert valid in str(error.value) and "\n" not in str(error.value)


def test_batchnorm_and_leaky_relu_settings():
    model = WideResNet(10, depth=16, widen_factor=2)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 2 * 2 * 3 + 1  # two per block, n=2 blocks, 3 stages, + head
    assert all(m.momentum == 0.001 and m.eps == 1e-3 for m in norms)
    activations = [m for m in model.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(activations) == len(norms)
    assert all(m.negative_slope == 0.1 for m in activations)
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())


def test_only_kernels_are_multidimensional_and_init():
    model = WideResNet(10, depth=10, widen_factor=2)
    kernels = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    for name, parameter in model.named_parameters():
        assert (parameter.ndim > 1) == (id(parameter) in kernels), name
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    assert torch.all(model.fc.bias == 0)
    # He fan-out: std = gain / sqrt(9 * out_channels) on the widest 3x3 conv.
    weight = model.stages[2][0].conv2.weight
    expected_std = (2 / (1 + 0.1**2)) ** 0.5 / (9 * weight.shape[0]) ** 0.5
    assert abs(weight.std().item() / expected_std - 1) < 0.05


def record_inputs(module: nn.Module, store: list):
    return module.register_forward_pre_hook(lambda _m, args: store.append(args[0].clone()))


@pytest.mark.parametrize("widen_factor", [1, 2], ids=["identity-stem", "projection-stem"])
def test_every_block_convolves_the_activated_input(widen_factor):
    torch.manual_seed(0)
    model = WideResNet(10, depth=16, widen_factor=widen_factor).eval()
    for m in model.modules():  # non-trivial BatchNorm so activated != raw
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-1, 1)
    blocks = [m for m in model.modules() if isinstance(m, PreActBlock)]
    assert len(blocks) == 6
    raw, conv_in, shortcut_in = [], [], []
    for block in blocks:
        record_inputs(block, raw)
        record_inputs(block.conv1, conv_in)
        record_inputs(block.shortcut, shortcut_in)
    with torch.no_grad():
        model(torch.randn(2, 3, 16, 16))
        for i, block in enumerate(blocks):
            activated = F.leaky_relu(block.bn1(raw[i]), 0.1)
            assert not torch.allclose(activated, raw[i])
            torch.testing.assert_close(conv_in[i], activated, msg=f"block {i}: conv1 input")
            # Only the network's first block activates before the residual.
            expected = activated if i == 0 else raw[i]
            torch.testing.assert_close(shortcut_in[i], expected, msg=f"block {i}: shortcut")
    assert blocks[0].activate_before_residual
    assert not any(b.activate_before_residual for b in blocks[1:])
    # Stages 2 and 3 open with a strided 1x1 projection.
    for block in (blocks[2], blocks[4]):
        assert isinstance(block.shortcut, nn.Conv2d) and block.shortcut.stride == (2, 2)
