"""The one image I/O module of llmhdr_basicsr: HDR and LDR files in, float32 RGB arrays out, and back.

Reading

- HDR: ``.hdr`` (Radiance RGBE), ``.exr`` (OpenEXR, read as float32), ``.pfm``, float ``.tif``/``.tiff``
  -> ``(H, W, 3)`` float32 **linear** RGB, relative scale as stored in the file. NaN, +-Inf and negative values are
  replaced (NaN and -Inf by 0, +Inf by the largest finite value, negatives by 0) with one logged warning naming the
  file and the counts.
- LDR: 8- or 16-bit ``.png``, ``.tif``/``.tiff``, ``.jpg``/``.jpeg``, ``.bmp``, ``.webp`` -> ``(H, W, 3)`` float32
  **display-referred** RGB in [0, 1] (code value / 255 or / 65535; the sRGB transfer function is *not* removed).
- Grey images become three equal channels; an alpha channel is dropped, with one warning per file (the outputs are
  RGB: HDR files and the model have no alpha).
- A missing file raises ``FileNotFoundError``; a file that cannot be decoded raises :class:`ImageReadError`; both
  name the file (OpenCV's and libpng's own messages are kept off the terminal: :mod:`llmhdr_basicsr.utils.quiet`).
  HDR data is never converted to 8 bit on the way: an integer file asked for as HDR is an error.
- Integer-coded HDR (16-bit PQ or HLG PNG/TIFF, e.g. HDR10 video frames): :func:`read_coded_hdr` removes the transfer
  function and converts the primaries (maths in :mod:`llmhdr_basicsr.utils.transfer`) -> ``(H, W, 3)`` float32 linear
  BT.709 RGB, reference white = 1.0. :func:`read_image_raw` returns the stored integer codes, unscaled.

Writing

- :func:`write_hdr`: ``.exr`` (float32, ZIP-compressed), ``.hdr`` (RGBE, ~1 % relative precision) or ``.pfm``; the
  array is linear RGB and is written unchanged (no normalisation).
- :func:`write_ldr`: ``.png`` (8 or 16 bit), ``.tif`` (8 or 16 bit), ``.jpg`` (8 bit); values are clipped to
  [0, 1] and rounded.
- Parent folders are created. Files are written to a temporary name and renamed, so an interrupted write never leaves
  a half-written image under the final name.

OpenCV 4.x reads and writes EXR only with ``OPENCV_IO_ENABLE_OPENEXR=1``; this module sets that default itself, so
callers never have to (opencv-python 5.x wheels have no EXR codec at all, hence the ``<5`` pin). Reading our ``.exr``
files with OpenCV in your own code needs the same variable (set it before the first EXR is read).
"""

from __future__ import annotations

import logging
import os
import os.path as osp

os.environ.setdefault('OPENCV_IO_ENABLE_OPENEXR', '1')

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from llmhdr_basicsr.utils.fileio import atomic_write_bytes  # noqa: E402
from llmhdr_basicsr.utils.quiet import opencv_quiet, png_problem  # noqa: E402

logger = logging.getLogger('basicsr.llmhdr')

HDR_EXTENSIONS = ('.hdr', '.exr', '.pfm')
FLOAT_CAPABLE_EXTENSIONS = ('.tif', '.tiff')
LDR_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.tif', '.tiff', '.bmp', '.webp')
IMAGE_EXTENSIONS = tuple(sorted(set(HDR_EXTENSIONS + LDR_EXTENSIONS)))


class ImageReadError(OSError):
    """A file exists but cannot be decoded as an image (corrupt, truncated, unsupported or of the wrong kind)."""


def extension(path: str) -> str:
    return osp.splitext(str(path))[1].lower()


def is_hdr_file(path: str) -> bool:
    """True for file names with an HDR extension (``.hdr``, ``.exr``, ``.pfm``). Float TIFFs need :func:`read_image`."""
    return extension(path) in HDR_EXTENSIONS


def list_images(folder: str, extensions: tuple = IMAGE_EXTENSIONS) -> list[str]:
    """Sorted paths of the image files directly inside ``folder`` (hidden files skipped)."""
    if not osp.isdir(folder):
        raise FileNotFoundError(f'Image folder does not exist: {folder}')
    names = sorted(n for n in os.listdir(folder) if not n.startswith('.') and extension(n) in extensions)
    return [osp.join(folder, n) for n in names]


def _decode(path: str) -> np.ndarray:
    path = str(path)
    if not osp.isfile(path):
        raise FileNotFoundError(f'Image file not found: {path}')
    data = np.fromfile(path, dtype=np.uint8)  # also handles non-ASCII paths
    problem = png_problem(data) if data.size else 'empty file'
    if problem is not None:  # found before libpng prints its own "libpng error" line
        raise ImageReadError(f'Cannot decode image file ({problem}): {path}')
    with opencv_quiet():
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None and extension(path) == '.exr':
        img = _read_exr_openexr(path)
    if img is None:
        raise ImageReadError(f'Cannot decode image file (corrupt, truncated or unsupported format): {path}')
    return img


def _read_exr_openexr(path: str) -> np.ndarray | None:
    """Fallback EXR reader through the OpenEXR bindings (used when OpenCV has no EXR codec). Returns BGR(A)."""
    try:
        import OpenEXR  # type: ignore
    except ImportError:
        return None
    try:
        with OpenEXR.File(path) as f:
            channels = f.channels()
            for key in ('RGB', 'RGBA'):
                if key in channels:
                    rgb = np.asarray(channels[key].pixels, dtype=np.float32)[..., :3]
                    return rgb[..., ::-1].copy()
            if 'Y' in channels:
                return np.asarray(channels['Y'].pixels, dtype=np.float32)
    except Exception:  # corrupt file: reported by the caller
        return None
    return None


def to_rgb3(img: np.ndarray, name: str = '<array>') -> np.ndarray:
    """OpenCV layout (H, W), (H, W, 1), BGR or BGRA -> (H, W, 3) RGB (grey replicated, alpha dropped).

    ``name`` (the file) is named in the error raised for other channel counts and in the one warning per file about
    a dropped alpha channel.
    """
    if img.ndim == 2:
        img = img[..., None]
    channels = img.shape[2]
    if channels in (2, 4):
        _warn_alpha(name)
    if channels == 1:
        return np.repeat(img, 3, axis=2)
    if channels == 2:  # grey + alpha
        return np.repeat(img[..., :1], 3, axis=2)
    if channels in (3, 4):
        return np.ascontiguousarray(img[..., 2::-1])
    raise ImageReadError(f'{name}: unsupported number of channels: {channels} (expected 1, 2, 3 or 4)')


_ALPHA_WARNED: set[str] = set()


def _warn_alpha(name: str) -> None:
    """One warning per file (and process) that its alpha channel is not used."""
    if name in _ALPHA_WARNED or name == '<array>':
        return
    _ALPHA_WARNED.add(name)
    logger.warning(f'{name}: alpha channel dropped (the outputs are RGB; composite the image first if it matters)')


def sanitize_hdr(img: np.ndarray, name: str = '<array>') -> np.ndarray:
    """Replace NaN/-Inf by 0, +Inf by the largest finite value and negatives by 0, warning once with the counts.

    Args:
        img: float array, linear HDR, any shape.
        name: file name used in the warning.

    Returns:
        float32 array of the same shape, finite and >= 0.
    """
    img = np.asarray(img, dtype=np.float32)
    finite = np.isfinite(img)
    n_nan = int(np.isnan(img).sum())
    n_inf = int(img.size - finite.sum()) - n_nan
    n_neg = int((img[finite] < 0).sum())
    if n_nan == n_inf == n_neg == 0:
        return img
    logger.warning(f'{name}: replaced {n_nan} NaN, {n_inf} infinite and {n_neg} negative HDR values')
    max_finite = float(img[finite].max()) if finite.any() else 0.0
    img = np.nan_to_num(img, nan=0.0, posinf=max(max_finite, 0.0), neginf=0.0)
    return np.maximum(img, 0.0, out=img)


def read_hdr(path: str, sanitize: bool = True) -> np.ndarray:
    """Read a float HDR file (``.hdr``, ``.exr``, ``.pfm``, float ``.tif``).

    Returns:
        ``(H, W, 3)`` float32 linear RGB, relative scale as stored, finite and >= 0 when ``sanitize``.

    Raises:
        FileNotFoundError: no such file. ImageReadError: undecodable, or an integer (LDR) image.
    """
    img = _decode(path)
    if not np.issubdtype(img.dtype, np.floating):
        raise ImageReadError(
            f'{path} holds {img.dtype} integer data, not floating-point HDR. Read it as LDR (read_ldr/read_image), or '
            f'convert integer-coded HDR (16-bit PQ/HLG PNG, NTIRE PNG + alignment ratio) with scripts/prepare_data.py '
            f'convert first (docs/datasets.md), or read it with read_coded_hdr.'
        )
    img = to_rgb3(img.astype(np.float32, copy=False), str(path))
    return sanitize_hdr(img, str(path)) if sanitize else img


def read_ldr(path: str) -> np.ndarray:
    """Read an 8- or 16-bit LDR image (PNG, TIFF, JPEG, BMP, WebP).

    Returns:
        ``(H, W, 3)`` float32 display-referred RGB in [0, 1] (sRGB-encoded values, not linearised).

    Raises:
        FileNotFoundError, ImageReadError (also for float files, which are HDR: use :func:`read_hdr`).
    """
    img = _decode(path)
    if img.dtype not in (np.uint8, np.uint16):
        raise ImageReadError(f'{path} holds {img.dtype} data; expected an 8- or 16-bit LDR image (use read_hdr).')
    return codes_to_float(to_rgb3(img, str(path)))


def codes_to_float(codes: np.ndarray) -> np.ndarray:
    """uint8 / uint16 code values -> float32 display-referred values in [0, 1] (code / 255 or / 65535), exactly as
    :func:`read_ldr` returns them (e.g. from the codes of :func:`read_image_raw`)."""
    if codes.dtype not in (np.uint8, np.uint16):
        raise ValueError(f'codes_to_float: expected uint8 or uint16 codes, got {codes.dtype}')
    return codes.astype(np.float32) / (255.0 if codes.dtype == np.uint8 else 65535.0)


def read_image(path: str) -> tuple[np.ndarray, bool]:
    """Read any supported image and say whether it is HDR (float data) or LDR (integer data).

    Returns:
        ``(img, is_hdr)``: ``img`` is ``(H, W, 3)`` float32 RGB, linear HDR (sanitised) when ``is_hdr`` else
        display-referred LDR in [0, 1].
    """
    img = _decode(path)
    if np.issubdtype(img.dtype, np.floating):
        return sanitize_hdr(to_rgb3(img.astype(np.float32, copy=False), str(path)), str(path)), True
    if img.dtype not in (np.uint8, np.uint16):
        raise ImageReadError(f'{path}: unsupported pixel type {img.dtype}')
    return codes_to_float(to_rgb3(img, str(path))), False


def read_image_raw(path: str) -> np.ndarray:
    """Read any supported image with its stored values: no scaling, no transfer function removed.

    Returns:
        ``(H, W, 3)`` RGB array of the file's own type: ``uint8`` / ``uint16`` code values for integer images, float32
        for float files (not sanitised). Grey becomes three channels, alpha is dropped (one warning per file).
    """
    img = _decode(path)
    if img.dtype not in (np.uint8, np.uint16) and not np.issubdtype(img.dtype, np.floating):
        raise ImageReadError(f'{path}: unsupported pixel type {img.dtype}')
    return to_rgb3(img, str(path))


def read_coded_hdr(
    path: str,
    transfer: str = 'pq',
    primaries: str = 'bt2020',
    out_primaries: str = 'bt709',
    white_nits: float = 203.0,
    bit_depth: int | None = None,
) -> np.ndarray:
    """Read an integer-coded HDR (or SDR) image and return linear light.

    Args:
        path: 8- or 16-bit PNG/TIFF (a float file is taken as code values in [0, 1], unscaled).
        transfer: ``'pq'`` (SMPTE ST 2084), ``'hlg'`` (BT.2100 inverse OETF, scene-linear, no OOTF), ``'srgb'`` or
            ``'linear'`` (see :func:`llmhdr_basicsr.utils.transfer.decode_transfer`).
        primaries: primaries of the file, ``'bt2020'`` or ``'bt709'``.
        out_primaries: primaries of the result (default ``'bt709'``, the project's colour space).
        white_nits: PQ luminance that becomes 1.0 (default 203 cd/m², the BT.2408 HDR reference white).
        bit_depth: code value = integer / (2**bit_depth - 1); ``None`` = from the type (8 for uint8, 16 for uint16).
            Give e.g. 10 for 10-bit codes stored unshifted in a 16-bit file.

    Returns:
        ``(H, W, 3)`` float32 linear RGB in ``out_primaries``, relative scale (reference white = 1.0), finite and
        >= 0: out-of-gamut colours (negative after the primaries conversion) are clipped to 0 without a warning.

    Raises:
        FileNotFoundError, ImageReadError (undecodable, or codes above ``2**bit_depth - 1``), ValueError (an unknown
        transfer / primaries name or a bad bit depth).
    """
    from llmhdr_basicsr.utils import transfer as tf  # numpy maths; imported here to keep this module light

    raw = read_image_raw(path)
    if np.issubdtype(raw.dtype, np.floating):
        code = raw.astype(np.float64)
    else:
        native = 8 if raw.dtype == np.uint8 else 16
        bits = native if bit_depth is None else int(bit_depth)
        if bits > native:
            raise ImageReadError(f'{path} holds {native}-bit data ({raw.dtype}); expected {bits}-bit codes')
        if bits < 1:
            raise ValueError(f'{path}: bit_depth must be >= 1, got {bit_depth}')
        peak = 2**bits - 1
        if bits < native and int(raw.max()) > peak:
            raise ImageReadError(
                f'{path}: code values up to {int(raw.max())} do not fit bit_depth {bits} (max {peak}); '
                f'leave bit_depth unset for full-range {native}-bit data'
            )
        code = raw.astype(np.float64) / peak
    linear = tf.convert_primaries(tf.decode_transfer(code, transfer, white_nits), primaries, out_primaries)
    return np.maximum(linear, 0.0).astype(np.float32)


def _atomic_imwrite(path: str, img: np.ndarray, params: list | None = None) -> None:
    path = str(path)
    ext = extension(path)
    ok, buf = cv2.imencode(ext, img, params or [])
    if not ok:
        raise OSError(f'OpenCV could not encode {path} (extension {ext})')
    atomic_write_bytes(path, buf.tobytes())


def _check_rgb(img: np.ndarray, path: str) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f'{path}: expected an (H, W, 3) RGB array, got shape {img.shape}')
    return img


def write_hdr(path: str, img: np.ndarray) -> None:
    """Write linear HDR RGB unchanged to ``.exr`` (float32), ``.hdr`` (RGBE) or ``.pfm``.

    Args:
        path: output file; its extension selects the format.
        img: ``(H, W, 3)`` (or ``(H, W)``) float linear RGB, >= 0 (negative values are clipped to 0, as RGBE and
            most viewers require).
    """
    ext = extension(path)
    if ext not in HDR_EXTENSIONS:
        raise ValueError(f'{path}: HDR output must be one of {HDR_EXTENSIONS}, not {ext!r}')
    img = np.maximum(_check_rgb(img, path).astype(np.float32), 0.0)
    bgr = np.ascontiguousarray(img[..., ::-1])
    params = []
    if ext == '.exr':
        params = [cv2.IMWRITE_EXR_TYPE, cv2.IMWRITE_EXR_TYPE_FLOAT,
                  cv2.IMWRITE_EXR_COMPRESSION, cv2.IMWRITE_EXR_COMPRESSION_ZIP]  # fmt: skip
    _atomic_imwrite(path, bgr, params)


def write_ldr(path: str, img: np.ndarray, bit_depth: int = 8) -> None:
    """Write a display-referred image in [0, 1] as 8- or 16-bit PNG/TIFF or 8-bit JPEG.

    Args:
        path: output file (``.png``, ``.tif``/``.tiff``, ``.jpg``/``.jpeg``).
        img: ``(H, W, 3)`` or ``(H, W)`` float RGB in [0, 1] (clipped), display-referred.
        bit_depth: 8 or 16 (16 only for PNG and TIFF).
    """
    ext = extension(path)
    if bit_depth not in (8, 16):
        raise ValueError(f'bit_depth must be 8 or 16, got {bit_depth}')
    if bit_depth == 16 and ext not in ('.png', '.tif', '.tiff'):
        raise ValueError(f'{path}: 16-bit output needs .png or .tif, not {ext!r}')
    if ext not in LDR_EXTENSIONS:
        raise ValueError(f'{path}: LDR output must be one of {LDR_EXTENSIONS}, not {ext!r}')
    img = np.clip(_check_rgb(img, path).astype(np.float64), 0.0, 1.0)
    peak, dtype = (255.0, np.uint8) if bit_depth == 8 else (65535.0, np.uint16)
    quantised = np.round(img * peak).astype(dtype)
    _atomic_imwrite(path, np.ascontiguousarray(quantised[..., ::-1]))
