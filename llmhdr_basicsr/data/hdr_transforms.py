"""Float-image transforms for the HDR datasets: HDR normalisation, padding, random crops, flips/rotations, to-tensor.

All functions work on ``(H, W, C)`` numpy arrays (RGB, channels last, float32; ``C`` is 3 for images and may be larger
when perception maps are stacked onto an LDR image so that they share one crop window). Nothing here quantises,
clips or rescales values: linear HDR above 1 stays above 1, display-referred LDR stays in [0, 1].

Unlike BasicSR's ``paired_random_crop`` / ``augment`` (``basicsr.data.transforms``), nothing assumes a paired
LQ/GT with a scale factor: the arrays passed together are cut with the same window and flipped the same way, and
arrays of *different* images (the two domains of the unpaired set) are simply transformed in separate calls.

Randomness comes from an explicit ``numpy.random.Generator`` argument (see
:func:`llmhdr_basicsr.data.dataset_util.sample_rng` for how the datasets derive one per sample).
"""

from __future__ import annotations

import numpy as np
import torch

from llmhdr_basicsr.utils.tonemap import REC709_WEIGHTS

#: Names accepted by :func:`parse_hdr_norm` besides a numeric percentile.
HDR_NORM_MODES = ('max', 'none')
DEFAULT_HDR_NORM = 99.5


def parse_hdr_norm(value: object, option: str = 'hdr_norm') -> float | None:
    """Turn the ``hdr_norm`` option into a luminance percentile (or None for no normalisation).

    Args:
        value: ``'max'`` (= percentile 100), ``'none'`` / None (keep the file's values), or a number in (0, 100]
            (a percentile of the luminance that is mapped to 1).
        option: option name used in the error message.

    Returns:
        The percentile as a float in (0, 100], or None.

    Raises:
        ValueError: anything else, naming ``option``.
    """
    if value is None:
        return None
    if isinstance(value, str):
        key = value.strip().lower()
        if key == 'max':
            return 100.0
        if key == 'none':
            return None
        try:
            value = float(key)
        except ValueError:
            raise ValueError(f'Option {option}={value!r}: expected "max", "none" or a percentile in (0, 100]') from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) <= 100:
        raise ValueError(f'Option {option}={value!r}: expected "max", "none" or a percentile in (0, 100]')
    return float(value)


def hdr_norm_scale(img: np.ndarray, percentile: float | None = DEFAULT_HDR_NORM) -> float:
    """The divisor of :func:`normalize_hdr_np`: the ``percentile`` of the Rec.709 luminance of the **whole** image.

    The one implementation of the ``hdr_norm`` statistic: the datasets compute it on the decoded frame, and
    ``scripts/prepare_data.py store`` computes it once per source frame for the tiles of a training store
    (:mod:`llmhdr_basicsr.data.training_store`), so a tile is normalised exactly as its whole frame would be.

    Args:
        img: ``(H, W, 3)`` float32 linear HDR RGB, finite, >= 0, relative scale.
        percentile: luminance percentile in (0, 100] (linear interpolation, 100 = the maximum), or None.

    Returns:
        The positive divisor: the percentile; the maximum luminance when the percentile is 0 (mostly-black image);
        1.0 for an all-black image or ``percentile=None``.
    """
    if percentile is None:
        return 1.0
    img = np.asarray(img, dtype=np.float32)
    r, g, b = (np.float32(c) for c in REC709_WEIGHTS)
    # Element-wise on purpose: a BLAS matmul here starts OpenBLAS threads in every DataLoader worker, which then
    # compete for the cores (measured: half the samples/s with 2 workers on 2 cores).
    lum = (r * img[..., 0] + g * img[..., 1] + b * img[..., 2]).ravel()
    peak = float(lum.max()) if lum.size else 0.0
    ref = peak if percentile >= 100 else float(np.percentile(lum, percentile))
    if ref <= 0.0:  # mostly-black image: fall back to the maximum instead of dividing by ~0
        ref = peak
    return ref if ref > 0.0 else 1.0  # all black: nothing to normalise


def scale_hdr(img: np.ndarray, scale: float) -> tuple[np.ndarray, float]:
    """``(img / scale, scale)`` in float32 (``img`` itself for ``scale == 1``), the division of
    :func:`normalize_hdr_np`.

    Args:
        img: ``(H, W, 3)`` float32 linear HDR RGB (a whole image or a tile of it).
        scale: positive divisor, e.g. :func:`hdr_norm_scale` of the whole frame.
    """
    img = np.asarray(img, dtype=np.float32)
    if scale == 1.0:
        return img, 1.0
    return img / np.float32(scale), scale


def normalize_hdr_np(img: np.ndarray, percentile: float | None = DEFAULT_HDR_NORM) -> tuple[np.ndarray, float]:
    """Scale one linear HDR image so that a percentile of its luminance maps to 1 (per-image scaling, as FHDR).

    Same semantics as :func:`llmhdr_basicsr.utils.tonemap.normalize_hdr` (Rec.709 luminance, linear-interpolated
    percentile, 100 = the maximum), with one guard added: when the percentile is 0 (an image that is black in more
    than ``percentile`` % of its pixels, e.g. a star field) the maximum is used instead, and an all-black image keeps
    scale 1 (:func:`hdr_norm_scale`). Values above 1 (the brightest ``100 - percentile`` %) are **kept, not clipped**.

    Args:
        img: ``(H, W, 3)`` float32 linear HDR RGB, finite, >= 0, relative scale.
        percentile: luminance percentile in (0, 100] mapped to 1, or None for no normalisation (scale 1).

    Returns:
        ``(img / scale, scale)``: float32 ``(H, W, 3)`` linear RGB and the positive float divisor, so that
        ``img_normalised * scale`` gives back the file's values.
    """
    img = np.asarray(img, dtype=np.float32)
    return scale_hdr(img, hdr_norm_scale(img, percentile))


def pad_to_size(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Reflect-pad an image that is smaller than ``height x width``; larger dimensions are left alone.

    The padding is split evenly between both sides (top/bottom, left/right), using numpy's ``'reflect'`` mode (mirror
    without repeating the edge pixel, repeated as often as needed for very small images; a 1-pixel dimension is
    replicated). Reflection keeps the statistics of the image (no black borders for the discriminator to spot).

    Args:
        img: ``(H, W, C)`` array.
        height: minimum output height.
        width: minimum output width.

    Returns:
        ``(max(H, height), max(W, width), C)`` array of the same dtype (the input itself when no padding is needed).
    """
    h, w = img.shape[:2]
    pad_h, pad_w = max(height - h, 0), max(width - w, 0)
    if pad_h == 0 and pad_w == 0:
        return img
    pads = ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2)) + ((0, 0),) * (img.ndim - 2)
    return np.pad(img, pads, mode='reflect')


def random_crop(imgs: list[np.ndarray], size: int, rng: np.random.Generator) -> tuple[list[np.ndarray], tuple]:
    """Cut the same random ``size x size`` window out of arrays of equal height and width (padding them if smaller).

    Args:
        imgs: ``(H, W, C_i)`` arrays of the *same* image (e.g. an LDR photo and its perception maps); all must have
            the same ``H`` and ``W``.
        size: crop side in pixels (> 0).
        rng: source of the window position.

    Returns:
        ``(crops, (top, left))``: the ``(size, size, C_i)`` crops (views into the padded arrays) and the window's
        top-left corner in the (padded) image.

    Raises:
        ValueError: the arrays differ in height/width.
    """
    shapes = {img.shape[:2] for img in imgs}
    if len(shapes) != 1:
        raise ValueError(f'random_crop: arrays of one image must share height and width, got {sorted(shapes)}')
    imgs = [pad_to_size(img, size, size) for img in imgs]
    h, w = imgs[0].shape[:2]
    top = int(rng.integers(0, h - size + 1))
    left = int(rng.integers(0, w - size + 1))
    return [img[top : top + size, left : left + size] for img in imgs], (top, left)


def random_flip_rot(
    imgs: list[np.ndarray], rng: np.random.Generator, hflip: bool = True, rot: bool = False
) -> list[np.ndarray]:
    """Apply one random flip/rotation to every array (the same one to all), as BasicSR's ``augment``.

    With ``hflip`` a horizontal flip happens with probability 1/2; with ``rot`` a vertical flip and a transpose
    (H <-> W) each happen with probability 1/2, which with the horizontal flip gives the 8 dihedral transforms.

    Args:
        imgs: ``(H, W, C_i)`` arrays of one image.
        rng: source of the coin flips (three are drawn whatever the flags, so the random stream does not depend on
            them).
        hflip: allow horizontal flips.
        rot: allow vertical flips and 90-degree rotations (transposes; square crops keep their shape).

    Returns:
        The transformed arrays (views; call :func:`img2tensor` or ``np.ascontiguousarray`` before heavy use).
    """
    do_h, do_v, do_t = (rng.random(3) < 0.5).tolist()
    do_h, do_v, do_t = do_h and hflip, do_v and rot, do_t and rot
    out = []
    for img in imgs:
        if do_h:
            img = img[:, ::-1]
        if do_v:
            img = img[::-1]
        if do_t:
            img = img.transpose(1, 0, *range(2, img.ndim))
        out.append(img)
    return out


def img2tensor(img: np.ndarray) -> torch.Tensor:
    """``(H, W, C)`` float RGB numpy array -> ``(C, H, W)`` contiguous float32 torch tensor (values unchanged).

    Unlike ``basicsr.utils.img2tensor`` there is no BGR->RGB swap (arrays here are already RGB) and no uint8
    assumption: linear HDR values above 1 pass through. The result never shares memory with ``img``.
    """
    if img.ndim != 3:
        raise ValueError(f'img2tensor expects an (H, W, C) array, got shape {img.shape}')
    chw = np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)
    if np.may_share_memory(chw, img):  # never hand out a view of a (possibly cached) source array
        chw = chw.copy()
    return torch.from_numpy(chw)
