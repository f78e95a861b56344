"""SingleHDRUNet: the HDR-estimation U-Net of SingleHDR(W) (a peer of the paper's table).

Reference: P.-H. Le, Q. Le, R. Nguyen and B.-S. Hua, "Single-Image HDR Reconstruction by Multi-Exposure Generation",
IEEE/CVF Winter Conference on Applications of Computer Vision (WACV) 2023, arXiv:2210.15897. The method is weakly
supervised: it never sees HDR ground truth, only pairs of differently exposed LDRs of a scene. A first network maps
the LDR to an irradiance estimate ``E`` (inverting the camera response); ``E`` times an exposure ratio goes through
one of two further networks (up- / down-exposure, which re-apply a camera response and hallucinate the lost detail)
to render the other exposure; a representation loss ties the ``E`` of both exposures (``E_1 = E_2 dt_1 / dt_2``), a
reconstruction and a perceptual loss the rendered images. The final HDR is merged from generated brackets. This class
is the first network, the one that turns one LDR into (linear) HDR; the paper's text was available to us only as its
abstract, so the structure below follows the authors' released code (github.com/VinAIResearch/single_image_hdr:
``src/models/ednet.py``, ``HDREncNet`` with the defaults of its argument parser and README command;
``src/architectures/base_unet.py``), re-implemented.

Structure (``F = num_feat`` = 16, ``C_i = min(2^i F, max_feat)``, ``max_feat`` = 256, ``num_levels`` = 7)::

    m = 1 - max(under, over)   well-exposedness mask of the input's luma Y = 0.299 R + 0.587 G + 0.114 B:
        under = max(0, 1 - tau - Y) / (1 - tau),  over = max(0, Y - tau) / (1 - tau),  tau = 0.95
    encoder: e_0 = block(x * m)   (3 -> C_0);  e_i = block(maxpool2(e_{i-1}))  (C_{i-1} -> C_i), i = 1 .. 6
    decoder: d = e_6; for i = 6 .. 1: d = block(cat(e_{i-1}, up(d)))   (up keeps the channels; the block maps to
             C_{i-2}, and to its own width at the last step)
    block = [conv3x3 (no bias) + BN + Mish] x 2;  up = conv1x1(c -> 4c, no bias, ICNR init) + BN + Mish + PixelShuffle
    E = ReLU(x + residual_scale * tanh(conv1x1(d)))            global residual on the (unmasked) input

Domains. Input: ``(N, 3, H, W)`` display-referred LDR in [0, 1]. Output (``out_domain = 'linear'``): ``E``,
``(N, 3, H, W)`` in ``[0, 1 + residual_scale]``: the irradiance at the input's own exposure, linear in exposure by
construction of the training losses (the representation loss scales ``E`` with the exposure ratio); a well-exposed
pixel's ``E`` is the inverse camera response of its value (<= 1), so the LDR's white is at ~1 and a clipped pixel
can reach ``1 + residual_scale`` (2 with the paper's ``residual_scale = 1``: one stop of highlight range, the rest of
the paper's range comes from the generated exposures, not part of this class). ``residual_scale`` larger than 1 lets
the U-Net alone cover more of this project's model domain (``2^headroom - 1`` for the full range).

Any size: reflect-padded (:func:`~llmhdr_basicsr.archs.arch_util.pad_to_multiple`) to a multiple of
``2^(num_levels - 1)`` (64) and at least twice that (so the deepest level is at least 2 x 2 and batch norm has
statistics at batch size 1), cropped back.

Parameters of the default configuration (F = 16, max_feat = 256, 7 levels): 6,916,131, the count of the released
``HDREncNet`` (same layer list). Paper's count: not verified -- only the paper's abstract was readable here, and it
states none.

Inferred (not in the text available to us): all of the structure above is read from the released code; its
``--shortcut`` and ``--weights_init`` flags are off by default (and in the README command), so there are no learned
shortcuts and the weights keep PyTorch's default initialisation, with ICNR for the sub-pixel convs (as released).
Training-time details (batch norm synchronised over GPUs, losses) are outside the architecture.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from .arch_util import pad_to_multiple

#: BT.601 luma weights of the released mask (``DrTMODataset.rgb_to_y``).
LUMA_601 = (0.299, 0.587, 0.114)


def well_exposed_mask(x: torch.Tensor, tau: float = 0.95) -> torch.Tensor:
    """``1 - max(under, over)`` of the luma ``Y``: 1 where ``1 - tau <= Y <= tau``, falling linearly to 0 at black and
    at white.

    Args:
        x: ``(N, 3, H, W)`` display-referred LDR in [0, 1].
        tau: threshold (0.95 as released).

    Returns:
        ``(N, 1, H, W)`` in [0, 1].
    """
    w = x.new_tensor(LUMA_601).view(1, 3, 1, 1)
    y = (x * w).sum(dim=1, keepdim=True)
    under = (1.0 - tau - y).clamp(min=0.0) / (1.0 - tau)
    over = (y - tau).clamp(min=0.0) / (1.0 - tau)
    return (1.0 - torch.maximum(under, over)).clamp(0.0, 1.0)


def _block(in_ch: int, out_ch: int) -> nn.Sequential:
    """Encoder / decoder block: two conv3x3 (no bias) + BatchNorm + Mish."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.Mish(inplace=True),
        nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.Mish(inplace=True),
    )


class SubPixelUp(nn.Module):
    """2x up-sampling: conv1x1 (``c -> 4c``, no bias) + BN + Mish + PixelShuffle, ICNR-initialised.

    ICNR (Aitken et al. 2017): the four sub-pixel filters of every output channel start equal, so the untrained layer
    up-samples like nearest neighbour (no checkerboard).
    """

    def __init__(self, num_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(num_ch, 4 * num_ch, 1, bias=False)
        self.post = nn.Sequential(nn.BatchNorm2d(4 * num_ch), nn.Mish(inplace=True), nn.PixelShuffle(2))
        sub = torch.empty(num_ch, num_ch, 1, 1)
        nn.init.kaiming_uniform_(sub, a=math.sqrt(5))  # PyTorch's default conv initialisation, as released
        with torch.no_grad():
            self.conv.weight.copy_(sub.repeat_interleave(4, dim=0))  # channel 4c + k feeds sub-pixel k of channel c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, c, h, w)`` -> ``(N, c, 2h, 2w)``."""
        return self.post(self.conv(x))


@ARCH_REGISTRY.register()
class SingleHDRUNet(nn.Module):
    """SingleHDR(W)'s irradiance U-Net: masked input, 7-level BN-Mish U-Net, tanh residual (module docstring).

    Args:
        num_feat: ``F``, width of the first level (16 as released).
        max_feat: cap of the level widths; None = ``16 * num_feat`` (256 at the released 16).
        num_levels: U-Net levels (7: six 2x poolings).
        tau: threshold of the well-exposedness mask (0.95).
        mask_input: multiply the input by the mask before the encoder (as released); the residual uses the unmasked
            input.
        residual_scale: amplitude of the tanh residual (1 as released: ``E`` in [0, 2]).
        zero_init_residual: start the residual head at zero, so the untrained network is ``E = x`` (off as
            released, where PyTorch's default initialisation of the head gives a residual of about
            ``0.5 * residual_scale`` in magnitude at the start; pixels that start below zero sit behind the output
            ReLU without gradient).
    """

    out_domain = 'linear'

    def __init__(
        self,
        num_feat: int = 16,
        max_feat: int | None = None,
        num_levels: int = 7,
        tau: float = 0.95,
        mask_input: bool = True,
        residual_scale: float = 1.0,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if num_levels < 2:
            raise ValueError(f'SingleHDRUNet: num_levels must be >= 2, got {num_levels}')
        if not 0.5 <= tau < 1.0:
            raise ValueError(f'SingleHDRUNet: tau must lie in [0.5, 1), got {tau}')
        if residual_scale <= 0:
            raise ValueError(f'SingleHDRUNet: residual_scale must be > 0, got {residual_scale}')
        max_feat = 16 * num_feat if max_feat is None else max_feat
        self.num_levels, self.tau, self.mask_input = num_levels, float(tau), mask_input
        self.residual_scale = float(residual_scale)
        chans = [min(num_feat * 2**i, max_feat) for i in range(num_levels)]
        self.enc = nn.ModuleList(_block(3 if i == 0 else chans[i - 1], chans[i]) for i in range(num_levels))
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        cur = chans[-1]
        for i in range(num_levels - 1, 0, -1):  # decoder level i: up, cat with e_{i-1}, block
            out = chans[i - 2] if i >= 2 else cur
            self.up.append(SubPixelUp(cur))
            self.dec.append(_block(cur + chans[i - 1], out))
            cur = out
        self.head = nn.Conv2d(cur, 3, 1)
        if zero_init_residual:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Estimate the irradiance ``E`` of the input.

        Args:
            x: ``(N, 3, H, W)`` float32 display-referred LDR in [0, 1], any H, W.

        Returns:
            ``(N, 3, H, W)`` linear HDR in ``[0, 1 + residual_scale]`` (see the module docstring).
        """
        if x.dim() != 4 or x.size(1) != 3:
            raise ValueError(f'SingleHDRUNet: expected input (N, 3, H, W), got {tuple(x.shape)}')
        multiple = 2 ** (self.num_levels - 1)
        xp, (h, w) = pad_to_multiple(x, multiple, min_size=2 * multiple, mode='reflect')
        feat = xp * well_exposed_mask(xp, self.tau) if self.mask_input else xp
        skips = [self.enc[0](feat)]
        for enc in self.enc[1:]:
            skips.append(enc(F.max_pool2d(skips[-1], 2)))
        d = skips[-1]
        for up, dec, skip in zip(self.up, self.dec, skips[-2::-1]):
            d = dec(torch.cat([skip, up(d)], dim=1))
        e = F.relu(xp + self.residual_scale * torch.tanh(self.head(d)))  # E = ReLU(I + E~)
        return e[..., :h, :w]
