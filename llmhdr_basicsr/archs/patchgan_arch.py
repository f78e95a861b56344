"""PatchGAN discriminator (CycleGAN / pix2pix ``NLayerDiscriminator``).

The paper does not describe its discriminators (its figure shows only "D_X, D_Y -> Real/Fake"); this is the CycleGAN
reference default, ``netD=basic``, ``n_layers_D=3``, ``ndf=64``, a 70x70 PatchGAN::

    conv4x4 s2 (64)  LReLU 0.2
    conv4x4 s2 (128) + norm + LReLU 0.2
    conv4x4 s2 (256) + norm + LReLU 0.2
    conv4x4 s1 (512) + norm + LReLU 0.2
    conv4x4 s1 (1)                       -> raw scores (no sigmoid; LSGAN / hinge / BCE-with-logits decide)

Parameter count of the defaults (InstanceNorm without affine, all conv biases on as CycleGAN's ``use_bias=True`` for
instance norm): 2,764,737. A 256x256 input gives a 30x30 score map.
"""

from __future__ import annotations

import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from .arch_util import NORM_TYPES, init_weights, make_norm


@ARCH_REGISTRY.register()
class PatchGANDiscriminator(nn.Module):
    """N-layer PatchGAN: one real/fake score per (about 70x70 for 3 layers) receptive field.

    Args:
        num_in_ch: input channels. D_Y sees HDR in the generator's output domain (mu-law-compressed normalised linear
            HDR in [0, 1]); D_X sees display-referred LDR in [0, 1]. 3 for RGB.
        num_feat: channels of the first conv (``ndf``); doubled per stride-2 layer up to ``8 * num_feat``.
        num_layers: number of stride-2 layers (``n_layers_D``; 3 = 70x70 receptive field).
        norm: ``'instance'`` (default), ``'batch'`` or ``'none'``; never applied after the first conv or to the output
            conv. With ``'batch'`` the normalised convs drop their bias (CycleGAN's rule).
        spectral_norm: wrap every conv in spectral normalisation (``torch.nn.utils.parametrizations``); usually with
            ``norm='none'``.
        init_std: std of the N(0, std) weight initialisation (0.02 as CycleGAN).

    Input ``(N, num_in_ch, H, W)`` float32; output ``(N, 1, H', W')`` unbounded scores with
    ``H' = H/2^num_layers - 2`` for H a multiple of ``2^num_layers`` (256 -> 30 with 3 layers).
    """

    def __init__(
        self,
        num_in_ch: int = 3,
        num_feat: int = 64,
        num_layers: int = 3,
        norm: str = 'instance',
        spectral_norm: bool = False,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if norm not in NORM_TYPES:
            raise ValueError(f'PatchGANDiscriminator: norm must be one of {NORM_TYPES}, got {norm!r}')
        if num_layers < 1:
            raise ValueError(f'PatchGANDiscriminator: num_layers must be >= 1, got {num_layers}')
        bias = norm != 'batch'
        layers: list[nn.Module] = [nn.Conv2d(num_in_ch, num_feat, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        ch = num_feat
        for n in range(1, num_layers + 1):
            out_ch = num_feat * min(2**n, 8)
            stride = 2 if n < num_layers else 1  # the last feature layer keeps the resolution (70x70 PatchGAN)
            layers += [
                nn.Conv2d(ch, out_ch, 4, stride, 1, bias=bias),
                make_norm(norm, out_ch),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            ch = out_ch
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.body = nn.Sequential(*layers)
        init_weights(self, init_std)
        if spectral_norm:
            for i, m in enumerate(self.body):
                if isinstance(m, nn.Conv2d):
                    self.body[i] = _spectral_norm(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Score every patch.

        Args:
            x: ``(N, num_in_ch, H, W)`` float, in the domain of the images it judges (see class docstring).

        Returns:
            ``(N, 1, H', W')`` raw scores (no sigmoid).
        """
        return self.body(x)
