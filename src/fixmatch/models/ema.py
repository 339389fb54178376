"""Exponential moving average of a model's weights, the model FixMatch evaluates.

Sohn et al. (2020) report the accuracy of this Polyak average (decay 0.999).
"""

import copy
from typing import List, Optional, Tuple

import torch
from torch import nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel and/or torch.compile wrappers.

    Args:
        model: a module, possibly wrapped (in any nesting) by DDP (`.module`) or
            torch.compile (`._orig_mod`).

    Returns:
        The innermost module, whose parameter and buffer names carry no wrapper prefix.
    """
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(model._modules.get("_orig_mod"), nn.Module):
            # torch.compile's OptimizedModule; checked by attribute so that importing
            # this module does not import torch._dynamo.
            model = model._modules["_orig_mod"]
        else:
            return model


def _tensor_slots(model: nn.Module, kind: str) -> List[Tuple[nn.Module, str]]:
    """(module, name) of each tensor in `model.parameters()` or `.buffers()` order.

    Args:
        model: any module.
        kind: "_parameters" or "_buffers".
    """
    slots, seen = [], set()
    for module in model.modules():
        for name, tensor in getattr(module, kind).items():
            if tensor is not None and id(tensor) not in seen:  # shared tensors count once
                seen.add(id(tensor))
                slots.append((module, name))
    return slots


class ModelEMA:
    """A frozen, eval-mode copy of a model whose weights track the live model's average.

    Parameters are averaged; buffers (BatchNorm running statistics) are copied from the
    live model, as in the official code, whose EMA covers trainable variables only
    (`utils.model_vars`) and reads the live moving statistics.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = False) -> None:
        """Copy the model; create it after the model is on its final device and dtype.

        Args:
            model: the live model, possibly wrapped by DDP or torch.compile.
            decay: weight kept by the average at each update (0.999 in the paper).
            warmup: use min(decay, (1 + t) / (10 + t)) instead of a constant decay.
                The paper has none; short runs want it, since after t updates a
                fraction decay^t of the random initialisation remains (0.37 at 1000).

        Raises:
            ValueError: if decay is outside [0, 1].
        """
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"ema decay={decay}: must lie in [0, 1] (the paper uses 0.999)")
        self.decay = decay
        self.warmup = warmup
        self.module = copy.deepcopy(unwrap_model(model)).eval()
        self.module.requires_grad_(False)
        self._params = list(self.module.parameters())
        self._buffers = list(self.module.buffers())
        self._live_source: Optional[nn.Module] = None  # see _live_tensors
        self._param_slots: List[Tuple[nn.Module, str]] = []
        self._buffer_slots: List[Tuple[nn.Module, str]] = []

    def decay_at(self, step: int) -> float:
        """The decay used by the update at `step`.

        Args:
            step: optimizer steps done before this update's step, i.e. 0 for the update
                that follows the first optimizer step.

        Returns:
            `decay`, or min(decay, (1 + step) / (10 + step)) with warm-up (0.1 at step 0).
        """
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold the live model into the average; call after every optimizer step.

        Args:
            model: the live model (same architecture, possibly wrapped).
            step: index of the optimizer step just taken, counted from 0; it only
                matters with warm-up (see `decay_at`).

        Raises:
            ValueError: if the live model's parameters or buffers do not match the copy's.
        """
        live_params, live_buffers = self._live_tensors(model)
        # ema <- decay·ema + (1 - decay)·param, as one fused multi-tensor kernel.
        torch._foreach_lerp_(self._params, live_params, 1.0 - self.decay_at(step))
        if self._buffers:
            torch._foreach_copy_(self._buffers, live_buffers)

    def _live_tensors(self, model: nn.Module) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        # Walking the module tree costs more host time than the update's kernels on a GPU,
        # so where each live tensor sits (module, name) is found once per live model; reading
        # the slots every update still sees tensors that were replaced (e.g. moved buffers).
        source = unwrap_model(model)
        if self._live_source is not source:
            self._param_slots = _tensor_slots(source, "_parameters")
            self._buffer_slots = _tensor_slots(source, "_buffers")
            if len(self._param_slots) != len(self._params) or len(self._buffer_slots) != len(self._buffers):
                raise ValueError("ModelEMA.update: the model differs from the one the EMA copied")
            self._live_source = source
        params = [module._parameters[name] for module, name in self._param_slots]
        buffers = [module._buffers[name] for module, name in self._buffer_slots]
        return params, buffers

    def state_dict(self) -> dict:
        """The averaged module's state dict (parameters and copied buffers)."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore the averaged module from `state_dict()` output (strict key match).

        Args:
            state: a state dict of the averaged module.

        Raises:
            RuntimeError: when a key is missing or unexpected, or a shape differs (torch's
                strict load).
        """
        self.module.load_state_dict(state)
