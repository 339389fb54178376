"""The pre-activation Wide ResNet of the official FixMatch code (WRN-28-2, WRN-28-8, WRN-37-2).

Mirrors `ResNet.classifier` in google-research/fixmatch `libml/models.py`.
"""

import torch
from torch import nn

# TF's batch_normalization default epsilon, which the official code keeps.
BN_EPS = 1e-3
STEM_WIDTH = 16
BASE_WIDTH = 16
BLOCK_CONVS = 2


def blocks_per_stage(depth: int, num_stages: int) -> int:
    """Number n of residual blocks per stage for a WRN of the given depth.

    The WRN naming (Zagoruyko & Komodakis, 2016) gives depth = 2·n·num_stages +
    num_stages + 1: WRN-28 is 3 stages of n=4, STL-10's WRN-37 is 4 stages of n=4.

    Args:
        depth: total depth of the network, e.g. 28.
        num_stages: number of downsampling stages, e.g. 3 (32 px) or 4 (STL-10, 96 px).

    Returns:
        The number of blocks per stage, at least 1.

    Raises:
        ValueError: if num_stages < 1, or no whole n >= 1 gives `depth`.
    """
    if num_stages < 1:
        raise ValueError(f"model.num_stages={num_stages}: must be at least 1")
    offset, step = num_stages + 1, BLOCK_CONVS * num_stages
    n, remainder = divmod(depth - offset, step)
    if n < 1 or remainder:
        valid = ", ".join(str(offset + step * k) for k in range(1, 5))
        raise ValueError(
            f"model.depth={depth} is invalid for num_stages={num_stages}: depth must be "
            f"{step}·n + {offset} with n >= 1 blocks per stage ({valid}, ...)"
        )
    return n


def conv3x3(in_channels: int, out_channels: int, stride: int) -> nn.Conv2d:
    """A 'same'-padded 3×3 conv without bias: a BatchNorm follows and absorbs any shift.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        stride: 1 keeps the height and width, 2 halves them (rounding up).

    Returns:
        The convolution, zero-padded by 1 pixel on every side.
    """
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class PreActBlock(nn.Module):
    """BN → LeakyReLU → conv3×3(stride) → BN → LeakyReLU → conv3×3, plus a shortcut.

    The residual branch always convolves the activated input. The shortcut takes the raw
    input, except with `activate_before_residual` (first block of the network), where the
    official code reassigns `x0 = x` so the shortcut sees the activated input too.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output; a 1×1 conv shortcut when they or the size change.
        stride: stride of the first conv and of the shortcut (2 halves H and W).
        activate_before_residual: the shortcut takes the activated input (first block only).
        bn_momentum: PyTorch BatchNorm momentum of both BatchNorms.
        leaky_slope: negative slope of both LeakyReLUs.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        activate_before_residual: bool,
        bn_momentum: float,
        leaky_slope: float,
    ) -> None:
        super().__init__()
        self.activate_before_residual = activate_before_residual
        self.bn1 = nn.BatchNorm2d(in_channels, momentum=bn_momentum, eps=BN_EPS)
        self.act1 = nn.LeakyReLU(leaky_slope, inplace=True)
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels, momentum=bn_momentum, eps=BN_EPS)
        self.act2 = nn.LeakyReLU(leaky_slope, inplace=True)
        self.conv2 = conv3x3(out_channels, out_channels, 1)
        if in_channels == out_channels and stride == 1:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual sum of the block for a (N, C, H, W) input.

        Args:
            x: input features, (N, in_channels, H, W); not modified.

        Returns:
            Shortcut plus residual branch, (N, out_channels, H / stride, W / stride) rounded
            up.
        """
        activated = self.act1(self.bn1(x))
        # Every block convolves the activated input; a popular port convolves the raw
        # input in the first block of stages 2 and 3, which the official code never does.
        residual = self.conv2(self.act2(self.bn2(self.conv1(activated))))
        shortcut_input = activated if self.activate_before_residual else x
        return self.shortcut(shortcut_input) + residual


class WideResNet(nn.Module):
    """Wide ResNet with pre-activation blocks, as in the official FixMatch code.

    Stage s has width 16·k·2^s; stage 0 keeps the resolution and every later stage halves
    it. Global average pooling makes the head independent of the input size.
    """

    def __init__(
        self,
        num_classes: int,
        depth: int = 28,
        widen_factor: int = 2,
        in_channels: int = 3,
        num_stages: int = 3,
        bn_momentum: float = 0.001,
        leaky_slope: float = 0.1,
    ) -> None:
        """Build the network and initialise it as the official code does.

        Args:
            num_classes: number of output logits.
            depth: total depth, 2·n·num_stages + num_stages + 1 (28 for 3 stages, 37 for 4).
            widen_factor: k, the width multiplier (2 for CIFAR-10, 8 for CIFAR-100).
            in_channels: channels of the input images (3 for RGB, 1 for grayscale).
            num_stages: number of stages (3 at 32 px, 4 for STL-10's 96 px).
            bn_momentum: PyTorch BatchNorm momentum; 0.001 is the official TF decay 0.999.
            leaky_slope: negative slope of every LeakyReLU (0.1 in the official code).

        Raises:
            ValueError: if depth does not fit num_stages, or a size is not positive.
        """
        super().__init__()
        if num_classes < 1 or widen_factor < 1 or in_channels < 1:
            raise ValueError(
                f"WideResNet: num_classes={num_classes}, widen_factor={widen_factor}, "
                f"in_channels={in_channels} must all be at least 1"
            )
        # bn_momentum 0.001 = 1 - the official TF decay 0.999: running statistics average
        # over ~1000 steps, which the EMA model (evaluated in eval mode) relies on.
        n = blocks_per_stage(depth, num_stages)
        widths = [BASE_WIDTH * widen_factor * 2**s for s in range(num_stages)]
        self.num_features = widths[-1]
        self.stem = conv3x3(in_channels, STEM_WIDTH, 1)
        self.stages = nn.Sequential(
            *(
                self._make_stage(s, n, in_width, width, bn_momentum, leaky_slope)
                for s, (in_width, width) in enumerate(zip([STEM_WIDTH] + widths, widths))
            )
        )
        self.head_bn = nn.BatchNorm2d(self.num_features, momentum=bn_momentum, eps=BN_EPS)
        self.head_act = nn.LeakyReLU(leaky_slope, inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        # No dropout: the official FixMatch runs use dropout=0 for every dataset.
        self.fc = nn.Linear(self.num_features, num_classes)
        self._init_weights(leaky_slope)

    @staticmethod
    def _make_stage(
        index: int, n: int, in_width: int, width: int, bn_momentum: float, leaky_slope: float
    ) -> nn.Sequential:
        blocks = [
            PreActBlock(
                in_width if i == 0 else width,
                width,
                stride=2 if index > 0 and i == 0 else 1,
                activate_before_residual=index == 0 and i == 0,
                bn_momentum=bn_momentum,
                leaky_slope=leaky_slope,
            )
            for i in range(n)
        ]
        return nn.Sequential(*blocks)

    def _init_weights(self, leaky_slope: float) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # Official code: normal, stddev sqrt(2 / (k·k·out_channels)), i.e. He fan-out;
                # the LeakyReLU gain here makes it 0.5 % smaller, a negligible difference.
                nn.init.kaiming_normal_(
                    module.weight, a=leaky_slope, mode="fan_out", nonlinearity="leaky_relu"
                )
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                # Official code: tf.glorot_normal_initializer() kernel, zero bias.
                nn.init.xavier_normal_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, num_classes) for images of shape (N, in_channels, H, W).

        Args:
            x: normalised images, (N, in_channels, H, W), any H and W.

        Returns:
            Unnormalised class scores, (N, num_classes).
        """
        features = self.stages(self.stem(x))
        features = self.head_act(self.head_bn(features))
        return self.fc(torch.flatten(self.pool(features), 1))
