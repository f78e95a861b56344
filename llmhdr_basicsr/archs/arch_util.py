"""Shared building blocks of the llmhdr_basicsr architectures.

- :func:`make_norm` / :func:`conv_norm_act`: conv + norm + LeakyReLU(0.2) blocks (CycleGAN / U-Net conventions).
- :func:`init_weights`: CycleGAN's ``normal`` initialisation, N(0, 0.02).
- :class:`ConvLSTMCell`: the convolutional LSTM of the feedback state (``docs/method.md``).
- :class:`FiLM`: feature-wise affine modulation from a guidance vector, initialised to the identity.
- :func:`pad_to_multiple` / :func:`reflect_pad` / :func:`count_parameters`: size handling and bookkeeping.
- :func:`accepted_kwargs`: call any architecture (ours or BasicSR's) with the keyword arguments it takes.
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F
from torch import nn

#: Normalisation layers understood by :func:`make_norm`.
NORM_TYPES = ('instance', 'batch', 'none')


def make_norm(norm: str, num_ch: int) -> nn.Module:
    """Normalisation layer by name.

    Args:
        norm: ``'instance'`` (InstanceNorm2d without affine parameters and running statistics, CycleGAN's default),
            ``'batch'`` (BatchNorm2d with affine parameters) or ``'none'`` (identity).
        num_ch: number of channels.

    Returns:
        The layer (an ``nn.Identity`` for ``'none'``).
    """
    if norm == 'instance':
        return nn.InstanceNorm2d(num_ch, affine=False, track_running_stats=False)
    if norm == 'batch':
        return nn.BatchNorm2d(num_ch)
    if norm == 'none':
        return nn.Identity()
    raise ValueError(f'norm must be one of {NORM_TYPES}, got {norm!r}')


def conv_norm_act(
    in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, norm: str = 'instance'
) -> nn.Sequential:
    """``Conv2d(k, stride, padding k//2, bias) -> norm -> LeakyReLU(0.2)``.

    The conv keeps its bias with instance norm or none, and drops it with batch norm (CycleGAN's ``use_bias`` rule).
    """
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, bias=norm != 'batch'),
        make_norm(norm, out_ch),
        nn.LeakyReLU(0.2, inplace=True),
    )


def init_weights(module: nn.Module, std: float = 0.02) -> nn.Module:
    """CycleGAN ``init_type='normal'``: conv / transposed-conv / linear weights ~ N(0, std), biases 0; affine
    norm weights ~ N(1, std), biases 0. Works on spectral-norm parametrised layers too (it draws the original weight).

    Call it once on the whole network, then apply any special initialisation (zero heads, identity FiLM) after it.

    Args:
        module: the network (modified in place).
        std: standard deviation (0.02 as CycleGAN and pix2pix).

    Returns:
        ``module``.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)
    return module


class ConvLSTMCell(nn.Module):
    """Convolutional LSTM cell (Shi et al. 2015) without peepholes.

    One ``k x k`` conv on ``concat(x, h)`` gives the input, forget, output and candidate gates:
    ``c' = sigmoid(f) c + sigmoid(i) tanh(g)``, ``h' = sigmoid(o) tanh(c')``. A missing state means ``h = c = 0``;
    then only the input half of the conv is evaluated (the hidden half would multiply zeros).

    Args:
        in_ch: channels of the input ``x``.
        hidden_ch: channels of ``h`` and ``c``.
        kernel_size: odd conv size (3 in the generator).
        forget_bias: initial bias of the forget gate (1.0 keeps the cell state by default); applied by
            :meth:`reset_forget_bias`, which the owner calls after :func:`init_weights`.
    """

    def __init__(self, in_ch: int, hidden_ch: int, kernel_size: int = 3, forget_bias: float = 1.0) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f'ConvLSTMCell: kernel_size must be odd, got {kernel_size}')
        self.in_ch, self.hidden_ch, self.forget_bias = in_ch, hidden_ch, forget_bias
        self.conv = nn.Conv2d(in_ch + hidden_ch, 4 * hidden_ch, kernel_size, padding=kernel_size // 2)
        self.reset_forget_bias()

    def reset_forget_bias(self) -> None:
        """Set the forget-gate bias (the second quarter of the conv bias) to ``forget_bias``."""
        with torch.no_grad():
            self.conv.bias[self.hidden_ch : 2 * self.hidden_ch].fill_(self.forget_bias)

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One step.

        Args:
            x: ``(N, in_ch, h, w)`` features.
            state: ``(h, c)``, each ``(N, hidden_ch, h, w)``, or None for zeros.

        Returns:
            ``(h', (h', c'))``, each ``(N, hidden_ch, h, w)``; ``h'`` in (-1, 1).
        """
        if state is None:
            w = self.conv.weight[:, : self.in_ch]
            gates = F.conv2d(x, w, self.conv.bias, padding=self.conv.padding)
            c = None
        else:
            h, c = state
            gates = self.conv(torch.cat([x, h], dim=1))
        i, f, o, g = gates.chunk(4, dim=1)
        new_c = torch.sigmoid(i) * torch.tanh(g)
        if c is not None:
            new_c = new_c + torch.sigmoid(f) * c
        new_h = torch.sigmoid(o) * torch.tanh(new_c)
        return new_h, (new_h, new_c)


class FiLM(nn.Module):
    """Feature-wise linear modulation ``f * (1 + gamma) + beta`` from a guidance vector (Perez et al. 2018).

    ``(gamma, beta) = MLP(e)`` with ``MLP = Linear(dim, hidden) -> LeakyReLU(0.2) -> Linear(hidden, 2 C)``. The last
    layer is zero-initialised (:meth:`reset_identity`), so an untrained FiLM is exactly the identity.

    Args:
        guidance_dim: length of the guidance vector ``e``.
        num_ch: channels ``C`` of the modulated features.
        hidden: width of the MLP's hidden layer.
    """

    def __init__(self, guidance_dim: int, num_ch: int, hidden: int) -> None:
        super().__init__()
        self.guidance_dim = guidance_dim
        self.mlp = nn.Sequential(
            nn.Linear(guidance_dim, hidden), nn.LeakyReLU(0.2, inplace=True), nn.Linear(hidden, 2 * num_ch)
        )
        self.reset_identity()

    def reset_identity(self) -> None:
        """Zero the last layer: gamma = beta = 0."""
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, feat: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """Modulate ``feat``.

        Args:
            feat: ``(N, C, h, w)`` features.
            guidance: ``(N, guidance_dim)`` float vector (e.g. concatenated CLIP embeddings).

        Returns:
            ``(N, C, h, w)``.
        """
        if guidance.dim() != 2 or guidance.size(0) != feat.size(0) or guidance.size(1) != self.guidance_dim:
            raise ValueError(
                f'FiLM: guidance must be (N={feat.size(0)}, guidance_dim={self.guidance_dim}), '
                f'got {tuple(guidance.shape)}'
            )
        gamma, beta = self.mlp(guidance.to(feat.dtype)).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        return feat * (1.0 + gamma) + beta


def pad_to_multiple(
    x: torch.Tensor, multiple: int, min_size: int = 0, mode: str = 'replicate'
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad the bottom/right of ``x`` so that H and W are multiples of ``multiple`` and at least ``min_size``.

    Args:
        x: ``(N, C, H, W)``.
        multiple: e.g. 8 for three 2x down-samplings.
        min_size: smallest padded size per dimension.
        mode: ``F.pad`` mode; ``'reflect'`` goes through :func:`reflect_pad`, so it works for pads larger than the
            image too (a 5 x 7 input padded to 64 x 64).

    Returns:
        ``(padded, (H, W))``; crop back with ``y[..., :H, :W]``.
    """
    h, w = x.shape[-2:]
    ph = max(-(-h // multiple) * multiple, -(-min_size // multiple) * multiple) - h
    pw = max(-(-w // multiple) * multiple, -(-min_size // multiple) * multiple) - w
    if ph or pw:
        x = reflect_pad(x, 0, pw, 0, ph) if mode == 'reflect' else F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


def reflect_pad(x: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
    """``F.pad(x, (left, right, top, bottom), mode='reflect')`` for any pad, however large.

    One reflection can add at most ``size - 1`` pixels to a side; larger pads reflect again (the padded image is
    reflected once more), and a side of 1 pixel, which cannot reflect, is replicated.

    Args:
        x: ``(N, C, H, W)``.
        left, right, top, bottom: non-negative pads of each side.

    Returns:
        ``(N, C, H + top + bottom, W + left + right)``.
    """
    pads = [left, right, top, bottom]
    while any(pads):
        h, w = x.shape[-2:]
        if min(h, w) < 2:  # a 1-pixel side has nothing to reflect
            return F.pad(x, tuple(pads), mode='replicate')
        step = [min(pads[0], w - 1), min(pads[1], w - 1), min(pads[2], h - 1), min(pads[3], h - 1)]
        x = F.pad(x, tuple(step), mode='reflect')
        pads = [p - s for p, s in zip(pads, step)]
    return x


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def accepted_kwargs(net: nn.Module, kwargs: dict) -> dict:
    """The entries of ``kwargs`` that ``net.forward`` accepts, for calling any architecture the same way.

    Our generators take ``maps=`` (perception gates), ``return_all=`` (every feedback iteration), ``guidance=`` and
    ``detach_curve=``; BasicSR's (``RRDBNet``, ``SwinIR``, ...) take the input only. A ``forward`` with ``**kwargs``
    gets everything; (Distributed)DataParallel wrappers are looked through.
    """
    bare = (
        getattr(net, 'module', net) if isinstance(net, nn.DataParallel | nn.parallel.DistributedDataParallel) else net
    )
    names = _forward_parameters(type(bare))
    return dict(kwargs) if names is None else {k: v for k, v in kwargs.items() if k in names}


@functools.cache
def _forward_parameters(cls: type) -> frozenset[str] | None:
    params = inspect.signature(cls.forward).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params)
