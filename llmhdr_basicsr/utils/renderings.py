"""Camera renderings outside the virtual-camera family: the LDR inputs of the out-of-family test and validation sets.

The training cameras of :mod:`llmhdr_basicsr.utils.camera` apply one per-channel curve (gamma or GlowGAN's sigmoid)
to the clipped sensor values. Real cameras and phones render differently: a filmic tone curve with a toe and a
highlight shoulder, a global tone-mapping operator on luminance (colour ratios kept), a contrast and saturation boost
of the display image, sensor noise, 8-bit JPEG. A model that has only learned to invert the training family proves
little; the benchmark therefore also scores LDRs rendered by this module, whose curves the training never sees.

Pipeline of :func:`apply_rendering` (numpy, ``(H, W, 3)`` RGB)::

    linear HDR (relative) -> * exposure (a target fraction of the pixels clips, as camera.py)
      -> + sensor noise (Poisson-Gaussian: variance shot * s + read^2, seeded) -> clip to [0, 1] (sensor saturation)
      -> tone curve (below) -> sRGB encoding -> contrast S-curve -> saturation -> 8-bit -> optional JPEG

Tone curves, each normalised so that sensor saturation (1) maps to display white (1) and 0 to 0:

- ``'hable'``: John Hable's filmic curve (Uncharted 2, GDC 2010), ``H(v) = (v(Av + CB) + DE) / (v(Av + B) + DF)
  - E/F`` with A..F = 0.15, 0.50, 0.10, 0.20, 0.02, 0.30, per channel, ``T(s) = H(W s) / H(W)``; ``curve_param`` =
  the white point ``W`` (11.2 in the talk): a toe in the shadows and a long highlight shoulder.
- ``'aces'``: Narkowicz's 2015 fit of the ACES reference rendering, ``A(v) = v(2.51v + 0.03) / (v(2.43v + 0.59) +
  0.14)``, per channel, ``T(s) = A(a s) / A(a)``; ``curve_param`` = the input scale ``a`` (how far into the
  shoulder the sensor range reaches).
- ``'drago'``: Drago et al. 2003 adaptive logarithmic mapping of luminance, ``Ld = log(1 + k L) / log(1 + k) /
  log10(2 + 8 L^(ln b / ln 0.5))`` with ``k`` = :data:`DRAGO_RANGE`; ``curve_param`` = the bias ``b``; colour by
  scaling RGB with ``Ld / L`` (then clipped).
- ``'reinhard_lum'``: Reinhard et al. 2002's extended global operator on luminance, ``L' = k L``,
  ``Ld = L' (1 + L' / k^2) / (1 + L')``; ``curve_param`` = ``k``; colour by ``Ld / L``.

The display image is then ``y = srgb_encode(T(s))``; the contrast boost blends it with the smoothstep
``y^2 (3 - 2y)`` (``contrast`` = blend weight), the saturation boost is ``Y + saturation (y - Y)`` on the display
values (``Y`` their Rec.709 luma), clipped to [0, 1].

:func:`random_rendering` draws every parameter from a seeded ``numpy.random.Generator``; :class:`RenderParams` is a
flat, JSON-friendly record, so ``apply_rendering(hdr, params)`` reproduces an image bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .camera import exposure_for_clip_fraction, quantize_display
from .tonemap import luminance_np, srgb_encode_np

RENDER_CURVES = ('hable', 'aces', 'drago', 'reinhard_lum')
#: Scene range ``k`` of the Drago curve (sensor saturation is ``k`` times the darkest mapped level).
DRAGO_RANGE = 50.0
#: Uniform ranges of ``curve_param`` per curve in :func:`random_rendering`.
CURVE_PARAM_RANGES = {'hable': (3.0, 11.2), 'aces': (1.5, 5.0), 'drago': (0.7, 0.9), 'reinhard_lum': (2.0, 8.0)}
_HABLE = (0.15, 0.50, 0.10, 0.20, 0.02, 0.30)


@dataclass
class RenderParams:
    """One out-of-family rendering. All fields are plain JSON types.

    Attributes:
        curve: one of :data:`RENDER_CURVES`.
        curve_param: the curve's parameter (module docstring).
        clip_fraction: target fraction of pixels with a clipped channel, used when ``exposure`` is None.
        exposure: linear gain applied to the HDR; None = derive it from ``clip_fraction``.
        contrast: weight of the smoothstep contrast S-curve on the display image, in [0, 1].
        saturation: saturation factor on the display image (1 = unchanged).
        noise_shot: shot-noise variance per unit of sensor signal (0 = none).
        noise_read: read-noise standard deviation in sensor units (0 = none).
        noise_seed: seed of the noise draw.
        jpeg_quality: JPEG quality 1-100, or None.
    """

    curve: str = 'hable'
    curve_param: float = 11.2
    clip_fraction: float = 0.05
    exposure: float | None = None
    contrast: float = 0.0
    saturation: float = 1.0
    noise_shot: float = 0.0
    noise_read: float = 0.0
    noise_seed: int = 0
    jpeg_quality: int | None = None

    def __post_init__(self) -> None:
        if self.curve not in RENDER_CURVES:
            raise ValueError(f'RenderParams.curve must be one of {RENDER_CURVES}, got {self.curve!r}')
        if not (math.isfinite(self.curve_param) and self.curve_param > 0):
            raise ValueError(f'RenderParams.curve_param must be > 0, got {self.curve_param}')
        if self.curve == 'drago' and not 0 < self.curve_param < 1:
            raise ValueError(f'RenderParams.curve_param (Drago bias) must lie in (0, 1), got {self.curve_param}')
        if not 0 <= self.clip_fraction < 1:
            raise ValueError(f'RenderParams.clip_fraction must be in [0, 1), got {self.clip_fraction}')
        if not 0 <= self.contrast <= 1 or self.saturation < 0 or self.noise_shot < 0 or self.noise_read < 0:
            raise ValueError(
                'RenderParams: need contrast in [0, 1] and saturation, noise_shot, noise_read >= 0, got '
                f'{self.contrast}, {self.saturation}, {self.noise_shot}, {self.noise_read}'
            )
        if self.jpeg_quality is not None and not 1 <= int(self.jpeg_quality) <= 100:
            raise ValueError(f'RenderParams.jpeg_quality must be in [1, 100] or None, got {self.jpeg_quality}')

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RenderParams:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _hable(v: np.ndarray) -> np.ndarray:
    a, b, c, d, e, f = _HABLE
    return (v * (a * v + c * b) + d * e) / (v * (a * v + b) + d * f) - e / f


def _aces(v: np.ndarray) -> np.ndarray:
    return v * (2.51 * v + 0.03) / (v * (2.43 * v + 0.59) + 0.14)


def _luminance_curve(s: np.ndarray, fn) -> np.ndarray:
    """Apply a luminance curve ``fn`` (``L`` in [0, 1] -> ``Ld`` in [0, 1]) keeping the colour ratios, then clip."""
    lum = luminance_np(s)
    ld = fn(lum)
    ratio = np.where(lum > 1e-8, ld / np.maximum(lum, 1e-8), 1.0)
    return np.clip(s * ratio, 0.0, 1.0)


def tone_curve(s: np.ndarray, curve: str, param: float) -> np.ndarray:
    """The rendering's tone curve on sensor values ``s`` (``(H, W, 3)`` linear, clipped to [0, 1]) -> display-linear
    [0, 1], with 0 -> 0 and 1 -> 1 (module docstring)."""
    s = np.clip(np.asarray(s, dtype=np.float64), 0.0, 1.0)
    if curve == 'hable':
        return np.clip(_hable(param * s) / _hable(param), 0.0, 1.0)
    if curve == 'aces':
        return np.clip(_aces(param * s) / _aces(param), 0.0, 1.0)
    if curve == 'drago':
        power = math.log(param) / math.log(0.5)

        def drago(lum):
            lum = np.clip(lum, 0.0, 1.0)
            return np.log1p(DRAGO_RANGE * lum) / math.log1p(DRAGO_RANGE) / np.log10(2.0 + 8.0 * lum**power)

        return _luminance_curve(s, drago)
    if curve == 'reinhard_lum':

        def reinhard(lum):
            scaled = param * lum
            return scaled * (1.0 + scaled / param**2) / (1.0 + scaled)

        return _luminance_curve(s, reinhard)
    raise ValueError(f'tone_curve: curve must be one of {RENDER_CURVES}, got {curve!r}')


def random_rendering(
    rng: np.random.Generator,
    clip_range: tuple[float, float] = (0.02, 0.16),
    contrast_range: tuple[float, float] = (0.0, 0.4),
    saturation_range: tuple[float, float] = (0.9, 1.3),
    noise_prob: float = 0.5,
    jpeg_prob: float = 0.6,
    jpeg_quality: tuple[int, int] = (70, 95),
) -> RenderParams:
    """Draw a rendering: curve uniform over :data:`RENDER_CURVES`, its parameter from :data:`CURVE_PARAM_RANGES`,
    contrast, saturation, noise (shot variance up to 2e-3, read std up to 2e-3, with ``noise_prob``) and JPEG
    (``jpeg_prob``). A fixed number of draws in a fixed order, whatever the options."""
    u = rng.random(9)
    curve = RENDER_CURVES[int(u[0] * len(RENDER_CURVES)) % len(RENDER_CURVES)]
    lo, hi = CURVE_PARAM_RANGES[curve]
    quality = int(rng.integers(jpeg_quality[0], jpeg_quality[1] + 1))
    noisy = u[5] < noise_prob
    return RenderParams(
        curve=curve,
        curve_param=float(lo + (hi - lo) * u[1]),
        clip_fraction=float(clip_range[0] + (clip_range[1] - clip_range[0]) * u[2]),
        contrast=float(contrast_range[0] + (contrast_range[1] - contrast_range[0]) * u[3]),
        saturation=float(saturation_range[0] + (saturation_range[1] - saturation_range[0]) * u[4]),
        noise_shot=float(2e-3 * u[6]) if noisy else 0.0,
        noise_read=float(2e-3 * u[7]) if noisy else 0.0,
        noise_seed=int(rng.integers(2**31)),
        jpeg_quality=quality if u[8] < jpeg_prob else None,
    )


def resolve_rendering(hdr: np.ndarray, params: RenderParams) -> RenderParams:
    """A copy of ``params`` with the image-dependent exposure fixed for ``hdr``."""
    if params.exposure is not None:
        return dataclasses.replace(params)
    return dataclasses.replace(params, exposure=exposure_for_clip_fraction(hdr, params.clip_fraction))


def apply_rendering(hdr: np.ndarray, params: RenderParams) -> np.ndarray:
    """Render linear HDR ``(H, W, 3)`` (relative scale) with ``params``.

    Returns:
        ``(H, W, 3)`` float32 display-referred LDR RGB in [0, 1], multiples of 1/255 (8-bit, JPEG when asked).
    """
    x = np.maximum(np.asarray(hdr, dtype=np.float64), 0.0)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f'apply_rendering: expected an (H, W, 3) linear HDR array, got shape {x.shape}')
    exposure = params.exposure if params.exposure is not None else exposure_for_clip_fraction(x, params.clip_fraction)
    s = x * exposure
    if params.noise_shot > 0 or params.noise_read > 0:
        noise = np.random.default_rng(params.noise_seed).standard_normal(s.shape)
        s = s + np.sqrt(params.noise_shot * np.clip(s, 0.0, 1.0) + params.noise_read**2) * noise
    y = srgb_encode_np(tone_curve(s, params.curve, params.curve_param))
    if params.contrast > 0:
        y = (1.0 - params.contrast) * y + params.contrast * y * y * (3.0 - 2.0 * y)
    if params.saturation != 1.0:
        luma = luminance_np(y)
        y = luma + params.saturation * (y - luma)
    return quantize_display(np.clip(y, 0.0, 1.0), 8, params.jpeg_quality).astype(np.float32)


__all__ = [
    'RENDER_CURVES',
    'RenderParams',
    'apply_rendering',
    'random_rendering',
    'resolve_rendering',
    'tone_curve',
]
