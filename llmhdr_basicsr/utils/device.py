"""Device choice for the command-line tools: ``'auto'`` / ``'cpu'`` / ``'cuda'`` / ``'cuda:N'``, and the fp16 guard.

CPU is a first-class target: ``'auto'`` falls back to the CPU silently, an explicit CUDA request on a
machine without CUDA is an error that says so (rather than a deep ``AssertionError`` from torch), and half precision
is refused on the CPU with a message instead of failing later with ``"slow_conv2d_cpu" not implemented for 'Half'``
(Real-ESRGAN#306 and friends). fp32 is always the default.
"""

from __future__ import annotations

import torch

#: Spellings accepted by :func:`select_device` besides ``'cuda:N'``.
DEVICE_CHOICES = ('auto', 'cpu', 'cuda')


def select_device(device: str | torch.device = 'auto') -> torch.device:
    """Turn a user's device string into a ``torch.device``, checking that it exists.

    Args:
        device: ``'auto'`` (``cuda:0`` when CUDA is available, else the CPU), ``'cpu'``, ``'cuda'`` (= ``cuda:0``)
            or ``'cuda:N'``; a ``torch.device`` is accepted too.

    Returns:
        The device (CUDA devices always carry an index).

    Raises:
        ValueError: an unknown spelling, a CUDA device on a machine without CUDA, or an index beyond the number of
            visible GPUs. The message names the value and what is available.
    """
    text = str(device).strip().lower()
    if text == 'auto':
        return torch.device('cuda:0') if torch.cuda.is_available() else torch.device('cpu')
    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f'--device {device!r} is not a device; use one of auto, cpu, cuda, cuda:N') from err
    if dev.type == 'cpu':
        return torch.device('cpu')
    if dev.type != 'cuda':
        raise ValueError(f'--device {device!r}: only auto, cpu, cuda and cuda:N are supported')
    if not torch.cuda.is_available():
        raise ValueError(
            f'--device {device!r} asks for CUDA, but torch sees no CUDA device on this machine '
            f'(torch {torch.__version__}, CUDA build: {torch.version.cuda or "no"}); use --device cpu or auto'
        )
    index = 0 if dev.index is None else dev.index
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(f'--device {device!r}: there are only {count} CUDA device(s) (cuda:0 .. cuda:{count - 1})')
    return torch.device('cuda', index)


def check_half(device: torch.device, half: bool) -> torch.dtype:
    """The compute dtype for ``device``: float16 when ``half`` was asked for on a GPU, else float32.

    Args:
        device: the device the network runs on.
        half: whether the user asked for half precision (``--half``).

    Returns:
        ``torch.float16`` or ``torch.float32``.

    Raises:
        ValueError: ``half`` on a non-CUDA device (CPU convolutions have no float16 kernels, and would be slow).
    """
    if not half:
        return torch.float32
    if torch.device(device).type != 'cuda':
        raise ValueError(
            f'--half needs a CUDA GPU; the selected device is {device}. Half precision is refused on the CPU '
            '(no float16 convolution kernels there); drop --half to run in float32.'
        )
    return torch.float16
