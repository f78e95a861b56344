"""ExpandNet: three-branch CNN for LDR -> HDR expansion without up-sampling layers (a peer of the paper's table).

Reference: D. Marnerides, T. Bashford-Rogers, J. Hatchett and K. Debattista, "ExpandNet: A Deep Convolutional Neural
Network for High Dynamic Range Expansion from Low Dynamic Range Content", Computer Graphics Forum 37(2)
(Eurographics 2018). Re-implemented from the architecture section of the paper (Sec. 3: local, dilation and global
branches, their fusion, SELU activations); the authors' released PyTorch code (github.com/dmarnerides/hdr-expandnet,
``model.py``) was read to confirm layer order and padding.

Structure (``F = num_feat``, 64 in the paper; every conv is followed by SELU except those marked *linear*)::

    local branch (receptive field 5 x 5):      conv3x3(3->F), conv3x3(F->2F)                          -> 2F ch
    dilation branch (receptive field 17 x 17): 4 x conv3x3 with dilation 2 (3->F, F->F, ...), last linear -> F ch
    global branch:  the input resized (bilinear) to global_size x global_size (256 in the paper),
                    k = log2(global_size / 4) stride-2 conv3x3 (k = 6 at 256: 256 -> 4), then a 4 x 4 valid
                    conv, linear -> (N, F, 1, 1), broadcast to every pixel                              -> F ch
    fusion:         concat (4F ch) -> conv1x1(4F->F) SELU -> conv1x1(F->3) -> sigmoid

Domains. Input: ``(N, 3, H, W)`` display-referred LDR in [0, 1] (the paper trains on LDRs made by random tone-mapping
operators from HDR images; an sRGB photograph is of that kind). Output (``out_domain = 'linear'``): linear HDR
``out_scale * sigmoid(.)`` in ``(0, out_scale)``, ``(N, 3, H, W)``. The paper normalises each HDR target to [0, 1]
(min-max, its ``map_range``), so with the paper's ``out_scale = 1`` the top of the sigmoid is the image's peak; under
this project's protocol (linear HDR with white = the LDR's clipping level = 1,
:mod:`~llmhdr_basicsr.models.paired_hdr_model`) the sigmoid can then not rise above white. Set ``out_scale`` to the
training headroom ``2^headroom`` (16 for ``train.headroom: 4``) to let it cover the model domain.

Any size: the local and dilated branches are fully convolutional with "same" zero padding and the global branch sees a
fixed-size resized copy, so no padding to a multiple is needed and the output has the input's size. Tiled inference
(``val.tile``, ``llmhdr-infer --tile``) computes the global branch once per image (:class:`GlobalBranch` is marked
``image_wide``), as the released code's ``predict`` does.

Parameters of the default configuration (F = 64, global_size = 256): 456,899, identical to the released ``model.py``
(same layer list). Paper's count: not verified -- only the paper's abstract was readable here, and it states none.

Inferred: weights keep PyTorch's default initialisation (the released code does not re-initialise; the paper does
not specify). The bilinear resize does not antialias (as the released code).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn


def _conv_selu(in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, stride, padding, dilation), nn.SELU(inplace=True))


class GlobalBranch(nn.Module):
    """ExpandNet's global branch: the input resized to ``size`` x ``size``, stride-2 convs, a 4 x 4 valid conv.

    Marked ``image_wide``: :class:`~llmhdr_basicsr.utils.tiling.GlobalStatsTiler` computes it once on the whole
    (downscaled) image and gives every tile the same 1x1 feature, as the released ``predict`` does.

    Args:
        in_ch: input channels.
        num_feat: output (and hidden) channels ``F``.
        size: side of the resized copy, ``4 * 2^k``; ``k`` stride-2 convs bring it to 4 x 4.
    """

    image_wide = True

    def __init__(self, in_ch: int, num_feat: int, size: int) -> None:
        super().__init__()
        self.size = size
        steps = round(math.log2(size / 4))
        layers = [_conv_selu(in_ch if i == 0 else num_feat, num_feat, 3, stride=2, padding=1) for i in range(steps)]
        self.body = nn.Sequential(*layers, nn.Conv2d(num_feat, num_feat, 4))  # the last conv is linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` any size -> ``(N, F, 1, 1)``."""
        small = F.interpolate(x, size=(self.size, self.size), mode='bilinear', align_corners=False)
        return self.body(small)


@ARCH_REGISTRY.register()
class ExpandNet(nn.Module):
    """Local + dilated + global branches fused by 1x1 convs, SELU activations, sigmoid output (module docstring).

    Args:
        num_in_ch: input channels (3).
        num_out_ch: output channels (3).
        num_feat: ``F``, the width of every branch (the local branch ends at ``2F``); 64 in the paper.
        global_size: side of the resized copy the global branch sees; ``4 * 2^k`` with ``k >= 1`` (256 in the paper,
            six stride-2 convs).
        out_scale: the output is ``out_scale * sigmoid``; 1 as in the paper (targets normalised to [0, 1]).
    """

    out_domain = 'linear'

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        global_size: int = 256,
        out_scale: float = 1.0,
    ) -> None:
        super().__init__()
        steps = math.log2(global_size / 4) if global_size >= 8 else 0.0
        if steps < 1 or steps != int(steps):
            raise ValueError(f'ExpandNet: global_size must be 4 * 2^k with k >= 1 (8, 16, ..., 256), got {global_size}')
        if out_scale <= 0:
            raise ValueError(f'ExpandNet: out_scale must be > 0, got {out_scale}')
        f = num_feat
        self.num_in_ch, self.global_size, self.out_scale = num_in_ch, global_size, float(out_scale)
        # Sec. 3, local branch: two 3x3 convs, F then 2F features, both SELU
        self.local_branch = nn.Sequential(_conv_selu(num_in_ch, f, 3, padding=1), _conv_selu(f, 2 * f, 3, padding=1))
        # Sec. 3, dilation branch: four 3x3 convs with dilation 2 (receptive field 17), the last one linear
        self.dilated_branch = nn.Sequential(
            _conv_selu(num_in_ch, f, 3, padding=2, dilation=2),
            _conv_selu(f, f, 3, padding=2, dilation=2),
            _conv_selu(f, f, 3, padding=2, dilation=2),
            nn.Conv2d(f, f, 3, padding=2, dilation=2),
        )
        # Sec. 3, global branch: stride-2 3x3 convs down to 4 x 4, then a 4 x 4 valid conv to 1 x 1 (linear)
        self.global_branch = GlobalBranch(num_in_ch, f, global_size)
        # Sec. 3, fusion: 1x1 conv to F (SELU), 1x1 conv to the output channels, sigmoid
        self.fusion = nn.Sequential(_conv_selu(4 * f, f, 1), nn.Conv2d(f, num_out_ch, 1))

    def global_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, F, 1, 1)``: the global branch on ``x`` resized (bilinear) to ``global_size`` x ``global_size``."""
        return self.global_branch(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Expand.

        Args:
            x: ``(N, 3, H, W)`` float32 display-referred LDR in [0, 1], any H, W.

        Returns:
            ``(N, 3, H, W)`` linear HDR in ``(0, out_scale)`` (see the module docstring for its normalisation).
        """
        if x.dim() != 4 or x.size(1) != self.num_in_ch:
            raise ValueError(f'ExpandNet: expected input (N, {self.num_in_ch}, H, W), got {tuple(x.shape)}')
        local = self.local_branch(x)
        dilated = self.dilated_branch(x)
        glob = self.global_features(x).expand(-1, -1, x.size(-2), x.size(-1))  # 1x1 global feature, broadcast
        return self.out_scale * torch.sigmoid(self.fusion(torch.cat([local, dilated, glob], dim=1)))
