"""Transfer functions and colour primaries of coded (integer) HDR/SDR images, in numpy.

Decoding goes from a code value in [0, 1] (the integer divided by ``2**bits - 1``) to linear light; encoding is the
inverse (used to write test files and coded output). All functions are element-wise, take arrays of any shape and
return float64 arrays.

- PQ (SMPTE ST 2084, ITU-R BT.2100): :func:`pq_to_linear` returns **absolute display luminance in cd/m²**
  (0-10000); :func:`linear_to_pq` takes cd/m² (clipped to [0, 10000]).
- HLG (ITU-R BT.2100, ARIB STD-B67): :func:`hlg_to_linear` is the inverse OETF and returns **scene-linear** light
  E in [0, 1] (1 = the nominal peak of the camera signal). The HLG OOTF (display-linear
  ``F_D = alpha * Y_S**(gamma - 1) * E_S`` with system gamma 1.2 at 1000 cd/m²) is deliberately **not** applied:
  scene-linear is what an LDR->HDR model should predict, and it does not depend on a target display.
- sRGB (IEC 61966-2-1): the piecewise curve of :mod:`llmhdr_basicsr.utils.tonemap` (one implementation of the
  formula); display-linear [0, 1].
- Pure power law (:func:`gamma_to_linear`): ``code ** gamma``, no clipping (used e.g. for the NTIRE 2021 HDR data,
  whose 16-bit ground truth is stored with a 1/2.24 gamma).

:func:`decode_transfer` / :func:`encode_transfer` wrap these into one *relative* scale where reference white is 1.0:
PQ cd/m² are divided by ``white_nits`` (default 203 cd/m², the HDR reference white of ITU-R BT.2408), HLG
scene-linear light is divided by the scene light of the BT.2408 reference-white signal (75 % HLG, E = 0.2650), sRGB
and linear codes are used as they are (code 1.0 = 1.0).

Primaries: :func:`primaries_matrix` builds the 3x3 matrix between linear RGB in two sets of primaries from the
chromaticities of ITU-R BT.709 and BT.2020 (both D65 white), so white (1, 1, 1) maps exactly to (1, 1, 1); the result
matches the 4-decimal matrix of ITU-R BT.2087. :func:`convert_primaries` keeps out-of-gamut (negative) values; the
readers clip them to 0 (documented there).
"""

from __future__ import annotations

import numpy as np

# SMPTE ST 2084 constants (exact rationals of the standard).
PQ_M1 = 2610.0 / 16384.0  # 0.1593017578125
PQ_M2 = 2523.0 / 4096.0 * 128.0  # 78.84375
PQ_C1 = 3424.0 / 4096.0  # 0.8359375
PQ_C2 = 2413.0 / 4096.0 * 32.0  # 18.8515625
PQ_C3 = 2392.0 / 4096.0 * 32.0  # 18.6875
PQ_PEAK_NITS = 10000.0

# ITU-R BT.2100 HLG constants.
HLG_A = 0.17883277
HLG_B = 0.28466892  # 1 - 4a
HLG_C = 0.55991073  # 0.5 - a ln(4a)

#: HDR reference white of ITU-R BT.2408, in cd/m² (PQ) and as an HLG signal value.
REFERENCE_WHITE_NITS = 203.0
HLG_REFERENCE_WHITE_SIGNAL = 0.75

#: CIE 1931 xy chromaticities of the red, green and blue primaries and of the white point.
PRIMARIES = {
    'bt709': ((0.640, 0.330), (0.300, 0.600), (0.150, 0.060), (0.3127, 0.3290)),
    'bt2020': ((0.708, 0.292), (0.170, 0.797), (0.131, 0.046), (0.3127, 0.3290)),
}
TRANSFERS = ('pq', 'hlg', 'srgb', 'linear')


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


# ----------------------------------------------------------------------------------------------------------------------
# PQ
# ----------------------------------------------------------------------------------------------------------------------


def pq_to_linear(code) -> np.ndarray:
    """PQ EOTF (SMPTE ST 2084): code value in [0, 1] (clipped) -> display luminance in cd/m², [0, 10000]."""
    p = np.clip(_f64(code), 0.0, 1.0) ** (1.0 / PQ_M2)
    y = np.maximum(p - PQ_C1, 0.0) / (PQ_C2 - PQ_C3 * p)
    return PQ_PEAK_NITS * y ** (1.0 / PQ_M1)


def linear_to_pq(nits) -> np.ndarray:
    """Inverse PQ EOTF: display luminance in cd/m² (clipped to [0, 10000]) -> code value in [0, 1]."""
    y = np.clip(_f64(nits) / PQ_PEAK_NITS, 0.0, 1.0) ** PQ_M1
    return ((PQ_C1 + PQ_C2 * y) / (1.0 + PQ_C3 * y)) ** PQ_M2


# ----------------------------------------------------------------------------------------------------------------------
# HLG
# ----------------------------------------------------------------------------------------------------------------------


def hlg_to_linear(code) -> np.ndarray:
    """HLG inverse OETF (ITU-R BT.2100): code value in [0, 1] (clipped) -> scene-linear light E in [0, 1].

    ``E = E'^2 / 3`` for ``E' <= 1/2``, else ``(exp((E' - c) / a) + b) / 12``. No OOTF (module docstring).
    """
    v = np.clip(_f64(code), 0.0, 1.0)
    high = (np.exp((np.maximum(v, 0.5) - HLG_C) / HLG_A) + HLG_B) / 12.0
    return np.where(v <= 0.5, v * v / 3.0, high)


def linear_to_hlg(scene) -> np.ndarray:
    """HLG OETF (ITU-R BT.2100): scene-linear light E in [0, 1] (clipped) -> code value in [0, 1]."""
    e = np.clip(_f64(scene), 0.0, 1.0)
    high = HLG_A * np.log(np.maximum(12.0 * e - HLG_B, 1e-12)) + HLG_C
    return np.where(e <= 1.0 / 12.0, np.sqrt(3.0 * e), high)


#: Scene-linear light of the BT.2408 HLG reference white (75 % signal), ~0.2650.
HLG_REFERENCE_WHITE = float(hlg_to_linear(HLG_REFERENCE_WHITE_SIGNAL))


# ----------------------------------------------------------------------------------------------------------------------
# sRGB and power laws
# ----------------------------------------------------------------------------------------------------------------------


def srgb_to_linear(code) -> np.ndarray:
    """sRGB EOTF (IEC 61966-2-1): code value in [0, 1] (clipped) -> display-linear [0, 1]."""
    from llmhdr_basicsr.utils.tonemap import srgb_decode_np

    return srgb_decode_np(_f64(code))


def linear_to_srgb(linear) -> np.ndarray:
    """sRGB inverse EOTF (IEC 61966-2-1): display-linear [0, 1] (clipped) -> code value in [0, 1]."""
    from llmhdr_basicsr.utils.tonemap import srgb_encode_np

    return srgb_encode_np(_f64(linear))


def gamma_to_linear(code, gamma: float) -> np.ndarray:
    """Power law ``max(code, 0) ** gamma``; values above 1 are kept (no clipping)."""
    return np.maximum(_f64(code), 0.0) ** float(gamma)


def linear_to_gamma(linear, gamma: float) -> np.ndarray:
    """Inverse power law ``max(linear, 0) ** (1 / gamma)``; values above 1 are kept."""
    return np.maximum(_f64(linear), 0.0) ** (1.0 / float(gamma))


# ----------------------------------------------------------------------------------------------------------------------
# Relative scale (reference white = 1.0)
# ----------------------------------------------------------------------------------------------------------------------


def _check_transfer(transfer: str) -> None:
    if transfer not in TRANSFERS:
        raise ValueError(f'transfer must be one of {TRANSFERS}, got {transfer!r}')


def decode_transfer(code, transfer: str, white_nits: float = REFERENCE_WHITE_NITS) -> np.ndarray:
    """Code values in [0, 1] -> linear light on the relative scale where reference white is 1.0.

    Args:
        code: any shape; code values (integer / (2**bits - 1)).
        transfer: ``'pq'`` (result = cd/m² / ``white_nits``), ``'hlg'`` (scene-linear / :data:`HLG_REFERENCE_WHITE`),
            ``'srgb'`` or ``'linear'`` (code used as it is).
        white_nits: the PQ luminance that becomes 1.0 (203 cd/m² = BT.2408 reference white; 100 = SDR white).
    """
    _check_transfer(transfer)
    if transfer == 'pq':
        if not white_nits > 0:
            raise ValueError(f'white_nits must be > 0, got {white_nits}')
        return pq_to_linear(code) / float(white_nits)
    if transfer == 'hlg':
        return hlg_to_linear(code) / HLG_REFERENCE_WHITE
    if transfer == 'srgb':
        return srgb_to_linear(code)
    return _f64(code)


def encode_transfer(linear, transfer: str, white_nits: float = REFERENCE_WHITE_NITS) -> np.ndarray:
    """Inverse of :func:`decode_transfer`: relative linear light (white = 1.0) -> code values in [0, 1]."""
    _check_transfer(transfer)
    if transfer == 'pq':
        if not white_nits > 0:
            raise ValueError(f'white_nits must be > 0, got {white_nits}')
        return linear_to_pq(_f64(linear) * float(white_nits))
    if transfer == 'hlg':
        return linear_to_hlg(_f64(linear) * HLG_REFERENCE_WHITE)
    if transfer == 'srgb':
        return linear_to_srgb(linear)
    return _f64(linear)


# ----------------------------------------------------------------------------------------------------------------------
# Primaries
# ----------------------------------------------------------------------------------------------------------------------


def rgb_to_xyz_matrix(primaries: str) -> np.ndarray:
    """3x3 matrix from linear RGB in ``primaries`` (``'bt709'`` or ``'bt2020'``) to CIE XYZ, white Y = 1."""
    if primaries not in PRIMARIES:
        raise ValueError(f'primaries must be one of {tuple(PRIMARIES)}, got {primaries!r}')
    *rgb, (xw, yw) = PRIMARIES[primaries]
    m = np.array([[x / y, 1.0, (1.0 - x - y) / y] for x, y in rgb]).T  # columns: XYZ of each primary at Y = 1
    white = np.array([xw / yw, 1.0, (1.0 - xw - yw) / yw])
    return m * np.linalg.solve(m, white)  # scale each column so that R = G = B = 1 gives the white point


def primaries_matrix(src: str, dst: str) -> np.ndarray:
    """3x3 matrix ``M`` with ``rgb_dst = M @ rgb_src`` for linear light (identity when ``src == dst``)."""
    if src == dst:
        rgb_to_xyz_matrix(src)  # validates the name
        return np.eye(3)
    return np.linalg.solve(rgb_to_xyz_matrix(dst), rgb_to_xyz_matrix(src))


BT2020_TO_BT709 = primaries_matrix('bt2020', 'bt709')
BT709_TO_BT2020 = primaries_matrix('bt709', 'bt2020')


def convert_primaries(img, src: str, dst: str) -> np.ndarray:
    """Linear RGB ``(..., 3)`` from ``src`` to ``dst`` primaries; negative (out-of-gamut) values are kept."""
    img = _f64(img)
    if img.shape[-1] != 3:
        raise ValueError(f'expected linear RGB with 3 channels last, got shape {img.shape}')
    if src == dst:
        primaries_matrix(src, dst)
        return img
    return img @ primaries_matrix(src, dst).T
