"""Learned highlight expansion of the residual base: the saturated regions of the linearised LDR lifted above white.

Every camera curve maps the LDR's clipping level to diffuse white, so a base built from curves alone
(:mod:`llmhdr_basicsr.archs.crf_basis`) leaves a clipped sky or lamp at exactly white and the U-Net residual has to
lift it several stops on its own. This module gives the base the expansion of Kovaleski & Oliveira's operator
(SIBGRAPI 2014, :class:`~llmhdr_basicsr.archs.itmo_baseline_arch.KovaleskiOliveiraITMO`) with a peak learned per
image (an addition of this project, not in the paper)::

    BEF = CrossBilateral([max_c x_c > threshold]; guide = Y(x))      (N, 1, H, W) in [0, 1], no gradient
    s   = max_stops * sigmoid(rate * (bias + W . [mean_hw(e) / C, hist(x)]))      (N,) stops, per image
    lin' = lin * 2^(s * BEF)

With ``region: true`` the stops become a map: a zero-initialised 1x1 convolution of the bottleneck adds a local
term to the image's pre-activation, ``s(p) = max_stops * sigmoid(rate * (bias + W . f + up(V * e)(p)))``, the
logit map bilinearly up-sampled from the bottleneck's 1/8 resolution. The local term sees the same neighbourhood of a
highlight in a training crop and in the whole image, which the image-level term (a mean over whatever the crop
holds) does not.

``lin`` is the linearised input (white = 1), ``x`` the display-referred LDR, ``e`` the generator's bottleneck and
``hist`` the input histograms of :class:`~llmhdr_basicsr.archs.crf_basis.ImageHistogram`. Pixels far from any
saturated region keep their value; the inside of a large clipped region is lifted by up to ``s`` stops, a small
specular by less (the filtered mask is below 1 there), and the lift stops at edges. ``W`` starts at zero and
``bias`` at ``init_stops`` (2 stops = KO's peak ratio 4). ``rate`` scales the pre-activation so that Adam, which moves
every parameter by about the learning rate per step, can move ``s`` by stops rather than hundredths of a stop in a
training budget (a learning-rate multiplier of these few parameters).

``sigma_s`` is in pixels and fixed (default 32), not scaled to the input as KO does: the generator trains on crops
and runs on whole images, and a crop-scaled sigma would give the same highlight a different map in each.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .crf_basis import ImageHistogram, ImageMean
from .itmo_baseline_arch import brightness_enhancement


class HighlightExpansion(nn.Module):
    """``lin * 2^(s * BEF(x))`` with per-image stops ``s`` predicted from the bottleneck (see the module docstring).

    Args:
        feat_ch: channels of the bottleneck the stops are predicted from.
        init_stops: expansion of a fully saturated region at initialisation (and for an average image), > 0.
        max_stops: upper bound of ``s`` (the generator's headroom: the HDR domain ends there), > ``init_stops``.
        sigma_s: spatial sigma of the cross-bilateral filter in pixels.
        sigma_r: its range sigma on the display-referred luminance.
        threshold: saturation threshold on the display-referred maximum channel.
        rate: scale of the pre-activation (a learning-rate multiplier of this module).
        hist_bins: bins of each input histogram (0: the bottleneck mean alone).
        region: add the per-region term (a stop map instead of one value per image).
    """

    def __init__(
        self,
        feat_ch: int,
        init_stops: float = 2.0,
        max_stops: float = 4.0,
        sigma_s: float = 32.0,
        sigma_r: float = 25.0 / 255.0,
        threshold: float = 250.0 / 255.0,
        rate: float = 10.0,
        hist_bins: int = 16,
        region: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 < init_stops < max_stops:
            raise ValueError(
                f'HighlightExpansion: need 0 < init_stops < max_stops, got init_stops={init_stops}, '
                f'max_stops={max_stops} (max_stops is the generator headroom; set headroom > init_stops)'
            )
        if sigma_s <= 0 or sigma_r <= 0 or rate <= 0 or not 0.0 <= threshold < 1.0:
            raise ValueError(
                f'HighlightExpansion: need sigma_s, sigma_r, rate > 0 and threshold in [0, 1); got {sigma_s}, '
                f'{sigma_r}, {rate}, {threshold}'
            )
        self.init_stops, self.max_stops = float(init_stops), float(max_stops)
        #: when set, :meth:`stops` returns this value for every image instead of the prediction (not saved; a
        #: diagnostic of how much per-image stops could gain, ``benchmarks/quality.py --stops-oracle``)
        self.fixed_stops: float | None = None
        self.sigma_s, self.sigma_r, self.threshold, self.rate = float(sigma_s), float(sigma_r), float(threshold), rate
        self.pool = ImageMean()
        self.hist = ImageHistogram(hist_bins) if hist_bins > 0 else None
        self.bias = nn.Parameter(torch.zeros(()))
        self.proj = nn.Linear(feat_ch + 2 * hist_bins, 1)
        self.local = nn.Conv2d(feat_ch, 1, 1) if region else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``s = init_stops`` for every image: the bias at the matching logit, no dependence on the features."""
        p = self.init_stops / self.max_stops
        with torch.no_grad():
            self.bias.fill_(math.log(p / (1.0 - p)) / self.rate)
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)
            if self.local is not None:
                nn.init.zeros_(self.local.weight)
                nn.init.zeros_(self.local.bias)

    def _image_logit(self, feat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``(N,)`` image-level pre-activation ``bias + W . [mean_hw(e) / C, hist(x)]`` (before ``rate``)."""
        features = self.pool(feat) / feat.size(1)
        if self.hist is not None:
            features = torch.cat([features, self.hist(x).to(features)], dim=1)
        return self.bias + self.proj(features).squeeze(1)

    def stops(self, feat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, H, W)`` expansion in stops of a fully saturated region, from the bottleneck ``(N, C, h, w)`` and
        the display-referred input ``x`` ``(N, 3, H, W)``; ``(N, 1, 1, 1)`` (one value per image) without ``region``
        or when ``fixed_stops`` is set (then that value for every image)."""
        if self.fixed_stops is not None:
            return feat.new_full((feat.size(0), 1, 1, 1), float(self.fixed_stops))
        z = self._image_logit(feat, x).view(-1, 1, 1, 1)
        if self.local is not None:
            z = F.interpolate(z + self.local(feat), size=x.shape[-2:], mode='bilinear', align_corners=False)
        return self.max_stops * torch.sigmoid(self.rate * z)

    def expansion_map(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, H, W)`` BEF in [0, 1] of the display-referred input (no gradient: it depends on ``x`` only)."""
        with torch.no_grad():
            return brightness_enhancement(x.clamp(0.0, 1.0), self.sigma_s, self.sigma_r, self.threshold)

    def forward(
        self, lin: torch.Tensor, x: torch.Tensor, feat: torch.Tensor, detach_stops: bool = False
    ) -> torch.Tensor:
        """Expand ``lin`` ``(N, 3, H, W)`` (linear, white = 1) where the LDR ``x`` ``(N, 3, H, W)`` saturates.

        Args:
            lin: the linearised input.
            x: the display-referred LDR it came from, in [0, 1].
            feat: ``(N, C, h, w)`` the generator's bottleneck.
            detach_stops: no gradient reaches the stop predictor (nor, through it, ``feat``).

        Returns:
            ``(N, 3, H, W)`` linear, >= ``lin``, at most ``lin * 2^max_stops``.
        """
        s = self.stops(feat, x).to(lin.dtype)
        if detach_stops:
            s = s.detach()
        return lin * torch.exp2(s * self.expansion_map(x).to(lin.dtype))

    def extra_repr(self) -> str:
        return (
            f'init_stops={self.init_stops}, max_stops={self.max_stops}, sigma_s={self.sigma_s}, '
            f'threshold={self.threshold:.4f}, rate={self.rate}, region={self.local is not None}'
        )
