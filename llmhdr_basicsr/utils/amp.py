"""Mixed precision (``train.amp``) for the training step: option parsing, the finite check and the skipped-step count.

With ``train.amp: bf16`` or ``fp16`` the forward passes run under ``torch.autocast`` on the GPU. Every optimizer has
its own ``torch.amp.GradScaler`` (fp16 only; bf16 needs none), ``update()``d once per step of that optimizer: a
scale shared by the generators' and the discriminators' optimizers would be halved by an overflow of either and
updated twice per iteration, coupling two losses of very different magnitude.

A step under AMP whose loss or (unscaled) gradients are not finite is *skipped* -- no weight changes, the fp16 scale
backs off -- and counted (:class:`SkippedSteps`, logged as ``amp_skipped_steps``, tensorboard ``amp/skipped_steps``,
one warning the first time): occasional fp16 overflows are normal while the scale settles. In fp32 a non-finite loss
still stops training (``HDRBaseModel.check_finite``): there it means divergence, not range.

Under DDP the backward pass runs even for a non-finite loss, so every rank takes part in the gradient all-reduce;
the averaged gradients are then non-finite on every rank and all ranks skip the same step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from basicsr.utils import get_root_logger

AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}
FP32 = (None, False, 'none', 'fp32')


def parse_amp(value, device: torch.device) -> torch.dtype | None:
    """``train.amp`` -> the autocast dtype, or None for fp32.

    Args:
        value: None / False / ``'none'`` / ``'fp32'`` (fp32, the default), ``'bf16'`` or ``'fp16'``.
        device: the model's device; autocast is used on CUDA only (elsewhere: one warning, fp32).

    Raises:
        ValueError: any other value.
    """
    if value in FP32:
        return None
    if value not in AMP_DTYPES:
        raise ValueError(f'train.amp must be one of bf16, fp16, fp32 (or none); got {value!r}')
    if device.type != 'cuda':
        get_root_logger().warning(f'train.amp={value} needs a GPU; training in fp32 on {device}.')
        return None
    return AMP_DTYPES[value]


def grads_finite(params: Iterable[torch.nn.Parameter]) -> bool:
    """True when every existing gradient of ``params`` is finite (one device sync)."""
    flags = [torch.isfinite(p.grad).all() for p in params if p.grad is not None]
    return bool(torch.stack(flags).all()) if flags else True


def optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    return [p for group in optimizer.param_groups for p in group['params']]


class SkippedSteps:
    """Counter of the optimizer steps skipped under AMP because of a non-finite loss or gradient.

    Attributes:
        count: skipped steps so far (all optimizers together).
    """

    def __init__(self) -> None:
        self.count = 0
        self._warned = False

    def allow(self, finite: bool, what: str, current_iter: int) -> bool:
        """Whether the step of ``what`` (e.g. ``'optimizer_g'``) may be taken; a non-finite one is counted and, the
        first time, warned about."""
        if finite:
            return True
        self.count += 1
        if not self._warned:
            self._warned = True
            get_root_logger().warning(
                f'AMP: non-finite loss or gradients for {what} at iteration {current_iter}; that optimizer step is '
                'skipped (counted as amp/skipped_steps; this warning is shown once). A steadily growing count '
                'means divergence: lower the learning rate or train in fp32.'
            )
        return False

    def state_dict(self) -> dict:
        return {'count': self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count = int(state.get('count', 0))
