"""Virtual cameras: synthesise LDR photographs from linear HDR with randomised camera response curves.

Used by ``scripts/prepare_data.py synth`` (paired test sets, LDR inputs from HDR-only scenes), the tests and the
benchmarks. Randomising the camera response curve (gamma 1.8-2.6 and sigmoid-type curves, random
exposure so that 2-16 % of the pixels clip, 8-bit quantisation) was the biggest single lever when synthesising LDR
training inputs; with one fixed gamma 2.2 a network learned nothing beyond plain linearisation. The recipe is the
one of HDRCNN / SingleHDR.

Pipeline of :func:`apply_camera` (numpy, ``(H, W, 3)`` RGB)::

    linear HDR (relative) -> * white-balance gains -> * exposure -> clip to [0, 1] -> CRF -> quantise (8/16 bit)
                          -> optional JPEG (8 bit) -> display-referred LDR in [0, 1]

- Exposure: a linear gain chosen per image so that a target fraction of the pixels clips, i.e. has at least one
  channel >= 1 after the gain (:func:`exposure_for_clip_fraction`). :func:`random_camera` draws only the *target
  fraction* (the gain depends on the image); :func:`resolve_camera` turns it into the gain and records it, so that
  ``apply_camera(hdr, resolved)`` reproduces the same LDR bit for bit.
- CRF families (``crf``):

  - ``'gamma'``: ``y = x ** (1 / gamma)``, gamma drawn from [1.8, 2.6];
  - ``'sigmoid'``: ``y = (1 + beta) x^g / (x^g + beta)``, the camera curve of GlowGAN (Wang et al. ICCV 2023,
    ``training/networks_stylegan3_resetting.py``) with ``g ~ N(0.9, 0.1)`` and
    ``beta ~ N(0.6, 0.1)``: a saturating curve with 0 -> 0 and 1 -> 1, compressing the highlights harder than a
    gamma curve (with a slight toe when g > 1).
  - ``'logistic'``: an S-curve in log exposure, the shape of filmic camera renderings (a toe in the shadows, a
    shoulder below white): ``y = (s(k (log2 x - c)) - s_0) / (s(-k c) - s_0)`` with ``s`` the logistic function,
    slope ``k`` per stop, pivot ``c`` stops below white and ``s_0`` its value :data:`LOGISTIC_RANGE` stops below
    white (darker inputs give 0). Off by default (``logistic_prob``); the training recipes widen the camera family
    with it.

- White balance: per-channel gains ``(r, 1, b)`` jittered around 1 (off by default).
- Display contrast (off by default, ``contrast_prob``): the display image blended with a logistic S-curve about
  mid-grey, ``y' = (1 - c) y + c S(y)``, ``S(y) = (s(k (y - 1/2)) - s(-k/2)) / (s(k/2) - s(-k/2))`` with ``s`` the
  logistic function and ``k`` = :data:`CONTRAST_SLOPE`: the contrast boost phones apply after the camera curve,
  which pushes bright values towards white and hides highlight range that the curve alone keeps.
- Quantisation to ``bit_depth`` bits (8 by default; ``None`` keeps float values), then optional JPEG at a recorded
  quality (OpenCV's libjpeg: deterministic for a given build).

:class:`CameraParams` is a flat dataclass (JSON/CSV friendly: :meth:`CameraParams.to_dict`,
:meth:`CameraParams.from_dict`). Everything is deterministic given a ``numpy.random.Generator`` seed.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch

CRF_FAMILIES = ('gamma', 'sigmoid', 'logistic')
#: Stops below white where the logistic CRF reaches 0.
LOGISTIC_RANGE = 14.0
DEFAULT_LOGISTIC_SLOPE = (0.5, 1.2)  # per stop, uniform
DEFAULT_LOGISTIC_PIVOT = (-4.0, -0.5)  # stops below white, uniform
DEFAULT_CLIP_RANGE = (0.02, 0.16)  # 2-16 % clipped pixels (HDRCNN / SingleHDR)
DEFAULT_GAMMA_RANGE = (1.8, 2.6)
DEFAULT_SIGMOID_EXPONENT = (0.9, 0.1)  # GlowGAN: g ~ N(0.9, 0.1)
DEFAULT_SIGMOID_BETA = (0.6, 0.1)  # GlowGAN: beta ~ N(0.6, 0.1)
DEFAULT_JPEG_QUALITY = (70, 95)
DEFAULT_CONTRAST_RANGE = (0.1, 0.5)  # blend weight of the display S-curve, uniform
#: Slope of the logistic display S-curve about mid-grey (per unit of display value).
CONTRAST_SLOPE = 8.0
#: Rows of :func:`peak_rank_sample` (the clipped fraction then holds within 1 / 8192 of the whole frame's).
DEFAULT_RANK_SAMPLES = 8193


@dataclass
class CameraParams:
    """One virtual camera. All fields are plain JSON types.

    Attributes:
        crf: camera response family, ``'gamma'`` or ``'sigmoid'``.
        gamma: encoding gamma of the ``'gamma'`` CRF (``y = x ** (1 / gamma)``); None for other CRFs.
        sigmoid_exponent: ``g`` of the ``'sigmoid'`` CRF; None otherwise.
        sigmoid_beta: ``beta`` of the ``'sigmoid'`` CRF; None otherwise.
        logistic_slope: slope ``k`` (per stop) of the ``'logistic'`` CRF; None otherwise.
        logistic_pivot: pivot ``c`` (stops below white, <= 0) of the ``'logistic'`` CRF; None otherwise.
        clip_fraction: target fraction of pixels with a clipped channel, used when ``exposure`` is None.
        exposure: linear gain applied to the white-balanced HDR; None = derive it from ``clip_fraction``.
        wb_gains: linear gains ``[r, g, b]`` applied before the exposure (``[1, 1, 1]`` = no white-balance error).
        bit_depth: 8 or 16 (quantisation), or None (no quantisation: float output).
        jpeg_quality: JPEG quality 1-100 applied after 8-bit quantisation, or None.
        contrast: blend weight in [0, 1] of the display-domain S-curve applied after the CRF (0 = none).
        measured_clip_fraction: fraction of clipped pixels actually obtained (recorded by :func:`resolve_camera`;
            informative only, not used by :func:`apply_camera`).
    """

    crf: str = 'gamma'
    gamma: float | None = 2.2
    sigmoid_exponent: float | None = None
    sigmoid_beta: float | None = None
    logistic_slope: float | None = None
    logistic_pivot: float | None = None
    clip_fraction: float = 0.05
    exposure: float | None = None
    wb_gains: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    bit_depth: int | None = 8
    jpeg_quality: int | None = None
    contrast: float = 0.0
    measured_clip_fraction: float | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad field."""
        if self.crf not in CRF_FAMILIES:
            raise ValueError(f'CameraParams.crf must be one of {CRF_FAMILIES}, got {self.crf!r}')
        if self.crf == 'gamma' and not (self.gamma is not None and self.gamma > 0):
            raise ValueError(f'CameraParams.gamma must be > 0 for the gamma CRF, got {self.gamma}')
        if self.crf == 'sigmoid' and not (
            self.sigmoid_exponent is not None
            and self.sigmoid_exponent > 0
            and self.sigmoid_beta is not None
            and self.sigmoid_beta > 0
        ):
            raise ValueError(
                'CameraParams.sigmoid_exponent and sigmoid_beta must be > 0 for the sigmoid CRF, got '
                f'{self.sigmoid_exponent}, {self.sigmoid_beta}'
            )
        if self.crf == 'logistic' and not (
            self.logistic_slope is not None
            and self.logistic_slope > 0
            and self.logistic_pivot is not None
            and -LOGISTIC_RANGE < self.logistic_pivot <= 0
        ):
            raise ValueError(
                'CameraParams.logistic_slope must be > 0 and logistic_pivot in (-14, 0] for the logistic CRF, got '
                f'{self.logistic_slope}, {self.logistic_pivot}'
            )
        if not 0 <= self.clip_fraction < 1:
            raise ValueError(f'CameraParams.clip_fraction must be in [0, 1), got {self.clip_fraction}')
        if self.exposure is not None and not (math.isfinite(self.exposure) and self.exposure > 0):
            raise ValueError(f'CameraParams.exposure must be a finite value > 0 or None, got {self.exposure}')
        if len(self.wb_gains) != 3 or any(not (math.isfinite(g) and g > 0) for g in self.wb_gains):
            raise ValueError(f'CameraParams.wb_gains must be three finite values > 0, got {self.wb_gains}')
        if self.bit_depth not in (8, 16, None):
            raise ValueError(f'CameraParams.bit_depth must be 8, 16 or None, got {self.bit_depth}')
        if not (math.isfinite(self.contrast) and 0.0 <= self.contrast <= 1.0):
            raise ValueError(f'CameraParams.contrast must be in [0, 1], got {self.contrast}')
        if self.jpeg_quality is not None:
            if not 1 <= int(self.jpeg_quality) <= 100:
                raise ValueError(f'CameraParams.jpeg_quality must be in [1, 100] or None, got {self.jpeg_quality}')
            if self.bit_depth != 8:
                raise ValueError('CameraParams.jpeg_quality needs bit_depth 8 (JPEG is an 8-bit format)')

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CameraParams:
        """Inverse of :meth:`to_dict`; unknown keys (e.g. a ``source`` column) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        if 'wb_gains' in kwargs:
            kwargs['wb_gains'] = [float(g) for g in kwargs['wb_gains']]
        return cls(**kwargs)


def random_camera(
    rng: np.random.Generator,
    clip_range: tuple[float, float] = DEFAULT_CLIP_RANGE,
    gamma_range: tuple[float, float] = DEFAULT_GAMMA_RANGE,
    sigmoid_prob: float = 0.5,
    sigmoid_exponent: tuple[float, float] = DEFAULT_SIGMOID_EXPONENT,
    sigmoid_beta: tuple[float, float] = DEFAULT_SIGMOID_BETA,
    wb_jitter: float = 0.0,
    jpeg_prob: float = 0.0,
    jpeg_quality: tuple[int, int] = DEFAULT_JPEG_QUALITY,
    bit_depth: int | None = 8,
    logistic_prob: float = 0.0,
    logistic_slope: tuple[float, float] = DEFAULT_LOGISTIC_SLOPE,
    logistic_pivot: tuple[float, float] = DEFAULT_LOGISTIC_PIVOT,
    contrast_prob: float = 0.0,
    contrast_range: tuple[float, float] = DEFAULT_CONTRAST_RANGE,
) -> CameraParams:
    """Draw a camera. The exposure stays unresolved (it depends on the image): see :func:`resolve_camera`.

    The draws always happen in the same order and number, whatever the probabilities, so changing one option does
    not shift the random stream of the others; the display contrast's two draws come last and only with
    ``contrast_prob > 0``, so cameras without it keep the stream they had before it existed.

    Args:
        rng: numpy Generator (the only source of randomness).
        clip_range: uniform range of the target clipped-pixel fraction.
        gamma_range: uniform range of the gamma CRF's encoding gamma.
        sigmoid_prob: probability of the sigmoid CRF (else gamma).
        sigmoid_exponent: ``(mean, std)`` of the sigmoid CRF's ``g``; clipped to [0.5, 1.5].
        sigmoid_beta: ``(mean, std)`` of the sigmoid CRF's ``beta``; clipped to [0.2, 1.2].
        wb_jitter: red and blue gains uniform in ``[1 - wb_jitter, 1 + wb_jitter]`` (0 = off).
        jpeg_prob: probability of JPEG compression (needs ``bit_depth=8``).
        jpeg_quality: inclusive integer range of the JPEG quality.
        bit_depth: 8, 16 or None.
        logistic_prob: probability of the logistic CRF (drawn first; the gamma / sigmoid choice otherwise).
        logistic_slope: uniform range of its slope per stop.
        logistic_pivot: uniform range of its pivot in stops below white.
        contrast_prob: probability of the display contrast S-curve (any CRF).
        contrast_range: uniform range of its blend weight, within [0, 1].

    Returns:
        A :class:`CameraParams` with ``exposure=None``.
    """
    lo, hi = clip_range
    if not 0 <= lo <= hi < 1:
        raise ValueError(f'clip_range must satisfy 0 <= lo <= hi < 1, got {clip_range}')
    if not 0 < gamma_range[0] <= gamma_range[1]:
        raise ValueError(f'gamma_range must satisfy 0 < lo <= hi, got {gamma_range}')
    if not 0 <= wb_jitter < 1:
        raise ValueError(f'wb_jitter must be in [0, 1), got {wb_jitter}')
    if not 0 <= contrast_range[0] <= contrast_range[1] <= 1:
        raise ValueError(f'contrast_range must satisfy 0 <= lo <= hi <= 1, got {contrast_range}')
    u = rng.random(8)  # fixed number of draws: [clip, family, gamma, g, beta, wb_r, wb_b, jpeg?] + quality below
    normals = rng.standard_normal(2)
    quality = int(rng.integers(jpeg_quality[0], jpeg_quality[1] + 1))
    v = rng.random(3)  # drawn after the original draws, so the gamma / sigmoid streams stay as they were
    contrast = 0.0
    if contrast_prob > 0:
        w = rng.random(2)
        if w[0] < contrast_prob:
            contrast = float(contrast_range[0] + (contrast_range[1] - contrast_range[0]) * w[1])
    use_sigmoid = u[1] < sigmoid_prob
    g = float(np.clip(sigmoid_exponent[0] + sigmoid_exponent[1] * normals[0], 0.5, 1.5))
    beta = float(np.clip(sigmoid_beta[0] + sigmoid_beta[1] * normals[1], 0.2, 1.2))
    common = dict(
        clip_fraction=float(lo + (hi - lo) * u[0]),
        exposure=None,
        wb_gains=[float(1.0 + wb_jitter * (2 * u[5] - 1)), 1.0, float(1.0 + wb_jitter * (2 * u[6] - 1))],
        bit_depth=bit_depth,
        jpeg_quality=quality if (u[7] < jpeg_prob and bit_depth == 8) else None,
        contrast=contrast,
    )
    if v[0] < logistic_prob:
        return CameraParams(
            crf='logistic', gamma=None,
            logistic_slope=float(logistic_slope[0] + (logistic_slope[1] - logistic_slope[0]) * v[1]),
            logistic_pivot=float(logistic_pivot[0] + (logistic_pivot[1] - logistic_pivot[0]) * v[2]), **common,
        )  # fmt: skip
    return CameraParams(
        crf='sigmoid' if use_sigmoid else 'gamma',
        gamma=None if use_sigmoid else float(gamma_range[0] + (gamma_range[1] - gamma_range[0]) * u[2]),
        sigmoid_exponent=g if use_sigmoid else None,
        sigmoid_beta=beta if use_sigmoid else None,
        **common,
    )


def _check_hdr(hdr: np.ndarray) -> np.ndarray:
    hdr = np.asarray(hdr)
    if hdr.ndim != 3 or hdr.shape[2] != 3:
        raise ValueError(f'expected an (H, W, 3) linear HDR array, got shape {hdr.shape}')
    if not np.issubdtype(hdr.dtype, np.floating):
        raise ValueError(f'expected float linear HDR, got {hdr.dtype} (integer images are LDR)')
    return np.maximum(hdr.astype(np.float64), 0.0)


def exposure_for_clip_fraction(
    hdr: np.ndarray, fraction: float, wb_gains: list[float] | None = None, stride: int = 1
) -> float:
    """Linear gain that makes ``fraction`` of the pixels clip (max channel >= 1 after white balance and gain).

    ``gain = 1 / Q(1 - fraction)`` with ``Q`` the quantile (numpy 'lower' method) of the per-pixel maximum channel.
    Ties can make slightly more pixels clip than asked for. A zero quantile (mostly black image) falls back to the
    maximum; an all-black image gives 1.

    Args:
        hdr: ``(H, W, 3)`` linear HDR, relative scale.
        fraction: target clipped fraction in [0, 1).
        wb_gains: per-channel gains applied first (default none).
        stride: estimate the quantile on every ``stride``-th row and column (the training loader uses 2: a quarter of
            the work per sample, the clipped fraction then holds within about a percent of the frame).

    Returns:
        The gain (float > 0).
    """
    arr = np.asarray(hdr)
    if arr.ndim != 3 or arr.shape[2] != 3 or not np.issubdtype(arr.dtype, np.floating):
        _check_hdr(arr)  # raises the error naming the problem
    x = np.maximum(arr[::stride, ::stride], 0.0)
    if wb_gains is not None:
        x = x * np.asarray(wb_gains, dtype=x.dtype)
    peak = x.max(axis=2).ravel()
    ref = float(np.quantile(peak, 1.0 - fraction, method='lower')) if fraction > 0 else float(peak.max())
    return _gain_for_reference(ref, float(peak.max()))


def _gain_for_reference(ref: float, peak: float) -> float:
    """``1 / ref``, with the fall-backs of :func:`exposure_for_clip_fraction`: a zero quantile uses the maximum
    ``peak``, an all-black image gives 1."""
    if ref <= 0:
        ref = peak
    return 1.0 / ref if ref > 0 else 1.0


def peak_rank_sample(hdr: np.ndarray, count: int = DEFAULT_RANK_SAMPLES) -> np.ndarray:
    """The exposure statistic of a whole frame: ``count`` pixels at evenly spaced ranks of the per-pixel max channel.

    Row ``i`` is the RGB of the pixel of rank ``i (n - 1) // (count - 1)`` (0 = darkest) among the frame's ``n``
    pixels sorted by their maximum channel, i.e. the frame's ``'lower'`` quantile at ``i / (count - 1)``. Stored once
    per source frame in a training store (:mod:`llmhdr_basicsr.data.training_store`), it lets
    :func:`exposure_from_rank_sample` resolve a virtual camera's exposure for the **whole** frame from any tile of it.

    Args:
        hdr: ``(H, W, 3)`` float linear HDR RGB, relative scale (negative values count as 0).
        count: number of rows (>= 2); 8193 = 96 KiB of float32.

    Returns:
        ``(count, 3)`` float32 RGB, sorted by maximum channel (non-decreasing).
    """
    if count < 2:
        raise ValueError(f'peak_rank_sample: count must be >= 2, got {count}')
    arr = np.asarray(hdr)
    if arr.ndim != 3 or arr.shape[2] != 3 or not np.issubdtype(arr.dtype, np.floating):
        _check_hdr(arr)  # raises the error naming the problem
    pixels = np.maximum(arr.reshape(-1, 3), 0.0).astype(np.float32, copy=False)
    order = np.argsort(pixels.max(axis=1), kind='stable')
    ranks = (np.arange(count, dtype=np.int64) * (len(order) - 1)) // (count - 1)
    return np.ascontiguousarray(pixels[order[ranks]])


def exposure_from_rank_sample(sample: np.ndarray, fraction: float, wb_gains: list[float] | None = None) -> float:
    """:func:`exposure_for_clip_fraction` of a whole frame, from its :func:`peak_rank_sample` rows.

    The ``1 - fraction`` quantile of the rows' (white-balanced) maximum channel, linearly interpolated between the
    rows' ranks; the same fall-backs (zero quantile -> maximum, all black -> 1).

    Tolerance: with ``wb_gains`` of 1 (the default camera) the rows' maxima are the frame's exact quantiles at ranks
    ``i / (K - 1)``, so the fraction of the whole frame that this exposure clips differs from the fraction clipped by
    ``exposure_for_clip_fraction(frame, fraction)`` (stride 1) by at most ``1 / (K - 1)`` (plus ties and ``1 / n``):
    1.2e-4 for K = 8193. Other gains reorder the pixels slightly; the rows are then a rank-stratified sample of the
    frame (error about ``sqrt(fraction (1 - fraction) / K)`` at worst, far less for gains near 1).

    Args:
        sample: ``(K, 3)`` rows of :func:`peak_rank_sample`, scaled like the image the camera photographs (e.g.
            divided by the frame's ``hdr_norm`` scale).
        fraction: target clipped fraction in [0, 1).
        wb_gains: per-channel gains applied first (default none).

    Returns:
        The gain (float > 0).
    """
    x = np.maximum(np.asarray(sample), 0.0)
    if x.ndim != 2 or x.shape[1] != 3 or len(x) < 2:
        raise ValueError(f'exposure_from_rank_sample: expected (K >= 2, 3) rows, got shape {x.shape}')
    if wb_gains is not None:
        x = x * np.asarray(wb_gains, dtype=x.dtype)
    peak = np.sort(x.max(axis=1))
    position = (1.0 - fraction) * (len(peak) - 1)
    low = min(int(math.floor(position)), len(peak) - 2)
    ref = float(peak[low]) + (position - low) * (float(peak[low + 1]) - float(peak[low]))
    return _gain_for_reference(ref, float(peak[-1]))


def curve_of(params: CameraParams) -> tuple:
    """The curve tuple of a camera, as the torch curves take it: ``('gamma', g)``, ``('sigmoid', g, beta)`` or
    ``('logistic', slope, pivot)``."""
    if params.crf == 'gamma':
        return ('gamma', params.gamma)
    if params.crf == 'sigmoid':
        return ('sigmoid', params.sigmoid_exponent, params.sigmoid_beta)
    return ('logistic', params.logistic_slope, params.logistic_pivot)


def crf_encode(x: np.ndarray, params: CameraParams) -> np.ndarray:
    """Apply the camera response: linear [0, 1] (clipped) -> display-referred [0, 1]. float64 in, float64 out."""
    x = np.clip(x, 0.0, 1.0)
    if params.crf == 'gamma':
        return x ** (1.0 / params.gamma)
    if params.crf == 'logistic':
        return crf_encode_torch(torch.from_numpy(np.asarray(x, dtype=np.float64)), curve_of(params)).numpy()
    t = x**params.sigmoid_exponent
    b = params.sigmoid_beta
    return (1.0 + b) * t / (t + b)


def crf_decode(y: np.ndarray, params: CameraParams) -> np.ndarray:
    """Inverse of :func:`crf_encode` (the oracle linearisation): display [0, 1] -> linear [0, 1]."""
    y = np.clip(np.asarray(y, dtype=np.float64), 0.0, 1.0)
    if params.crf == 'gamma':
        return y**params.gamma
    if params.crf == 'logistic':
        return crf_decode_torch(torch.from_numpy(y), curve_of(params)).numpy()
    b = params.sigmoid_beta
    t = b * y / (1.0 + b - y)  # y = (1 + b) t / (t + b)  <=>  t = b y / (1 + b - y)
    return t ** (1.0 / params.sigmoid_exponent)


#: Inputs of the torch curves are clamped to at least this (pow has an infinite slope at 0 for exponents < 1).
_CURVE_EPS = 1e-6


def _logistic_ends(slope: float, pivot: float) -> tuple[float, float]:
    """Logistic values at :data:`LOGISTIC_RANGE` stops below white and at white."""
    return 1.0 / (1.0 + math.exp(slope * (LOGISTIC_RANGE + pivot))), 1.0 / (1.0 + math.exp(slope * pivot))


def crf_decode_torch(y: torch.Tensor, curve: tuple) -> torch.Tensor:
    """Torch twin of :func:`crf_decode` for a curve tuple ``('gamma', g)``, ``('sigmoid', g, beta)`` or
    ``('logistic', slope, pivot)``: display-referred ``y`` in [0, 1] -> linear [0, 1] (any shape, float)."""
    y = y.clamp(_CURVE_EPS, 1.0)
    if curve[0] == 'gamma':
        return y.pow(curve[1])
    if curve[0] == 'logistic':
        k, c = curve[1], curve[2]
        lo, hi = _logistic_ends(k, c)
        u = (lo + y * (hi - lo)).clamp(1e-12, 1 - 1e-12)
        return torch.exp2(c + torch.logit(u) / k).clamp(max=1.0)
    g, b = curve[1], curve[2]
    return (b * y / (1.0 + b - y)).clamp(min=_CURVE_EPS).pow(1.0 / g)


def crf_encode_torch(x: torch.Tensor, curve: tuple) -> torch.Tensor:
    """Torch twin of :func:`crf_encode` for a curve tuple (as :func:`crf_decode_torch`): linear ``x`` (clipped to
    [0, 1]) -> display-referred [0, 1] (any shape, float)."""
    x = x.clamp(_CURVE_EPS, 1.0)
    if curve[0] == 'gamma':
        return x.pow(1.0 / curve[1])
    if curve[0] == 'logistic':
        k, c = curve[1], curve[2]
        lo, hi = _logistic_ends(k, c)
        return ((torch.sigmoid(k * (torch.log2(x) - c)) - lo) / (hi - lo)).clamp(0.0, 1.0)
    g, b = curve[1], curve[2]
    t = x.pow(g)
    return (1.0 + b) * t / (t + b)


def resolve_camera(hdr: np.ndarray, params: CameraParams) -> CameraParams:
    """Fix the image-dependent exposure of ``params`` for ``hdr`` and record the clipped fraction obtained.

    Args:
        hdr: ``(H, W, 3)`` linear HDR.
        params: camera, with or without ``exposure``.

    Returns:
        A copy with ``exposure`` set (kept if already set) and ``measured_clip_fraction`` filled in.
    """
    x = _check_hdr(hdr)
    exposure = params.exposure
    if exposure is None:
        exposure = exposure_for_clip_fraction(x, params.clip_fraction, params.wb_gains)
    clipped = (x * np.asarray(params.wb_gains) * exposure).max(axis=2) >= 1.0
    return dataclasses.replace(params, exposure=float(exposure), measured_clip_fraction=float(clipped.mean()))


def apply_camera(hdr: np.ndarray, params: CameraParams, dtype: type = np.float32) -> np.ndarray:
    """Photograph linear HDR with a virtual camera.

    Args:
        hdr: ``(H, W, 3)`` float linear HDR RGB, relative scale (negative values count as 0).
        params: the camera; an unresolved exposure is derived from ``params.clip_fraction`` (as
            :func:`resolve_camera` would; call that to record it).
        dtype: ``np.float32`` / ``np.float64``: display-referred values in [0, 1] (multiples of ``1 / (2^bits - 1)``
            when quantised); ``np.uint8`` / ``np.uint16``: the code values (needs the matching ``bit_depth``).

    Returns:
        ``(H, W, 3)`` display-referred LDR RGB (not linear), as ``dtype``.
    """
    params.validate()
    x = _check_hdr(hdr)
    exposure = params.exposure
    if exposure is None:
        exposure = exposure_for_clip_fraction(x, params.clip_fraction, params.wb_gains)
    y = display_contrast(crf_encode(x * np.asarray(params.wb_gains, dtype=np.float64) * exposure, params),
                         params.contrast)  # fmt: skip
    dtype = np.dtype(dtype)
    if params.bit_depth is None:
        if dtype.kind != 'f':
            raise ValueError('apply_camera: integer output needs a camera with bit_depth 8 or 16')
        return y.astype(dtype)
    if dtype.kind == 'f':
        return quantize_display(y, params.bit_depth, params.jpeg_quality).astype(dtype)
    codes = quantize_display(y, params.bit_depth, params.jpeg_quality, codes=True)
    if dtype != codes.dtype:
        raise ValueError(f'apply_camera: {dtype} output needs bit_depth {8 if dtype == np.uint8 else 16}')
    return np.ascontiguousarray(codes)


def display_contrast(y: np.ndarray, weight: float) -> np.ndarray:
    """The display contrast boost (module docstring) of display-referred ``y`` in [0, 1]; ``weight`` 0 returns ``y``."""
    if weight == 0:
        return y
    lo, hi = (1.0 / (1.0 + math.exp(CONTRAST_SLOPE / 2 * sign)) for sign in (1.0, -1.0))
    s = (1.0 / (1.0 + np.exp(-CONTRAST_SLOPE * (y - 0.5))) - lo) / (hi - lo)
    return (1.0 - weight) * y + weight * s


def quantize_display(y: np.ndarray, bit_depth: int, jpeg_quality: int | None = None, codes: bool = False) -> np.ndarray:
    """Quantise display-referred ``(H, W, 3)`` RGB in [0, 1] to ``bit_depth`` bits, then optionally JPEG (8 bit).

    Returns:
        float64 values in [0, 1] (multiples of ``1 / (2^bits - 1)``), or the uint8/uint16 code values with ``codes``.
    """
    peak = 2**bit_depth - 1
    out = np.round(np.clip(y, 0.0, 1.0) * peak).astype(np.uint8 if bit_depth == 8 else np.uint16)
    if jpeg_quality is not None:
        if bit_depth != 8:
            raise ValueError('quantize_display: JPEG needs bit_depth 8')
        ok, buf = cv2.imencode('.jpg', out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
        if not ok:
            raise RuntimeError('quantize_display: OpenCV could not JPEG-encode the image')
        out = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    return out if codes else out.astype(np.float64) / peak


def synthesize_ldr(hdr: np.ndarray, rng: np.random.Generator, **camera_kwargs: Any) -> tuple[np.ndarray, CameraParams]:
    """Draw a random camera (:func:`random_camera`), resolve it for ``hdr`` and photograph ``hdr`` with it.

    Returns:
        ``(ldr, params)``: ``(H, W, 3)`` float32 display-referred LDR in [0, 1] and the resolved camera.
    """
    params = resolve_camera(hdr, random_camera(rng, **camera_kwargs))
    return apply_camera(hdr, params), params


__all__ = [
    'CRF_FAMILIES',
    'CameraParams',
    'apply_camera',
    'crf_decode',
    'crf_decode_torch',
    'crf_encode',
    'crf_encode_torch',
    'curve_of',
    'display_contrast',
    'exposure_for_clip_fraction',
    'exposure_from_rank_sample',
    'peak_rank_sample',
    'quantize_display',
    'random_camera',
    'resolve_camera',
    'synthesize_ldr',
]
