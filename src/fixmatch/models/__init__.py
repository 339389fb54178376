"""Networks and their weight average: the Wide ResNet of FixMatch and its EMA."""

from fixmatch.models.ema import ModelEMA
from fixmatch.models.wide_resnet import WideResNet

__all__ = ["ModelEMA", "WideResNet"]
