"""Learned camera curve of the residual base: a per-image convex mixture of fixed camera response curves.

The residual generators start from a base, the input mapped to the output domain without learning
(:func:`~llmhdr_basicsr.archs.feedback_unet_arch.output_domain_base`): inverse sRGB for LDR->HDR, sRGB for HDR->LDR.
Real cameras do not use the sRGB curve, and inverting the camera curve is most of what single-image HDR
reconstruction gains over plain linearisation (on an earlier version of the quality benchmark's held-out scenes the
inverse of the true curve would have given +6.8 dB PU21-PSNR over inverse sRGB, ``benchmarks/README.md``). A U-Net
learns a global per-image curve slowly; this module gives it one
directly (an addition of this project, not in the paper; the idea of a curve basis follows SingleHDR's CRF
linearisation, Liu et al. CVPR 2020).

For input ``x`` and the generator's bottleneck feature ``e``::

    w = tau * softplus((bias + W_e . mean_hw(e) / C + W_h . hist(x)) / tau)   (N, K) > 0, per image
    base_lin = (c_0(x) + sum_k w_k c_k(x)) / (1 + sum_k w_k)          convex mixture, anchored at c_0 = sRGB

``c_k`` are fixed camera curves (:data:`DEFAULT_BASIS`: gamma 1.8/2.2/2.6/3.2, sigmoid and logistic curves of the
virtual-camera family, :mod:`llmhdr_basicsr.utils.camera`), applied per channel: their inverses (decode, LDR ->
linear) for ``'hdr_mu'``, the curves themselves (encode, linear -> LDR) for ``'ldr'``. Every ``c_k`` is monotone with
``c_k(0) = 0`` and ``c_k(1) = 1``, so the mixture is too: the base keeps the order of the input values and the
LDR clipping level stays at diffuse white. ``W`` starts at zero and ``bias`` where every weight is
:data:`INIT_WEIGHT` (1e-3), so an untrained module returns the sRGB base up to a 1 % admixture of the basis
(``K * 1e-3``) and training can move every weight.

Two details keep the curve alive under Adam, which moves every parameter by about the learning rate per step
whatever the size of its gradient. The weights are a soft clamp ``tau * softplus(z / tau)`` (:data:`SOFTNESS`
``tau`` = 0.01: about ``z`` above ``tau``, a small but never zero gradient below 0), where ``relu`` passed no gradient
and a weight pushed below 0 for every image stayed there. And ``W`` acts on the feature mean divided by its ``C``
channels: ``C`` weights moving by ``lr`` each would move ``z`` up to ``C`` times faster than the bias. The input
histograms (:class:`ImageHistogram`, two of them, each summing to 1) are not divided: all their weights moving by
``lr`` move ``z`` by at most ``2 lr``, and divided by the channel count they learned nothing in a benchmark budget
(the predicted weights were the same for every image to three decimals). With ``relu``
and no ``1 / C`` the quality benchmark's curve died within minutes: every test image's ``z`` ended between -0.05 and
-0.005, the curve alone scored exactly the linearisation (22.83 dB PU21-PSNR) and the generator fell from 23.82 dB
after 2 minutes to 22.41 dB after 20 (``benchmarks/README.md``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from llmhdr_basicsr.utils.camera import crf_decode_torch, crf_encode_torch
from llmhdr_basicsr.utils.tonemap import srgb_decode, srgb_encode

#: Fixed curves besides the sRGB anchor: ``('gamma', gamma)`` = ``y = x^(1/gamma)``; ``('sigmoid', g, beta)`` =
#: ``y = (1 + beta) x^g / (x^g + beta)`` (GlowGAN's camera); ``('logistic', slope, pivot)`` = an S-curve in log
#: exposure with a toe and a shoulder (:mod:`llmhdr_basicsr.utils.camera`).
DEFAULT_BASIS: tuple[tuple, ...] = (
    ('gamma', 1.8),
    ('gamma', 2.2),
    ('gamma', 2.6),
    ('gamma', 3.2),
    ('sigmoid', 0.8, 0.5),
    ('sigmoid', 0.9, 0.6),
    ('sigmoid', 1.0, 0.7),
    ('sigmoid', 0.9, 0.4),
    ('sigmoid', 0.9, 0.8),
    ('logistic', 0.6, -3.0),
    ('logistic', 0.8, -2.0),
    ('logistic', 1.1, -1.0),
)
#: :data:`DEFAULT_BASIS` and two deeper highlight shoulders (logistic, 0.5 per stop with the pivot 4 stops below
#: white, 0.4 with 6): what the decode mixture needs to invert renderings that compress the highlights more than the
#: default basis' strongest shoulder (``('logistic', 0.6, -3.0)``). The basis of the training recipes.
SHOULDER_BASIS: tuple[tuple, ...] = (*DEFAULT_BASIS, ('logistic', 0.5, -4.0), ('logistic', 0.4, -6.0))
#: Bases by name, for option files (``crf_basis: shoulders``).
NAMED_BASES: dict[str, tuple[tuple, ...]] = {'default': DEFAULT_BASIS, 'shoulders': SHOULDER_BASIS}
#: Initial mixture weight of every basis curve (relative to the sRGB anchor's 1).
INIT_WEIGHT = 1e-3
#: Softness ``tau`` of the clamp that keeps the mixture weights positive: ``w = tau * softplus(z / tau)``.
SOFTNESS = 1e-2


def soft_clamp(z: torch.Tensor) -> torch.Tensor:
    """``tau * softplus(z / tau)``: about ``z`` for ``z >> tau``, positive with a non-zero gradient everywhere."""
    return SOFTNESS * torch.nn.functional.softplus(z / SOFTNESS)


def soft_clamp_inverse(w: float) -> float:
    """The ``z`` with ``soft_clamp(z) = w`` (``w > 0``)."""
    return SOFTNESS * math.log(math.expm1(w / SOFTNESS))


def _check_curve(curve: tuple) -> None:
    ok = (
        (curve[0] == 'gamma' and len(curve) == 2 and curve[1] > 0)
        or (curve[0] == 'sigmoid' and len(curve) == 3 and curve[1] > 0 and curve[2] > 0)
        or (curve[0] == 'logistic' and len(curve) == 3 and curve[1] > 0 and -14 < curve[2] <= 0)
    )
    if not ok:
        raise ValueError(
            "crf basis entries must be ['gamma', g > 0], ['sigmoid', g > 0, beta > 0] or ['logistic', slope > 0, "
            f'-14 < pivot <= 0], got {curve!r}'
        )


class ImageMean(nn.Module):
    """Per-image spatial mean ``(N, C, H, W) -> (N, C)``.

    A module rather than a ``.mean()`` call so that tiled inference
    (:class:`~llmhdr_basicsr.utils.tiling.GlobalStatsTiler`) can record it once on the whole image and replay it for
    every tile (``image_wide = True`` marks such modules), as it does for instance norm.
    """

    image_wide = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class ImageHistogram(nn.Module):
    """Per-image soft histograms of the input: ``(N, 3, H, W)`` in [0, 1] -> ``(N, 2 * bins)``.

    The brightest channel and the Rec.709 luma, each in ``bins`` triangular bins over [0, 1] (each histogram sums
    to 1): how the tonal range is filled (a shoulder piles the highlights into the top bins, a toe empties the
    bottom ones, clipping fills the last one), the cue of a camera curve that the instance-normalised bottleneck
    no longer carries. Computed without gradient; ``image_wide`` like :class:`ImageMean`, so tiles share the
    whole image's histogram.
    """

    image_wide = True

    def __init__(self, bins: int = 16) -> None:
        super().__init__()
        self.bins = bins
        self.register_buffer('centers', (torch.arange(bins) + 0.5) / bins, persistent=False)

    def _hist(self, v: torch.Tensor) -> torch.Tensor:
        w = (1.0 - (v.unsqueeze(-1) - self.centers.to(v)).abs() * self.bins).clamp(min=0.0)
        h = w.flatten(1, -2).mean(dim=1)
        return h / h.sum(dim=1, keepdim=True).clamp(min=1e-8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = x.clamp(0.0, 1.0)
            luma = 0.2126 * x[:, 0] + 0.7152 * x[:, 1] + 0.0722 * x[:, 2]
            return torch.cat([self._hist(x.amax(dim=1)), self._hist(luma)], dim=1)


class CRFBasisBase(nn.Module):
    """Per-image camera curve as a convex mixture of fixed curves (see the module docstring).

    The mixture weights are predicted from the spatial mean of the generator's bottleneck and from the histograms
    of the input itself (:class:`ImageHistogram`).

    Args:
        feat_ch: channels of the feature the mixture weights are predicted from (the generator's bottleneck).
        direction: ``'decode'`` (display-referred LDR -> linear, for LDR->HDR) or ``'encode'`` (linear -> LDR).
        basis: fixed curves besides the sRGB anchor, or the name of one in :data:`NAMED_BASES` (default
            :data:`DEFAULT_BASIS`).
        hist_bins: bins of each input histogram (0: none, the bottleneck mean alone).
    """

    def __init__(
        self, feat_ch: int, direction: str, basis: str | tuple | list | None = None, hist_bins: int = 16
    ) -> None:
        super().__init__()
        if direction not in ('decode', 'encode'):
            raise ValueError(f"CRFBasisBase: direction must be 'decode' or 'encode', got {direction!r}")
        if isinstance(basis, str):
            if basis not in NAMED_BASES:
                raise ValueError(f'CRFBasisBase: unknown basis {basis!r}; named bases: {sorted(NAMED_BASES)}')
            basis = NAMED_BASES[basis]
        self.direction = direction
        self.basis = tuple(tuple(c) for c in (DEFAULT_BASIS if basis is None else basis))
        if not self.basis:
            raise ValueError('CRFBasisBase: the basis needs at least one curve')
        for curve in self.basis:
            _check_curve(curve)
        self.bias = nn.Parameter(torch.empty(len(self.basis)))
        self.proj = nn.Linear(feat_ch + 2 * hist_bins, len(self.basis))
        self.pool = ImageMean()
        self.hist = ImageHistogram(hist_bins) if hist_bins > 0 else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The sRGB-anchored start: every basis weight ``INIT_WEIGHT``, no dependence on the feature."""
        with torch.no_grad():
            self.bias.fill_(soft_clamp_inverse(INIT_WEIGHT))
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def weights(self, feat: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """``(N, K)`` positive mixture weights of the basis curves (the sRGB anchor has weight 1), from the feature
        ``(N, C, h, w)`` and, with histograms, the input ``x`` ``(N, 3, H, W)``."""
        features = self.pool(feat) / feat.size(1)  # C bottleneck channels: each weight acts 1/C as strongly
        if self.hist is not None:
            if x is None:
                raise ValueError('CRFBasisBase.weights: the histogram features need the input x')
            features = torch.cat([features, self.hist(x).to(features)], dim=1)  # sum to 2: no scaling needed
        return soft_clamp(self.bias + self.proj(features))

    def forward(self, x: torch.Tensor, feat: torch.Tensor, detach_weights: bool = False) -> torch.Tensor:
        """Map ``x`` ``(N, 3, H, W)`` through the per-image curve of ``feat`` ``(N, C, h, w)``; ``detach_weights``:
        no gradient reaches the mixture weights (nor, through them, ``feat``), the gradient w.r.t. ``x`` is kept.

        Returns:
            ``(N, 3, H, W)`` in [0, 1]: linear for ``'decode'``, display-referred for ``'encode'``.
        """
        fn = crf_decode_torch if self.direction == 'decode' else crf_encode_torch
        anchor = srgb_decode(x) if self.direction == 'decode' else srgb_encode(x)
        w = self.weights(feat, x).to(x.dtype)
        if detach_weights:
            w = w.detach()
        mixed = anchor
        for k, curve in enumerate(self.basis):
            mixed = mixed + w[:, k, None, None, None] * fn(x, curve)
        return mixed / (1.0 + w.sum(dim=1)).view(-1, 1, 1, 1)

    def extra_repr(self) -> str:
        return f'direction={self.direction!r}, basis={list(self.basis)}'
