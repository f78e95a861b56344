"""Full-reference HDR quality metrics on linear relative HDR, registered in BasicSR's ``METRIC_REGISTRY``.

Evaluation protocol (the paper never states the domain or calibration of its numbers, so every step
here is written down; report the metric name together with ``align``, ``peak_nits`` and ``percentile``).

Inputs (BasicSR's convention ``f(img, img2, **opt) -> float``): ``img`` = prediction, ``img2`` = ground truth, both
**linear** HDR RGB (Rec.709 primaries), relative scale, as float numpy ``(H, W, 3)`` / ``(N, H, W, 3)`` arrays or
torch ``(3, H, W)`` / ``(N, 3, H, W)`` tensors; a batch gives the mean of the per-image scores. Integer arrays are
refused (they are BasicSR's 8-bit ``tensor2img`` output, not HDR).

Steps shared by every metric (one implementation: :func:`prepare_pairs`, used by the CLI and benchmarks too):

1. Validation: different shapes -> ``ValueError`` naming both. NaN / +-Inf are *sanitised*, not refused (NaN and
   -Inf -> 0, +Inf -> the largest finite value, one warning on logger ``basicsr.llmhdr``), so that one diverged
   validation image does not abort a training run; the warning makes it visible. Negative values are clipped to 0
   (light is >= 0; generators with a linear output layer produce small negatives), silently.
2. ``crop_border`` pixels are removed on each side (BasicSR's option of the same name; default 0).
3. Scale alignment, :func:`align_scale` with ``align`` (default ``'geomean'``): relative HDR has no absolute scale
   and an LDR->HDR method cannot know the exposure of the ground truth, so a global gain is not counted as an
   error. ``'geomean'`` multiplies the prediction by ``exp(mean(log Y_gt - log Y_pred))`` over the pixels where
   both luminances are above ``1e-6`` of their image's maximum: the least-squares gain in log luminance, set by
   the bulk of the pixels (mid-tones) rather than by the few highlights an inverse tone mapper has to hallucinate
   (``'max'`` would let one pixel set the gain). ``'median'`` uses the median log ratio instead, ``'max'`` matches
   the maximum luminances, ``'none'`` keeps the prediction as it is (the plain Kalantari protocol, for outputs that
   already share the ground truth's scale).
4. The metric's own domain:

   - ``calculate_psnr_mu`` (PSNR-mu, Kalantari & Ramamoorthi 2017): both images divided by the ground truth's
     maximum (over pixels and channels), clipped to [0, 1], mu-law ``log(1 + 5000 x) / log(1 + 5000)``; MSE over
     RGB, peak 1.
   - ``calculate_log_psnr``: both images divided by the ground truth's maximum, ``v = log10(max(x, 1e-5)) + 5``
     (the ground truth spans [0, 5], i.e. five decades below its maximum; the prediction is *not* clipped above,
     so overshooting highlights count); MSE over RGB, peak 5.
   - ``calculate_pu21_psnr`` / ``calculate_pu21_ssim``: absolute scaling (:func:`absolute_scale`): both images
     times ``peak_nits / P_percentile(Y_gt)``, default 1000 cd/m² at the ground truth's 99.9th luminance percentile,
     i.e. cd/m² on a 1000-nit-class HDR display with the brightest 0.1 % (speculars, sun) above it (robust to a
     single hot pixel, unlike the maximum; the same anchoring as hdr-expandnet's evaluation and well inside the
     1500 cd/m² peak of the ColorVideoVDP display below). Then PU21 (Mantiuk & Azimi 2021, ``banding_glare``,
     :func:`~llmhdr_basicsr.utils.tonemap.pu21_encode`, luminance clamped to [0.005, 10000] cd/m²).
     PSNR: on the PU-encoded RGB channels (``channel='rgb'``, default) or on PU-encoded luminance (``'y'``).
     SSIM: on PU-encoded luminance (``channel='y'``, default) or per RGB channel, averaged (``'rgb'``), Wang et
     al. 2004 settings (Gaussian window sigma 1.5, K1 = 0.01, K2 = 0.03, population covariance;
     ``skimage.metrics.structural_similarity``, as MATLAB's ``ssim``). The peak / ``data_range`` is **256** by
     default, exactly as the authors' reference ``pu21_metric.m`` (``psnr(T, R, 256)``,
     ``ssim(T, R, 'DynamicRange', 256)``): PU21 is anchored so that 100 cd/m² (SDR white) encodes to 256.4,
     making PU21-PSNR read like 8-bit SDR PSNR and comparable with published PU21 numbers (e.g. Hanji et al.
     SIGGRAPH 2022). ``data_range='display'`` uses PU21(``peak_nits``) (= 420.1 at 1000 cd/m²) instead, and
     a number uses that number. The defaults (RGB PSNR, luminance SSIM) are the reference ``'PSNR'`` and ``'SSIM'``.
   - ``calculate_cvvdp``: ColorVideoVDP (cvvdp 0.5.7, module ``pycvvdp``; never its ML variants, which download
     weights) in JOD (10 = no visible difference), on the same absolute scaling as PU21. Default display
     ``'standard_hdr_linear'``: 30-inch 3840 x 2160 HDR monitor seen from 0.7472 m (2 display heights, 75.4
     pixels per degree), peak 1500 cd/m², contrast 1 000 000:1 (black 0.0015 cd/m²), 10 lux ambient with 0.5 %
     reflectance (+0.016 cd/m²), input = linear BT.709 RGB in cd/m² clipped by the display to [0.005, 1500].
     Only displays with a linear EOTF are accepted (the inputs are absolute linear values).
5. A perfect PSNR is reported as ``max_psnr`` (100 dB by default) instead of ``inf``, so that averages over a
   validation set stay finite.

Precision (``precision``): ``'float64'`` (default: numpy on the CPU, the reference of ``llmhdr-eval`` and the
benchmarks) or ``'float32'`` (torch on ``device``; what validation during training uses, on the model's device).
Input checks and sanitising run in float64 on the CPU either way; from the scale alignment on, everything (the
log-luminance mean, percentile, PU21, mu-law, MSE) runs in float32 on the device. Measured on the 22 sample HDR
images of ``../shared/data/hdr`` (400 x 600 .. 1000 x 1000; prediction = the plain linearisation of a noisy 8-bit
gamma-2.2 rendering of the ground truth, clipped above its 90th luminance percentile, times 1.3), largest
``|float32 - float64|`` on the CPU: PSNR-mu 4.4e-6 dB, log-PSNR 4.6e-6 dB, PU21-PSNR 5.5e-6 dB, clipped-region
PU21-PSNR 1.5e-5 dB, clipped-region log2 ratio 3.5e-7 stops -- far below the 4 decimals that are logged. PU21-SSIM
stays float64 on the CPU (``skimage.metrics.structural_similarity``, no torch twin here); ColorVideoVDP is float32
on ``device`` by construction.

Measured cost on this project's 2 shared CPU cores, per 256 x 256 pair (idle machine .. heavily loaded machine):
PSNR-mu and log-PSNR 3-11 ms, PU21-PSNR 5-40 ms, PU21-SSIM 10-110 ms, ColorVideoVDP 0.025-0.4 s, plus 1.5-3 s for
the first ColorVideoVDP call (import; the metric object is then cached per display and device by :func:`get_cvvdp`).
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from basicsr.utils.registry import METRIC_REGISTRY

from ..utils.hdr_io import sanitize_hdr
from ..utils.tonemap import REC709_WEIGHTS, luminance_np, mu_law, mu_law_np, pu21_encode, pu21_encode_np

logger = logging.getLogger('basicsr.llmhdr')

ALIGN_MODES = ('geomean', 'median', 'max', 'none')
DEFAULT_ALIGN = 'geomean'
DEFAULT_PEAK_NITS = 1000.0  # cd/m² given to the ground truth's `DEFAULT_PERCENTILE` luminance
DEFAULT_PERCENTILE = 99.9
PU21_DATA_RANGE = 256.0  # peak of PSNR / SSIM on PU21 values in the reference pu21_metric.m
MAX_PSNR = 100.0  # dB reported for identical images
LOG_FLOOR = 1e-5  # log-PSNR: values below 1e-5 x the GT maximum are floored (5 decades)
ALIGN_MIN_REL = 1e-6  # align_scale: pixels darker than this fraction of the image maximum are ignored
CVVDP_DISPLAY = 'standard_hdr_linear'
CLIP_THRESHOLD = 0.98  # an LDR pixel is clipped when one of its display-referred channels reaches this (250/255)
_BOOKKEEPING_KEYS = ('better',)  # keys BasicSR's val.metrics blocks carry to calculate_metric


# ---------------------------------------------------------------------------------------------- input handling
def _as_batch(img: Any, name: str) -> np.ndarray:
    """numpy ``(H, W, 3)`` / ``(N, H, W, 3)`` or torch ``(3, H, W)`` / ``(N, 3, H, W)`` -> float64 ``(N, H, W, 3)``."""
    if torch.is_tensor(img):
        if not img.is_floating_point():
            raise TypeError(f'{name}: expected a float linear HDR tensor, got {img.dtype}')
        arr = img.detach().to('cpu', torch.float64).numpy()
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[1] != 3:
            raise ValueError(f'{name}: expected a (3, H, W) or (N, 3, H, W) RGB tensor, got shape {tuple(img.shape)}')
        return arr.transpose(0, 2, 3, 1)
    arr = np.asarray(img)
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(
            f'{name}: expected float linear HDR (H, W, 3), got {arr.dtype} data. HDR metrics do not take 8-bit '
            f'images (BasicSR tensor2img output); pass the float HDR arrays.'
        )
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f'{name}: expected an (H, W, 3) or (N, H, W, 3) RGB array, got shape {np.shape(img)}')
    return arr.astype(np.float64)


def _clean(arr: np.ndarray, name: str) -> np.ndarray:
    """Sanitise NaN/Inf (with a warning naming ``name``) and clip negatives to 0; float64 out."""
    if not np.isfinite(arr).all():
        arr = sanitize_hdr(arr, name).astype(np.float64)
    return np.maximum(arr, 0.0)


class _NumpyOps:
    """float64 numpy arithmetic of the metrics (``precision='float64'``, the default; on the CPU)."""

    clip, maximum, log, log2, log10 = np.clip, np.maximum, np.log, np.log2, np.log10
    lum, mu_law, pu21 = staticmethod(luminance_np), staticmethod(mu_law_np), staticmethod(pu21_encode_np)

    @staticmethod
    def mean(x) -> float:
        return float(np.mean(x))

    @staticmethod
    def median(x) -> float:
        return float(np.median(x))

    @staticmethod
    def percentile(x, q: float) -> float:
        return float(np.percentile(x, q))


class _TorchOps:
    """float32 torch arithmetic of the metrics (``precision='float32'``) on any device; channels-last
    ``(H, W, 3)`` tensors as in the numpy twin. Median and percentile interpolate linearly as numpy's (by sorting:
    no size limit, unlike ``torch.quantile``)."""

    log, log2, log10 = torch.log, torch.log2, torch.log10
    mu_law, pu21 = staticmethod(mu_law), staticmethod(pu21_encode)

    @staticmethod
    def clip(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        return x.clamp(lo, hi)

    @staticmethod
    def maximum(x: torch.Tensor, floor: float) -> torch.Tensor:
        return x.clamp(min=floor)

    @staticmethod
    def lum(x: torch.Tensor) -> torch.Tensor:
        return (x * x.new_tensor(REC709_WEIGHTS)).sum(dim=-1, keepdim=True)

    @staticmethod
    def mean(x: torch.Tensor) -> float:
        return float(x.mean())

    @staticmethod
    def percentile(x: torch.Tensor, q: float) -> float:
        v = x.flatten().sort().values
        pos = q / 100.0 * (v.numel() - 1)
        lo = int(math.floor(pos))
        hi = min(lo + 1, v.numel() - 1)
        return float(v[lo] + (v[hi] - v[lo]) * (pos - lo))

    @classmethod
    def median(cls, x: torch.Tensor) -> float:
        return cls.percentile(x, 50.0)


PRECISIONS = {'float64': _NumpyOps, 'float32': _TorchOps}


def _ops(precision: str):
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {tuple(PRECISIONS)}, got {precision!r}')
    return PRECISIONS[precision]


def _to_device(pairs: list, device) -> list:
    """float64 numpy pairs (or masks) -> float32 torch tensors on ``device`` (bool masks stay bool)."""
    dev = resolve_device('cpu' if device is None else device)
    out = []
    for item in pairs:
        tensors = [torch.from_numpy(np.ascontiguousarray(a)).to(dev) for a in item]
        out.append(tuple(t if t.dtype == torch.bool else t.float() for t in tensors))
    return out


def _check_options(metric: str, kwargs: dict) -> None:
    """Accept BasicSR's bookkeeping keys (e.g. ``better``); any other unknown option is an error naming it."""
    unknown = sorted(k for k in kwargs if k not in _BOOKKEEPING_KEYS)
    if unknown:
        raise TypeError(f'{metric}: unknown option(s) {unknown} (check the val.metrics block of the YAML)')


def prepare_pairs(
    img: Any, img2: Any, align: str = DEFAULT_ALIGN, crop_border: int = 0, precision: str = 'float64', device=None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Steps 1-3 of the protocol: validate, sanitise, crop and scale-align prediction and ground truth.

    Args:
        img: prediction, linear HDR RGB, relative scale: numpy ``(H, W, 3)`` / ``(N, H, W, 3)`` float or torch
            ``(3, H, W)`` / ``(N, 3, H, W)``.
        img2: ground truth, same layout and shape.
        align: scale alignment mode, one of :data:`ALIGN_MODES` (see :func:`align_scale`).
        crop_border: pixels removed on each side before anything else is computed.
        precision: ``'float64'`` (numpy on the CPU) or ``'float32'`` (torch on ``device``; the checks and the
            sanitising still run in float64 on the CPU, the arithmetic from the alignment on runs on the device).
        device: the torch device of ``'float32'`` (None: the CPU).

    Returns:
        One ``(pred, gt)`` pair of ``(H', W', 3)`` linear arrays (>= 0, finite) per image, the prediction
        multiplied by its alignment factor: float64 numpy, or float32 torch tensors on ``device``.

    Raises:
        ValueError: shape mismatch (both shapes named), bad layout, bad ``crop_border``/``align``.
        TypeError: integer (8-bit) inputs.
    """
    pred, gt = _as_batch(img, 'prediction (img)'), _as_batch(img2, 'ground truth (img2)')
    if pred.shape != gt.shape:
        raise ValueError(
            f'Prediction and ground truth shapes differ: img {tuple(np.shape(img))} vs img2 {tuple(np.shape(img2))}'
        )
    if crop_border < 0 or 2 * crop_border >= min(pred.shape[1:3]):
        raise ValueError(f'crop_border={crop_border} is invalid for images of size {pred.shape[1:3]}')
    if crop_border:
        pred = pred[:, crop_border:-crop_border, crop_border:-crop_border]
        gt = gt[:, crop_border:-crop_border, crop_border:-crop_border]
    pred, gt = _clean(pred, 'prediction (img)'), _clean(gt, 'ground truth (img2)')
    xp = _ops(precision)
    pairs = list(zip(pred, gt)) if xp is _NumpyOps else _to_device(list(zip(pred, gt)), device)
    return [(align_scale(p, g, align, xp)[0], g) for p, g in pairs]


# ------------------------------------------------------------------------------------------------ scaling
def align_scale(pred: np.ndarray, gt: np.ndarray, mode: str = DEFAULT_ALIGN, xp=_NumpyOps) -> tuple[np.ndarray, float]:
    """Multiply the prediction by one global factor so that its exposure matches the ground truth.

    Args:
        pred: ``(H, W, 3)`` linear HDR RGB, relative scale, >= 0.
        gt: ``(H, W, 3)`` linear HDR RGB, relative scale, >= 0.
        mode: ``'geomean'`` (``exp(mean(log Y_gt - log Y_pred))`` over pixels where both Rec.709 luminances exceed
            ``1e-6`` of their image's maximum), ``'median'`` (median of the same log ratios), ``'max'``
            (``max Y_gt / max Y_pred``) or ``'none'`` (factor 1).

    Returns:
        ``(pred * factor, factor)``; the factor is 1 when no pixel is usable (e.g. a black prediction).
    """
    if mode not in ALIGN_MODES:
        raise ValueError(f'Unknown align mode {mode!r}; choose one of {ALIGN_MODES}')
    if mode == 'none':
        return pred, 1.0
    lum_p, lum_g = xp.lum(pred)[..., 0], xp.lum(gt)[..., 0]
    max_p, max_g = float(lum_p.max()), float(lum_g.max())
    factor = 1.0
    if max_p > 0 and max_g > 0:
        if mode == 'max':
            factor = max_g / max_p
        else:
            valid = (lum_p > ALIGN_MIN_REL * max_p) & (lum_g > ALIGN_MIN_REL * max_g)
            if valid.any():
                log_ratio = xp.log(lum_g[valid]) - xp.log(lum_p[valid])
                factor = math.exp(xp.mean(log_ratio) if mode == 'geomean' else xp.median(log_ratio))
    return pred * factor, factor


def absolute_scale(
    gt: np.ndarray, peak_nits: float = DEFAULT_PEAK_NITS, percentile: float = DEFAULT_PERCENTILE, xp=_NumpyOps
) -> float:
    """Factor turning relative linear HDR into cd/m²: the ground truth's luminance percentile -> ``peak_nits``.

    Args:
        gt: ``(H, W, 3)`` linear HDR RGB (relative scale), the ground truth that fixes the scale for both images.
        peak_nits: luminance in cd/m² given to that percentile.
        percentile: in (0, 100]; 100 = the maximum (as in the PU21 authors' examples).

    Returns:
        The factor (falls back to the maximum when the percentile is 0, and to ``peak_nits`` for a black image).
    """
    if not 0 < percentile <= 100 or peak_nits <= 0:
        raise ValueError(f'absolute_scale: need 0 < percentile <= 100 and peak_nits > 0, got {percentile}, {peak_nits}')
    lum = xp.lum(gt)[..., 0]
    ref = xp.percentile(lum, percentile)
    if ref <= 0:
        ref = float(lum.max())
    return peak_nits / ref if ref > 0 else peak_nits


def to_absolute(
    pred: np.ndarray,
    gt: np.ndarray,
    peak_nits: float = DEFAULT_PEAK_NITS,
    percentile: float = DEFAULT_PERCENTILE,
    xp=_NumpyOps,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Scale an (already aligned) pair to absolute cd/m² with the ground truth's :func:`absolute_scale`.

    Returns:
        ``(pred_cd_m2, gt_cd_m2, factor)``, both ``(H, W, 3)`` linear RGB in cd/m².
    """
    factor = absolute_scale(gt, peak_nits, percentile, xp)
    return pred * factor, gt * factor, factor


# ----------------------------------------------------------------------------------------------- primitives
def _psnr(a: np.ndarray, b: np.ndarray, peak: float, max_psnr: float, xp=_NumpyOps) -> float:
    mse = xp.mean((a - b) ** 2)
    if mse == 0:
        return float(max_psnr)
    return float(min(10.0 * math.log10(peak * peak / mse), max_psnr))


def _ssim(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    from skimage.metrics import structural_similarity

    if min(a.shape[:2]) < 11:
        raise ValueError(f'SSIM needs images of at least 11 x 11 pixels (Gaussian window), got {a.shape[:2]}')
    channel_axis = -1 if a.ndim == 3 else None
    wang2004 = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, K1=0.01, K2=0.03)
    return float(structural_similarity(a, b, data_range=data_range, channel_axis=channel_axis, **wang2004))


def _pu21(x: np.ndarray, channel: str, xp=_NumpyOps) -> np.ndarray:
    """PU21 of absolute linear RGB ``(H, W, 3)``: per channel (``'rgb'``) or of luminance (``'y'``, ``(H, W)``)."""
    if channel == 'y':
        return xp.pu21(xp.lum(x)[..., 0])
    if channel == 'rgb':
        return xp.pu21(x)
    raise ValueError(f"channel must be 'y' or 'rgb', got {channel!r}")


def _pu21_range(data_range: float | str, peak_nits: float) -> float:
    if data_range == 'pu21':
        return PU21_DATA_RANGE
    if data_range == 'display':
        return float(pu21_encode_np(np.array(peak_nits, dtype=np.float64)))
    if isinstance(data_range, (int, float)) and data_range > 0:
        return float(data_range)
    raise ValueError(f"data_range must be 'pu21', 'display' or a positive number, got {data_range!r}")


# ------------------------------------------------------------------------------------------------- metrics
@METRIC_REGISTRY.register()
def calculate_psnr_mu(
    img: Any,
    img2: Any,
    align: str = DEFAULT_ALIGN,
    crop_border: int = 0,
    max_psnr: float = MAX_PSNR,
    precision: str = 'float64',
    device: Any = None,
    **kwargs,
) -> float:
    """PSNR-mu in dB (Kalantari & Ramamoorthi 2017): mu-law (mu = 5000) of both images normalised by the GT maximum.

    Args:
        img: prediction, linear HDR RGB, relative scale (see the module docstring for layouts).
        img2: ground truth, linear HDR RGB, relative scale, same shape.
        align: scale alignment before the normalisation (:func:`align_scale`).
        crop_border: pixels removed on each side.
        max_psnr: value reported for identical images (and the cap for all).
        precision: ``'float64'`` (default; numpy on the CPU) or ``'float32'`` (torch on ``device``; validation's
            choice, see the module docstring for the measured difference).
        device: torch device of ``precision='float32'`` (None: the CPU).

    Returns:
        Mean PSNR-mu over the batch, in dB (higher is better).
    """
    _check_options('calculate_psnr_mu', kwargs)
    xp, scores = _ops(precision), []
    for pred, gt in prepare_pairs(img, img2, align, crop_border, precision, device):
        peak = float(gt.max()) or 1.0
        t_pred = xp.mu_law(xp.clip(pred / peak, 0.0, 1.0))
        t_gt = xp.mu_law(xp.clip(gt / peak, 0.0, 1.0))
        scores.append(_psnr(t_pred, t_gt, 1.0, max_psnr, xp))
    return float(np.mean(scores))


@METRIC_REGISTRY.register()
def calculate_log_psnr(
    img: Any,
    img2: Any,
    align: str = DEFAULT_ALIGN,
    crop_border: int = 0,
    floor: float = LOG_FLOOR,
    max_psnr: float = MAX_PSNR,
    precision: str = 'float64',
    device: Any = None,
    **kwargs,
) -> float:
    """PSNR in the log10 domain, in dB: ``log10(max(x / max(gt), floor))``, peak = ``-log10(floor)`` decades.

    Args:
        img: prediction, linear HDR RGB, relative scale.
        img2: ground truth, linear HDR RGB, relative scale, same shape.
        align: scale alignment (:func:`align_scale`).
        crop_border: pixels removed on each side.
        floor: relative floor (default 1e-5: the ground truth spans 5 decades, peak 5).
        max_psnr: value reported for identical images.
        precision: ``'float64'`` (default; numpy on the CPU) or ``'float32'`` (torch on ``device``; validation's
            choice, see the module docstring for the measured difference).
        device: torch device of ``precision='float32'`` (None: the CPU).

    Returns:
        Mean log-PSNR over the batch, in dB (higher is better).
    """
    _check_options('calculate_log_psnr', kwargs)
    if not 0 < floor < 1:
        raise ValueError(f'calculate_log_psnr: floor must be in (0, 1), got {floor}')
    decades = -math.log10(floor)
    xp, scores = _ops(precision), []
    for pred, gt in prepare_pairs(img, img2, align, crop_border, precision, device):
        peak = float(gt.max()) or 1.0
        v_pred = xp.log10(xp.maximum(pred / peak, floor)) + decades
        v_gt = xp.log10(xp.maximum(gt / peak, floor)) + decades
        scores.append(_psnr(v_pred, v_gt, decades, max_psnr, xp))
    return float(np.mean(scores))


@METRIC_REGISTRY.register()
def calculate_pu21_psnr(
    img: Any,
    img2: Any,
    align: str = DEFAULT_ALIGN,
    crop_border: int = 0,
    peak_nits: float = DEFAULT_PEAK_NITS,
    percentile: float = DEFAULT_PERCENTILE,
    channel: str = 'rgb',
    data_range: float | str = 'pu21',
    max_psnr: float = MAX_PSNR,
    precision: str = 'float64',
    device: Any = None,
    **kwargs,
) -> float:
    """PU21-PSNR in dB (Mantiuk & Azimi 2021) after absolute scaling of both images.

    Args:
        img: prediction, linear HDR RGB, relative scale.
        img2: ground truth, linear HDR RGB, relative scale, same shape.
        align: scale alignment (:func:`align_scale`).
        crop_border: pixels removed on each side.
        peak_nits: cd/m² given to the ground truth's ``percentile`` luminance (:func:`absolute_scale`).
        percentile: luminance percentile of the ground truth mapped to ``peak_nits``.
        channel: ``'rgb'`` (PU21 per channel, the reference ``'PSNR'``) or ``'y'`` (luminance, ``'PSNRY'``).
        data_range: PSNR peak: ``'pu21'`` (256, as pu21_metric.m), ``'display'`` (PU21 of ``peak_nits``) or a number.
        max_psnr: value reported for identical images.
        precision: ``'float64'`` (default; numpy on the CPU) or ``'float32'`` (torch on ``device``; validation's
            choice, see the module docstring for the measured difference).
        device: torch device of ``precision='float32'`` (None: the CPU).

    Returns:
        Mean PU21-PSNR over the batch, in dB (higher is better).
    """
    _check_options('calculate_pu21_psnr', kwargs)
    peak = _pu21_range(data_range, peak_nits)
    xp, scores = _ops(precision), []
    for pred, gt in prepare_pairs(img, img2, align, crop_border, precision, device):
        pred_abs, gt_abs, _ = to_absolute(pred, gt, peak_nits, percentile, xp)
        scores.append(_psnr(_pu21(pred_abs, channel, xp), _pu21(gt_abs, channel, xp), peak, max_psnr, xp))
    return float(np.mean(scores))


@METRIC_REGISTRY.register()
def calculate_pu21_ssim(
    img: Any,
    img2: Any,
    align: str = DEFAULT_ALIGN,
    crop_border: int = 0,
    peak_nits: float = DEFAULT_PEAK_NITS,
    percentile: float = DEFAULT_PERCENTILE,
    channel: str = 'y',
    data_range: float | str = 'pu21',
    **kwargs,
) -> float:
    """PU21-SSIM (Wang et al. 2004 SSIM on PU21-encoded absolute luminance), in [-1, 1].

    Args:
        img: prediction, linear HDR RGB, relative scale (at least 11 x 11 pixels after cropping).
        img2: ground truth, linear HDR RGB, relative scale, same shape.
        align: scale alignment (:func:`align_scale`).
        crop_border: pixels removed on each side.
        peak_nits: cd/m² given to the ground truth's ``percentile`` luminance (:func:`absolute_scale`).
        percentile: luminance percentile of the ground truth mapped to ``peak_nits``.
        channel: ``'y'`` (PU21 of luminance, the reference ``'SSIM'``) or ``'rgb'`` (per channel, averaged).
        data_range: SSIM dynamic range: ``'pu21'`` (256), ``'display'`` (PU21 of ``peak_nits``) or a number.

    Returns:
        Mean PU21-SSIM over the batch (higher is better, 1 = identical).
    """
    _check_options('calculate_pu21_ssim', kwargs)
    rng = _pu21_range(data_range, peak_nits)
    scores = []
    for pred, gt in prepare_pairs(img, img2, align, crop_border):
        pred_abs, gt_abs, _ = to_absolute(pred, gt, peak_nits, percentile)
        scores.append(_ssim(_pu21(pred_abs, channel), _pu21(gt_abs, channel), rng))
    return float(np.mean(scores))


def clipped_mask(lq: Any, threshold: float = CLIP_THRESHOLD, crop_border: int = 0) -> np.ndarray:
    """Pixels clipped in the LDR input: at least one display-referred channel ``>= threshold``.

    Args:
        lq: the LDR input, display-referred RGB in [0, 1] as float numpy ``(H, W, 3)`` / ``(N, H, W, 3)`` or torch
            ``(3, H, W)`` / ``(N, 3, H, W)``; uint8 / uint16 code values are scaled to [0, 1].
        threshold: display value that counts as clipped (default 0.98 = 250/255, so JPEG ringing at white counts).
        crop_border: pixels removed on each side (as for the HDR pair).

    Returns:
        ``(N, H', W')`` bool.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f'clip_threshold must lie in (0, 1], got {threshold}')
    arr = lq
    if not torch.is_tensor(arr) and np.issubdtype(np.asarray(arr).dtype, np.integer):
        arr = np.asarray(arr).astype(np.float64) / np.iinfo(np.asarray(arr).dtype).max
    ldr = _as_batch(arr, 'LDR input (lq)')
    if crop_border:
        ldr = ldr[:, crop_border:-crop_border, crop_border:-crop_border]
    return ldr.max(axis=-1) >= threshold


def _clipped_pairs(
    img: Any, img2: Any, lq: Any, threshold: float, align: str, crop_border: int, precision: str, device: Any
):
    """The aligned pairs of :func:`prepare_pairs` with the clipped mask of each image's LDR input."""
    if lq is None:
        raise ValueError('clipped-region metrics need the LDR input (lq) to find its clipped pixels')
    pairs = prepare_pairs(img, img2, align, crop_border, precision, device)
    masks = clipped_mask(lq, threshold, crop_border)
    if masks.shape != (len(pairs), *pairs[0][1].shape[:2]):
        raise ValueError(
            f'LDR input (lq) shape {tuple(np.shape(lq))} does not match the HDR images {tuple(np.shape(img2))}'
        )
    if _ops(precision) is _TorchOps:
        masks = [m for (m,) in _to_device([(m,) for m in masks], device)]
    return [(pred, gt, mask) for (pred, gt), mask in zip(pairs, masks)]


def _nanmean(scores: list[float]) -> float:
    finite = [v for v in scores if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float('nan')


@METRIC_REGISTRY.register()
def calculate_pu21_psnr_clipped(
    img: Any,
    img2: Any,
    lq: Any = None,
    clip_threshold: float = CLIP_THRESHOLD,
    align: str = DEFAULT_ALIGN,
    crop_border: int = 0,
    peak_nits: float = DEFAULT_PEAK_NITS,
    percentile: float = DEFAULT_PERCENTILE,
    channel: str = 'rgb',
    data_range: float | str = 'pu21',
    max_psnr: float = MAX_PSNR,
    precision: str = 'float64',
    device: Any = None,
    **kwargs,
) -> float:
    """PU21-PSNR in dB over the pixels that are clipped in the LDR input (highlight recovery).

    The same alignment and absolute scaling as :func:`calculate_pu21_psnr` (computed on the whole image); the squared
    error is averaged only over the pixels of :func:`clipped_mask`, where the input holds no information and plain
    linearisation leaves the values at white.

    Args:
        img: prediction, linear HDR RGB, relative scale.
        img2: ground truth, linear HDR RGB, relative scale, same shape.
        lq: the LDR input the prediction was made from (see :func:`clipped_mask`), same height and width.
        clip_threshold: display value of a clipped channel.
        align, crop_border, peak_nits, percentile, channel, data_range, max_psnr, precision, device: as
            :func:`calculate_pu21_psnr`.

    Returns:
        Mean over the images that have clipped pixels (NaN when none has), in dB (higher is better).
    """
    _check_options('calculate_pu21_psnr_clipped', kwargs)
    peak = _pu21_range(data_range, peak_nits)
    xp, scores = _ops(precision), []
    for pred, gt, mask in _clipped_pairs(img, img2, lq, clip_threshold, align, crop_border, precision, device):
        if not mask.any():
            scores.append(float('nan'))
            continue
        pred_abs, gt_abs, _ = to_absolute(pred, gt, peak_nits, percentile, xp)
        scores.append(_psnr(_pu21(pred_abs, channel, xp)[mask], _pu21(gt_abs, channel, xp)[mask], peak, max_psnr, xp))
    return _nanmean(scores)


@METRIC_REGISTRY.register()
def calculate_clipped_log_ratio(
    img: Any,
    img2: Any,
    lq: Any = None,
    clip_threshold: float = CLIP_THRESHOLD,
    align: str = DEFAULT_ALIGN,
    crop_border: int = 0,
    precision: str = 'float64',
    device: Any = None,
    **kwargs,
) -> float:
    """Median ``log2(Y_pred / Y_gt)`` over the pixels clipped in the LDR input, after the scale alignment.

    0 = highlights at the right brightness; negative = too dark (plain linearisation leaves them at white, several
    stops below the truth); positive = over-expanded. Luminances are floored at 1e-6 of the ground truth's maximum.

    Args:
        img: prediction, linear HDR RGB, relative scale.
        img2: ground truth, linear HDR RGB, relative scale, same shape.
        lq: the LDR input (see :func:`clipped_mask`).
        clip_threshold, align, crop_border, precision, device: as :func:`calculate_pu21_psnr_clipped`.

    Returns:
        Mean over the images that have clipped pixels (NaN when none has), in stops (best: 0).
    """
    _check_options('calculate_clipped_log_ratio', kwargs)
    xp, scores = _ops(precision), []
    for pred, gt, mask in _clipped_pairs(img, img2, lq, clip_threshold, align, crop_border, precision, device):
        if not mask.any():
            scores.append(float('nan'))
            continue
        lum_p, lum_g = xp.lum(pred)[..., 0][mask], xp.lum(gt)[..., 0][mask]
        floor = ALIGN_MIN_REL * max(float(gt.max()), 1e-30)
        scores.append(xp.median(xp.log2(xp.maximum(lum_p, floor) / xp.maximum(lum_g, floor))))
    return _nanmean(scores)


def resolve_device(device: str | torch.device = 'cpu') -> torch.device:
    """``'auto'`` -> ``cuda`` when available else ``cpu``; anything else is passed to ``torch.device``."""
    if str(device) == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    return torch.device(device)


@functools.lru_cache(maxsize=4)
def get_cvvdp(display: str = CVVDP_DISPLAY, device: str = 'cpu') -> Any:
    """The ``pycvvdp.cvvdp`` metric object for a display model and device, built once per process and cached.

    Raises:
        ImportError: cvvdp is not installed. ValueError: unknown display, or a display without a linear EOTF.
    """
    try:
        import pycvvdp
    except ImportError as err:
        raise ImportError('calculate_cvvdp needs the ColorVideoVDP package: pip install cvvdp') from err
    try:
        metric = pycvvdp.cvvdp(display_name=display, device=torch.device(device), quiet=True)
    except Exception as err:  # pycvvdp raises its own exception type for unknown names
        raise ValueError(f'calculate_cvvdp: cannot build ColorVideoVDP for display {display!r}: {err}') from err
    eotf = getattr(metric.display_photometry, 'EOTF', None)
    if eotf != 'linear':
        raise ValueError(
            f'calculate_cvvdp: display {display!r} has EOTF {eotf!r}; this metric feeds absolute linear cd/m² and '
            f'needs a display model with a linear EOTF (e.g. {CVVDP_DISPLAY!r})'
        )
    return metric


@METRIC_REGISTRY.register()
def calculate_cvvdp(
    img: Any,
    img2: Any,
    align: str = DEFAULT_ALIGN,
    crop_border: int = 0,
    peak_nits: float = DEFAULT_PEAK_NITS,
    percentile: float = DEFAULT_PERCENTILE,
    display: str = CVVDP_DISPLAY,
    device: str = 'cpu',
    **kwargs,
) -> float:
    """ColorVideoVDP quality in JOD (Mantiuk et al. 2024) on absolute linear RGB; 10 = no visible difference.

    Args:
        img: prediction, linear HDR RGB, relative scale.
        img2: ground truth, linear HDR RGB, relative scale, same shape.
        align: scale alignment (:func:`align_scale`).
        crop_border: pixels removed on each side.
        peak_nits: cd/m² given to the ground truth's ``percentile`` luminance (:func:`absolute_scale`).
        percentile: luminance percentile of the ground truth mapped to ``peak_nits``.
        display: pycvvdp display model with a linear EOTF (default ``'standard_hdr_linear'``, see module docstring).
        device: ``'cpu'`` (default), ``'cuda'``, ``'cuda:N'`` or ``'auto'``.

    Returns:
        Mean JOD over the batch (higher is better).
    """
    _check_options('calculate_cvvdp', kwargs)
    metric = get_cvvdp(display, str(resolve_device(device)))
    scores = []
    for pred, gt in prepare_pairs(img, img2, align, crop_border):
        pred_abs, gt_abs, _ = to_absolute(pred, gt, peak_nits, percentile)
        test = torch.from_numpy(pred_abs.astype(np.float32)).to(metric.device)
        ref = torch.from_numpy(gt_abs.astype(np.float32)).to(metric.device)
        with torch.no_grad():
            jod, _ = metric.predict(test, ref, dim_order='HWC')
        scores.append(float(jod))
    return float(np.mean(scores))


# ------------------------------------------------------------------------------------------------ catalogue
class MetricSpec(NamedTuple):
    """One entry of :data:`HDR_METRICS`: the function, which direction is better, the unit and whether it needs the
    LDR input (``lq``)."""

    func: Callable[..., float]
    better: str
    unit: str
    needs_lq: bool = False


#: Short name -> metric, for ``llmhdr-eval`` and the benchmarks (column names; ``better`` as BasicSR spells it, or
#: ``'zero'`` for a signed error whose ideal is 0).
HDR_METRICS: dict[str, MetricSpec] = {
    'psnr_mu': MetricSpec(calculate_psnr_mu, 'higher', 'dB'),
    'log_psnr': MetricSpec(calculate_log_psnr, 'higher', 'dB'),
    'pu21_psnr': MetricSpec(calculate_pu21_psnr, 'higher', 'dB'),
    'pu21_ssim': MetricSpec(calculate_pu21_ssim, 'higher', ''),
    'cvvdp': MetricSpec(calculate_cvvdp, 'higher', 'JOD'),
    'pu21_psnr_clip': MetricSpec(calculate_pu21_psnr_clipped, 'higher', 'dB', needs_lq=True),
    'log2_ratio_clip': MetricSpec(calculate_clipped_log_ratio, 'zero', 'stops', needs_lq=True),
}


def compute_hdr_metrics(
    img: Any, img2: Any, names: list[str] | tuple[str, ...] | None = None, lq: Any = None, **opts
) -> dict:
    """Several metrics of one prediction / ground-truth pair; each gets the options its signature accepts.

    Args:
        img: prediction, linear HDR RGB, relative scale.
        img2: ground truth, same shape.
        names: keys of :data:`HDR_METRICS` (default: all of them, without the clipped-region ones when ``lq`` is
            None).
        lq: the LDR input of the prediction (display-referred, same height and width), for the clipped-region
            metrics.
        **opts: shared options (``align``, ``crop_border``, ``peak_nits``, ``percentile``, ``device``, ...). An
            option that no selected metric accepts is an error.

    Returns:
        ``{name: score}`` in the order of ``names``.
    """
    if names is None:
        names = [n for n, spec in HDR_METRICS.items() if lq is not None or not spec.needs_lq]
    names = list(names)
    unknown = [n for n in names if n not in HDR_METRICS]
    if unknown:
        raise ValueError(f'Unknown HDR metric(s) {unknown}; available: {list(HDR_METRICS)}')
    needs = [n for n in names if HDR_METRICS[n].needs_lq]
    if needs and lq is None:
        raise ValueError(f'HDR metric(s) {needs} need the LDR input (lq) to find the clipped pixels')
    params = {n: set(inspect.signature(HDR_METRICS[n].func).parameters) for n in names}
    unused = [k for k in opts if not any(k in p for p in params.values())]
    if unused:
        raise TypeError(f'compute_hdr_metrics: option(s) {unused} are accepted by none of {names}')
    scores = {}
    for n in names:
        kwargs = {k: v for k, v in opts.items() if k in params[n]}
        if HDR_METRICS[n].needs_lq:
            kwargs['lq'] = lq
        scores[n] = HDR_METRICS[n].func(img, img2, **kwargs)
    return scores
