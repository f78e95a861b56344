"""Classical inverse tone-mapping operators (iTMOs) as parameter-free BasicSR archs: LDR -> HDR baselines.

Each class is an ``nn.Module`` without trainable parameters, registered in ``ARCH_REGISTRY``, so BasicSR's
``test.py`` and ``llmhdr-eval`` score it with exactly the protocol of the learned generator (``network_g: {type:
AkyuzITMO}`` and no ``pretrain_network_g``). The operators are batched torch code, deterministic, and run on the input's
device and dtype.

Common convention (shared with ``FeedbackUNet(out_domain='hdr_mu')``):

- Input: LDR ``(N, 3, H, W)`` float, display-referred sRGB-encoded RGB in [0, 1] (values outside are clamped).
- Output ``out_domain='hdr_mu'`` (default): ``mu_law(H)`` (mu = 5000, :func:`~llmhdr_basicsr.utils.tonemap.mu_law`)
  of *normalised* linear HDR ``H``, clamped to [0, 1]. ``out_domain='linear'``: ``H`` itself (linear Rec.709 RGB,
  relative scale, not clamped above; a saturated colour can leave a channel slightly above 1 where the operator
  scales RGB by a luminance ratio).
- Normalisation: ``H = 1`` is the *largest output the operator can produce* (the "display peak" of the iTMO papers,
  whose cd/m² values -- 3000, 1200 ... -- become 1). Hence: :class:`LinearizeITMO` puts LDR white at
  ``1 / peak_ratio`` (default 1: white = 1, the same as the generator's linearised-input ``base``);
  :class:`AkyuzITMO` and :class:`MasiaITMO` map the LDR maximum / white to 1 (times ``k`` / ``max_output``);
  :class:`KovaleskiOliveiraITMO` puts unboosted LDR white at ``1 / peak_ratio`` (default 1/4) and fully boosted
  highlights at 1. Relative HDR has no absolute scale: the project's metrics align the global gain before scoring
  (``llmhdr_basicsr.metrics.hdr_metric``), so only the *shape* of each curve matters there.

Linearisation (``transfer``): ``'srgb'`` (IEC 61966-2-1 EOTF, default), ``'gamma'`` (``x ** gamma``, 2.2 by default,
the ``gammaRemoval`` of Banterle's HDR Toolbox) or ``'none'`` (treat the display values as linear).

Operators (formulas in each class docstring):

- :class:`LinearizeITMO`: "linearise only" (inverse transfer function, no expansion).
- :class:`AkyuzITMO`: Akyuz et al. 2007, linear expansion of min-max-normalised luminance.
- :class:`MasiaITMO`: Masia et al. 2009 key-driven gamma expansion (and the 2017 multi-linear variant).
- :class:`KovaleskiOliveiraITMO`: Kovaleski & Oliveira 2014 brightness enhancement function: the mask of saturated
  pixels, cross-bilateral filtered (bilateral grid) with the image as edge guide, boosts highlights up to 4x.

Implementation reference for the constants and defaults: Banterle's HDR Toolbox (``source_code/EO/AkyuzEO.m``,
``MasiaEO.m``, ``KovaleskiOliveiraEO.m``, ``Analysis/imKey.m``), GPL-3 MATLAB; nothing is copied, the formulas are
re-implemented from the papers' equations and checked against the toolbox's parameter choices.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.lazy_registry import register_arch
from ..utils.tonemap import luminance, mu_law, srgb_decode

OUT_DOMAINS = ('hdr_mu', 'linear')
TRANSFERS = ('srgb', 'gamma', 'none')
LOG_DELTA = 1e-6  # HDR Toolbox logMean: exp(mean(log(L + 1e-6)))
_EPS = 1e-8


def linearize(ldr: torch.Tensor, transfer: str = 'srgb', gamma: float = 2.2) -> torch.Tensor:
    """Undo the display transfer function of an LDR image.

    Args:
        ldr: any shape, display-referred values in [0, 1] (clamped).
        transfer: ``'srgb'`` (IEC 61966-2-1 EOTF), ``'gamma'`` (``x ** gamma``) or ``'none'`` (identity).
        gamma: exponent of the ``'gamma'`` transfer.

    Returns:
        Same shape and dtype, display-linear in [0, 1].
    """
    ldr = ldr.clamp(0.0, 1.0)
    if transfer == 'srgb':
        return srgb_decode(ldr)
    if transfer == 'gamma':
        return ldr.pow(gamma)
    if transfer == 'none':
        return ldr
    raise ValueError(f'Unknown transfer {transfer!r}; choose one of {TRANSFERS}')


def change_luminance(rgb: torch.Tensor, lum_old: torch.Tensor, lum_new: torch.Tensor) -> torch.Tensor:
    """Scale RGB so that its luminance becomes ``lum_new`` (HDR Toolbox ``ChangeLuminance``): ``rgb * new / old``.

    Args:
        rgb: ``(N, 3, H, W)`` linear RGB.
        lum_old: ``(N, 1, H, W)`` luminance of ``rgb``.
        lum_new: ``(N, 1, H, W)`` target luminance.

    Returns:
        ``(N, 3, H, W)`` linear RGB; pixels with ``lum_old <= 0`` stay 0 (the toolbox's RemoveSpecials of 0/0).
    """
    ratio = torch.where(lum_old > 0, lum_new / lum_old.clamp(min=_EPS), torch.zeros_like(lum_new))
    return rgb * ratio


def batch_quantile(x: torch.Tensor, q: float, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image quantile with linear interpolation (numpy's default), optionally over a subset of pixels.

    Sort-based, so it has no size limit (``torch.quantile`` refuses > 16 M elements) and is deterministic.

    Args:
        x: ``(N, ...)`` values.
        q: quantile in [0, 1].
        valid: optional bool mask of ``x``'s shape; only ``True`` entries count. An image without valid entries
            falls back to all its entries.

    Returns:
        ``(N,)`` quantiles, ``x``'s dtype.
    """
    flat = x.flatten(1)
    if valid is None:
        vals, _ = flat.sort(dim=1)
        count = torch.full((flat.size(0),), flat.size(1), device=x.device)
    else:
        mask = valid.flatten(1)
        none = ~mask.any(dim=1, keepdim=True)
        mask = mask | none
        vals, _ = torch.where(mask, flat, torch.full_like(flat, math.inf)).sort(dim=1)
        count = mask.sum(dim=1)
    pos = q * (count - 1).to(x.dtype)
    lo = pos.floor().long()
    hi = torch.minimum(lo + 1, count - 1)
    frac = pos - lo.to(x.dtype)
    v_lo = vals.gather(1, lo[:, None])[:, 0]
    v_hi = vals.gather(1, hi[:, None])[:, 0]
    return v_lo + frac * (v_hi - v_lo)


def image_key(lum: torch.Tensor, robust: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Image key of Akyuz & Reinhard 2006, as used by Masia et al. 2009 (HDR Toolbox ``imKey``).

    ``k = (log Lav - log Lmin) / (log Lmax - log Lmin)``, ``Lav = exp(mean(log(L + 1e-6)))``; with ``robust > 0``,
    ``Lmax`` is the ``1 - robust`` quantile of L and ``Lmin`` the ``robust`` quantile of the positive L (the toolbox
    default 0.01), else the plain max / positive min.

    Args:
        lum: ``(N, 1, H, W)`` luminance in [0, 1].
        robust: quantile for the robust min/max (0 = plain min/max).

    Returns:
        ``(key, lav)``, both ``(N,)``; ``key`` is in [0, 1] for ordinary images (0.5 for a flat image).
    """
    lav = torch.exp(torch.log(lum + LOG_DELTA).flatten(1).mean(dim=1))
    positive = lum > 0
    if robust > 0:
        l_max = batch_quantile(lum, 1.0 - robust)
        l_min = batch_quantile(lum, robust, valid=positive)
    else:
        l_max = lum.flatten(1).amax(dim=1)
        l_min = torch.where(positive, lum, torch.full_like(lum, math.inf)).flatten(1).amin(dim=1)
        l_min = torch.where(torch.isinf(l_min), l_max, l_min)
    l_min = l_min.clamp(min=LOG_DELTA)
    l_max = l_max.clamp(min=LOG_DELTA)
    span = torch.log(l_max) - torch.log(l_min)
    key = torch.where(
        span > _EPS, (torch.log(lav) - torch.log(l_min)) / span.clamp(min=_EPS), torch.full_like(span, 0.5)
    )
    return key, lav


def _binomial_blur_3d(vol: torch.Tensor) -> torch.Tensor:
    """Separable [1, 4, 6, 4, 1] / 16 blur (std 1 cell) of ``(B, 1, D, H, W)`` along D, H and W, zero padding."""
    k = vol.new_tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
    vol = F.conv3d(vol, k.view(1, 1, 5, 1, 1), padding=(2, 0, 0))
    vol = F.conv3d(vol, k.view(1, 1, 1, 5, 1), padding=(0, 2, 0))
    return F.conv3d(vol, k.view(1, 1, 1, 1, 5), padding=(0, 0, 2))


def cross_bilateral_grid(data: torch.Tensor, guide: torch.Tensor, sigma_s: float, sigma_r: float) -> torch.Tensor:
    """Cross-bilateral filter of ``data`` with edges from ``guide``, by the bilateral grid (Chen, Paris & Durand 2007).

    Grid cells are ``sigma_s`` pixels wide and ``sigma_r`` guide units deep. Splat: the pixels of a spatial cell are
    averaged (area pooling) with tent (linear) weights over the two nearest range levels; blur: a [1, 4, 6, 4, 1] / 16
    kernel (std 1 cell) along the three grid axes, which gives the Gaussian space/range weights of std ~``sigma_s``
    pixels / ``sigma_r``; slice: trilinear interpolation at each pixel's (x, y, guide) position, then
    ``filtered data / filtered weight``. This is the accelerated approximation Kovaleski & Oliveira use; its error is
    that of the grid's coarse sampling (smooth, no halo across edges wider than ``sigma_r``).

    Args:
        data: ``(N, 1, H, W)`` values to filter (e.g. a 0/1 mask).
        guide: ``(N, 1, H, W)`` edge image in [0, 1] (clamped).
        sigma_s: spatial sigma in pixels (> 0).
        sigma_r: range sigma in guide units (> 0).

    Returns:
        ``(N, 1, H, W)`` filtered data, dtype of ``data``.
    """
    n, _, h, w = data.shape
    gh, gw = min(h, max(1, math.ceil(h / sigma_s))), min(w, max(1, math.ceil(w / sigma_s)))
    depth = math.ceil(1.0 / sigma_r) + 1
    idx = guide.clamp(0.0, 1.0) / sigma_r  # continuous range index in [0, depth - 1]
    levels = torch.arange(depth, device=data.device, dtype=data.dtype).view(1, depth, 1, 1)
    tent = (1.0 - (idx - levels).abs()).clamp(min=0.0)  # (N, D, H, W) splat weights
    num = F.adaptive_avg_pool2d(tent * data, (gh, gw))
    den = F.adaptive_avg_pool2d(tent, (gh, gw))
    grid = torch.stack([num, den], dim=1).reshape(n * 2, 1, depth, gh, gw)
    grid = _binomial_blur_3d(grid).reshape(n, 2, depth, gh, gw)
    # Slice: grid_sample with align_corners=False puts pixel centres on 2 (x + 0.5) / W - 1 whatever the grid size,
    # and range level i at (2 i + 1) / D - 1.
    ys = (torch.arange(h, device=data.device, dtype=data.dtype) + 0.5) * (2.0 / h) - 1.0
    xs = (torch.arange(w, device=data.device, dtype=data.dtype) + 0.5) * (2.0 / w) - 1.0
    zs = (2.0 * idx[:, 0] + 1.0) / depth - 1.0  # (N, H, W)
    coords = torch.stack([xs.view(1, 1, w).expand(n, h, w), ys.view(1, h, 1).expand(n, h, w), zs], dim=-1)
    sliced = F.grid_sample(grid, coords.unsqueeze(1), mode='bilinear', padding_mode='border', align_corners=False)
    num_s, den_s = sliced[:, 0], sliced[:, 1]  # (N, 1, H, W)
    return torch.where(den_s > _EPS, num_s / den_s.clamp(min=_EPS), torch.zeros_like(num_s))


def brightness_enhancement(
    ldr: torch.Tensor,
    sigma_s: float | None = None,
    sigma_r: float = 25.0 / 255.0,
    threshold: float = 254.0 / 255.0,
) -> torch.Tensor:
    """Kovaleski & Oliveira's brightness enhancement function: the saturated-pixel mask, cross-bilaterally filtered.

    ``BEF = CrossBilateral([max_c x_c > threshold]; guide = Y(x), sigma_s, sigma_r)`` (:func:`cross_bilateral_grid`).

    Args:
        ldr: ``(N, 3, H, W)`` display-referred LDR in [0, 1].
        sigma_s: spatial sigma in pixels; ``None`` = 150 px scaled to the input, ``150 * max(H, W) / 1920``.
        sigma_r: range sigma on the display-referred luminance.
        threshold: saturation threshold on the maximum channel (strictly greater counts).

    Returns:
        ``(N, 1, H, W)`` in [0, 1]: ~1 inside large saturated regions, falling off with distance, stopping at edges.
    """
    h, w = ldr.shape[-2:]
    sigma_s = sigma_s if sigma_s is not None else 150.0 * max(h, w) / 1920.0
    mask = (ldr.amax(dim=1, keepdim=True) > threshold).to(ldr.dtype)
    return cross_bilateral_grid(mask, luminance(ldr), sigma_s, sigma_r).clamp(0.0, 1.0)


class _ITMOBase(nn.Module):
    """Shared checks and output-domain handling of the baselines (no parameters, no buffers)."""

    def __init__(self, out_domain: str = 'hdr_mu', transfer: str = 'srgb', gamma: float = 2.2) -> None:
        super().__init__()
        name = type(self).__name__
        if out_domain not in OUT_DOMAINS:
            raise ValueError(f'{name}: unknown out_domain {out_domain!r}; choose one of {OUT_DOMAINS}')
        if transfer not in TRANSFERS:
            raise ValueError(f'{name}: unknown transfer {transfer!r}; choose one of {TRANSFERS}')
        if gamma <= 0:
            raise ValueError(f'{name}: gamma must be > 0, got {gamma}')
        self.out_domain = out_domain
        self.transfer = transfer
        self.gamma = float(gamma)

    def expand(self, ldr: torch.Tensor) -> torch.Tensor:
        """Operator proper: ``(N, 3, H, W)`` display-referred LDR in [0, 1] -> normalised linear HDR (peak 1)."""
        raise NotImplementedError

    def linearize(self, ldr: torch.Tensor) -> torch.Tensor:
        return linearize(ldr, self.transfer, self.gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Expand an LDR batch.

        Args:
            x: ``(N, 3, H, W)`` float LDR, display-referred sRGB in [0, 1] (clamped).

        Returns:
            ``(N, 3, H, W)``, same dtype: ``mu_law(H)`` clamped to [0, 1] for ``out_domain='hdr_mu'``, or the
            normalised linear HDR ``H`` (relative, peak 1 = the operator's maximum output) for ``'linear'``.
        """
        if x.dim() != 4 or x.size(1) != 3:
            raise ValueError(f'{type(self).__name__}: expected an (N, 3, H, W) LDR batch, got shape {tuple(x.shape)}')
        if not x.is_floating_point():
            raise TypeError(f'{type(self).__name__}: expected a float tensor in [0, 1], got {x.dtype}')
        hdr = self.expand(x.clamp(0.0, 1.0)).clamp(min=0.0)
        if self.out_domain == 'linear':
            return hdr
        return mu_law(hdr).clamp(0.0, 1.0)

    def extra_repr(self) -> str:
        return f'out_domain={self.out_domain!r}, transfer={self.transfer!r}'


@register_arch  # ARCH_REGISTRY, also when imported before basicsr
class LinearizeITMO(_ITMOBase):
    """ "Linearise only": the inverse display transfer function, no dynamic range expansion.

    ``H = T^-1(x) / peak_ratio`` with ``T^-1`` the sRGB EOTF (``transfer='srgb'``) or ``x ** gamma``
    (``transfer='gamma'``). Clipped pixels stay at LDR white; this is the floor every learned model must beat, and
    with the default ``peak_ratio=1`` it equals the linearised-input ``base`` that ``FeedbackUNet`` starts from.

    Args:
        peak_ratio: headroom factor; LDR white lands at ``1 / peak_ratio`` (>= 1).
        transfer: ``'srgb'`` | ``'gamma'`` | ``'none'``.
        gamma: exponent for ``transfer='gamma'``.
        out_domain: ``'hdr_mu'`` | ``'linear'`` (module docstring).
    """

    def __init__(
        self, peak_ratio: float = 1.0, transfer: str = 'srgb', gamma: float = 2.2, out_domain: str = 'hdr_mu'
    ) -> None:
        super().__init__(out_domain, transfer, gamma)
        if peak_ratio < 1:
            raise ValueError(f'LinearizeITMO: peak_ratio must be >= 1, got {peak_ratio}')
        self.peak_ratio = float(peak_ratio)

    def expand(self, ldr: torch.Tensor) -> torch.Tensor:
        return self.linearize(ldr) / self.peak_ratio


@register_arch  # ARCH_REGISTRY, also when imported before basicsr
class AkyuzITMO(_ITMOBase):
    """Akyuz et al. 2007, "Do HDR displays support LDR content? A psychophysical evaluation", ACM TOG 26(3), Eq. 1.

    ``L = k * ((Ld - Ld_min) / (Ld_max - Ld_min)) ** gamma`` on the luminance ``Ld`` of the linearised image
    (per-image min and max), colour kept by scaling RGB with ``L / Ld`` (HDR Toolbox ``AkyuzEO``). ``k`` is the
    display peak: 1 in the normalised output (module docstring). The paper found plain linear scaling (gamma 1)
    as good as or better than more complex iTMOs. A flat image (``Ld_max == Ld_min``) maps to ``k``.

    Args:
        k: output luminance of the brightest pixel, in normalised units (0 < k <= 1).
        expand_gamma: the exponent ``gamma`` of the formula (1 = linear).
        transfer, gamma: linearisation of the input (module docstring; default sRGB).
        out_domain: ``'hdr_mu'`` | ``'linear'``.
    """

    def __init__(
        self,
        k: float = 1.0,
        expand_gamma: float = 1.0,
        transfer: str = 'srgb',
        gamma: float = 2.2,
        out_domain: str = 'hdr_mu',
    ) -> None:
        super().__init__(out_domain, transfer, gamma)
        if not 0 < k <= 1 or expand_gamma <= 0:
            raise ValueError(f'AkyuzITMO: need 0 < k <= 1 and expand_gamma > 0, got k={k}, expand_gamma={expand_gamma}')
        self.k = float(k)
        self.expand_gamma = float(expand_gamma)

    def expand(self, ldr: torch.Tensor) -> torch.Tensor:
        lin = self.linearize(ldr)
        lum = luminance(lin)
        l_min = lum.amin(dim=(-2, -1), keepdim=True)
        l_max = lum.amax(dim=(-2, -1), keepdim=True)
        span = l_max - l_min
        norm = torch.where(span > _EPS, (lum - l_min) / span.clamp(min=_EPS), torch.ones_like(lum))
        return change_luminance(lin, lum, self.k * norm.pow(self.expand_gamma))


@register_arch  # ARCH_REGISTRY, also when imported before basicsr
class MasiaITMO(_ITMOBase):
    """Masia et al. 2009, "Evaluation of reverse tone mapping through varying exposure conditions", ACM TOG 28(5).

    Gamma expansion driven by the image key (``variant='2009'``, Sec. 6 of the paper; constants as in the HDR
    Toolbox's ``MasiaEO``)::

        k = (log Lav - log Lmin) / (log Lmax - log Lmin)      (image_key; robust 1 % / 99 % quantiles)
        gamma = 10.44 * k - 6.282
        L = max_output * Ld ** gamma,   RGB scaled by L / Ld

    ``variant='2017'``: Masia, Serrano & Gutierrez 2017, "Dynamic range expansion based on image statistics",
    Multimedia Tools and Applications 76(1), Eq. 5 (multi-linear regression)::

        gamma = 2.4379 + 0.2319 * ln(Lav) - 1.1228 * k + 0.0085 * p_ov

    with ``p_ov`` the percentage of pixels whose luminance is >= 254/255. The fit gives ``gamma <= 0`` for low-key
    images (k < 0.60 in 2009), which would invert the image (the toolbox only warns); ``gamma`` is clamped to
    ``[gamma_min, inf)``. The optional bilateral noise-removal step of the toolbox (no parameters in the paper) is not
    implemented. Luminance, key and expansion use the linearised input (``transfer``, default sRGB, as the
    toolbox demos call every operator with ``gammaRemoval = 2.2``); ``transfer='none'`` expands the display values.

    Args:
        variant: ``'2009'`` or ``'2017'``.
        max_output: output luminance of LDR white, normalised units (0 < max_output <= 1).
        robust: quantile of the robust min/max in the key (0 = plain min/max).
        gamma_min: lower clamp of the fitted gamma (> 0).
        transfer, gamma: linearisation of the input.
        out_domain: ``'hdr_mu'`` | ``'linear'``.
    """

    VARIANTS = ('2009', '2017')

    def __init__(
        self,
        variant: str = '2009',
        max_output: float = 1.0,
        robust: float = 0.01,
        gamma_min: float = 0.1,
        transfer: str = 'srgb',
        gamma: float = 2.2,
        out_domain: str = 'hdr_mu',
    ) -> None:
        super().__init__(out_domain, transfer, gamma)
        variant = str(variant)
        if variant not in self.VARIANTS:
            raise ValueError(f'MasiaITMO: unknown variant {variant!r}; choose one of {self.VARIANTS}')
        if not 0 < max_output <= 1 or not 0 <= robust < 0.5 or gamma_min <= 0:
            raise ValueError(
                f'MasiaITMO: need 0 < max_output <= 1, 0 <= robust < 0.5, gamma_min > 0; got {max_output}, {robust}, '
                f'{gamma_min}'
            )
        self.variant = variant
        self.max_output = float(max_output)
        self.robust = float(robust)
        self.gamma_min = float(gamma_min)

    def expansion_gamma(self, lum: torch.Tensor) -> torch.Tensor:
        """The fitted exponent per image.

        Args:
            lum: ``(N, 1, H, W)`` luminance of the linearised input, in [0, 1].

        Returns:
            ``(N,)`` gamma values, clamped to ``[gamma_min, inf)``.
        """
        key, lav = image_key(lum, self.robust)
        if self.variant == '2009':
            g = 10.44 * key - 6.282
        else:
            p_ov = (lum >= 254.0 / 255.0).flatten(1).to(lum.dtype).mean(dim=1) * 100.0
            g = 2.4379 + 0.2319 * torch.log(lav) - 1.1228 * key + 0.0085 * p_ov
        return g.clamp(min=self.gamma_min)

    def expand(self, ldr: torch.Tensor) -> torch.Tensor:
        lin = self.linearize(ldr)
        lum = luminance(lin)
        g = self.expansion_gamma(lum).view(-1, 1, 1, 1)
        return change_luminance(lin, lum, self.max_output * lum.pow(g))

    def extra_repr(self) -> str:
        return f'variant={self.variant!r}, ' + super().extra_repr()


@register_arch  # ARCH_REGISTRY, also when imported before basicsr
class KovaleskiOliveiraITMO(_ITMOBase):
    """Kovaleski & Oliveira 2014, "High-quality reverse tone mapping for a wide range of exposures", SIBGRAPI 2014.

    A brightness enhancement function (BEF) boosts the neighbourhood of saturated pixels, stopping at edges::

        M   = [max_c x_c > threshold]                      saturated-pixel mask on the display-referred input
        BEF = CrossBilateral(M; guide = Y(x), sigma_s, sigma_r)   in [0, 1], bilateral grid (cross_bilateral_grid)
        E   = 1 + (peak_ratio - 1) * BEF                   in [1, 4] with the paper's 4 (HDR Toolbox: 3 * BEF + 1)
        L   = (Ld * (1 - b) + b) * E / peak_ratio          Ld = luminance of the linearised input, b = black level
        RGB = lin * L / Ld

    ``b`` is the display black level relative to its white (0.3 / 1200 cd/m² in the toolbox). Normalisation: a
    saturated pixel deep inside a saturated region gets ``E = peak_ratio`` and lands at 1; LDR white without boost
    at ``1 / peak_ratio``. Parameters of the paper / toolbox: ``sigma_s = 150`` px for HD (1920-px-wide) content,
    ``sigma_r = 25/255``, threshold 254/255 for still images (230/255 for video). The mask and the edge guide are
    computed on the display-referred input, where ``sigma_r`` and the threshold are defined (8-bit code values; the
    toolbox instead raises both to ``gammaRemoval`` and works on linear values); the expansion uses linear values.
    The bilateral grid (the paper's own acceleration) is approximated as described in
    :func:`cross_bilateral_grid`.

    Args:
        peak_ratio: maximum boost of the BEF (4 in the paper), > 1.
        sigma_s: spatial sigma in pixels; ``None`` = 150 px scaled to the input, ``150 * max(H, W) / 1920``.
        sigma_r: range sigma on the display-referred luminance (25/255).
        threshold: saturation threshold on the display-referred maximum channel (strictly greater counts).
        black_level: display black / white luminance ratio ``b``.
        transfer, gamma: linearisation of the input.
        out_domain: ``'hdr_mu'`` | ``'linear'``.
    """

    def __init__(
        self,
        peak_ratio: float = 4.0,
        sigma_s: float | None = None,
        sigma_r: float = 25.0 / 255.0,
        threshold: float = 254.0 / 255.0,
        black_level: float = 0.3 / 1200.0,
        transfer: str = 'srgb',
        gamma: float = 2.2,
        out_domain: str = 'hdr_mu',
    ) -> None:
        super().__init__(out_domain, transfer, gamma)
        if peak_ratio <= 1 or (sigma_s is not None and sigma_s <= 0) or sigma_r <= 0:
            raise ValueError(
                f'KovaleskiOliveiraITMO: need peak_ratio > 1, sigma_s > 0 (or None), sigma_r > 0; got {peak_ratio}, '
                f'{sigma_s}, {sigma_r}'
            )
        if not 0 <= threshold < 1 or not 0 <= black_level < 1:
            raise ValueError(
                f'KovaleskiOliveiraITMO: threshold and black_level must be in [0, 1): {threshold}, {black_level}'
            )
        self.peak_ratio = float(peak_ratio)
        self.sigma_s = None if sigma_s is None else float(sigma_s)
        self.sigma_r = float(sigma_r)
        self.threshold = float(threshold)
        self.black_level = float(black_level)

    def brightness_enhancement(self, ldr: torch.Tensor) -> torch.Tensor:
        """The BEF in [0, 1].

        Args:
            ldr: ``(N, 3, H, W)`` display-referred LDR in [0, 1].

        Returns:
            ``(N, 1, H, W)``: ~1 inside large saturated regions, falling off with distance, stopping at edges.
        """
        return brightness_enhancement(ldr, self.sigma_s, self.sigma_r, self.threshold)

    def expand(self, ldr: torch.Tensor) -> torch.Tensor:
        lin = self.linearize(ldr)
        lum = luminance(lin)
        boost = 1.0 + (self.peak_ratio - 1.0) * self.brightness_enhancement(ldr)
        l_exp = (lum * (1.0 - self.black_level) + self.black_level) * boost / self.peak_ratio
        return change_luminance(lin, lum, l_exp)

    def extra_repr(self) -> str:
        return (
            f'peak_ratio={self.peak_ratio}, sigma_s={self.sigma_s}, sigma_r={self.sigma_r:.4f}, ' + super().extra_repr()
        )


__all__ = [
    'AkyuzITMO',
    'KovaleskiOliveiraITMO',
    'LinearizeITMO',
    'MasiaITMO',
    'brightness_enhancement',
    'change_luminance',
    'cross_bilateral_grid',
    'image_key',
    'linearize',
]
