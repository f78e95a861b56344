"""The whole-image LDR view of a training crop: crop-window geometry shared by the dataset and the CLIP/SAM losses.

Why: the LDR side of L_con (``E(h(x))``) and of L_sem (the SAM segments of
``h(x)``) is fixed per *image*, but training sees a new random crop and flip of every image at every step, so a cache
keyed by the crop's pixels never hits. :class:`~llmhdr_basicsr.data.unpaired_hdr_dataset.UnpairedLDRHDRDataset`
therefore also returns, per sample,

- ``ldr_image_key``: a digest of the whole decoded LDR image (the cache key, identical for every crop of it);
- ``ldr_global``: the whole LDR image resized to ``G x G`` (display-referred sRGB in [0, 1]): CLIP/SAM run on this
  once per image;
- ``ldr_window``: where the crop came from, so that per-image results (SAM masks) can be cut to the crop.

``ldr_window`` is a float32 ``(5,)`` tensor ``[y0, x0, y1, x1, flip_code]``:

- ``y0, x0, y1, x1``: the crop window in normalised coordinates of the **unpadded** full image (0 = top/left edge,
  1 = bottom/right edge, pixel edges not centres: a crop of rows ``top .. top + h - 1`` of an ``H``-row image has
  ``y0 = top / H``, ``y1 = (top + h) / H``). An image smaller than the crop is reflect-padded by the dataset before
  cropping; its window then reaches below 0 or above 1 (:func:`cut_windows` reflects there too, repeating the edge
  pixel where numpy's ``'reflect'`` does not: a one-pixel difference, immaterial at SAM's mask resolution);
- ``flip_code``: the flips/rotation applied to the crop after cutting, a bit set (:data:`FLIP_W` = 1: left-right
  flip, :data:`FLIP_H` = 2: up-down flip, :data:`TRANSPOSE` = 4: swap of the two axes), applied in this order, the
  order of :func:`llmhdr_basicsr.data.hdr_transforms.random_flip_rot`. The 8 codes are the 8 dihedral transforms.

The losses receive these three as one :class:`LDRGlobalView` (:meth:`LDRGlobalView.from_batch`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

FLIP_W = 1  # left-right flip (numpy ``img[:, ::-1]``, torch ``flip(-1)``)
FLIP_H = 2  # up-down flip (numpy ``img[::-1]``, torch ``flip(-2)``)
TRANSPOSE = 4  # swap height and width (90-degree rotation together with a flip)
NUM_FLIP_CODES = 8

#: A 2x2 probe whose 8 dihedral transforms are all different: pass it through any flip/rotation routine together
#: with the image, then :func:`flip_code_from_probe` tells which transform was applied.
FLIP_PROBE = np.arange(4, dtype=np.float32).reshape(2, 2, 1)

#: Batch keys of the whole-image view (:class:`LDRGlobalView`), as the dataset writes them.
BATCH_KEYS = ('ldr_global', 'ldr_image_key', 'ldr_window')
#: ``ldr_view`` option values of the CLIP/SAM losses: the whole image when the batch has it, always, never.
LDR_VIEWS = ('auto', 'image', 'crop')


def _check_code(code: int | float) -> int:
    if int(code) != code or not 0 <= int(code) < NUM_FLIP_CODES:
        raise ValueError(f'flip code must be an integer in [0, {NUM_FLIP_CODES}), got {code!r}')
    return int(code)


def apply_flip_code_np(img: np.ndarray, code: int) -> np.ndarray:
    """Apply a flip code (module docstring) to an ``(H, W, ...)`` numpy array; returns a view."""
    code = _check_code(code)
    if code & FLIP_W:
        img = img[:, ::-1]
    if code & FLIP_H:
        img = img[::-1]
    if code & TRANSPOSE:
        img = img.transpose(1, 0, *range(2, img.ndim))
    return img


def apply_flip_code(x: torch.Tensor, code: int) -> torch.Tensor:
    """Apply a flip code (module docstring) to the last two axes of a ``(..., H, W)`` tensor (``(..., W, H)`` out
    when the code transposes). Differentiable; values unchanged."""
    code = _check_code(code)
    if code & FLIP_W:
        x = x.flip(-1)
    if code & FLIP_H:
        x = x.flip(-2)
    if code & TRANSPOSE:
        x = x.transpose(-1, -2)
    return x


_PROBE_CODES = {apply_flip_code_np(FLIP_PROBE, c).tobytes(): c for c in range(NUM_FLIP_CODES)}
assert len(_PROBE_CODES) == NUM_FLIP_CODES  # the probe tells all 8 transforms apart


def flip_code_from_probe(probe: np.ndarray) -> int:
    """The flip code of the transform that turned :data:`FLIP_PROBE` into ``probe``.

    Raises:
        ValueError: ``probe`` is not a flip/rotation of :data:`FLIP_PROBE`.
    """
    code = _PROBE_CODES.get(np.ascontiguousarray(probe, dtype=np.float32).tobytes())
    if code is None or np.shape(probe) != FLIP_PROBE.shape:
        raise ValueError(f'flip_code_from_probe: not a flip/rotation of FLIP_PROBE: {np.asarray(probe).ravel()}')
    return code


def crop_window(
    top: int, left: int, height: int, width: int, image_height: int, image_width: int, flip_code: int = 0
) -> np.ndarray:
    """The ``ldr_window`` vector of a crop (module docstring).

    Args:
        top, left: the crop's top-left corner in pixels of the unpadded image (negative inside reflect padding).
        height, width: crop size in pixels, before any transpose.
        image_height, image_width: size of the full (unpadded) image in pixels.
        flip_code: flips/rotation applied to the crop after cutting.

    Returns:
        float32 ``(5,)`` array ``[y0, x0, y1, x1, flip_code]``.
    """
    if image_height < 1 or image_width < 1 or height < 1 or width < 1:
        raise ValueError(
            f'crop_window: sizes must be positive, got crop {height}x{width} of {image_height}x{image_width}'
        )
    return np.array(
        [
            top / image_height,
            left / image_width,
            (top + height) / image_height,
            (left + width) / image_width,
            _check_code(flip_code),
        ],
        dtype=np.float32,
    )


def cut_windows(
    maps: torch.Tensor, windows: torch.Tensor, size: tuple[int, int], padding_mode: str = 'reflection'
) -> torch.Tensor:
    """Cut every sample's window out of per-image maps and give it the crop's flip/rotation.

    Output pixel ``(i, j)`` of sample ``n`` samples ``maps[n]`` bilinearly (``grid_sample``, ``align_corners=False``)
    at the centre of crop cell ``(i, j)`` of the window, so a window of ``k`` map pixels cut at ``k`` output pixels
    reproduces the map pixels exactly, and any linear ramp is reproduced exactly. Windows reaching outside the image
    (reflect-padded small images) are reflected at the image border (``padding_mode``).

    Args:
        maps: ``(N, C, h, w)`` per-image maps over the **whole** image (e.g. SAM masks as float, bool is converted).
        windows: ``(N, 5)`` ``ldr_window`` rows (module docstring), any device.
        size: ``(H, W)`` of the result, i.e. after the flip code (a transposing code cuts ``(W, H)`` first).
        padding_mode: ``grid_sample`` padding outside the image: ``'reflection'``, ``'border'`` or ``'zeros'``.

    Returns:
        ``(N, C, H, W)`` float32 on ``maps``' device, values interpolated from ``maps``.
    """
    if maps.dim() != 4 or windows.dim() != 2 or windows.shape != (maps.shape[0], 5):
        raise ValueError(
            f'cut_windows: need (N, C, h, w) maps and (N, 5) windows, got {tuple(maps.shape)}, {tuple(windows.shape)}'
        )
    out_h, out_w = int(size[0]), int(size[1])
    maps = maps.float()
    rows = windows.detach().double().cpu().tolist()  # one transfer, not one per sample
    grids, codes = [], []
    for y0, x0, y1, x1, code in rows:
        code = _check_code(round(code))
        cut_h, cut_w = (out_w, out_h) if code & TRANSPOSE else (out_h, out_w)
        ys = y0 + (torch.arange(cut_h, dtype=torch.float64) + 0.5) / cut_h * (y1 - y0)
        xs = x0 + (torch.arange(cut_w, dtype=torch.float64) + 0.5) / cut_w * (x1 - x0)
        gy, gx = torch.meshgrid(2 * ys - 1, 2 * xs - 1, indexing='ij')  # [0, 1] -> grid_sample's [-1, 1]
        grids.append(torch.stack([gx, gy], dim=-1).float())
        codes.append(code)
    if len({g.shape for g in grids}) == 1:  # square outputs, or no transposes: one batched call
        grid = torch.stack(grids).to(maps.device)
        cuts = list(F.grid_sample(maps, grid, mode='bilinear', padding_mode=padding_mode, align_corners=False))
    else:
        cuts = [
            F.grid_sample(m[None], g[None].to(maps.device), 'bilinear', padding_mode, align_corners=False)[0]
            for m, g in zip(maps, grids)
        ]
    return torch.stack([apply_flip_code(c, code) for c, code in zip(cuts, codes)])


@dataclass(frozen=True)
class LDRGlobalView:
    """The whole-image LDR side of a training batch, for the CLIP/SAM caches (module docstring).

    Attributes:
        images: ``(N, 3, G, G)`` float32 whole LDR images resized to ``G x G`` (aspect ratio not kept),
            display-referred sRGB in [0, 1]; kept wherever the batch put them (the CPU): the losses move only the
            images they have to encode.
        image_keys: ``N`` digests of the whole decoded LDR images; equal keys = the same image.
        windows: ``(N, 5)`` float32 ``ldr_window`` rows: where each crop lies in its image, and its flip code.
    """

    images: torch.Tensor
    image_keys: list[str]
    windows: torch.Tensor

    def __post_init__(self) -> None:
        n = len(self.image_keys)
        if self.images.dim() != 4 or self.images.shape[1] != 3 or self.images.shape[0] != n:
            raise ValueError(
                f'LDRGlobalView: ldr_global must be (N, 3, G, G) with N = {n}, got {tuple(self.images.shape)}'
            )
        if tuple(self.windows.shape) != (n, 5):
            raise ValueError(f'LDRGlobalView: ldr_window must be ({n}, 5), got {tuple(self.windows.shape)}')

    @classmethod
    def from_batch(cls, data: Mapping) -> LDRGlobalView | None:
        """Build the view from a collated batch; None when the batch has no ``ldr_global`` (crop-only datasets).

        Raises:
            KeyError: ``ldr_global`` is present but ``ldr_image_key`` or ``ldr_window`` is not.
        """
        if data.get('ldr_global') is None:
            return None
        missing = [k for k in BATCH_KEYS if data.get(k) is None]
        if missing:
            raise KeyError(
                f'batch has ldr_global but lacks {missing}: the whole-image LDR view needs all of {BATCH_KEYS}'
            )
        keys = data['ldr_image_key']
        keys = [keys] if isinstance(keys, str) else [str(k) for k in keys]
        return cls(images=data['ldr_global'], image_keys=keys, windows=data['ldr_window'])

    def __len__(self) -> int:
        return len(self.image_keys)

    @property
    def size(self) -> int:
        """``G``, the side of the global view in pixels."""
        return int(self.images.shape[-1])

    @property
    def cache_keys(self) -> list[str]:
        """Per-sample cache keys of results computed on the global view: image digest and view size
        (``'image:<digest>@<G>'``), so that results of another ``global_size`` never mix in."""
        return [f'image:{k}@{self.images.shape[-2]}x{self.images.shape[-1]}' for k in self.image_keys]

    def same_image(self, device: torch.device | str | None = None) -> torch.Tensor:
        """``(N, N)`` bool: ``[i, j]`` is True when samples ``i`` and ``j`` are crops of the same image."""
        index = {k: i for i, k in enumerate(dict.fromkeys(self.image_keys))}
        ids = torch.tensor([index[k] for k in self.image_keys], device=device)
        return ids[:, None] == ids[None, :]

    def check(self, n: int, owner: str) -> None:
        """Raise ValueError naming ``owner`` unless the view has one entry per sample of an ``n``-sample batch."""
        if len(self) != n:
            raise ValueError(f'{owner}: the whole-image LDR view has {len(self)} entries for a batch of {n}')


def resolve_ldr_view(mode: str, global_view: LDRGlobalView | None, n: int, owner: str, option: str) -> bool:
    """Whether a CLIP/SAM loss uses the whole-image LDR view for this batch (True) or the crop (False).

    Args:
        mode: the loss's ``ldr_view`` option, one of :data:`LDR_VIEWS`.
        global_view: the batch's whole-image view, or None when the dataset provides none.
        n: batch size (the view must have one entry per sample).
        owner: loss name for messages; option: the YAML option named in messages.

    Raises:
        ValueError: ``mode`` is ``'image'`` and the batch has no whole-image view, or the view has the wrong length.
    """
    if global_view is not None:
        global_view.check(n, owner)
    if mode == 'crop':
        return False
    if mode == 'image' and global_view is None:
        raise ValueError(
            f"{owner}: {option}: 'image' needs the whole-image LDR view in the batch (ldr_global, ldr_image_key, "
            "ldr_window: UnpairedLDRHDRDataset with global_size > 0); this batch has none. Set the dataset's "
            f'global_size, or {option}: auto/crop'
        )
    return global_view is not None
