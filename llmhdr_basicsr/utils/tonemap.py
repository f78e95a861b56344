"""Tone operators and transfer functions: differentiable torch versions with numpy twins.

The torch functions take ``(..., 3, H, W)`` tensors (channel third from last, any leading batch dims; purely
element-wise operators accept any shape) in float32 or float64 and are differentiable (checked with float64
``gradcheck``). Each numpy twin ``<name>_np`` takes ``(H, W, 3)`` RGB arrays (or any shape for element-wise
operators) and runs the same torch code, so there is exactly one implementation of each formula.

Operators
- :func:`mu_law` / :func:`mu_law_inverse`: ``T(H) = log(1 + mu H) / log(1 + mu)``, mu = 5000 (Kalantari &
  Ramamoorthi 2017; FHDR, SelfHDR). Input: linear HDR normalised to [0, 1]. Output: [0, 1], display-like.
- :func:`reinhard2002`: the global photographic operator of Reinhard et al. 2002 (key value, log-average
  luminance, burn-out at ``L_white``), followed by a display gamma.
- :func:`exposure_gamma`: ``clip(2^stops H, 0, 1)^(1/gamma)``, a virtual camera with a pure gamma curve.
- :func:`srgb_encode` / :func:`srgb_decode`: the IEC 61966-2-1 sRGB transfer function.
- :func:`pu21_encode`: PU21 perceptually uniform encoding of absolute luminance in cd/m² (Mantiuk & Azimi 2021,
  ``banding_glare`` parameters, valid range [0.005, 10000] cd/m²).
- :func:`hist_equalize`: the LDR histogram equalisation of the paper's contrastive/semantic losses (OpenCV
  ``equalizeHist`` on the luma of YCrCb); a fixed pre-processing of the input, not differentiable.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import cv2
import numpy as np
import torch

MU = 5000.0
REC709_WEIGHTS = (0.2126, 0.7152, 0.0722)
PU21_BANDING_GLARE = (0.353487901, 0.3734658629, 8.277049286e-05, 0.9062562627, 0.09150303166, 0.9099517204,
                      596.3148142)  # fmt: skip
PU21_L_MIN, PU21_L_MAX = 0.005, 10000.0


def numpy_twin(fn: Callable, channel_axis: bool = True) -> Callable:
    """Make the numpy twin of a torch operator: ``(H, W, 3)`` (or ``(N, H, W, 3)``) arrays in, same shape out.

    The array is moved to torch in float64, channels are moved to dim -3 when ``channel_axis``, ``fn`` runs, and
    the result comes back in the input's float dtype (float32 for integer inputs).
    """

    @functools.wraps(fn)
    def twin(x, *args, **kwargs):
        x = np.asarray(x)
        out_dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(x.shape))  # keeps 0-d arrays 0-d
        if channel_axis:
            t = t.movedim(-1, -3)
        with torch.no_grad():
            y = fn(t, *args, **kwargs)
        if channel_axis and y.dim() == t.dim():
            y = y.movedim(-3, -1)
        return y.numpy().astype(out_dtype, copy=False)

    twin.__name__ = twin.__qualname__ = f'{fn.__name__}_np'
    twin.__doc__ = f'numpy twin of :func:`{fn.__name__}` (channels last). ' + (fn.__doc__ or '')
    return twin


def luminance(x: torch.Tensor) -> torch.Tensor:
    """Rec.709 luminance of linear RGB.

    Args:
        x: ``(..., 3, H, W)`` linear RGB.

    Returns:
        ``(..., 1, H, W)``, same units as ``x``.
    """
    w = x.new_tensor(REC709_WEIGHTS).view(3, 1, 1)
    return (x * w).sum(dim=-3, keepdim=True)


def mu_law(x: torch.Tensor, mu: float = MU) -> torch.Tensor:
    """mu-law range compression ``log(1 + mu x) / log(1 + mu)``.

    Args:
        x: any shape, linear HDR normalised to [0, 1] (values are clamped at 0; values above 1 map above 1).
        mu: compression strength (5000 as in Kalantari & Ramamoorthi 2017).

    Returns:
        Same shape, in [0, 1] for inputs in [0, 1].
    """
    return torch.log1p(mu * x.clamp(min=0)) / math.log1p(mu)


def mu_law_inverse(y: torch.Tensor, mu: float = MU) -> torch.Tensor:
    """Inverse of :func:`mu_law`: ``((1 + mu)^y - 1) / mu``. Input in [0, 1] (clamped at 0), output linear [0, 1]."""
    return torch.expm1(y.clamp(min=0) * math.log1p(mu)) / mu


def hdr_to_model(linear: torch.Tensor, headroom: float = 0.0, mu: float = MU) -> torch.Tensor:
    """Linear HDR (diffuse white ~ 1) -> the generators' HDR domain ``T(min(H / 2^headroom, 1))`` in [0, 1].

    Args:
        linear: any shape, linear HDR >= 0 normalised so diffuse white (the datasets' reference) is ~ 1.
        headroom: stops of highlight range above white (values beyond ``2^headroom`` clip).
        mu: mu-law strength.
    """
    return mu_law((linear / 2.0**headroom).clamp(0.0, 1.0), mu)


def model_to_hdr(t: torch.Tensor, headroom: float = 0.0, mu: float = MU) -> torch.Tensor:
    """Inverse of :func:`hdr_to_model`: HDR-domain values in [0, 1] -> linear HDR, white ~ 1, up to ``2^headroom``."""
    return mu_law_inverse(t, mu) * 2.0**headroom


def srgb_encode(x: torch.Tensor) -> torch.Tensor:
    """sRGB OETF (IEC 61966-2-1): display-linear [0, 1] -> sRGB-encoded [0, 1] (input clamped to [0, 1])."""
    x = x.clamp(0.0, 1.0)
    low = 12.92 * x
    high = 1.055 * x.clamp(min=0.0031308).pow(1.0 / 2.4) - 0.055
    return torch.where(x <= 0.0031308, low, high)


def srgb_decode(v: torch.Tensor) -> torch.Tensor:
    """sRGB EOTF: sRGB-encoded [0, 1] -> linear [0, 1] (input clamped to [0, 1])."""
    v = v.clamp(0.0, 1.0)
    low = v / 12.92
    high = ((v.clamp(min=0.04045) + 0.055) / 1.055).pow(2.4)
    return torch.where(v <= 0.04045, low, high)


def _gamma(x: torch.Tensor, gamma: float | None, eps: float = 1e-6) -> torch.Tensor:
    x = x.clamp(0.0, 1.0)
    if gamma is None or gamma == 1:
        return x
    return x.clamp(min=eps).pow(1.0 / gamma)  # eps keeps the gradient finite at 0


def exposure_gamma(x: torch.Tensor, stops: float = 0.0, gamma: float | None = 2.2) -> torch.Tensor:
    """Virtual camera: scale by ``2^stops``, clip to [0, 1], apply ``1/gamma``.

    Args:
        x: any shape, linear HDR (relative scale).
        stops: exposure change in stops (EV).
        gamma: display gamma (None or 1: stay display-linear).

    Returns:
        Same shape, display-referred, in [0, 1].
    """
    return _gamma(x * (2.0**stops), gamma)


def reinhard2002(
    x: torch.Tensor, key: float = 0.18, white: float | None = None, gamma: float | None = 2.2, eps: float = 1e-6
) -> torch.Tensor:
    """Reinhard et al. 2002, "Photographic tone reproduction for digital images", global operator (Eq. 1-4).

    ``L = key / Lbar * Lw`` with ``Lbar = exp(mean(log(eps + Lw)))`` per image; ``Ld = L (1 + L / Lwhite^2) / (1 + L)``;
    colour is kept by scaling RGB with ``Ld / Lw``; then ``1/gamma``.

    Args:
        x: ``(..., 3, H, W)`` linear HDR RGB, relative scale (the operator is scale invariant).
        key: key value ``a`` (0.18 = middle grey).
        white: smallest scaled luminance mapped to white; None = the image's maximum scaled luminance.
        gamma: display gamma applied to the result (None or 1: display-linear).
        eps: guards the logarithm and the division for black pixels.

    Returns:
        ``(..., 3, H, W)``, display-referred, in [0, 1].
    """
    x = x.clamp(min=0)
    lw = luminance(x)
    log_avg = torch.exp(torch.log(lw + eps).mean(dim=(-2, -1), keepdim=True))
    lum = key / log_avg * lw
    l_white = lum.amax(dim=(-2, -1), keepdim=True) if white is None else torch.as_tensor(white, dtype=x.dtype)
    ld = lum * (1 + lum / (l_white * l_white).clamp(min=eps)) / (1 + lum)
    return _gamma(x * (ld / (lw + eps)), gamma)


def pu21_encode(lum: torch.Tensor) -> torch.Tensor:
    """PU21 encoding (Mantiuk & Azimi 2021, ``banding_glare``) of absolute luminance.

    ``V = p6 * (((p0 + p1 Y^p3) / (1 + p2 Y^p3))^p4 - p5)`` with ``Y`` clamped to [0.005, 10000] cd/m²; same
    parameters as ``pycvvdp.utils.PU``. PU(100 cd/m²) = 256.4, PU(10000 cd/m²) = 595.4.

    Args:
        lum: any shape, absolute luminance in cd/m² (linear). The caller chooses the display scaling that turns
            relative HDR into cd/m² (see :mod:`llmhdr_basicsr.metrics.hdr_metric`).

    Returns:
        Same shape, PU21 units (roughly 0 .. 595).
    """
    p = PU21_BANDING_GLARE
    y = lum.clamp(PU21_L_MIN, PU21_L_MAX).pow(p[3])
    return p[6] * (((p[0] + p[1] * y) / (1 + p[2] * y)).pow(p[4]) - p[5])


PU21_PEAK = float(pu21_encode(torch.tensor(PU21_L_MAX, dtype=torch.float64)))


def normalize_hdr(x: torch.Tensor, percentile: float = 100.0, eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """Divide each image by a robust maximum of its luminance so that the percentile maps to 1.

    Args:
        x: ``(N, 3, H, W)`` linear HDR RGB, relative scale.
        percentile: 100 = the maximum; e.g. 99.5 ignores the brightest 0.5 % of pixels (they end up above 1).

    Returns:
        ``(normalised, scale)`` with ``normalised = x / scale`` and ``scale`` of shape ``(N, 1, 1, 1)``.
    """
    lum = luminance(x).flatten(1)
    ref = lum.amax(dim=1) if percentile >= 100 else torch.quantile(lum, percentile / 100.0, dim=1)
    scale = ref.clamp(min=eps).view(-1, 1, 1, 1)
    return x / scale, scale


def hist_equalize_np(ldr: np.ndarray) -> np.ndarray:
    """OpenCV ``equalizeHist`` on the luma of YCrCb, as the paper does before CLIP/SAM (Sec. "contrastive loss").

    Args:
        ldr: ``(H, W, 3)`` RGB, uint8 or float display-referred in [0, 1].

    Returns:
        ``(H, W, 3)`` RGB of the same kind (uint8 in, uint8 out; float in, float32 in [0, 1] out).
    """
    is_float = np.issubdtype(np.asarray(ldr).dtype, np.floating)
    u8 = np.round(np.clip(ldr, 0, 1) * 255).astype(np.uint8) if is_float else np.asarray(ldr, dtype=np.uint8)
    ycrcb = cv2.cvtColor(u8, cv2.COLOR_RGB2YCrCb)
    ycrcb[..., 0] = cv2.equalizeHist(np.ascontiguousarray(ycrcb[..., 0]))
    out = cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2RGB)
    return out.astype(np.float32) / 255.0 if is_float else out


def hist_equalize(ldr: torch.Tensor) -> torch.Tensor:
    """Batched :func:`hist_equalize_np` for tensors (runs on the CPU, result returned on the input's device).

    Args:
        ldr: ``(N, 3, H, W)`` or ``(3, H, W)`` display-referred RGB in [0, 1].

    Returns:
        Same shape, dtype and device; equalised, in [0, 1] (8-bit quantised). Not differentiable: the paper applies
        it to the fixed input LDR.
    """
    batch = ldr.unsqueeze(0) if ldr.dim() == 3 else ldr
    arrays = batch.detach().float().permute(0, 2, 3, 1).cpu().numpy()
    out = np.stack([hist_equalize_np(a) for a in arrays])
    result = torch.from_numpy(out).permute(0, 3, 1, 2).to(device=ldr.device, dtype=ldr.dtype)
    return result[0] if ldr.dim() == 3 else result


mu_law_np = numpy_twin(mu_law, channel_axis=False)
mu_law_inverse_np = numpy_twin(mu_law_inverse, channel_axis=False)
srgb_encode_np = numpy_twin(srgb_encode, channel_axis=False)
srgb_decode_np = numpy_twin(srgb_decode, channel_axis=False)
exposure_gamma_np = numpy_twin(exposure_gamma, channel_axis=False)
pu21_encode_np = numpy_twin(pu21_encode, channel_axis=False)
reinhard2002_np = numpy_twin(reinhard2002)
luminance_np = numpy_twin(luminance)

from .defaults import PREVIEW_OPERATORS  # noqa: E402  (re-exported: the --preview operators, linear HDR -> [0, 1])


def tonemap_preview(x: torch.Tensor, method: str = 'reinhard', stops: float = 0.0) -> torch.Tensor:
    """Display-referred preview of linear HDR for PNG files and tensorboard.

    Args:
        x: ``(N, 3, H, W)`` linear HDR RGB, relative scale.
        method: ``'reinhard'`` (Reinhard 2002 global, key 0.18, then sRGB), ``'exposure'`` (normalise the 99th
            luminance percentile to 1, shift by ``stops``, clip, sRGB) or ``'mu'`` (normalise the maximum to 1, then
            mu-law).
        stops: exposure shift in stops applied before the operator.

    Returns:
        ``(N, 3, H, W)`` display-referred RGB in [0, 1].
    """
    x = x.clamp(min=0)
    gain = 2.0**stops
    if method == 'reinhard':  # scale invariant: the exposure shift acts on the key value
        return srgb_encode(reinhard2002(x, key=0.18 * gain, gamma=None))
    if method == 'exposure':
        return srgb_encode(normalize_hdr(x, percentile=99.0)[0] * gain)
    if method == 'mu':
        return mu_law((normalize_hdr(x)[0] * gain).clamp(max=1))
    raise ValueError(f'Unknown preview operator {method!r}; choose one of {PREVIEW_OPERATORS}')
