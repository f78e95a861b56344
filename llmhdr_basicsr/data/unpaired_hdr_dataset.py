"""UnpairedLDRHDRDataset: the training data of CycleHDR, one LDR photo and one unrelated HDR image per sample."""

from __future__ import annotations

import hashlib
import logging
import math
import os.path as osp

import numpy as np
import torch
from basicsr.utils.registry import DATASET_REGISTRY

from .dataset_util import (
    HDR_FOLDER_EXTENSIONS,
    LDR_FOLDER_EXTENSIONS,
    HDRDatasetBase,
    ensure_finite,
    sample_rng,
)
from .hdr_transforms import DEFAULT_HDR_NORM, img2tensor, parse_hdr_norm, random_crop, random_flip_rot

logger = logging.getLogger('basicsr.llmhdr')


def parse_exposure_range(value: object, name: str) -> tuple[float, float] | None:
    """``hdr_exposure_aug`` option -> ``(low, high)`` in stops, or None when off (None/false)."""
    if value is None or value is False:
        return None
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        and value[0] <= value[1]
    ):
        return float(value[0]), float(value[1])
    raise ValueError(f'{name}: option hdr_exposure_aug must be null or [low, high] in stops (low <= high), got '
                     f'{value!r}')  # fmt: skip


@DATASET_REGISTRY.register()
class UnpairedLDRHDRDataset(HDRDatasetBase):
    """Unpaired LDR and HDR images for cycle-consistent training (CycleHDR, method.md §1 and §8).

    The two domains are unrelated: sample ``i`` is LDR image ``i`` together with an HDR image drawn **at random**
    (uniformly, anew at every ``__getitem__``), so every epoch pairs the LDR images with different HDR images — unlike
    ``index % len`` pairing, which repeats the same pairs each epoch (the LPTN pitfall, style.md A.8; the random
    partner is CycleGAN's ``unaligned_dataset``, style.md A.4). ``len(dataset)`` is the number of LDR images: one
    epoch shows every LDR image once and on average ``len(LDR) / len(HDR)`` draws of each HDR image. In the val/test
    phases the partner is ``hdr[index % len(HDR)]`` instead, so that validation is repeatable.

    Options (besides BasicSR's ``name``, ``type``, ``phase``, ``io_backend: {type: disk}``, loader keys):

    - ``dataroot_ldr``, ``dataroot_hdr`` (required): folders. LDR: 8/16-bit PNG/TIFF/JPEG/BMP/WebP. HDR:
      ``.hdr``/``.exr``/``.pfm``/float TIFF.
    - ``meta_info_ldr``, ``meta_info_hdr`` (optional): text files with one image path per line, relative to the
      matching ``dataroot_*`` (sub-folders allowed); they replace the folder listing.
    - ``crop_size`` (default 256): train phase: a random ``crop_size``-square crop of each image (chosen independently
      in the two domains); images smaller than that are reflect-padded first (:func:`pad_to_size`). ``null``: no crop
      (then every image in a batch must have the same size). Val/test: never cropped.
    - ``use_hflip`` (default true), ``use_rot`` (default false): train-phase flips/90-degree rotations, drawn
      independently for the two domains.
    - ``hdr_norm`` (default 99.5): per-image HDR normalisation applied to the **whole** image before cropping: a
      number = the luminance percentile mapped to 1; ``'max'`` = the maximum mapped to 1; ``'none'`` = file values.
      Values above 1 are kept, not clipped (:func:`normalize_hdr_np`, with a fall-back to the maximum for images that
      are black at that percentile).
    - ``hdr_exposure_aug`` (default null = off): ``[low, high]`` in stops; train phase: the normalised HDR crop is
      multiplied by ``2 ** U(low, high)``.
    - ``maps_cache`` (optional): a perception cache folder written by ``llmhdr-perceive`` (method.md §3: artifact,
      over- and under-exposure maps of the LDR input from a VLM, keyed by file content and prompt; see
      :mod:`llmhdr_basicsr.perception.cache`); ``maps_cache_model`` / ``maps_cache_config`` choose the configuration
      when the folder holds several. The maps are resized to the LDR image and cut/flipped with the same window. An
      image without an entry gets zeros and ``ldr_maps_valid = 0`` (the model then uses the heuristic maps for it;
      the first miss is logged, later ones counted by the cache) so that batches always collate.
    - ``cache_images`` (default false): keep all decoded (and normalised) images in memory, see
      :mod:`llmhdr_basicsr.data.dataset_util`.

    Returns (``__getitem__``): a dict with

    - ``'ldr'``: ``(3, h, w)`` float32 RGB, display-referred (sRGB-encoded), in [0, 1];
    - ``'ldr_key'``: a digest of exactly these LDR pixels, the key of the CLIP/SAM caches of the fixed LDR side;
    - ``'hdr'``: ``(3, h', w')`` float32 linear RGB, >= 0, normalised as above (may exceed 1);
    - ``'hdr_scale'``: float32 scalar tensor, ``hdr * hdr_scale`` gives the file's values (exposure aug included);
    - ``'ldr_path'``, ``'hdr_path'``: str;
    - with ``maps_cache``: ``'ldr_maps'`` ``(3, h, w)`` float32 in [0, 1] (channel order as stored) and
      ``'ldr_maps_valid'`` float32 scalar 1.0 / 0.0.
    """

    OPTION_KEYS = frozenset(
        {
            'dataroot_ldr', 'dataroot_hdr', 'meta_info_ldr', 'meta_info_hdr', 'crop_size', 'use_hflip', 'use_rot',
            'hdr_norm', 'hdr_exposure_aug', 'maps_cache', 'maps_cache_model', 'maps_cache_config', 'cache_images',
        }
    )  # fmt: skip

    def __init__(self, opt: dict) -> None:
        super().__init__(opt)
        ldr_key, self.ldr_root = self._folder_opt('dataroot_ldr')
        hdr_key, self.hdr_root = self._folder_opt('dataroot_hdr')
        self.ldr_paths = self._image_list(ldr_key, self.ldr_root, 'meta_info_ldr', LDR_FOLDER_EXTENSIONS, 'LDR')
        self.hdr_paths = self._image_list(hdr_key, self.hdr_root, 'meta_info_hdr', HDR_FOLDER_EXTENSIONS, 'HDR')
        self.crop_size = self._crop_opt(256)
        self.use_hflip = self._bool_opt('use_hflip', True)
        self.use_rot = self._bool_opt('use_rot', False)
        self.hdr_percentile = parse_hdr_norm(opt.get('hdr_norm', DEFAULT_HDR_NORM))
        self.exposure_range = parse_exposure_range(opt.get('hdr_exposure_aug'), self.name)
        self.maps_cache = self._open_maps_cache(opt)
        if self._bool_opt('cache_images', False):
            self.preload('ldr', self.ldr_paths, self.read_ldr)
            self.preload('hdr', self.hdr_paths, lambda p: self.read_hdr(p, self.hdr_percentile))

    def __len__(self) -> int:
        return len(self.ldr_paths)

    # ------------------------------------------------------------------------------------------------ maps
    def _open_maps_cache(self, opt: dict):
        """The :class:`~llmhdr_basicsr.perception.cache.PerceptionCache` written by ``llmhdr-perceive``, or None."""
        if opt.get('maps_cache') is None:
            return None
        from llmhdr_basicsr.perception.cache import PerceptionCache

        cache = PerceptionCache.open(
            osp.expanduser(str(opt['maps_cache'])),
            model=opt.get('maps_cache_model'),
            config=opt.get('maps_cache_config'),
        )
        found = sum(cache.contains(p) for p in self.ldr_paths)
        msg = f'{self.name}: {cache!r} holds perception maps for {found} of {len(self.ldr_paths)} LDR images'
        (logger.info if found else logger.warning)(msg)
        return cache

    def read_maps(self, ldr_path: str, height: int, width: int) -> np.ndarray | None:
        """``(H, W, 3)`` float32 maps in [0, 1] of one LDR image, or None (missing entry: heuristic fallback)."""
        maps = self.maps_cache.lookup(ldr_path, (height, width))
        return None if maps is None else np.ascontiguousarray(maps.transpose(1, 2, 0))

    # ------------------------------------------------------------------------------------------------ sample
    def __getitem__(self, index: int) -> dict:
        rng = sample_rng() if self.is_train else None
        n_ldr, n_hdr = len(self.ldr_paths), len(self.hdr_paths)
        ldr_index, ldr = self.load_robust('ldr', index % n_ldr, n_ldr, lambda i: self.read_ldr(self.ldr_paths[i]), rng)
        # The HDR partner: random in training (genuinely unpaired), fixed in val/test (repeatable validation).
        first_hdr = int(rng.integers(n_hdr)) if self.is_train else index % n_hdr
        hdr_index, (hdr, scale) = self.load_robust(
            'hdr', first_hdr, n_hdr, lambda i: self.read_hdr(self.hdr_paths[i], self.hdr_percentile), rng
        )
        ldr_path, hdr_path = self.ldr_paths[ldr_index], self.hdr_paths[hdr_index]
        ldr_parts = [ldr]
        maps = None
        if self.maps_cache is not None:
            maps = self.read_maps(ldr_path, *ldr.shape[:2])
            if maps is not None:
                ldr_parts.append(maps)

        if self.is_train:
            if self.crop_size is not None:
                ldr_parts, _ = random_crop(ldr_parts, self.crop_size, rng)  # maps share the LDR window
                (hdr,), _ = random_crop([hdr], self.crop_size, rng)
            ldr_parts = random_flip_rot(ldr_parts, rng, self.use_hflip, self.use_rot)
            (hdr,) = random_flip_rot([hdr], rng, self.use_hflip, self.use_rot)
            if self.exposure_range is not None:
                gain = 2.0 ** rng.uniform(*self.exposure_range)
                hdr, scale = ensure_finite(hdr * np.float32(gain), hdr_path), scale / gain

        out = {
            'ldr': img2tensor(ldr_parts[0]),
            'hdr': img2tensor(hdr),
            'hdr_scale': torch.tensor(scale, dtype=torch.float32),
            'ldr_path': ldr_path,
            'hdr_path': hdr_path,
        }
        # Names these exact LDR pixels (crop and flips included): the key of the CLIP/SAM LDR-side caches.
        out['ldr_key'] = hashlib.blake2b(out['ldr'].numpy().tobytes(), digest_size=10).hexdigest()
        if self.maps_cache is not None:
            h, w = out['ldr'].shape[1:]
            out['ldr_maps'] = img2tensor(ldr_parts[1]) if maps is not None else torch.zeros(3, h, w)
            out['ldr_maps_valid'] = torch.tensor(float(maps is not None))
        return out
