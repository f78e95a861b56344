"""TMQI, the tone-mapped image quality index (Yeganeh & Wang, IEEE TIP 22(2), 2013), in BasicSR's ``METRIC_REGISTRY``.

TMQI scores a tone-mapped LDR image against the HDR image it was made from: ``Q = a S^alpha + (1 - a) N^beta`` with
``a = 0.8012``, ``alpha = 0.3046``, ``beta = 0.7088``, where

- **S** (structural fidelity, in [0, 1]) compares the local structure of the HDR luminance and the LDR luma on five
  scales (a dyadic pyramid, 2 x 2 box filter + decimation), in an 11 x 11 Gaussian window (sigma 1.5, "valid" region
  only). Per pixel: ``S_l = (2 s'_x s'_y + C1) / (s'_x^2 + s'_y^2 + C1) * (s_xy + C2) / (s_x s_y + C2)``, C1 = 0.01,
  C2 = 10, where ``s' = Phi((s - tau) / (tau / 3))`` maps a local standard deviation ``s`` to the probability that the
  contrast is visible (psychometric function, Crozier's law ``theta = tau / 3``). The threshold ``tau(f) = 128 /
  (1.4 * 100 * A(f))`` comes from the Mannos-Sakrison contrast sensitivity ``A(f) = 2.6 (0.0192 + 0.114 f)
  exp(-(0.114 f)^1.1)`` at ``f = 16, 8, 4, 2, 1`` cycles/degree for scales 1..5 (constants of the authors' reference
  code). The scale means are combined as ``S = prod(mean(S_l)^w_l)``, ``w = (0.0448, 0.2856, 0.3001, 0.2363,
  0.1333)``.
- **N** (statistical naturalness, in [0, 1]) of the LDR alone: the mean luma ``m`` (Gaussian model, mean 115.94, std
  27.99) and the mean ``d`` of the standard deviations of the non-overlapping 11 x 11 blocks (Beta model of ``d /
  64.29``, alpha 4.4, beta 10.1), each density divided by its maximum, ``N = P_m(m) P_d(d)``. N is 1 for ``m =
  115.94`` and ``d = 64.29 * 3.4 / 12.5 = 17.49`` (8-bit units).

Inputs and colour spaces (as the reference code):

- HDR: linear RGB (Rec.709 / sRGB primaries), any scale (absolute or relative: TMQI normalises it), float numpy
  ``(H, W, 3)`` / ``(N, H, W, 3)``, torch ``(3, H, W)`` / ``(N, 3, H, W)``, or an ``(H, W)`` numpy luminance map.
  Luminance ``Y = 0.2126 R + 0.7152 G + 0.0722 B`` (the Y row of the reference's RGB -> XYZ matrix), then min-max
  normalised to [0, 2^32 - 1]; so S and Q do not change when the HDR image is multiplied by a constant. Integer
  arrays are refused (8-bit data is not HDR); NaN / Inf are sanitised with one warning, negatives clipped to 0.
- LDR (the tone-mapped image): display-referred, sRGB-encoded RGB (the transfer function is *not* removed, as in the
  reference, which works on 8-bit code values), same layouts; uint8 code values, uint16 (scaled to 0..255) or float in
  [0, 1] (scaled by 255; values outside are clipped, and a float image above 1.5 is refused as probably 0..255 data).
  Its luma ``0.2126 R' + 0.7152 G' + 0.0722 B'`` in 8-bit units enters both S and N.
- Prediction first (BasicSR's ``f(img, img2)``): ``img`` = tone-mapped LDR, ``img2`` = the source HDR. A batch gives
  the mean of the per-image scores. Images must be at least 161 x 161 pixels (after ``crop_border``): the fifth scale
  (1/16 of the size) needs an 11 x 11 window.

Deviations from the reference MATLAB code (``TMQI.m`` v1.0), all for numerical robustness; none changes the formula:

1. The HDR gain is ``(2^32 - 1) / (max - min)`` exactly, not rounded to an integer (the rounding gives 0 for an HDR
   range above 8.6e9 and breaks the scale invariance).
2. Local variances are computed from the [0, 1]-normalised luminance in float64 and multiplied by the gain afterwards
   (the same numbers, without moments of order 1e19); a local variance below ``64 * eps`` of the local mean square
   (a relative local contrast below about 1.2e-7, i.e. float32 precision) counts as 0. In the reference such regions
   (e.g. saturated HDR highlights at the maximum) get rounding noise of tens of units, which its psychometric
   function (threshold about 1) reads as visible structure, so that flat HDR regions score about 0.01 or 1 by chance.
3. The block standard deviations of N use the pixels of each block only (edge blocks that the image size does not
   fill are smaller), weighted by their pixel count, sample standard deviation (MATLAB's ``std``); the reference's
   ``blkproc`` pads partial edge blocks with zeros, which inflates their deviation. Identical when height and width
   are multiples of 11.
4. A negative mean local fidelity at some scale (possible only for structure-inverting images; the reference returns
   NaN, a negative number to a fractional power) is clamped to 0, so S = 0.

No published TMQI value of a simple synthetic case was found to test against; tests/test_tmqi.py checks properties
and a hand computation of Q from S and N.

Measured cost (this project's 2 shared CPU cores, one thread): about 0.6 s for a 1024 x 1024 pair.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch
from basicsr.utils.registry import METRIC_REGISTRY

from .hdr_metric import MAX_PSNR, MetricSpec, _as_batch, _check_options, _clean, _psnr, _ssim

# ------------------------------------------------------------------------------------------------ constants
TMQI_A = 0.8012  # relative weight of S in Q
TMQI_ALPHA = 0.3046  # exponent of S
TMQI_BETA = 0.7088  # exponent of N
SCALE_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # MS-SSIM weights of the five scales
SPATIAL_FREQUENCIES = (16.0, 8.0, 4.0, 2.0, 1.0)  # cycles/degree assumed at scales 1..5
WINDOW_SIZE = 11
WINDOW_SIGMA = 1.5
C1 = 0.01
C2 = 10.0
HDR_RANGE = 2.0**32 - 1  # the HDR luminance is min-max normalised to [0, HDR_RANGE]
MEAN_LUMA = 128.0  # mean intensity assumed by the contrast thresholds
CROZIER_K = 3.0  # theta_sigma = tau_sigma / k
NAT_MEAN, NAT_MEAN_STD = 115.94, 27.99  # Gaussian model of the mean luma
NAT_STD_ALPHA, NAT_STD_BETA, NAT_STD_SCALE = 4.4, 10.1, 64.29  # Beta model of (mean block std) / 64.29
NAT_BLOCK = 11
LUMA_WEIGHTS = (0.2126, 0.7152, 0.0722)
MIN_SIZE = WINDOW_SIZE * 2 ** (len(SCALE_WEIGHTS) - 1) - 2 ** (len(SCALE_WEIGHTS) - 1) + 1  # 161: ceil(161/16) = 11
_VAR_FLOOR = 64 * np.finfo(np.float64).eps


class TMQIResult(NamedTuple):
    """TMQI of one image: ``Q``, ``S``, ``N`` and the mean local fidelity of each scale (finest first)."""

    Q: float
    S: float
    N: float
    s_local: tuple[float, ...]


# ------------------------------------------------------------------------------------------------ input handling
def _batch(img: Any) -> Any:
    """numpy ``(H, W)`` -> ``(H, W, 3)``; integer torch tensors -> numpy ``(.., H, W, 3)``; anything else unchanged."""
    if torch.is_tensor(img):
        if img.is_floating_point():
            return img
        arr = img.detach().cpu().numpy()
        return arr.transpose(1, 2, 0) if arr.ndim == 3 else arr.transpose(0, 2, 3, 1)
    arr = np.asarray(img)
    return arr[..., None].repeat(3, axis=-1) if arr.ndim == 2 else arr


def ldr_to_8bit(img: Any, name: str = 'LDR image') -> np.ndarray:
    """Display-referred LDR (uint8, uint16 or float in [0, 1]; layouts of the module docstring) -> float64
    ``(N, H, W, 3)`` in 8-bit units, 0..255 (float values clipped to [0, 1] first)."""
    arr = _batch(img)
    if not torch.is_tensor(arr) and np.issubdtype(arr.dtype, np.integer):
        if arr.dtype not in (np.uint8, np.uint16):
            raise TypeError(f'{name}: expected uint8 / uint16 code values or float in [0, 1], got {arr.dtype}')
        return _as_batch(arr.astype(np.float64) * (255.0 / np.iinfo(arr.dtype).max), name)
    rgb = np.nan_to_num(_as_batch(arr, name), nan=0.0, posinf=1.0, neginf=0.0)
    if rgb.size and rgb.max() > 1.5:
        raise ValueError(
            f'{name}: float LDR values must lie in [0, 1], got max {rgb.max():.4g} (pass uint8 or x / 255)'
        )
    return np.clip(rgb, 0.0, 1.0) * 255.0


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.asarray(LUMA_WEIGHTS)


def _crop(arrays: tuple[np.ndarray, ...], crop_border: int) -> tuple[np.ndarray, ...]:
    """Remove ``crop_border`` pixels on each side of ``(N, H, W, ...)`` arrays."""
    size = arrays[0].shape[1:3]
    if crop_border < 0 or 2 * crop_border >= min(size):
        raise ValueError(f'crop_border={crop_border} is invalid for images of size {size}')
    if not crop_border:
        return arrays
    return tuple(a[:, crop_border:-crop_border, crop_border:-crop_border] for a in arrays)


def _prepare(img: Any, img2: Any, crop_border: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate, convert and crop: ``(ldr_luma, hdr_luminance)``, both float64 ``(N, H, W)``."""
    ldr = _luma(ldr_to_8bit(img, 'tone-mapped image (img)'))
    hdr = _luma(_clean(_as_batch(_batch(img2), 'HDR image (img2)'), 'HDR image (img2)'))
    if ldr.shape != hdr.shape:
        raise ValueError(
            f'TMQI: tone-mapped image (img) and HDR image (img2) sizes differ: {ldr.shape[1:]} vs {hdr.shape[1:]}'
            + (f' ({ldr.shape[0]} vs {hdr.shape[0]} images)' if ldr.shape[0] != hdr.shape[0] else '')
        )
    ldr, hdr = _crop((ldr, hdr), crop_border)
    if min(ldr.shape[1:]) < MIN_SIZE:
        raise ValueError(
            f'TMQI needs images of at least {MIN_SIZE} x {MIN_SIZE} pixels (an 11 x 11 window at 1/16 scale), got '
            f'{ldr.shape[1]} x {ldr.shape[2]}'
        )
    return ldr, hdr


# ------------------------------------------------------------------------------------------------ primitives
def _gaussian_window() -> np.ndarray:
    x = np.arange(WINDOW_SIZE, dtype=np.float64) - (WINDOW_SIZE - 1) / 2
    g = np.exp(-(x**2) / (2 * WINDOW_SIGMA**2))
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable correlation with the 1-D window ``g`` over the 'valid' region (MATLAB ``filter2(.., 'valid')``)."""
    from scipy.ndimage import correlate1d

    r = len(g) // 2
    y = correlate1d(x, g, axis=0, mode='constant')[r:-r]
    return correlate1d(y, g, axis=1, mode='constant')[:, r:-r]


def _downsample(x: np.ndarray) -> np.ndarray:
    """2 x 2 mean then every second pixel, edges replicated for odd sizes (reference: ``imfilter 'symmetric'``)."""
    h, w = x.shape
    if h % 2 or w % 2:
        x = np.pad(x, ((0, h % 2), (0, w % 2)), mode='edge')
    return 0.25 * (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2])


def contrast_threshold(f: float) -> float:
    """Visibility threshold ``tau`` of a local standard deviation at ``f`` cycles/degree (8-bit units)."""
    csf = 100.0 * 2.6 * (0.0192 + 0.114 * f) * math.exp(-((0.114 * f) ** 1.1))
    return MEAN_LUMA / (1.4 * csf)


def _local_sigma(mean_sq: np.ndarray, mu: np.ndarray) -> np.ndarray:
    var = mean_sq - mu * mu
    var[var <= _VAR_FLOOR * mean_sq] = 0.0  # rounding noise of a flat window (module docstring, deviation 2)
    return np.sqrt(var)


def _local_fidelity(x: np.ndarray, y: np.ndarray, gain: float, f: float, g: np.ndarray) -> float:
    """Mean local structural fidelity of one scale: ``x`` HDR in [0, 1] (times ``gain``), ``y`` LDR luma 0..255."""
    from scipy.special import ndtr

    mu_x, mu_y = _filter_valid(x, g), _filter_valid(y, g)
    sigma_x = gain * _local_sigma(_filter_valid(x * x, g), mu_x)
    sigma_y = _local_sigma(_filter_valid(y * y, g), mu_y)
    sigma_xy = gain * (_filter_valid(x * y, g) - mu_x * mu_y)
    tau = contrast_threshold(f)
    theta = tau / CROZIER_K
    px, py = ndtr((sigma_x - tau) / theta), ndtr((sigma_y - tau) / theta)
    s_map = (2 * px * py + C1) / (px * px + py * py + C1) * ((sigma_xy + C2) / (sigma_x * sigma_y + C2))
    return float(s_map.mean())


def structural_fidelity(hdr_lum: np.ndarray, ldr_luma: np.ndarray) -> tuple[float, tuple[float, ...]]:
    """Multi-scale structural fidelity S of one image.

    Args:
        hdr_lum: ``(H, W)`` linear HDR luminance, any scale, >= 0.
        ldr_luma: ``(H, W)`` luma of the tone-mapped image in 8-bit units (0..255), same size, at least
            :data:`MIN_SIZE` on each side.

    Returns:
        ``(S, per-scale means, finest first)``; S in [0, 1].
    """
    lo, hi = float(hdr_lum.min()), float(hdr_lum.max())
    x = (hdr_lum - lo) / (hi - lo) if hi > lo else np.zeros_like(hdr_lum)
    y = np.asarray(ldr_luma, dtype=np.float64)
    g = _gaussian_window()
    s_local = []
    for level, f in enumerate(SPATIAL_FREQUENCIES):
        if level:
            x, y = _downsample(x), _downsample(y)
        s_local.append(_local_fidelity(x, y, HDR_RANGE, f, g))
    s = math.prod(max(v, 0.0) ** w for v, w in zip(s_local, SCALE_WEIGHTS))
    return float(s), tuple(s_local)


def mean_block_std(ldr_luma: np.ndarray, block: int = NAT_BLOCK) -> float:
    """Pixel-weighted mean of the sample standard deviations of the non-overlapping ``block`` x ``block`` blocks."""
    h, w = ldr_luma.shape
    nh, nw = -(-h // block), -(-w // block)
    padded = np.zeros((nh * block, nw * block))
    mask = np.zeros_like(padded)
    padded[:h, :w], mask[:h, :w] = ldr_luma, 1.0
    padded, mask = padded.reshape(nh, block, nw, block), mask.reshape(nh, block, nw, block)
    count = mask.sum(axis=(1, 3))
    mean = padded.sum(axis=(1, 3)) / count
    ss = (((padded - mean[:, None, :, None]) * mask) ** 2).sum(axis=(1, 3))
    std = np.sqrt(ss / np.maximum(count - 1, 1))
    return float((std * count).sum() / count.sum())


def naturalness_from_stats(mean: float, block_std: float) -> float:
    """N from the mean luma and the mean block standard deviation (8-bit units): Gaussian x Beta, each peak = 1."""
    p_mean = math.exp(-((mean - NAT_MEAN) ** 2) / (2 * NAT_MEAN_STD**2))
    a, b = NAT_STD_ALPHA, NAT_STD_BETA
    mode = (a - 1) / (a + b - 2)
    t = block_std / NAT_STD_SCALE
    p_std = (t / mode) ** (a - 1) * ((1 - t) / (1 - mode)) ** (b - 1) if 0 < t < 1 else 0.0
    return float(p_mean * p_std)


def statistical_naturalness(ldr_luma: np.ndarray) -> float:
    """Statistical naturalness N of one tone-mapped image, ``(H, W)`` luma in 8-bit units; in [0, 1]."""
    return naturalness_from_stats(float(np.mean(ldr_luma)), mean_block_std(ldr_luma))


def combine(s: float, n: float) -> float:
    """``Q = a S^alpha + (1 - a) N^beta`` with the paper's constants."""
    return TMQI_A * s**TMQI_ALPHA + (1 - TMQI_A) * n**TMQI_BETA


def tmqi(img: Any, img2: Any, crop_border: int = 0) -> list[TMQIResult]:
    """TMQI of each image of a batch (see the module docstring for the input conventions).

    Args:
        img: tone-mapped LDR, display-referred sRGB: numpy ``(H, W, 3)`` / ``(N, H, W, 3)`` uint8, uint16 or float in
            [0, 1], torch ``(3, H, W)`` / ``(N, 3, H, W)``, or ``(H, W)`` luma.
        img2: the source HDR, linear RGB, any scale, float, same layout and size.
        crop_border: pixels removed on each side first.

    Returns:
        One :class:`TMQIResult` per image.

    Raises:
        ValueError: sizes differ (both named), an image smaller than 161 x 161, bad ``crop_border``, float LDR data
            above 1.5. TypeError: integer HDR data.
    """
    ldr, hdr = _prepare(img, img2, crop_border)
    results = []
    for y, x in zip(ldr, hdr):
        s, s_local = structural_fidelity(x, y)
        n = statistical_naturalness(y)
        results.append(TMQIResult(float(combine(s, n)), s, n, s_local))
    return results


# ------------------------------------------------------------------------------------------------ metrics
@METRIC_REGISTRY.register()
def calculate_tmqi(img: Any, img2: Any, crop_border: int = 0, **kwargs) -> float:
    """TMQI Q (Yeganeh & Wang 2013) of a tone-mapped image against its source HDR, in [0, 1].

    Args:
        img: prediction, the tone-mapped LDR (display-referred sRGB; uint8 / uint16 or float in [0, 1]).
        img2: the source HDR image, linear RGB, any scale, same size.
        crop_border: pixels removed on each side.

    Returns:
        Mean Q over the batch (higher is better).
    """
    _check_options('calculate_tmqi', kwargs)
    return float(np.mean([r.Q for r in tmqi(img, img2, crop_border)]))


@METRIC_REGISTRY.register()
def calculate_tmqi_s(img: Any, img2: Any, crop_border: int = 0, **kwargs) -> float:
    """TMQI structural fidelity S (multi-scale, against the source HDR), in [0, 1].

    Args:
        img: prediction, the tone-mapped LDR (as :func:`calculate_tmqi`).
        img2: the source HDR image, linear RGB, any scale, same size.
        crop_border: pixels removed on each side.

    Returns:
        Mean S over the batch (higher is better).
    """
    _check_options('calculate_tmqi_s', kwargs)
    return float(np.mean([r.S for r in tmqi(img, img2, crop_border)]))


@METRIC_REGISTRY.register()
def calculate_tmqi_n(img: Any, img2: Any = None, crop_border: int = 0, **kwargs) -> float:
    """TMQI statistical naturalness N of the tone-mapped image alone (no reference needed), in [0, 1].

    Args:
        img: prediction, the tone-mapped LDR (as :func:`calculate_tmqi`), at least 11 x 11 pixels.
        img2: ignored (BasicSR passes the ground truth); may be None.
        crop_border: pixels removed on each side.

    Returns:
        Mean N over the batch (higher is better).
    """
    _check_options('calculate_tmqi_n', kwargs)
    (ldr,) = _crop((_luma(ldr_to_8bit(img, 'tone-mapped image (img)')),), crop_border)
    return float(np.mean([statistical_naturalness(y) for y in ldr]))


def _ldr_pairs(img: Any, img2: Any, crop_border: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Tone-mapped image and reference LDR -> ``(H', W', 3)`` float64 pairs in 8-bit units."""
    a, b = ldr_to_8bit(img, 'tone-mapped image (img)'), ldr_to_8bit(img2, 'reference LDR (img2)')
    if a.shape != b.shape:
        raise ValueError(f'tone-mapped image and reference LDR sizes differ: {a.shape[1:3]} vs {b.shape[1:3]}')
    return list(zip(*_crop((a, b), crop_border)))


def ldr_psnr(img: Any, img2: Any, crop_border: int = 0, max_psnr: float = MAX_PSNR) -> float:
    """PSNR in dB of a tone-mapped image against a reference LDR: RGB in 8-bit units, peak 255, capped at
    ``max_psnr``; the same input conventions as :func:`calculate_tmqi` for both images. Mean over a batch."""
    return float(np.mean([_psnr(a, b, 255.0, max_psnr) for a, b in _ldr_pairs(img, img2, crop_border)]))


def ldr_ssim(img: Any, img2: Any, crop_border: int = 0) -> float:
    """SSIM (Wang et al. 2004: Gaussian window sigma 1.5, K1 0.01, K2 0.03) of a tone-mapped image against a reference
    LDR, per RGB channel in 8-bit units (data range 255), averaged. Mean over a batch."""
    return float(np.mean([_ssim(a, b, 255.0) for a, b in _ldr_pairs(img, img2, crop_border)]))


# ------------------------------------------------------------------------------------------------ catalogue
#: Short name -> tone-mapping metric, for ``llmhdr-eval --direction hdr2ldr``. ``needs_lq`` means here: needs the
#: reference LDR image (``--ref-ldr``) instead of the source HDR.
TMO_METRICS: dict[str, MetricSpec] = {
    'tmqi': MetricSpec(calculate_tmqi, 'higher', ''),
    'tmqi_s': MetricSpec(calculate_tmqi_s, 'higher', ''),
    'tmqi_n': MetricSpec(calculate_tmqi_n, 'higher', ''),
    'psnr': MetricSpec(ldr_psnr, 'higher', 'dB', needs_lq=True),
    'ssim': MetricSpec(ldr_ssim, 'higher', '', needs_lq=True),
}


def compute_tmo_metrics(
    ldr: Any, hdr: Any, names: list[str] | tuple[str, ...] | None = None, ref: Any = None, crop_border: int = 0
) -> dict[str, float]:
    """Several tone-mapping metrics of one tone-mapped image; TMQI is computed once for Q, S and N.

    Args:
        ldr: the tone-mapped image (display-referred, see :func:`calculate_tmqi`).
        hdr: its source HDR image (linear, any scale), same size.
        names: keys of :data:`TMO_METRICS` (default: the TMQI ones, plus PSNR and SSIM when ``ref`` is given).
        ref: a reference LDR rendering of the same HDR (same conventions as ``ldr``), for PSNR and SSIM.
        crop_border: pixels removed on each side.

    Returns:
        ``{name: score}`` in the order of ``names``.
    """
    if names is None:
        names = [n for n, spec in TMO_METRICS.items() if ref is not None or not spec.needs_lq]
    names = list(names)
    unknown = [n for n in names if n not in TMO_METRICS]
    if unknown:
        raise ValueError(f'Unknown tone-mapping metric(s) {unknown}; available: {list(TMO_METRICS)}')
    needs = [n for n in names if TMO_METRICS[n].needs_lq]
    if needs and ref is None:
        raise ValueError(f'tone-mapping metric(s) {needs} need a reference LDR image')
    scores: dict[str, float] = {}
    if {'tmqi', 'tmqi_s'} & set(names):
        results = tmqi(ldr, hdr, crop_border)
        scores.update(tmqi=float(np.mean([r.Q for r in results])), tmqi_s=float(np.mean([r.S for r in results])),
                      tmqi_n=float(np.mean([r.N for r in results])))  # fmt: skip
    elif 'tmqi_n' in names:
        scores['tmqi_n'] = calculate_tmqi_n(ldr, crop_border=crop_border)
    if 'psnr' in names:
        scores['psnr'] = ldr_psnr(ldr, ref, crop_border)
    if 'ssim' in names:
        scores['ssim'] = ldr_ssim(ldr, ref, crop_border)
    return {n: scores[n] for n in names}
